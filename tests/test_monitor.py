"""The per-epoch monitor (cecl/eval/monitor.py) and the feature extraction it shares with the probe
(cecl/eval/features.py).

- ``knn_scores`` against a slow per-query loop and against lightly's ``knn_predict`` (the kNN monitor of
  InstDisc / MoCo's notebook that the module cites), loaded from its file (lightly's package __init__
  needs pytorch_lightning, which is not installed);
- ``Monitor.due``'s schedule, the fixed seeded training subset, ``auto``'s resolution and what each kind
  computes;
- ``features_of(sharded=True)`` in two gloo processes equals one process; bf16 autocast on the CPU;
- the loop records NaN on the epochs the monitor skips.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cecl import distributed
from cecl.config import MonitorParams
from cecl.datasets import TensorSplit
from cecl.eval import Classification, GroupBias
from cecl.eval import monitor as monitor_module
from cecl.eval.features import extract_features, features_of
from cecl.eval.linear_probe import linear_probe
from cecl.eval.monitor import MONITOR_PROBE, Monitor, knn_scores, resolved_kind
from cecl.models import build_backbone
from tests.helpers import (
    bn_free_encoder,
    join_process_group,
    spawn_ranks,
    synthetic_split,
    tiny_params,
    tiny_setup,
)

CPU = torch.device("cpu")
WORLD = 2
LIGHTLY_KNN = (
    Path(__file__).resolve().parents[1]
    / ".venv/lib/python3.11/site-packages/lightly/utils/benchmarking/knn.py"
)


def _lightly_knn() -> ModuleType:
    """lightly/utils/benchmarking/knn.py on its own (it imports only torch)."""
    if not LIGHTLY_KNN.is_file():
        pytest.skip(f"lightly is not installed in the venv ({LIGHTLY_KNN})")
    spec = importlib.util.spec_from_file_location("lightly_knn", LIGHTLY_KNN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slow_knn(bank, bank_labels, queries, n_classes: int, k: int, temperature: float) -> torch.Tensor:
    """One query at a time, in float64: cosine to every bank row, the k largest, exp(cos / T) summed per
    label of those rows."""
    out = torch.zeros(len(queries), n_classes, dtype=torch.float64)
    bank = bank.double()
    for q, query in enumerate(queries.double()):
        cos = [float(query @ row / (query.norm() * row.norm())) for row in bank]
        nearest = sorted(range(len(bank)), key=lambda i: -cos[i])[: min(k, len(bank))]
        for i in nearest:
            out[q, int(bank_labels[i])] += math.exp(cos[i] / temperature)
    return out


def _knn_case(n_bank: int, n_queries: int, n_classes: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Clustered features of very different norms (the cosine must not care), labels of the clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, 16, generator=g)
    bank_labels = torch.randint(0, n_classes, (n_bank,), generator=g)
    query_labels = torch.randint(0, n_classes, (n_queries,), generator=g)
    bank = (centres[bank_labels] + 0.8 * torch.randn(n_bank, 16, generator=g)) * (
        0.1 + 10 * torch.rand(n_bank, 1, generator=g)
    )
    queries = (centres[query_labels] + 0.8 * torch.randn(n_queries, 16, generator=g)) * (
        0.1 + 10 * torch.rand(n_queries, 1, generator=g)
    )
    return bank, bank_labels, queries, query_labels


# --------------------------------------------------------------------------- kNN scores


@pytest.mark.parametrize(("k", "temperature"), [(20, 0.1), (7, 0.5), (500, 0.07)])
def test_knn_scores_match_a_per_query_loop(k: int, temperature: float) -> None:
    bank, bank_labels, queries, _ = _knn_case(150, 40, 4)
    scores = knn_scores(bank, bank_labels, queries, 4, k, temperature)
    assert scores.shape == (40, 4) and scores.dtype == torch.float32
    reference = _slow_knn(bank, bank_labels, queries, 4, k, temperature)
    torch.testing.assert_close(scores.double(), reference, rtol=1e-4, atol=0)
    # every query's k nearest (all 150 when k > 150) vote: the weights of a vote lie in [e^(-1/T), e^(1/T)]
    votes, total = min(k, 150), scores.double().sum(1)
    assert float(total.min()) >= votes * math.exp(-1 / temperature) * (1 - 1e-6)
    assert float(total.max()) <= votes * math.exp(1 / temperature) * (1 + 1e-6)


def test_knn_scores_agree_with_lightly_knn_predict() -> None:
    """lightly's knn_predict takes normalised queries, the normalised bank transposed [D, N], and returns
    the classes sorted by score. 2500 queries: knn_scores goes in chunks of 1024."""
    lightly = _lightly_knn()
    bank, bank_labels, queries, query_labels = _knn_case(600, 2500, 10, seed=3)
    scores = knn_scores(bank, bank_labels, queries, 10, k=200, temperature=0.1)
    ranked = lightly.knn_predict(
        F.normalize(queries, dim=1), F.normalize(bank, dim=1).T, bank_labels, 10, knn_k=200, knn_t=0.1
    )
    assert torch.equal(scores.argmax(dim=1), ranked[:, 0])  # the same top-1 prediction
    # lightly's whole ranking orders knn_scores' scores (ties among classes aside: compared by value)
    ordered = scores.gather(1, ranked)
    assert bool((ordered[:, :-1] >= ordered[:, 1:] - 1e-6 * ordered[:, :1]).all())
    voted = (scores > 0).sum(dim=1, keepdim=True)  # lightly ranks the classes that got votes first
    assert torch.equal(ordered > 0, torch.arange(10).expand(len(scores), -1) < voted)
    # and it classifies these clusters (a sanity check that the case is not degenerate)
    assert float((ranked[:, 0] == query_labels).float().mean()) > 0.8
    # with a kNN as wide as the bank and a huge temperature, every vote weighs ~1: the scores are counts
    counts = knn_scores(bank, bank_labels, queries[:5], 10, k=600, temperature=1e6)
    torch.testing.assert_close(
        counts, torch.bincount(bank_labels, minlength=10).float().expand(5, -1), rtol=1e-5, atol=0
    )


# --------------------------------------------------------------------------- the Monitor


def _indexed(split: TensorSplit) -> TensorSplit:
    """``split`` whose bias carries each row's index (to see which rows a subset kept)."""
    return TensorSplit(split.images, split.targets, torch.arange(len(split)))


