"""A steady-state training step never makes the host wait for the device, for every registered method.

On CUDA the host waits (a host-device synchronisation) when it reads a device value (``item``, ``bool``,
``int``, ``float``, ``tolist``, ...), when an op's output shape depends on device values (``nonzero``,
``unique``, ``bincount``, boolean-mask indexing, ``masked_select``, ``repeat_interleave`` without an output
size), and when it copies Python data to the device (``torch.tensor``/``new_tensor`` inside the step).
There is no GPU here, so the CPU test below makes every one of those raise ``HostSyncError`` naming the
call and its caller (file:line), in two layers: Python-level patches of the ``Tensor`` methods and torch
functions (precise callers; ``tolist``/``numpy`` never reach the dispatcher on CPU), and a
``TorchDispatchMode`` that flags the ATen ops themselves (boolean indexing and the reads torch does in C++).
It then runs several steps after one warm-up step through the loop's own ``train_step``, with the
CUDA policies switched on: the losses' value checks deferred (``EAGER_CHECK_DEVICES`` empty, as on CUDA),
and the loop's non-finite-loss guard reading its device flag every 2 steps, the one read allowed
(by the identity of the flag tensor), like the optimiser's host step counters (on CUDA they live on the
host unless the optimiser is fused or capturable, so reading them is free).

Not caught on a CPU: a copy of a module-level CPU tensor to the device (``CONST.to(images)``); the
augmentation's constants are cached per (device, dtype) for that reason (tested in test_augment.py), and
``test_cuda_steady_state_steps_do_not_synchronise`` checks everything with torch's own sync detector
on a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import math
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from cecl import distributed, losses
from cecl.data.augment import SUPCON_RECIPE
from cecl.datasets import TensorSplit
from cecl.losses import _common
from cecl.methods import available
from cecl.methods.momentum import momentum_copy, momentum_update
from cecl.train import loop
from tests.helpers import (
    DATASET,
    free_port,
    join_process_group,
    synthetic_split,
    tiny_params,
    tiny_setup,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WARM_UP_STEPS = 1
STEPS = 5  # per case: 1 warm-up + 4 measured (160 images at batch 32)
GUARD_EVERY = 2  # the finiteness guard reads its flag after steps 2 and 4: inside the measured steps, allowed
SMALL_QUEUE = {"queue_size": 48}  # wraps around the ring buffer within the measured steps
# Every registered method with its defaults, plus the variants whose step takes another path.
EXTRA_CASES: dict[str, tuple[str, dict, dict]] = {
    "cecl_hinge": ("cecl", {"cecl": {"variant": "hinge"}}, {}),
    "cecl_label_part_only": ("cecl", {"cecl": {"weight": 1.0}}, {}),
    "supcon_joint": ("supcon", {}, {"protocol": "joint"}),
    "cecl_micro_batch": ("cecl", {}, {"micro_batch": 8}),  # gradient caching: 4 chunks of 8 images
}
CASES = {name: (name, {}, {}) for name in available()} | EXTRA_CASES


class HostSyncError(AssertionError):
    """An operation inside the measured steps that would make the host wait for a CUDA device."""


# --------------------------------------------------------------------------- the detector


_DETECTOR_FRAMES = {"_where", "_raise", "wrapper", "__torch_dispatch__"}


def _where() -> str:
    """The caller of the flagged operation: the innermost project frame, with torch's frame inside it."""
    frames = [
        f
        for f in traceback.extract_stack()
        if not (f.filename == __file__ and f.name in _DETECTOR_FRAMES)
        and not f.filename.endswith(("contextlib.py", "_python_dispatch.py"))
    ]
    ours = [f for f in frames if f.filename.startswith(str(ROOT)) and "/.venv/" not in f.filename]
    if not ours:
        return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    mine, inner = ours[-1], frames[-1]
    where = f"{Path(mine.filename).relative_to(ROOT)}:{mine.lineno} in {mine.name}"
    if inner is not mine:
        where += f" (inside {Path(inner.filename).name}:{inner.lineno} in {inner.name})"
    return where


def _raise(what: str) -> None:
    raise HostSyncError(f"{what} at {_where()}")


