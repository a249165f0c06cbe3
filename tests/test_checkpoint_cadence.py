"""Checkpoints every N epochs or minutes, always the last (``pretrain.checkpoint``, cecl/train/checkpoint.py
``checkpoint_due``): which epochs are saved, that a resume from the last saved one equals an uninterrupted
run, that the final epoch is always saved, and that the cadence leaves the run's fingerprint alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cecl.config import CheckpointParams
from cecl.train.checkpoint import checkpoint_due, load_checkpoint
from cecl.train.loop import run_pretraining
from tests.helpers import synthetic_split, tiny_params, tiny_setup

CPU = torch.device("cpu")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize(("every", "total"), [(1, 4), (2, 5), (3, 10), (7, 7), (10, 3)])
def test_saved_epochs_are_the_multiples_and_the_last(every: int, total: int) -> None:
    saved = [e for e in range(1, total + 1) if checkpoint_due(e, total, every, None, since_save=0.0)]
    assert saved == sorted({*range(every, total + 1, every), total})


def test_minutes_save_once_the_time_has_passed() -> None:
    assert not checkpoint_due(3, 10, 100, 5.0, since_save=299.0)
    assert checkpoint_due(3, 10, 100, 5.0, since_save=300.0)
    assert not checkpoint_due(3, 10, 100, None, since_save=10**6)  # null: epochs only


def test_the_default_is_every_epoch_and_bad_values_are_refused() -> None:
    assert CheckpointParams().model_dump() == {"every_epochs": 1, "every_minutes": None}
    for bad in ({"every_epochs": 0}, {"every_minutes": 0}, {"every_minutes": -1.0}):
        with pytest.raises(ValueError):
            CheckpointParams(**bad)


def _train(setup, ckpt: Path | None, stop_after: int | None = None):  # type: ignore[no-untyped-def]
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)

    def stop(record) -> None:  # type: ignore[no-untyped-def]
        if record.epoch == stop_after:
            raise Interrupt

    return run_pretraining(setup, train, val, CPU, "fp", ckpt, on_epoch=stop, progress=False)


def _saved(ckpt: Path) -> int:
    state = load_checkpoint(ckpt, "fp")
    return 0 if state is None else len(state["history"])


def test_resume_from_the_last_saved_epoch_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    setup = tiny_setup("cecl", tiny_params(pretrain={"epochs": 5, "checkpoint": {"every_epochs": 2}}))
    full_method, full_history = _train(setup, None)
    ckpt = tmp_path / "last.pt"
    with pytest.raises(Interrupt):
        _train(setup, ckpt, stop_after=3)  # killed after epoch 3: the checkpoint holds epoch 2
    assert _saved(ckpt) == 2
    method, history = _train(setup, ckpt)  # resumes after epoch 2, redoes 3
    assert [r.history_row() for r in history] == [r.history_row() for r in full_history]
    for key, value in full_method.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key
    assert _saved(ckpt) == 5  # the final epoch is saved although 5 is not a multiple of 2


def test_minutes_and_epochs_both_trigger_a_save(tmp_path: Path) -> None:
    by_time = tiny_setup(
        "ce", tiny_params(pretrain={"epochs": 3, "checkpoint": {"every_epochs": 50, "every_minutes": 1e-9}})
    )
    with pytest.raises(Interrupt):
        _train(by_time, tmp_path / "a.pt", stop_after=1)
    assert _saved(tmp_path / "a.pt") == 1  # the minutes had passed: saved after epoch 1
    by_epochs = tiny_setup(
        "ce", tiny_params(pretrain={"epochs": 3, "checkpoint": {"every_epochs": 50, "every_minutes": 60}})
    )
    with pytest.raises(Interrupt):
        _train(by_epochs, tmp_path / "b.pt", stop_after=2)
    assert _saved(tmp_path / "b.pt") == 0  # neither an hour nor 50 epochs: nothing saved yet


def test_the_cadence_is_not_part_of_the_fingerprint(tmp_path: Path) -> None:
    """A run resumes after its cadence changed (the cadence never changes a result); the epochs do not."""
    import json

    from cecl.datasets.base import MANIFEST, MANIFEST_VERSION

    base = tiny_setup("cecl")
    manifest = {"version": MANIFEST_VERSION, **base.spec.contract(), "splits": {"train": {"sha256": "ab"}}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    other = tiny_setup("cecl", tiny_params(pretrain={"checkpoint": {"every_epochs": 9, "every_minutes": 2}}))
    assert other.recipe.pretrain.checkpoint.every_epochs == 9
    assert other.fingerprint(tmp_path) == base.fingerprint(tmp_path)
    longer = tiny_setup("cecl", tiny_params(pretrain={"epochs": 9}))
    assert longer.fingerprint(tmp_path) != base.fingerprint(tmp_path)
