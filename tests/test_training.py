"""The training loop: every method trains, resume equals an uninterrupted run, probes select on val."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from cecl.config import ConfigError
from cecl.eval.linear_probe import fit_logistic, logits_of
from cecl.methods import available, build_method, options_schemas
from cecl.report.collect import HISTORY_COLUMNS
from cecl.train.checkpoint import load_checkpoint
from cecl.train.loop import EpochRecord, run_pretraining
from cecl.train.schedule import learning_rate
from tests.helpers import synthetic_split, tiny_params, tiny_setup

CPU = torch.device("cpu")
MAIN = ("ce", "simclr", "supcon", "cecl")  # the paper's main comparison
SMALL_QUEUE = {"queue_size": 64}


class Interrupt(Exception):
    pass


def test_the_main_comparison_is_registered() -> None:
    assert set(MAIN) <= set(available())


@pytest.mark.parametrize("method", MAIN)
def test_every_method_trains_and_loss_falls(method: str) -> None:
    setup = tiny_setup(method, tiny_params(pretrain={"epochs": 4}))
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    _, history = run_pretraining(setup, train, val, CPU, fingerprint="x", progress=False)
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in history)
    assert history[-1].train_loss < history[0].train_loss
    assert all(0.0 <= r.monitor_val_accuracy <= 1.0 for r in history)


@pytest.mark.parametrize("method", [m for m in available() if m not in MAIN])
def test_baseline_methods_run_through_the_same_loop(method: str) -> None:
    params = tiny_params(
        pretrain={"epochs": 2},
        method_options={"moco_v2": SMALL_QUEUE, "supmoco": SMALL_QUEUE, "nnclr": SMALL_QUEUE},
    )
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    _, history = run_pretraining(tiny_setup(method, params), train, val, CPU, fingerprint="x", progress=False)
    assert len(history) == 2
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in history)
    assert all(0.0 <= r.monitor_val_accuracy <= 1.0 for r in history)


def test_registry_is_exactly_the_set_of_methods_the_config_accepts() -> None:
    assert set(available()) == set(options_schemas())
    # Every registered method is accepted by the config, in pretrain.methods and in method_options
    # (independently of what params.yaml lists: users edit it).
    every = tiny_params(pretrain={"methods": list(available())}, method_options={m: {} for m in available()})
    assert every.pretrain.methods == list(available())
    assert set(every.method_options) == set(available())
    for name, options in every.method_options.items():
        assert isinstance(options, options_schemas()[name]), name
    # ... and nothing else is.
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        tiny_params(pretrain={"methods": ["nope"]})
    with pytest.raises(ConfigError, match=r"method_options\.nope: unknown method"):
        tiny_params(method_options={"nope": {}})
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method("nope", tiny_setup("cecl").method_context())


def test_overrides_are_validated() -> None:
    setup = tiny_setup("cecl")
    with pytest.raises(ValueError, match=r"method_options\.cecl\.weight"):
        build_method("cecl", setup.method_context(), setup.options, overrides={"weight": 2.0})
    with pytest.raises(ValueError, match=r"method_options\.cecl\.weight"):
        tiny_setup("cecl", overrides={"weight": 2.0})
    assert tiny_setup("cecl", overrides={"weight": 0.25}).options.weight == 0.25


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path) -> None:
    setup = tiny_setup("cecl", tiny_params(pretrain={"epochs": 3}))
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    full_method, full_history = run_pretraining(setup, train, val, CPU, "fp", progress=False)

    ckpt = tmp_path / "last.pt"

    def stop_after_two(record) -> None:
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pretraining(setup, train, val, CPU, "fp", ckpt, on_epoch=stop_after_two, progress=False)
    assert len(load_checkpoint(ckpt, "fp")["history"]) == 2

    seen: list[int] = []
    method, history = run_pretraining(
        setup, train, val, CPU, "fp", ckpt, on_epoch=lambda r: seen.append(r.epoch), progress=False
    )
    assert seen == [1, 2, 3]  # restored epochs are reported again, so a resumed run logs the whole curve
    # history.csv rows: identical (epoch, loss, probe accuracy, lr), whatever the wall clock said.
    assert [r.history_row() for r in history] == [r.history_row() for r in full_history]
    for key, value in full_method.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key


def test_history_rows_have_no_wall_clock_column() -> None:
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    assert "seconds" in fields  # still logged to MLflow (epoch_seconds)
    slow = EpochRecord(epoch=2, train_loss=0.5, monitor_val_accuracy=0.25, lr=1e-3, seconds=12.5)
    fast = dataclasses.replace(slow, seconds=0.1, monitor_seconds=0.05)
    row = slow.history_row()
    assert row == {"epoch": 2, "train_loss": 0.5, "monitor_val_accuracy": 0.25, "lr": 1e-3}
    # the CSV's column order
    assert list(row) == [f for f in fields if f not in ("seconds", "monitor_seconds")]
    assert fast.history_row() == row  # equal runs give equal bytes
    assert set(HISTORY_COLUMNS) <= set(row)  # what the report reads back


def test_stale_checkpoint_is_ignored(tmp_path) -> None:
    setup = tiny_setup("simclr", tiny_params(pretrain={"epochs": 1}))
    train, val = synthetic_split(64, 0), synthetic_split(32, 1)
    ckpt = tmp_path / "last.pt"
    run_pretraining(setup, train, val, CPU, "old", ckpt, progress=False)
    assert load_checkpoint(ckpt, "new") is None
    _, history = run_pretraining(setup, train, val, CPU, "new", ckpt, progress=False)
    assert len(history) == 1


def test_warmup_then_cosine_schedule() -> None:
    opt = tiny_params(
        pretrain={"optimizer": {"name": "sgd", "lr": 0.5, "warmup_epochs": 2}}
    ).pretrain.optimizer
    lrs = [learning_rate(opt, e, s, 4, 10) for e in range(10) for s in range(4)]
    assert lrs[0] == pytest.approx(0.01)
    assert all(a < b for a, b in itertools.pairwise(lrs[:8]))  # warm-up rises
    assert lrs[8] == pytest.approx(
        0.5 * 1e-3 + (0.5 - 0.5e-3) * (1 + torch.cos(torch.tensor(0.2 * torch.pi))) / 2
    )
    assert lrs[-1] < lrs[8]


def test_linear_probe_learns_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    features = torch.randn(300, 5, generator=g) + 4.0 * torch.nn.functional.one_hot(labels, 5).float()
    fit = fit_logistic(features, labels, 3, l2=1e-3, max_iter=500, tolerance=1e-6)
    assert fit.converged and 0 < fit.iterations <= 500 and fit.l2 == 1e-3
    assert float((logits_of(fit.probe, features).argmax(dim=1) == labels).float().mean()) > 0.95


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tensor"])
def test_unreadable_checkpoint_is_set_aside_and_training_restarts(tmp_path, capsys, damage) -> None:
    """A truncated, corrupt or foreign checkpoint: one warning line, moved aside, None (start over)."""
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"fingerprint": "fp", "history": []}, ckpt)
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:40])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        torch.save(torch.zeros(2), ckpt)
    assert load_checkpoint(ckpt, "fp") is None
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unreadable" in err and "from scratch" in err
    assert "weights_only=False" not in err
    assert not ckpt.exists() and (tmp_path / "ckpt.pt.corrupt").exists()
    assert load_checkpoint(ckpt, "fp") is None  # the rerun: nothing there, no warning
    assert capsys.readouterr().err == ""