# Tensor methods that read device values on the host (or hand them to the host).
_HOST_READS = ("item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu")
# Tensor methods and torch functions whose output shape depends on device values (bincount: CUDA reads
# the maximum even with minlength).
_SHAPE_OPS = ("nonzero", "unique", "unique_consecutive", "bincount", "masked_select", "argwhere")
# torch functions that copy host data to the device.
_HOST_DATA = ("tensor", "as_tensor", "from_numpy")
_aten = torch.ops.aten
# Packet -> what it is, for the dispatch-level layer.
_SYNC_OPS = {
    _aten._local_scalar_dense: "a host read of a device value",
    _aten.nonzero: "nonzero (data-dependent shape)",
    _aten.argwhere: "argwhere (data-dependent shape)",
    _aten._unique: "unique (data-dependent shape)",
    _aten._unique2: "unique (data-dependent shape)",
    _aten.unique_dim: "unique (data-dependent shape)",
    _aten.unique_consecutive: "unique_consecutive (data-dependent shape)",
    _aten.unique_dim_consecutive: "unique_consecutive (data-dependent shape)",
    _aten.bincount: "bincount (reads the maximum on CUDA)",
    _aten.masked_select: "masked_select (data-dependent shape)",
    _aten.lift_fresh: "a tensor from host data (a host-to-device copy)",
}
_REPEATS_BY_TENSOR = (_aten.repeat_interleave.Tensor, _aten.repeat_interleave.self_Tensor)
_BOOL_INDEXED = (_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_)