def test_due_evaluates_every_nth_epoch_and_the_last() -> None:
    train, val = synthetic_split(32, 0), synthetic_split(16, 1)

    def schedule(every: int, total: int) -> list[int]:
        monitor = Monitor(MonitorParams(every=every), train, val, Classification(10), seed=0)
        return [e for e in range(1, total + 1) if monitor.due(e, total)]

    assert schedule(1, 7) == [1, 2, 3, 4, 5, 6, 7]
    assert schedule(3, 7) == [3, 6, 7]
    assert schedule(3, 6) == [3, 6]
    assert schedule(10, 7) == [7]  # at least the last


def test_train_size_is_a_fixed_seeded_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    train, val = _indexed(synthetic_split(128, 0)), synthetic_split(32, 1)
    params = MonitorParams(kind="knn", train_size=40, k=10)

    def kept(seed: int) -> list[int]:
        return Monitor(params, train, val, Classification(10), seed=seed).train.bias.tolist()

    first = kept(5)
    assert len(first) == 40 and len(set(first)) == 40 and first == sorted(first)  # rows in split order
    assert first[0] >= 0 and first[-1] < 128
    assert kept(5) == first  # the same seed: the same subset
    assert kept(6) != first  # another seed: another one
    monitor = Monitor(params, train, val, Classification(10), seed=5)
    assert torch.equal(monitor.train.images, train.images[first])
    assert torch.equal(monitor.train.targets, train.targets[first])
    # the kNN bank is the subset's features
    banks: list[torch.Tensor] = []
    real = monitor_module.knn_scores
    monkeypatch.setattr(monitor_module, "knn_scores", lambda bank, *a: banks.append(bank) or real(bank, *a))
    torch.manual_seed(0)
    encoder = bn_free_encoder(3, width=6)
    monitor(encoder)
    monitor(encoder)  # the next epoch: the same subset again
    assert [len(b) for b in banks] == [40, 40]
    torch.testing.assert_close(banks[0], extract_features(encoder, train.images[first]), rtol=0, atol=0)
    # no subset when train_size is None or not smaller than the split
    for size in (None, 128, 500):
        whole = Monitor(MonitorParams(train_size=size), train, val, Classification(10), seed=5)
        assert whole.train.bias.tolist() == list(range(128))


