"""Method.export(): each method says what encoder.pt holds; cecl/saved_model.py writes and reads it back."""

from __future__ import annotations

import torch

from cecl.methods.cross_entropy import CrossEntropyMethod
from cecl.methods.joint import JointMethod
from cecl.methods.registry import MethodContext, build_method
from cecl.models import build_backbone
from cecl.plugin_options import CECLOptions
from cecl.saved_model import load_saved_model, save_model

CPU = torch.device("cpu")


def _encoder():
    return build_backbone("small_cnn", 3, [0.5] * 3, [0.5] * 3, {"width": 4})


def _context() -> MethodContext:
    return MethodContext(make_encoder=_encoder, proj_dim=8, proj_hidden=None, n_classes=5, views=2)


def test_a_contrastive_method_exports_its_encoder_only(tmp_path) -> None:
    method = build_method("cecl", _context(), CECLOptions())
    payload = method.export(last_epoch=4)
    assert "classifier" not in payload and payload.keys() == method.encoder.payload().keys()
    save_model(tmp_path / "encoder.pt", payload, {"host": "h"})
    saved = load_saved_model(tmp_path / "encoder.pt", CPU)
    assert saved.classifier is None and saved.machine == {"host": "h"}
    for name, value in method.encoder.state_dict().items():
        assert torch.equal(saved.encoder.state_dict()[name], value), name


def test_cross_entropy_exports_its_own_head_at_the_last_epoch(tmp_path) -> None:
    method = CrossEntropyMethod(_encoder(), n_classes=5)
    save_model(tmp_path / "encoder.pt", method.export(last_epoch=7), {})
    head, epoch = load_saved_model(tmp_path / "encoder.pt", CPU).head()
    assert epoch == 7 and torch.equal(head.weight, method.classifier.weight.detach())


def test_joint_exports_the_selected_epoch_not_the_last(tmp_path) -> None:
    method = JointMethod(build_method("cecl", _context(), CECLOptions()), n_classes=5, weight=1.0)
    kept_encoder = {k: v.clone() for k, v in method.encoder.state_dict().items()}
    kept_head = {k: v.clone() for k, v in method.classifier.state_dict().items()}
    method.best_epoch, method.best_state = 2, {"encoder": kept_encoder, "classifier": kept_head}
    with torch.no_grad():  # training went on after the selected epoch
        for parameter in method.parameters():
            parameter.add_(1.0)
    save_model(tmp_path / "encoder.pt", method.export(last_epoch=9), {})
    saved = load_saved_model(tmp_path / "encoder.pt", CPU)
    head, epoch = saved.head()
    assert epoch == 2 and torch.equal(head.weight, kept_head["weight"])
    for name, value in kept_encoder.items():
        assert torch.equal(saved.encoder.state_dict()[name], value), name
