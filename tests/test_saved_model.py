"""encoder.pt reading: one read gives the encoder and its head; bad files are one-line errors.

Never a hint to use ``weights_only=False`` (which would execute whatever a foreign pickle holds).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from cecl.config import ComputeParams
from cecl.models import build_backbone
from cecl.pipeline import load_saved_model

CPU = torch.device("cpu")


def _payload(with_head: bool) -> dict:
    encoder = build_backbone("small_cnn", 3, [0.5] * 3, [0.5] * 3, {"width": 4})
    payload = encoder.payload()
    if with_head:
        head = torch.nn.Linear(encoder.feature_dim, 10)
        payload["classifier"] = {"state_dict": head.state_dict(), "epoch": 3}
    return payload


def _one_line_error(path: Path) -> str:
    with pytest.raises(ValueError) as err:
        load_saved_model(path, CPU)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "weights_only=False" not in message
    return message


def test_reads_encoder_and_head_once(tmp_path) -> None:
    path = tmp_path / "encoder.pt"
    payload = _payload(with_head=True)
    torch.save(payload, path)
    saved = load_saved_model(path, CPU, ComputeParams(channels_last=False))
    for key, value in payload["state_dict"].items():
        assert torch.equal(saved.encoder.state_dict()[key], value), key
    head, epoch = saved.head()
    assert epoch == 3 and torch.equal(head.weight, payload["classifier"]["state_dict"]["weight"])
    assert not saved.encoder.channels_last
    assert load_saved_model(path, CPU, ComputeParams(channels_last=True)).encoder.channels_last


def test_no_head_is_a_one_line_error_only_when_asked_for(tmp_path) -> None:
    path = tmp_path / "encoder.pt"
    torch.save(_payload(with_head=False), path)
    saved = load_saved_model(path, CPU)
    assert saved.classifier is None
    with pytest.raises(ValueError, match="holds no classifier head") as err:
        saved.head()
    assert "\n" not in str(err.value)


def test_truncated_file(tmp_path) -> None:
    path = tmp_path / "encoder.pt"
    torch.save(_payload(with_head=True), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "not a readable encoder file" in _one_line_error(path)


def test_random_bytes(tmp_path) -> None:
    path = tmp_path / "encoder.pt"
    path.write_bytes(bytes(range(256)) * 40)
    assert "not a readable encoder file" in _one_line_error(path)


class _Foreign:
    """A class weights_only loading must refuse (unpickling it could run code)."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_pickle_is_refused_without_running(tmp_path, capsys) -> None:
    path = tmp_path / "encoder.pt"
    torch.save({"spec": _Foreign()}, path)
    assert "not a readable encoder file" in _one_line_error(path)
    assert "must never run" not in capsys.readouterr().out
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))  # not even a torch zip file
    _one_line_error(plain)


def test_a_tensor_file_or_a_wrong_mapping(tmp_path) -> None:
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "not an encoder file" in _one_line_error(tensor)
    mapping = tmp_path / "mapping.pt"
    torch.save({"weights": torch.zeros(3)}, mapping)
    assert "lacks spec" in _one_line_error(mapping)
    wrong = _payload(with_head=False)
    wrong["state_dict"] = {k: v[:1] if v.ndim else v for k, v in wrong["state_dict"].items()}
    shapes = tmp_path / "shapes.pt"
    torch.save(wrong, shapes)
    assert "wrong shapes" in _one_line_error(shapes)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run the matching pretrain stage first"):
        load_saved_model(tmp_path / "encoder.pt", CPU)