def test_auto_is_the_probe_under_group_bias_and_knn_otherwise() -> None:
    assert resolved_kind(MonitorParams(), "group_bias") == "probe"
    assert resolved_kind(MonitorParams(), "classification") == "knn"
    assert MonitorParams().kind == "auto"
    for kind in ("knn", "probe"):
        for evaluator in ("group_bias", "classification"):
            assert resolved_kind(MonitorParams(kind=kind), evaluator) == kind
    train, val = synthetic_split(32, 0), synthetic_split(16, 1)
    aligned = np.eye(10, dtype=bool)
    assert Monitor(MonitorParams(), train, val, GroupBias(10, aligned), seed=0).kind == "probe"
    assert Monitor(MonitorParams(), train, val, Classification(10), seed=0).kind == "knn"
    assert MONITOR_PROBE.grid() == pytest.approx([1e-4], rel=1e-12)


@pytest.mark.parametrize("kind", ["knn", "probe"])
def test_the_monitor_value_is_its_kinds_metric_on_validation(kind: str) -> None:
    train, val = synthetic_split(96, 0), synthetic_split(48, 1)
    evaluator = GroupBias(10, np.eye(10, dtype=bool))
    torch.manual_seed(0)
    encoder = bn_free_encoder(3, width=6).train()
    params = MonitorParams(kind=kind, k=15, temperature=0.2)
    value = Monitor(params, train, val, evaluator, seed=0)(encoder)
    assert encoder.training  # extraction restored the mode
    bank, queries = extract_features(encoder, train.images), extract_features(encoder, val.images)
    if kind == "knn":
        scores = knn_scores(bank, train.targets, queries, 10, 15, 0.2)
        expected = evaluator(scores, val.targets, val.bias)[evaluator.primary]
    else:
        expected = linear_probe(
            {"train": bank, "val": queries},
            {"train": train.targets, "val": val.targets},
            {"train": None, "val": val.bias},
            evaluator,
            MONITOR_PROBE,
            scored=("val",),
        ).val[evaluator.primary]
    assert value == expected and 0.0 <= value <= 1.0


def test_a_classifier_is_scored_instead_of_fitted() -> None:
    """Protocol joint: the jointly trained head's metric on validation, in eval mode, restored after."""
    train, val = synthetic_split(32, 0), synthetic_split(40, 1)
    torch.manual_seed(0)
    encoder = bn_free_encoder(3, width=6)
    head = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Dropout(0.9)).train()
    value = Monitor(MonitorParams(kind="knn"), train, val, Classification(10), seed=0)(encoder, head)
    assert head.training
    with torch.no_grad():
        logits = head[0](encoder(val.images.float() / 255.0))  # no dropout: eval mode
    assert value == pytest.approx(Classification(10)(logits, val.targets)["accuracy"], abs=1e-12)


# --------------------------------------------------------------------------- sharded extraction


