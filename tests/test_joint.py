"""Protocol joint (BiasCon): CE head + w x the method's loss, the head scored at the val-selected epoch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cecl.config import ConfigError
from cecl.eval.encoder import score_classifier
from cecl.methods import MethodContext, build_method
from cecl.methods.joint import JointMethod
from cecl.models import encoder_from_payload
from cecl.pipeline import load_saved_model
from cecl.train.checkpoint import load_checkpoint
from cecl.train.loop import model_payload, run_pretraining
from tests.helpers import bn_free_encoder, synthetic_split, tiny_params, tiny_setup

CPU = torch.device("cpu")
N_CLASSES = 10


class Interrupt(Exception):
    pass


def _context() -> MethodContext:
    return MethodContext(
        make_encoder=lambda: bn_free_encoder(3, width=6),
        proj_dim=5,
        proj_hidden=None,
        n_classes=N_CLASSES,
        views=2,
    )


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    views = torch.rand(n, 2, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % 4  # several positives per class
    return views, labels


@pytest.mark.parametrize("name", ["cecl", "supcon"])
def test_joint_loss_is_cross_entropy_plus_weighted_method_loss(name: str) -> None:
    torch.manual_seed(0)
    inner = build_method(name, _context())
    joint = JointMethod(inner, N_CLASSES, weight=0.3).double()
    views, labels = _batch()
    assert joint.encoder is inner.encoder
    assert isinstance(joint.classifier, torch.nn.Linear)
    assert joint.classifier.weight.shape == (N_CLASSES, 6)
    assert (joint.n_views, joint.augments) == (inner.n_views, inner.augments)
    assert any(p is joint.classifier.weight for p in joint.parameters())

    logits = joint.classifier(inner.encoder(views[:, 0]))
    ce = -logits.log_softmax(dim=1)[torch.arange(len(labels)), labels].mean()
    expected = ce + 0.3 * inner.training_loss(views, labels)
    loss = joint.training_loss(views, labels)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert joint.classifier.weight.grad is not None and joint.classifier.weight.grad.abs().sum() > 0

    only_ce = JointMethod(inner, N_CLASSES, weight=0.0).double()
    ce0 = F.cross_entropy(only_ce.classifier(inner.encoder(views[:, 0])), labels)
    torch.testing.assert_close(only_ce.training_loss(views, labels), ce0, rtol=1e-12, atol=1e-12)


def test_joint_cross_entropy_is_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    ce = build_method("ce", _context()).double()
    joint = JointMethod(ce, N_CLASSES, weight=0.7)
    views, labels = _batch()
    assert joint.classifier is ce.classifier  # its own head, no second one
    assert (joint.n_views, joint.augments) == (1, False)
    assert torch.equal(joint.training_loss(views[:, :1], labels), ce.training_loss(views[:, :1], labels))


def _joint_params(epochs: int = 3):
    return tiny_params(pretrain={"epochs": epochs, "protocol": "joint", "joint_weight": 0.5})


def _recomputed_val(setup, best_state: dict, val) -> float:
    """The evaluator's primary metric of the saved encoder + classifier, by hand."""
    encoder = setup.make_encoder()
    encoder.load_state_dict(best_state["encoder"])
    classifier = torch.nn.Linear(encoder.feature_dim, setup.spec.n_classes)
    classifier.load_state_dict(best_state["classifier"])
    encoder.eval()
    with torch.no_grad():
        logits = classifier(encoder(val.images.float() / 255.0))
    evaluator = setup.spec.evaluator()
    return evaluator(logits, val.targets, val.bias)[evaluator.primary]


def test_joint_history_is_the_joint_classifiers_val_metric_at_the_best_epoch() -> None:
    setup = tiny_setup("cecl", _joint_params())
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    method, history = run_pretraining(setup, train, val, CPU, "fp", progress=False)
    assert isinstance(method, JointMethod)
    values = [r.monitor_val_accuracy for r in history]
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    assert method.best_epoch == values.index(max(values)) + 1  # the first among ties
    best = history[method.best_epoch - 1].monitor_val_accuracy
    assert _recomputed_val(setup, method.best_state, val) == pytest.approx(best, abs=1e-12)
    # The last epoch's value is the returned (final) method's joint classifier.
    final = {
        "encoder": method.encoder.state_dict(),
        "classifier": method.classifier.state_dict(),
    }
    assert _recomputed_val(setup, final, val) == pytest.approx(values[-1], abs=1e-12)