def _is_mask(index: object) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class _SyncOps(TorchDispatchMode):
    """Raises on the ATen ops that synchronise on CUDA (``allowed``: tensors whose reads are host reads)."""

    def __init__(self, allowed: Callable[[object], bool]) -> None:
        super().__init__()
        self.allowed = allowed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        packet = func.overloadpacket
        what = _SYNC_OPS.get(packet)
        if func in _REPEATS_BY_TENSOR and kwargs.get("output_size") is None:
            what = "repeat_interleave by a tensor without output_size (data-dependent shape)"
        if packet in _BOOL_INDEXED and len(args) > 1 and any(_is_mask(i) for i in args[1] or ()):
            what = f"{packet.__name__} with a boolean mask (data-dependent shape)"
        if what is not None and not (packet is _aten._local_scalar_dense and self.allowed(args[0])):
            _raise(f"aten.{packet.__name__}: {what}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync(allowed: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Inside the block, every operation that synchronises on CUDA raises ``HostSyncError``.

    ``allowed``: tensors whose host reads are allowed (identity), e.g. the optimiser's host step counters.
    """
    allowed_ids = {id(t) for t in allowed}

    def is_allowed(tensor: object) -> bool:
        return id(tensor) in allowed_ids

    def guard(owner: Any, name: str, label: str, check_self: bool) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not (check_self and args and is_allowed(args[0])):
                _raise(label)
            return original(*args, **kwargs)

        patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    patches: list[tuple[Any, str, Any]] = []
    try:
        for name in _HOST_READS:
            guard(torch.Tensor, name, f"Tensor.{name} (a host read of a device value)", True)
        for name in _SHAPE_OPS:
            guard(torch.Tensor, name, f"Tensor.{name} (data-dependent shape)", False)
        for name in _SHAPE_OPS:
            guard(torch, name, f"torch.{name} (data-dependent shape)", False)
        for name in _HOST_DATA:
            guard(torch, name, f"torch.{name} (a host-to-device copy)", False)
        guard(torch.Tensor, "new_tensor", "Tensor.new_tensor (a host-to-device copy)", False)
        with _SyncOps(is_allowed):
            yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


# --------------------------------------------------------------------------- the detector works


def test_the_detector_names_the_call_and_its_caller() -> None:
    x = torch.arange(4.0)
    with pytest.raises(HostSyncError, match=r"Tensor\.item .* at tests/test_no_sync\.py:\d+"), no_host_sync():
        x.sum().item()
    for read in (bool, int, float):
        with pytest.raises(HostSyncError, match=rf"__{read.__name__}__"), no_host_sync():
            read(x[0])
    with pytest.raises(HostSyncError, match="tolist"), no_host_sync():
        x.tolist()
    with pytest.raises(HostSyncError, match="nonzero"), no_host_sync():
        torch.nonzero(x)
    with pytest.raises(HostSyncError, match="unique"), no_host_sync():
        torch.unique(x)
    with pytest.raises(HostSyncError, match="bincount"), no_host_sync():
        torch.bincount(x.long(), minlength=8)
    with pytest.raises(HostSyncError, match="boolean mask"), no_host_sync():
        x[x > 1]
    with pytest.raises(HostSyncError, match="a host read"), no_host_sync():
        torch.Tensor.__contains__(x, 2.0)  # reads in C++: caught by the dispatch layer
    with pytest.raises(HostSyncError, match="host-to-device"), no_host_sync():
        x.new_tensor([1.0, 2.0])
    with no_host_sync(allowed=[x]):
        assert x.tolist() == [0.0, 1.0, 2.0, 3.0]  # reads of an allowed tensor (by identity) pass ...
        with pytest.raises(HostSyncError, match="item"):
            x.sum().item()  # ... of any other tensor do not
    with no_host_sync():
        y = torch.where(x > 1, x, 0.0).index_add(0, torch.zeros(4, dtype=torch.long), x)  # no sync
    assert float(y[0]) == 6.0


def test_the_detector_fails_when_a_sync_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-adding a host read to a loss (here ``int(groups.max())``, as the losses did) fails the step."""
    original = _common.row_logsumexp

    def with_sync(z: torch.Tensor, groups: torch.Tensor | None, *args: Any, **kwargs: Any) -> Any:
        if groups is not None:
            int(groups.max())
        return original(z, groups, *args, **kwargs)

    monkeypatch.setattr("cecl.losses.cecl.row_logsumexp", with_sync)
    with pytest.raises(HostSyncError, match=r"Tensor\.__int__ .* at tests/test_no_sync\.py:\d+ in with_sync"):
        _steady_state_steps(monkeypatch, "cecl", {}, {})


# --------------------------------------------------------------------------- every method's step


def _steady_state_steps(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    options: dict,
    pretrain: dict,
    device: torch.device = CPU,
    guard_every: int = GUARD_EVERY,
) -> None:
    """A tiny run of ``method`` on ``device``: the warm-up step, then the measured steps under the detector
    (on CUDA, torch's own: ``torch.cuda.set_sync_debug_mode("error")``)."""
    monkeypatch.setattr(_common, "EAGER_CHECK_DEVICES", frozenset())  # the losses' value checks as on CUDA
    monkeypatch.setitem(loop.FINITE_CHECK_STEPS, device.type, guard_every)
    queues = {m: SMALL_QUEUE for m in ("moco_v2", "supmoco", "nnclr")}
    params = tiny_params(
        datasets={DATASET: {"augment": SUPCON_RECIPE.model_dump()}},  # crop, flip, colour jitter, grayscale
        pretrain={"methods": [method], **pretrain},
        method_options={method: {**queues.get(method, {}), **options.get(method, {})}},
    )
    training = loop.build_training(tiny_setup(method, params), device)
    split = synthetic_split(STEPS * 32, seed=0)
    split = TensorSplit(split.images.to(device), split.targets.to(device))
    epoch = loop.start_epoch(training, split, 0, 1)
    assert epoch.steps == STEPS and epoch.guard.every == guard_every
    for step in range(WARM_UP_STEPS):
        loop.train_step(training, epoch, step)
    measured = range(WARM_UP_STEPS, STEPS)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in measured:
                loop.train_step(training, epoch, step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    else:
        state = training.optimizer.state.values()
        counters = [s["step"] for s in state if isinstance(s.get("step"), torch.Tensor)]
        with no_host_sync(allowed=[*counters, epoch.guard._first]):  # the guard's one periodic read
            for step in measured:
                loop.train_step(training, epoch, step)
    assert bool(torch.isfinite(epoch.loss_sum))
    loop.finish_epoch(epoch)  # the epoch's last read, after the measured steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_steady_state_steps_do_not_synchronise(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    method, options, pretrain = CASES[case]
    _steady_state_steps(monkeypatch, method, options, pretrain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_steady_state_steps_do_not_synchronise(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """torch's own detector (``set_sync_debug_mode("error")``) over the measured steps on a GPU."""
    method, options, pretrain = CASES[case]
    _steady_state_steps(monkeypatch, method, options, pretrain, torch.device("cuda"), guard_every=1000)


# --------------------------------------------------------------------------- what the fixes changed


def test_momentum_update_equals_the_per_parameter_formula() -> None:
    """The multi-tensor EMA gives exactly the per-parameter ``p_k.mul_(m).add_(p_q, alpha=1 - m)``."""
    torch.manual_seed(3)
    online = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    online[2].double()  # mixed dtypes: the multi-tensor ops group tensors by dtype
    for momentum in (0.0, 0.5, 0.99, 1.0):
        target, reference = momentum_copy(online), momentum_copy(online)
        with torch.no_grad():
            for p in online.parameters():
                p.add_(torch.randn_like(p))
        momentum_update(online, target, momentum)
        with torch.no_grad():
            for p_q, p_k in zip(online.parameters(), reference.parameters(), strict=True):
                p_k.mul_(momentum).add_(p_q, alpha=1.0 - momentum)
        for new, expected in zip(target.state_dict().values(), reference.state_dict().values(), strict=True):
            assert torch.equal(new, expected)
    with pytest.raises(ValueError, match="online parameters"):
        momentum_update(online, torch.nn.Linear(3, 5), 0.9)


@pytest.mark.parametrize("name", ["cecl", "supcon"])
def test_groups_need_no_unique_and_no_label_range(name: str) -> None:
    """Group ids come from label comparisons: any integer labels give the loss of their dense relabelling."""
    g = torch.Generator().manual_seed(5)
    features = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    dense = torch.tensor([0, 2, 0, 1, 2, 2])
    sparse = torch.tensor([-5, 1000, -5, 7, 1000, 1000])
    loss = losses.build(name)
    assert torch.equal(loss(features, sparse), loss(features, dense))
    ids, sizes, bound = _common.group_index(sparse, 2)
    assert bound == 6 and ids.tolist() == [0, 1, 0, 3, 1, 1] * 2 and sizes.tolist() == [4, 6, 4, 2, 6, 6] * 2


LOSS_NAMES = [n for n in losses.available() if n != "negative_cosine"]
NORMALISING = {
    "cecl",
    "supcon",
    "simclr",
    "dcl",
    "dclw",
    "hcl",
    "supcon_in",
    "eps_supinfonce",
    "triplet",
    "npair",
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_value_checks_off_the_cpu_make_the_loss_nan(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Where reading values would stall the host (CUDA: ``EAGER_CHECK_DEVICES`` lacks it), non-finite
    features and zero-norm vectors give a NaN loss, which the loop's non-finite-loss guard reports, instead
    of a ValueError at once; a degenerate batch (one class) stays finite."""
    monkeypatch.setattr(_common, "EAGER_CHECK_DEVICES", frozenset())
    g = torch.Generator().manual_seed(6)
    features, labels = torch.randn(6, 2, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = losses.build(name)
    bad = features.clone()
    bad[2, 1, 3] = math.nan
    assert torch.isnan(loss(bad, labels))
    bad[2, 1, 3] = math.inf
    assert not torch.isfinite(loss(bad, labels))
    zero = features.clone()
    zero[4, 0] = 0.0
    if name in NORMALISING:
        assert torch.isnan(loss(zero, labels))
    else:
        assert torch.isfinite(loss(zero, labels))  # no normalisation: a zero vector is a valid input
    one_class = features.clone().requires_grad_(True)
    value = loss(one_class, torch.zeros(6, dtype=torch.long))
    value.backward()
    assert torch.isfinite(value) and bool(torch.isfinite(one_class.grad).all())


@pytest.mark.parametrize("variant", ["official", "hinge"])
def test_rare_row_paths_are_skipped_only_where_tau_rules_them_out(variant: str) -> None:
    """The forward's redo rows and the backward's exact rows are done under a mask, for every row, only when
    the temperature allows them (decided on the host). At the smallest float32 tau where both are skipped,
    the worst case (two antipodal tight classes: negatives e^(-2/tau) below the positives) stays accurate."""
    n = 8
    tau = next(
        t / 1000
        for t in range(10, 200)
        if not _common._negatives_may_underflow(1000 / t, torch.float32)
        and not _common._ratio_may_exceed(n, 1000 / t, torch.float32)
    )
    assert 0.03 < tau < 0.06
    g = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 1, 0, 1])
    centres = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    features = centres[labels].unsqueeze(1) + 1e-4 * torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    results = []
    for dtype in (torch.float64, torch.float32):
        x = features.to(dtype, copy=True).requires_grad_(True)
        value = losses.CECLLoss(tau, 0.07, 0.5, variant)(x, labels)
        value.backward()
        results.append((value.double(), x.grad.double()))
    (ref_value, ref_grad), (value, grad) = results
    torch.testing.assert_close(value, ref_value, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["moco_v2", "supmoco", "nnclr"])
def test_queue_pointers_resume_bit_exactly(tmp_path: Path, method: str) -> None:
    """The ring-buffer pointers advance on the device and stay buffers: a run resumed from a checkpoint
    equals an uninterrupted one, queue and pointer included (queue 40, batches of 32: it wraps)."""
    params = tiny_params(
        pretrain={"methods": [method], "epochs": 2}, method_options={method: {"queue_size": 40}}
    )
    setup = tiny_setup(method, params)
    train, val = synthetic_split(96, 0), synthetic_split(32, 1)
    full, full_history = loop.run_pretraining(setup, train, val, CPU, "fp", progress=False)
    ckpt = tmp_path / "last.pt"

    def stop_after_one(record: loop.EpochRecord) -> None:
        if record.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_pretraining(setup, train, val, CPU, "fp", ckpt, on_epoch=stop_after_one, progress=False)
    resumed, history = loop.run_pretraining(setup, train, val, CPU, "fp", ckpt, progress=False)
    assert [r.history_row() for r in history] == [r.history_row() for r in full_history]
    pointer = "support_ptr" if method == "nnclr" else "queue_ptr"
    assert int(full.state_dict()[pointer]) == (6 * 32) % 40  # 2 epochs of 3 steps of 32 keys
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# --------------------------------------------------------------------------- DDP: no size exchange


def _gather_worker(process: int, out_dir: str, port: int) -> None:
    """One of two gloo processes: gathers of uneven shards (7 = 4 + 3) without exchanging sizes."""
    join_process_group(process, 2, port)
    result: dict[str, Any] = {}
    try:

        def no_exchange(x: torch.Tensor) -> list[int]:
            raise AssertionError("sizes were exchanged")

        distributed._exchanged_sizes = no_exchange  # type: ignore[assignment]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(7, 3, generator=g, dtype=torch.float64)
        labels = torch.arange(7)
        weights = torch.randn(7, 3, generator=g, dtype=torch.float64)
        local_x, local_labels = distributed.split_batch([x, labels])
        local_x = local_x.clone().requires_grad_(True)
        gathered = distributed.gather_with_grad(local_x)
        (gathered * weights).sum().backward()
        start, stop = distributed.shard_bounds(7, process, 2)
        result["equal"] = torch.equal(gathered.detach(), x)
        result["labels"] = torch.equal(distributed.gather_no_grad(local_labels), labels)
        result["grad"] = torch.equal(local_x.grad, 2 * weights[start:stop])  # W * dL/dx_r (module docstring)
        try:
            distributed.gather_no_grad(torch.zeros(5))  # not a shard of the batch: refused on both ranks
        except ValueError as err:
            result["refused"] = str(err)
    finally:
        distributed.cleanup()
    torch.save(result, Path(out_dir) / f"rank{process}.pt")


@pytest.mark.slow
def test_ddp_gathers_take_shard_sizes_from_the_shard_bounds(tmp_path: Path) -> None:
    mp.spawn(_gather_worker, args=(str(tmp_path), free_port()), nprocs=2, join=True)
    for process in range(2):
        result = torch.load(tmp_path / f"rank{process}.pt")
        assert result["equal"] and result["labels"] and result["grad"], result
        assert "shard of the global batch of 7" in result["refused"]
    assert distributed.shard_sizes(7, 2) == [4, 3] and distributed.shard_sizes(2, 3) == [1, 1, 0]