def _sharded_worker(process: int, out_dir: str, port: int) -> None:
    join_process_group(process, WORLD, port)
    try:
        torch.manual_seed(0)
        encoder = bn_free_encoder(3, width=5)
        results = {
            f"features_{n}": features_of(encoder, synthetic_split(n, 0), batch_size=4, sharded=True)
            for n in (37, 2)  # 19 + 18 rows; one row each
        }
        monitor = Monitor(
            MonitorParams(kind="knn", k=9),
            synthetic_split(64, 1),
            synthetic_split(37, 2),
            Classification(10),
            0,
        )
        results["monitor"] = monitor(encoder)
        results["unsharded"] = features_of(encoder, synthetic_split(37, 0), sharded=False)
    finally:
        distributed.cleanup()
    torch.save(results, Path(out_dir) / f"rank{process}.pt")


@pytest.mark.slow
def test_sharded_extraction_in_two_processes_equals_one_process(tmp_path: Path) -> None:
    ranks = spawn_ranks(_sharded_worker, tmp_path, WORLD)
    torch.manual_seed(0)
    encoder = bn_free_encoder(3, width=5)
    for n in (37, 2):
        single = features_of(encoder, synthetic_split(n, 0))
        assert features_of(encoder, synthetic_split(n, 0), sharded=True).equal(single)  # not distributed
        for r, got in enumerate(ranks):
            assert got[f"features_{n}"].shape == single.shape, (n, r)
            torch.testing.assert_close(got[f"features_{n}"], single, rtol=1e-6, atol=1e-6)
    monitor = Monitor(
        MonitorParams(kind="knn", k=9), synthetic_split(64, 1), synthetic_split(37, 2), Classification(10), 0
    )
    expected = monitor(encoder)
    assert [got["monitor"] for got in ranks] == [pytest.approx(expected, abs=1e-12)] * WORLD
    for got in ranks:  # sharded=False in a group: every process extracts everything
        torch.testing.assert_close(
            got["unsharded"], features_of(encoder, synthetic_split(37, 0)), rtol=1e-6, atol=1e-6
        )


# --------------------------------------------------------------------------- autocast


def test_bf16_autocast_features_are_float32_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    encoder = build_backbone("small_cnn", 3, (0.5,) * 3, (0.5,) * 3, {"width": 8}).train()
    split = synthetic_split(50, 0)
    fp32 = features_of(encoder, split)
    assert encoder.training  # restored
    bf16 = features_of(encoder, split, autocast=torch.bfloat16)
    assert encoder.training  # restored
    assert bf16.dtype == fp32.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # the forward did run in bfloat16
    scale = float(fp32.abs().max())
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.02 * scale)
    assert not bf16.requires_grad
    # eval mode: the running BatchNorm statistics, so an image's features do not depend on its batch
    small_batches = features_of(encoder, split, batch_size=7)
    torch.testing.assert_close(small_batches, fp32, rtol=1e-5, atol=1e-6)
    encoder.eval()
    features_of(encoder, split, autocast=torch.bfloat16)
    assert not encoder.training  # an encoder in eval mode stays in eval mode


# --------------------------------------------------------------------------- the loop


def test_the_loop_records_nan_on_epochs_the_monitor_skips() -> None:
    from cecl.train.loop import build_monitor, run_pretraining

    params = tiny_params(
        pretrain={"epochs": 3, "monitor": {"kind": "knn", "every": 2}},
        sweep={"grids": {}},  # the sweep needs every: 1
    )
    setup = tiny_setup("simclr", params)
    train, val = synthetic_split(128, 0), synthetic_split(64, 1)
    method, history = run_pretraining(setup, train, val, CPU, fingerprint="x", progress=False)
    values = [r.monitor_val_accuracy for r in history]
    assert [r.epoch for r in history] == [1, 2, 3]
    assert math.isnan(values[0])
    assert all(0.0 <= v <= 1.0 for v in values[1:]), values
    # the last value is the monitor of the returned encoder
    assert build_monitor(setup, train, val)(method.encoder) == pytest.approx(values[2], abs=1e-12)


def test_the_sweep_refuses_a_monitor_that_skips_epochs() -> None:
    from cecl.config import ConfigError

    with pytest.raises(ConfigError, match=r"pretrain\.monitor\.every"):
        tiny_params(pretrain={"monitor": {"every": 2}})
