"""Multi-process (torchrun / DDP) helpers that keep contrastive training exact.

A contrastive loss couples every sample of the batch, so with P processes each holding a shard of the
global batch, a per-process loss on the shard is a *different* objective (fewer negatives, fewer
label positives). Here every process gathers the features of all processes (``gather_with_grad``) and
computes the loss on the whole global batch (``GatherLoss``), so every process contrasts against the
global batch and gets the same loss value.

Gradient scaling (why no factor of world size is needed). Let L be the loss on the global batch, which
every one of the W processes computes identically, and x_r the features of process r's shard. The true
gradient is dL/dtheta = sum_r (dL/dx_r) (dx_r/dtheta), a sum of per-shard contributions, each only
computable on the process that owns the shard's graph. ``gather_with_grad``'s backward all-reduces
(sums) the gradient of the gathered tensor over processes and returns this process's slice: since all
W processes hold the same dL/dx, process r receives W * dL/dx_r and its parameter gradient is
W * (dL/dx_r)(dx_r/dtheta). DDP then *averages* parameter gradients over the W processes, which cancels
the W: the averaged gradient is exactly sum_r (dL/dx_r)(dx_r/dtheta) = dL/dtheta, the single-process
gradient on the concatenated batch. So the global-batch loss must NOT be multiplied by the world size.
(With a backward that returned only the local slice of the local gradient, without the all-reduce, the
loss would have to be multiplied by W instead; the all-reduce form is the general one, correct also when
processes compute different loss terms, whose sum over processes / W is then the objective.) The same
holds for uneven shards: nothing above assumes equal shard sizes.

Not covered by the gather: BatchNorm statistics are per process unless the model is converted with
``nn.SyncBatchNorm.convert_sync_batchnorm`` (CUDA only), so encoders with BatchNorm in training mode are
exact across process counts only with SyncBatchNorm.

Shard sizes: every process knows all of them from ``shard_bounds`` of the global batch, which
``split_batch`` declares when it cuts this process's shard, so a gather is one all-gather of padded shards
with no size exchange and no host read (a host-device sync on CUDA); without a declared batch the sizes are
exchanged first.

Single process (no torchrun, or WORLD_SIZE=1): every helper is a no-op / identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its host (torchrun's LOCAL_RANK; 0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Only rank 0 logs, writes outputs and checkpoints."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """The process group's backend for training on ``device``: nccl for CUDA, gloo for the CPU.

    It follows the training device, not whether the host has a GPU: CPU training under torchrun on a
    GPU host must use gloo (nccl moves only CUDA tensors).
    """
    return "nccl" if device.type == "cuda" else "gloo"


# How long a collective waits for the other processes before the run fails (instead of hanging until the
# launcher's 24 h stage timeout when a process died). Longer than the longest time one rank works alone:
# rank 0's per-epoch online probe and checkpoint, while the others wait in the next step's gather. Torch's
# defaults are 10 min for nccl and 30 min for gloo; one value for both keeps CPU and GPU runs alike.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    The backend is :func:`backend_for` the training ``device``; on CUDA this process is bound to GPU
    ``LOCAL_RANK`` (``device_id``: the group is created on that GPU at once, rather than on a guessed
    device at its first collective). Collectives time out after ``PROCESS_GROUP_TIMEOUT``. A no-op
    returning False when WORLD_SIZE is unset or 1; returns True when running distributed. Idempotent: an
    already initialised group is kept.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if dist.is_initialized():
        return True
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={size} but {key} is not set; launch with torchrun")
    backend = backend_for(device)
    device_id = None
    if backend == "nccl":
        device_id = torch.device("cuda", local_rank())
        torch.cuda.set_device(device_id)
    dist.init_process_group(
        backend=backend, init_method="env://", timeout=PROCESS_GROUP_TIMEOUT, device_id=device_id
    )
    return True


def device_for_rank(default: torch.device) -> torch.device:
    """The device this process should train on: its own GPU under nccl, else ``default``."""
    if is_distributed() and default.type == "cuda":
        return torch.device("cuda", local_rank())
    return default


def shard_bounds(n: int, process: int, processes: int) -> tuple[int, int]:
    """[start, stop) of process ``process``'s contiguous shard of ``n`` items (sizes differ by <= 1).

    Shards are in rank order, so concatenating them gives back the whole batch; the first n % processes
    shards get one extra item.
    """
    if not 0 <= process < processes:
        raise ValueError(f"rank {process} is outside 0..{processes - 1}")
    base, extra = divmod(n, processes)
    start = process * base + min(process, extra)
    return start, start + base + (1 if process < extra else 0)


def shard_sizes(n: int, processes: int) -> list[int]:
    """Sizes of the ``processes`` contiguous shards of ``n`` items, in rank order (:func:`shard_bounds`)."""
    return [stop - start for start, stop in (shard_bounds(n, r, processes) for r in range(processes))]


# Rows of the global batch this process last took its shard of (``split_batch``; None: none yet). Every
# process cuts the same global batch, so all agree, and a gather of shard-sized tensors knows every
# process's size from the shard bounds instead of exchanging sizes (a collective plus a host read: a
# host-device sync on CUDA, at every gather of every step).
_global_rows: int | None = None


def set_global_batch(n: int | None) -> None:
    """Declare that the tensors gathered from now on are this process's shards (:func:`shard_bounds`) of
    global batches of ``n`` rows, as every process must alike; None: exchange sizes at every gather.

    :func:`split_batch` declares it for the batches it cuts; a batch source that shards otherwise calls
    this with the global batch size.
    """
    global _global_rows
    _global_rows = n


def declared_global_batch() -> int | None:
    """The global batch rows declared by :func:`set_global_batch` (None: none declared)."""
    return _global_rows


def split_batch(
    tensors: Sequence[Tensor], process: int | None = None, processes: int | None = None
) -> list[Tensor]:
    """This process's contiguous shard (along dim 0) of each global-batch tensor, deterministically.

    Every process draws the same global batch (same seed), takes its own rows, and ``GatherLoss`` puts
    them back together in rank order. Cutting this process's own shard also declares the global batch
    size to the gathers (:func:`set_global_batch`).
    """
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError("split_batch: tensors disagree on the batch size (dim 0)")
    start, stop = take_shard(n, process, processes)
    return [t[start:stop] for t in tensors]


def take_shard(n: int, process: int | None = None, processes: int | None = None) -> tuple[int, int]:
    """[start, stop) of process ``process``'s shard of a global batch of ``n`` rows (default: this
    process's); taking this process's own shard declares the global batch to the gathers
    (:func:`set_global_batch`), as :func:`split_batch` does. For sources that build only their shard
    instead of cutting it from the whole batch (e.g. augmenting only its rows)."""
    process = rank() if process is None else process
    processes = world_size() if processes is None else processes
    start, stop = shard_bounds(n, process, processes)
    if process == rank() and processes == world_size():  # this process's own shard
        set_global_batch(n)
    return start, stop


def _exchanged_sizes(x: Tensor) -> list[int]:
    """Dim-0 sizes of ``x`` on every process, in rank order, exchanged (one all-gather and a host read)."""
    size = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _gather_sizes(x: Tensor) -> list[int]:
    """Dim-0 sizes of ``x`` on every process, in rank order: from the shard bounds of the declared global
    batch (no communication, no host read), else exchanged."""
    if _global_rows is None:
        return _exchanged_sizes(x)
    sizes = shard_sizes(_global_rows, dist.get_world_size())
    mine = sizes[dist.get_rank()]
    if x.shape[0] != mine:
        raise ValueError(
            f"gather: a tensor of {x.shape[0]} rows, but this process's shard of the global batch of "
            f"{_global_rows} has {mine}; gather shards of the batch, or call set_global_batch(None) first"
        )
    return sizes


def _all_gather_cat(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` of every process along dim 0 in rank order (shards may differ in size)."""
    largest = max(sizes)
    padded = x.contiguous()
    if x.shape[0] < largest:
        padded = torch.cat([padded, padded.new_zeros((largest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


@torch.no_grad()
def gather_shards(x: Tensor, n: int) -> Tensor:
    """The ``n`` rows whose contiguous shards (:func:`shard_bounds`) the processes hold, in rank order.

    Sizes come from the bounds (no exchange); identity when not distributed. For sharded evaluation:
    each process extracts the features of its shard of a split, every process gets them all.
    """
    if not is_distributed():
        return x
    return _all_gather_cat(x, shard_sizes(n, dist.get_world_size()))


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0. Backward: all-reduce (sum) the gradient, keep this rank's slice."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x)
        me = dist.get_rank()
        ctx.start = sum(sizes[:me])  # type: ignore[attr-defined]
        ctx.stop = ctx.start + sizes[me]  # type: ignore[attr-defined]
        return _all_gather_cat(x, sizes)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total[ctx.start : ctx.stop]  # type: ignore[attr-defined]


def gather_with_grad(x: Tensor) -> Tensor:
    """All processes' ``x`` concatenated along dim 0 in rank order, differentiable (identity if single).

    The backward pass sums the gradient over processes and returns this process's slice, so that with
    DDP's gradient averaging the loss on the gathered batch needs no world-size factor (module docstring).
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All processes' ``x`` concatenated along dim 0 in rank order, without gradient (labels, keys)."""
    if not is_distributed():
        return x
    return _all_gather_cat(x, _gather_sizes(x))


class GatherLoss(nn.Module):
    """Wraps a loss ``(features [B, V, D], labels [B] | None) -> scalar`` to run on the global batch.

    Features (with gradient) and labels of every process are concatenated in rank order, so the global
    batch equals the concatenation of the shards, and the wrapped loss sees exactly what one process on
    the whole batch would. Do not scale the result by the world size (see the module docstring).
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        if not is_distributed():
            return self.loss(features, labels)
        global_labels = gather_no_grad(labels) if labels is not None else None
        return self.loss(gather_with_grad(features), global_labels)


class TrainingLoss(nn.Module):
    """``forward(views, labels) = method.training_loss(views, labels)``: the module to wrap in DDP.

    DDP hooks its gradient reduction into ``forward``; a method's objective is ``training_loss``, so DDP
    wraps this adapter (``DistributedDataParallel(TrainingLoss(method))``). Checkpoints and outputs keep
    using ``method`` itself, so state-dict keys do not change.
    """

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: Tensor, labels: Tensor) -> Tensor:
        return self.method.training_loss(views, labels)  # type: ignore[operator]


def all_reduce_mean(value: Tensor) -> Tensor:
    """Mean of a (detached) tensor over processes, for logging; identity when single-process."""
    if not is_distributed():
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def cleanup() -> None:
    """Leave the process group (end of a torchrun run); no-op when none."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