def test_joint_resume_equals_uninterrupted_run(tmp_path) -> None:
    setup = tiny_setup("supcon", _joint_params())
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    full, full_history = run_pretraining(setup, train, val, CPU, "fp", progress=False)

    ckpt = tmp_path / "last.pt"

    def stop_after_one(record) -> None:
        if record.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pretraining(setup, train, val, CPU, "fp", ckpt, on_epoch=stop_after_one, progress=False)
    saved = load_checkpoint(ckpt, "fp")
    assert len(saved["history"]) == 1 and saved["joint_best"]["epoch"] == 1

    resumed, history = run_pretraining(setup, train, val, CPU, "fp", ckpt, progress=False)
    assert [r.history_row() for r in history] == [r.history_row() for r in full_history]
    assert resumed.best_epoch == full.best_epoch
    for part in ("encoder", "classifier"):
        assert full.best_state[part].keys() == resumed.best_state[part].keys()
        for key, value in full.best_state[part].items():
            assert torch.equal(value, resumed.best_state[part][key]), (part, key)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_probe_scores_the_saved_joint_classifier(tmp_path) -> None:
    setup = tiny_setup("cecl", _joint_params(epochs=2))
    train, val, test = synthetic_split(128, 0), synthetic_split(64, 1), synthetic_split(48, 2)
    method, history = run_pretraining(setup, train, val, CPU, "fp", progress=False)
    path = tmp_path / "encoder.pt"
    torch.save(model_payload(method, history), path)

    payload = torch.load(path, weights_only=True)
    assert payload["classifier"]["epoch"] == method.best_epoch
    encoder = encoder_from_payload(payload).eval()
    for key, value in method.best_state["encoder"].items():
        assert torch.equal(encoder.state_dict()[key], value), key
    classifier = torch.nn.Linear(encoder.feature_dim, N_CLASSES)
    classifier.load_state_dict(payload["classifier"]["state_dict"])
    evaluator = setup.spec.evaluator()

    saved = load_saved_model(path, CPU)
    result = score_classifier(
        saved.encoder, *saved.head(), {"train": train, "val": val, "test": test}, evaluator
    )
    with torch.no_grad():
        by_hand = {
            name: evaluator(classifier(encoder(split.images.float() / 255.0)), split.targets, split.bias)
            for name, split in (("val", val), ("test", test))
        }
    for name, metrics in (("val", result.val), ("test", result.test)):
        assert metrics.keys() == by_hand[name].keys()
        for metric, value in by_hand[name].items():
            assert metrics[metric] == pytest.approx(value, abs=1e-12, nan_ok=True), (name, metric)
    assert result.selected == {"epoch": method.best_epoch}
    assert result.val[evaluator.primary] == pytest.approx(
        history[method.best_epoch - 1].monitor_val_accuracy, abs=1e-12
    )
    assert result.official is None
    assert len(result.curve) == 1 and result.curve[0]["epoch"] == method.best_epoch
    assert result.curve[0]["test_accuracy"] == result.test["accuracy"]


def test_cross_entropy_saves_its_own_head_under_linear_probe(tmp_path) -> None:
    setup = tiny_setup("ce", tiny_params(pretrain={"epochs": 2}))
    train, val = synthetic_split(64, 0), synthetic_split(32, 1)
    method, history = run_pretraining(setup, train, val, CPU, "fp", progress=False)
    assert not isinstance(method, JointMethod)
    path = tmp_path / "encoder.pt"
    torch.save(model_payload(method, history), path)
    classifier, epoch = load_saved_model(path, CPU).head()
    assert epoch == 2  # the last epoch
    assert torch.equal(classifier.weight, method.classifier.weight.detach())

    # Other methods under linear_probe save no head: asking for one is a one-line error.
    simclr = tiny_setup("simclr", tiny_params(pretrain={"epochs": 1}))
    other, other_history = run_pretraining(simclr, train, val, CPU, "fp", progress=False)
    plain = tmp_path / "plain.pt"
    torch.save(model_payload(other, other_history), plain)
    assert "classifier" not in torch.load(plain, weights_only=True)
    with pytest.raises(ValueError, match="holds no classifier head") as err:
        load_saved_model(plain, CPU).head()
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_saved_model(tmp_path / "missing.pt", CPU)


