"""A checkpoint resumes only the code, params, data and bytes that made it (cecl/train/checkpoint.py).

Each test reproduces a fault from issue 35 on a tiny run: a code change after a kill, a flipped byte, a
non-finite weight, a full disk, a killed writer's temporary. The expected outcome is always the same:
one line on stderr, the file set aside, and a result equal to an uninterrupted run of the current code.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from cecl.train import checkpoint
from cecl.train.checkpoint import code_digest, load_checkpoint, save_checkpoint, stage_code_deps
from cecl.train.loop import run_pretraining
from tests.helpers import synthetic_split, tiny_params, tiny_setup

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class Interrupt(Exception):
    """Stands in for a kill after an epoch's checkpoint was written."""


def _copy_code(dest: Path) -> Path:
    """dvc.yaml and the pretrain stage's code deps, copied: a checkout whose code a test may edit."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "dvc.yaml", dest / "dvc.yaml")
    for dep in stage_code_deps("pretrain", REPO):
        source, target = REPO / dep, dest / dep
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return dest


def _run(ckpt: Path, fp: str, stop_after: int | None = None):
    setup = tiny_setup("simclr", tiny_params(pretrain={"epochs": 2}))
    train, val = synthetic_split(64, 0), synthetic_split(32, 1)

    def stop(record) -> None:
        if record.epoch == stop_after:
            raise Interrupt

    return run_pretraining(setup, train, val, CPU, fp, ckpt, on_epoch=stop, progress=False)


def _interrupted_checkpoint(tmp_path: Path, fp: str) -> Path:
    ckpt = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(Interrupt):
        _run(ckpt, fp, stop_after=1)
    assert len(load_checkpoint(ckpt, fp)["history"]) == 1
    return ckpt


def test_code_deps_are_the_pretrain_stages_code_paths_in_dvc_yaml() -> None:
    deps = stage_code_deps("pretrain", REPO)
    assert "cecl/train" in deps and "stages/pretrain.py" in deps
    assert not any(d.startswith(("data/", "models/")) or "${" in d for d in deps)


def test_code_digest_follows_every_code_dep_and_ignores_bytecode(tmp_path: Path) -> None:
    root = _copy_code(tmp_path)
    before = code_digest("pretrain", root)
    assert before == code_digest("pretrain", REPO)  # same bytes, same digest, wherever the checkout is
    (root / "cecl/train/__pycache__").mkdir(exist_ok=True)
    (root / "cecl/train/__pycache__/loop.cpython-311.pyc").write_bytes(b"bytecode")
    assert code_digest("pretrain", root) == before
    loop = root / "cecl/train/loop.py"
    loop.write_text(loop.read_text() + "\n# a bug fix\n")
    assert code_digest("pretrain", root) != before
    (root / "cecl/train/loop.py").unlink()
    (root / "cecl/train/loop_moved.py").write_bytes((REPO / "cecl/train/loop.py").read_bytes())
    assert code_digest("pretrain", root) not in (before, code_digest("pretrain", REPO))


def test_stale_checkpoint_is_set_aside_after_a_code_change(tmp_path: Path, capsys) -> None:
    """Kill after epoch 1, fix the code, rerun: the old code's weights are set aside, not resumed."""
    root = _copy_code(tmp_path / "checkout")
    old = checkpoint.fingerprint({"run": "x", "code": code_digest("pretrain", root)})
    ckpt = _interrupted_checkpoint(tmp_path, old)
    loop = root / "cecl/train/loop.py"
    loop.write_text(loop.read_text() + "\n# the fix\n")
    new = checkpoint.fingerprint({"run": "x", "code": code_digest("pretrain", root)})
    assert new != old
    capsys.readouterr()
    method, history = _run(ckpt, new)
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert len(lines) == 1 and "fingerprint differs" in lines[0] and "from scratch" in lines[0]
    assert "resumed" not in err.out
    assert ckpt.with_name("last.pt.stale").exists()
    fresh, fresh_history = _run(tmp_path / "fresh" / "last.pt", new)
    assert [r.history_row() for r in history] == [r.history_row() for r in fresh_history]
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key


def test_pipeline_fingerprint_covers_the_code(tmp_path: Path, monkeypatch) -> None:
    setup = tiny_setup("simclr")
    manifest = {"splits": {"train": {"sha256": "0" * 64}}}
    monkeypatch.setattr(type(setup.spec), "read_manifest", lambda self, folder: manifest)
    root = _copy_code(tmp_path)
    monkeypatch.chdir(root)  # DVC runs a stage from the repository root
    before = setup.fingerprint(Path("x"))
    (root / "cecl/losses/extra.py").write_text("# a new module of the loss package\n")
    assert setup.fingerprint(Path("x")) != before


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_weights_is_caught(tmp_path: Path, capsys) -> None:
    ckpt = _interrupted_checkpoint(tmp_path, "fp")
    raw = ckpt.read_bytes()
    # a byte inside the stored state (the payload), far from the zip's headers: torch.load alone accepts it
    payload = torch.load(ckpt, weights_only=True)["payload"].numpy().tobytes()
    at = raw.index(payload[len(payload) // 2 : len(payload) // 2 + 64]) + 32
    _flip(ckpt, at)
    torch.load(ckpt, weights_only=True)  # loads without complaint: no CRC check in torch
    capsys.readouterr()
    assert load_checkpoint(ckpt, "fp") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "content digest" in lines[0]
    assert not ckpt.exists() and ckpt.with_name("last.pt.corrupt").exists()


def test_a_non_finite_weight_is_set_aside_and_the_rerun_trains(tmp_path: Path, capsys) -> None:
    ckpt = _interrupted_checkpoint(tmp_path, "fp")
    state = load_checkpoint(ckpt, "fp")
    name = next(k for k, v in state["method"].items() if v.is_floating_point())
    weight = state["method"][name]
    weight[(0,) * weight.ndim] = float("nan")
    save_checkpoint(ckpt, state)
    capsys.readouterr()
    _, history = _run(ckpt, "fp")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0] and name in lines[0]
    assert [r.epoch for r in history] == [1, 2] and ckpt.with_name("last.pt.corrupt").exists()


def test_content_digest_is_the_sha256_of_the_stored_state(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    state = {"fingerprint": "fp", "history": [{"epoch": 1}], "method": {"w": torch.arange(4.0)}}
    save_checkpoint(path, state)
    stored = torch.load(path, weights_only=True)
    raw = stored["payload"].numpy().tobytes()
    assert stored["sha256"] == hashlib.sha256(raw).hexdigest()
    assert torch.equal(load_checkpoint(path, "fp")["method"]["w"], torch.arange(4.0))


def test_a_killed_writers_temporary_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    partial = tmp_path / "c.pt.tmp4242"
    partial.write_bytes(b"half a checkpoint")
    assert load_checkpoint(path, "fp") is None and not partial.exists()
    partial.write_bytes(b"half a checkpoint")
    save_checkpoint(path, {"fingerprint": "fp", "history": []})
    assert not partial.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_full_disk_is_one_line_naming_the_path_and_free_space(tmp_path: Path, monkeypatch) -> None:
    """torch.save on a full file system (simulated: the real write fails with ENOSPC)."""
    import errno
    import os

    real_save = torch.save

    def full(obj, target, *args, **kwargs):
        if isinstance(target, str | os.PathLike):
            Path(target).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    path = tmp_path / "c.pt"
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"fingerprint": "fp", "history": [], "w": torch.zeros(1000)})
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "no space left" in message and "MiB free" in message and "MiB needed" in message
    assert list(tmp_path.iterdir()) == []  # the partial file is gone
