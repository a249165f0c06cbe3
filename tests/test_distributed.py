"""Exact multi-process training: two gloo processes on CPU reproduce one process on the concatenated batch.

Also unit tests of the shard/gather helpers (single process) and of the momentum-queue methods
(cecl.methods.queue): FIFO queue, stored labels, momentum formula, loss references, loss decrease. The
SimSiam / BYOL / NNCLR cases of the two-process test use BatchNorm-free heads (``batch_norm=False``); their
unit tests are in tests/test_siamese.py.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from cecl import distributed as dist_utils
from cecl import losses
from cecl.methods.base import Method
from cecl.methods.contrastive import ContrastiveMethod
from cecl.methods.nnclr import NNCLR
from cecl.methods.queue import MoCoV2, SupMoCo, info_nce_loss, moco_logits, supmoco_loss
from cecl.methods.siamese import BYOL, SimSiam
from cecl.methods.swav import SwAV
from cecl.models import Encoder, ProjectionHead
from tests.helpers import (
    adam_steps,
    bn_free_encoder,
    free_port,
    join_process_group,
    max_diff,
    one_step,
    sharded_step,
)

WORLD = 2
TOLERANCE = 1e-6
# (case id, method, global batch size[, views]); batch 7 splits unevenly (4 + 3) across the two processes.
CASES: tuple[tuple, ...] = (
    ("cecl", "cecl", 8),
    ("supcon", "supcon", 8),
    ("simclr", "simclr", 8),
    ("moco_v2", "moco_v2", 8),
    ("supmoco", "supmoco", 8),
    ("cecl_uneven", "cecl", 7),
    ("simsiam", "simsiam", 8),
    ("byol", "byol", 8),
    ("nnclr", "nnclr", 8),
    ("byol_uneven", "byol", 7),
    ("nnclr_uneven", "nnclr", 7),
    ("swav", "swav", 8),
    ("swav_three_views_uneven", "swav", 7, 3),
)


# --------------------------------------------------------------------------- shared builders


def _tiny_encoder() -> Encoder:
    """A BatchNorm-free conv encoder (per-process BN statistics would break exactness by design)."""
    return bn_free_encoder(in_channels=3, width=4)


def _build(name: str, n_views: int = 2) -> Method:
    """A deterministic float64 method; queue methods and NNCLR get a deterministic pre-filled queue."""
    torch.manual_seed(0)
    encoder, head = _tiny_encoder(), ProjectionHead(4, 6, 8)
    method: Method
    if name in ("moco_v2", "supmoco"):
        cls = MoCoV2 if name == "moco_v2" else SupMoCo
        method = cls(encoder, head, temperature=0.5, queue_size=12, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        method.queue.copy_(F.normalize(torch.randn(12, 6, generator=g), dim=1))
        method.queue_ptr.fill_(7)  # the global batch of 8 wraps around the end of the ring buffer
        if isinstance(method, SupMoCo):
            method.queue_labels.copy_(torch.randint(0, 3, (12,), generator=g))
    elif name == "simsiam":
        method = SimSiam(encoder, proj_dim=6, pred_hidden=3, batch_norm=False)
    elif name == "byol":
        method = BYOL(encoder, momentum=0.9, proj_dim=6, proj_hidden=8, pred_hidden=8, batch_norm=False)
    elif name == "nnclr":
        method = NNCLR(
            encoder,
            temperature=0.5,
            queue_size=12,
            proj_dim=6,
            proj_hidden=8,
            pred_hidden=8,
            batch_norm=False,
        )
        g = torch.Generator().manual_seed(1)
        method.support_set.copy_(F.normalize(torch.randn(12, 6, generator=g), dim=1))
        method.support_ptr.fill_(7)  # the global batch of 8 wraps around the end of the ring buffer
    elif name == "swav":
        method = SwAV(encoder, head, n_prototypes=5, temperature=0.5, n_views=n_views)
    else:
        method = ContrastiveMethod(encoder, head, losses.build(name, temperature=0.5))
    return method.double()


def _batch(size: int, n_views: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    views = torch.rand(size, n_views, 3, 5, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:size]
    return views, labels


def _worker(process: int, out_dir: str, port: int) -> None:
    """One torchrun-like process: init from env, shard the batch, DDP + gather, one step per case."""
    join_process_group(process, WORLD, port)
    results = {}
    try:
        for case, name, size, *views in CASES:
            results[case] = sharded_step(_build(name, *views), *_batch(size, *views))  # each gathers itself
    finally:
        dist_utils.cleanup()
    torch.save(results, Path(out_dir) / f"rank{process}.pt")


# --------------------------------------------------------------------------- the two-process test


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_concatenated_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path), free_port()), nprocs=WORLD, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    report = []
    for case, name, size, *views in CASES:
        method = _build(name, *views)
        reference = one_step(method, dist_utils.TrainingLoss(method), *_batch(size, *views))
        sizes = [per_rank[r][case]["local_size"] for r in range(WORLD)]
        assert sum(sizes) == size
        for r in range(WORLD):
            got = per_rank[r][case]
            loss_diff = abs(float(got["loss"]) - float(reference["loss"]))
            grad_diff = max_diff(got["grads"], reference["grads"])
            state_diff = max_diff(got["state"], reference["state"])  # params, key nets, queue, pointer
            report.append(
                f"{case} rank {r}: loss {loss_diff:.1e}, grads {grad_diff:.1e}, state {state_diff:.1e}"
            )
            assert loss_diff <= TOLERANCE, report[-1]
            assert grad_diff <= TOLERANCE, report[-1]
            assert state_diff <= TOLERANCE, report[-1]
            assert all(float(g.abs().max()) > 0 for g in got["grads"].values()), f"{case}: a zero gradient"
    print("\n" + "\n".join(report))


# --------------------------------------------------------------------------- single-process helpers


def test_shards_are_contiguous_in_rank_order_and_concatenate_to_the_batch() -> None:
    for n in (1, 7, 8, 13):
        for processes in (1, 2, 3, 8):
            bounds = [dist_utils.shard_bounds(n, r, processes) for r in range(processes)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1
    x, y = torch.arange(14).view(7, 2), torch.arange(7)
    parts = [dist_utils.split_batch([x, y], r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="rank 3"):
        dist_utils.shard_bounds(5, 3, 3)


def test_single_process_helpers_are_identities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_utils.init_from_env(torch.device("cpu")) is False
    assert not dist_utils.is_distributed()
    assert (dist_utils.rank(), dist_utils.world_size()) == (0, 1)
    x = torch.randn(4, 2, 3)
    assert dist_utils.gather_with_grad(x) is x
    loss = losses.build("supcon")
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.equal(dist_utils.GatherLoss(loss)(x, labels), loss(x, labels))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist_utils.init_from_env(torch.device("cpu")) is False


def test_the_backend_follows_the_training_device_not_the_host() -> None:
    """CPU training under torchrun uses gloo even on a GPU host; CUDA training uses nccl (no GPU needed
    to ask: before, a CPU-only host always got gloo and a GPU host always nccl)."""
    assert dist_utils.backend_for(torch.device("cpu")) == "gloo"
    assert dist_utils.backend_for(torch.device("cuda")) == "nccl"
    assert dist_utils.backend_for(torch.device("cuda", 1)) == "nccl"


# --------------------------------------------------------------------------- momentum-queue methods


def _small_queue_method(cls: type, queue_size: int = 5, dim: int = 3, **kw: float) -> MoCoV2:
    torch.manual_seed(0)
    return cls(_tiny_encoder(), ProjectionHead(4, dim, 8), queue_size=queue_size, **kw)


@pytest.mark.parametrize("cls", [MoCoV2, SupMoCo])
def test_queue_is_a_fifo_of_the_last_k_keys(cls: type) -> None:
    method = _small_queue_method(cls, queue_size=5)
    size = method.queue_size
    keys_model: deque = deque((row.clone() for row in method.queue), maxlen=size)
    labels_model: deque = deque([-1] * size, maxlen=size)
    g = torch.Generator().manual_seed(3)
    for count in (2, 3, 1, 4, 7, 5, 11, 1):
        keys = torch.randn(count, 3, generator=g)
        labels = torch.randint(0, 10, (count,), generator=g)
        method.enqueue(keys, labels)
        keys_model.extend(keys)
        labels_model.extend(labels.tolist())
        ptr = int(method.queue_ptr)
        oldest_first = torch.stack([method.queue[(ptr + i) % size] for i in range(size)])
        assert torch.equal(oldest_first, torch.stack(list(keys_model)))
        if cls is SupMoCo:
            stored = [int(method.queue_labels[(ptr + i) % size]) for i in range(size)]
            assert stored == list(labels_model)


def test_supmoco_stores_the_labels_of_the_step_and_moco_has_none() -> None:
    method = _small_queue_method(SupMoCo, queue_size=8)
    views = torch.rand(3, 2, 3, 5, 5)
    labels = torch.tensor([4, 7, 4])
    method.training_loss(views, labels).backward()
    assert torch.equal(method.queue_labels, torch.full((8,), -1))  # enqueued only after the step
    method.after_step()
    assert method.queue_labels[:3].tolist() == [4, 7, 4] and int(method.queue_ptr) == 3
    with torch.no_grad():
        keys = F.normalize(method.key_head(method.key_encoder(views[:, 1])), dim=1)
    # The keys were computed before the momentum update; with identical query/key nets they agree here.
    assert torch.allclose(method.queue[:3], keys, atol=1e-6)
    assert not hasattr(_small_queue_method(MoCoV2), "queue_labels")


def test_eval_mode_does_not_enqueue() -> None:
    method = _small_queue_method(MoCoV2, queue_size=4).eval()
    before = method.queue.clone()
    with torch.no_grad():
        method.training_loss(torch.rand(2, 2, 3, 5, 5), torch.tensor([0, 1]))
    method.after_step()
    assert torch.equal(method.queue, before) and int(method.queue_ptr) == 0


@pytest.mark.parametrize("momentum", [0.99, 0.999, 0.5])
def test_momentum_update_formula(momentum: float) -> None:
    method = _small_queue_method(MoCoV2, momentum=momentum).double()
    with torch.no_grad():
        for p in (*method.encoder.parameters(), *method.head.parameters()):
            p.add_(torch.randn_like(p))
    queries = [p.clone() for p in (*method.encoder.parameters(), *method.head.parameters())]
    keys = [p.clone() for p in (*method.key_encoder.parameters(), *method.key_head.parameters())]
    method.after_step()
    updated = [*method.key_encoder.parameters(), *method.key_head.parameters()]
    for q, k, new in zip(queries, keys, updated, strict=True):
        torch.testing.assert_close(new, momentum * k + (1 - momentum) * q, rtol=0, atol=1e-14)
        assert not new.requires_grad


def test_info_nce_is_cross_entropy_with_the_key_as_class_zero() -> None:
    g = torch.Generator().manual_seed(4)
    q, k = (F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(9, 5, generator=g, dtype=torch.float64), dim=1)
    logits = moco_logits(q, k, queue, 0.2)
    expected = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long), reduction="none")
    torch.testing.assert_close(info_nce_loss(q, k, queue, 0.2), expected, rtol=0, atol=1e-12)


def _supmoco_slow(q, k, labels, queue, queue_labels, tau) -> torch.Tensor:
    """Loop reference: -1/|P| sum_{p in P} [s(q,p) - log sum_{a in {k_i} u queue} exp s(q,a)]."""
    out = []
    for i in range(q.shape[0]):
        contrast = [k[i]] + [queue[j] for j in range(queue.shape[0])]
        is_positive = [True] + [int(queue_labels[j]) == int(labels[i]) for j in range(queue.shape[0])]
        sims = [float(q[i] @ a) / tau for a in contrast]
        log_denominator = math.log(sum(math.exp(s) for s in sims))
        terms = [s - log_denominator for s, pos in zip(sims, is_positive, strict=True) if pos]
        out.append(-sum(terms) / len(terms))
    return torch.tensor(out, dtype=torch.float64)


def test_supmoco_loss_matches_a_slow_loop_reference() -> None:
    g = torch.Generator().manual_seed(5)
    q, k = (F.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(11, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (7,), generator=g)
    queue_labels = torch.randint(-1, 3, (11,), generator=g)
    got = supmoco_loss(q, k, labels, queue, queue_labels, 0.1)
    torch.testing.assert_close(got, _supmoco_slow(q, k, labels, queue, queue_labels, 0.1), rtol=0, atol=1e-10)
    unmatched = torch.full((11,), -1)
    torch.testing.assert_close(
        supmoco_loss(q, k, labels, queue, unmatched, 0.1), info_nce_loss(q, k, queue, 0.1), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("cls", [MoCoV2, SupMoCo])
def test_queue_methods_loss_decreases_in_a_few_steps(cls: type) -> None:
    """Fresh batches of colour images (two noisy views each); the queue is warmed up with real keys first."""
    method = _small_queue_method(cls, queue_size=32, dim=8, temperature=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(6)
    colours = torch.rand(512, 3, 1, 1, generator=g)
    pool_labels = (colours[:, 0, 0, 0] * 4).long()

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(16) + 16 * step
        noise = 0.05 * torch.randn(16, 2, 3, 5, 5, generator=g)
        return (colours[idx].unsqueeze(1) + noise).clamp(0, 1), pool_labels[idx]

    for step in range(2):  # fill the queue with real keys, no optimisation
        with torch.no_grad():
            method.training_loss(*batch(step))
        method.after_step()
    history = adam_steps(method, (batch(step) for step in range(2, 32)), lr=0.02)
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.9 * sum(history[:3]) / 3, history


def test_queue_method_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        _small_queue_method(MoCoV2, queue_size=0)
    with pytest.raises(ValueError, match="momentum"):
        _small_queue_method(MoCoV2, momentum=1.5)
    with pytest.raises(ValueError, match="views"):
        _small_queue_method(MoCoV2).training_loss(torch.rand(2, 3, 3, 5, 5), torch.tensor([0, 1]))