def test_config_protocol_and_joint_weight() -> None:
    default = tiny_params()
    assert (default.pretrain.protocol, default.pretrain.joint_weight) == ("linear_probe", 1.0)
    joint = tiny_params(pretrain={"protocol": "joint", "joint_weight": 0.0})
    assert (joint.pretrain.protocol, joint.pretrain.joint_weight) == ("joint", 0.0)
    # ... and per dataset entry, like every pretrain key.
    per_entry = tiny_params(datasets={"bm": {"overrides": {"pretrain": {"protocol": "joint"}}}})
    assert per_entry.recipe("bm").pretrain.protocol == "joint"
    assert per_entry.pretrain.protocol == "linear_probe"

    with pytest.raises(ConfigError, match=r"pretrain\.protocol: .*'linear_probe' or 'joint'") as err:
        tiny_params(pretrain={"protocol": "end_to_end"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"pretrain\.joint_weight: .*greater than or equal to 0") as err:
        tiny_params(pretrain={"joint_weight": -0.5})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"datasets\.bm\.overrides\.pretrain\.protocol") as err:
        tiny_params(datasets={"bm": {"overrides": {"pretrain": {"protocol": "nope"}}}})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("protocol", ["joint", "linear_probe"])
def test_probe_stage_names_the_protocol_and_scores_ce_by_its_own_head(
    tmp_path, monkeypatch, protocol
) -> None:
    import contextlib
    import csv
    import json

    import cecl.evaluate as probe_stage
    from cecl import runs
    from cecl.tracking import NoRun

    monkeypatch.chdir(tmp_path)
    params = tiny_params(pretrain={"epochs": 2, "protocol": protocol, "methods": ["ce", "cecl"]})
    splits = {"train": synthetic_split(64, 0), "val": synthetic_split(32, 1), "test": synthetic_split(32, 2)}
    monkeypatch.setattr(probe_stage, "load_splits", lambda spec, device: splits)
    monkeypatch.setattr(probe_stage, "stage_run", lambda *a, **k: contextlib.nullcontext(NoRun()))
    # The synthetic splits have no prepared store, so no manifest to read data_verified from.
    monkeypatch.setattr(probe_stage, "run_tags", lambda *a, **k: {})
    monkeypatch.setattr(type(params.spec("bm")), "data_verified", lambda self, data_dir: True)
    for method_name in ("ce", "cecl"):
        setup = tiny_setup(method_name, params)
        method, history = run_pretraining(setup, splits["train"], splits["val"], CPU, "fp", progress=False)
        key = setup.key
        key.model_dir.mkdir(parents=True)
        torch.save(model_payload(method, history), key.model_dir / runs.ENCODER_FILE)
        probe_stage.evaluate_encoder(params, key, key, key.dataset, key.probe_dir)
        metrics = json.loads((key.probe_dir / runs.METRICS_FILE).read_text())
        with (key.probe_dir / runs.CURVE_FILE).open() as handle:
            curve = list(csv.DictReader(handle))
        assert metrics["protocol"] == protocol and metrics["selected_on"] == "val"
        if protocol == "joint":
            assert metrics["selected"] == {"epoch": method.best_epoch}
            assert metrics["official_protocol"] is None
            assert len(curve) == 1 and int(float(curve[0]["epoch"])) == method.best_epoch
            assert metrics["val_accuracy"] == pytest.approx(
                history[method.best_epoch - 1].monitor_val_accuracy, abs=1e-12
            )
        else:
            assert metrics["official_protocol"]["test_accuracy"] is not None
            assert metrics["official_protocol"]["l2"] in params.probe.grid()
            assert metrics["selected"]["l2"] in params.probe.grid()
            assert len(curve) == len(params.probe.grid())
            assert [float(row["l2"]) for row in curve] == pytest.approx(params.probe.grid(), rel=1e-12)
        if method_name == "ce":
            saved = load_saved_model(key.model_dir / runs.ENCODER_FILE, CPU)
            own = score_classifier(saved.encoder, *saved.head(), splits, setup.spec.evaluator())
            expected = {"epoch": own.selected["epoch"], "val": own.val, "test": own.test}
            assert json.dumps(metrics["own_head"], sort_keys=True) == json.dumps(expected, sort_keys=True)
            assert own.selected["epoch"] == (method.best_epoch if protocol == "joint" else 2)
        else:
            assert "own_head" not in metrics
