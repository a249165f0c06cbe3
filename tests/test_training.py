"""The training loop: every method trains, resume equals an uninterrupted run, probes select on val."""

from __future__ import annotations

import itertools

import pytest
import torch

from cecl.config import METHODS
from cecl.methods import available, build_method
from cecl.train.checkpoint import load_checkpoint
from cecl.train.loop import run_pretraining
from cecl.train.probe import fit_linear_probe, predict
from cecl.train.schedule import learning_rate
from tests.helpers import synthetic_split, tiny_params

CPU = torch.device("cpu")


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["ce", "simclr", "supcon", "cecl"])
def test_every_method_trains_and_loss_falls(method: str) -> None:
    params = tiny_params(pretrain={"epochs": 4, "methods": [method]})
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    _, history = run_pretraining(params, method, train, val, CPU, fingerprint="x", progress=False)
    assert [r.epoch for r in history] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in history)
    assert history[-1].train_loss < history[0].train_loss
    assert all(0.0 <= r.online_probe_val_accuracy <= 1.0 for r in history)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("ce", "simclr", "supcon", "cecl")])
def test_baseline_methods_run_through_the_same_loop(method: str) -> None:
    small_queue = {"queue_size": 64}
    params = tiny_params(
        pretrain={"epochs": 2, "methods": [method]},
        method_options={"moco_v2": small_queue, "supmoco": small_queue, "nnclr": small_queue},
    )
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    _, history = run_pretraining(params, method, train, val, CPU, fingerprint="x", progress=False)
    assert len(history) == 2
    assert all(torch.isfinite(torch.tensor(r.train_loss)) for r in history)


def test_registry_lists_the_pipeline_methods() -> None:
    assert set(available()) == set(METHODS)  # every method params.yaml accepts is buildable
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_method(tiny_params(), "nope", 10)


def test_overrides_are_validated() -> None:
    with pytest.raises(ValueError, match=r"method_options\.cecl\.weight"):
        build_method(tiny_params(), "cecl", 10, overrides={"weight": 2.0})


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path) -> None:
    params = tiny_params(pretrain={"epochs": 3})
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    full_method, full_history = run_pretraining(params, "cecl", train, val, CPU, "fp", progress=False)

    ckpt = tmp_path / "last.pt"

    def stop_after_two(record) -> None:
        if record.epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_pretraining(params, "cecl", train, val, CPU, "fp", ckpt, on_epoch=stop_after_two, progress=False)
    assert len(load_checkpoint(ckpt, "fp")["history"]) == 2

    seen: list[int] = []
    method, history = run_pretraining(
        params, "cecl", train, val, CPU, "fp", ckpt, on_epoch=lambda r: seen.append(r.epoch), progress=False
    )
    assert seen == [1, 2, 3]  # restored epochs are reported again, so a resumed run logs the whole curve
    assert [(r.train_loss, r.online_probe_val_accuracy) for r in history] == [
        (r.train_loss, r.online_probe_val_accuracy) for r in full_history
    ]
    for key, value in full_method.state_dict().items():
        assert torch.equal(value, method.state_dict()[key]), key


def test_stale_checkpoint_is_ignored(tmp_path) -> None:
    params = tiny_params(pretrain={"epochs": 1})
    train, val = synthetic_split(64, 0), synthetic_split(32, 1)
    ckpt = tmp_path / "last.pt"
    run_pretraining(params, "simclr", train, val, CPU, "old", ckpt, progress=False)
    assert load_checkpoint(ckpt, "new") is None
    _, history = run_pretraining(params, "simclr", train, val, CPU, "new", ckpt, progress=False)
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
    epochs_seen: list[int] = []
    probe = fit_linear_probe(
        features,
        labels,
        3,
        epochs=20,
        lr=0.05,
        batch_size=64,
        seed=0,
        after_epoch=lambda _p, e: epochs_seen.append(e),
    )
    assert epochs_seen == list(range(1, 21))
    assert float((predict(probe, features) == labels).float().mean()) > 0.95
