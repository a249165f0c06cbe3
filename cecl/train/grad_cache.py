"""Gradient caching: one step's loss and gradients with the networks run on chunks of the batch.

Why: a contrastive loss couples the whole batch, so the paper's batch (1024 images x 2 views of a
ResNet-50) needs every activation of the batch at once, more than one GPU holds. Gradient caching (Gao,
Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
RepL4NLP, arXiv 2101.06983; github.com/luyug/GradCache) keeps the loss of the whole batch and bounds the
activation memory by one chunk's, for one extra forward pass.

A method's loss is ``loss_from(embed(views))`` (``cecl.methods.base``). Split this process's B source
images into chunks C_1..C_n of at most m = ``pretrain.micro_batch`` images; e_c = embed(x_{C_c}; theta),
E = [e_1; ...; e_n] (dim 0), L = loss_from(E; phi), phi the parameters only the loss uses (SwAV's
prototypes). By the chain rule

  dL/dtheta = sum_c (dL/de_c)^T (de_c/dtheta),        dL/dphi from the loss alone.

Pass 1: every e_c under ``no_grad`` (no activations kept), E as leaf tensors, L, one backward: it gives
the cache g_c = dL/de_c (as large as E) and dL/dphi. Pass 2: per chunk, e_c again with a graph, then
``torch.autograd.backward(e_c, g_c)`` adds g_c^T de_c/dtheta to theta.grad and frees the chunk's graph.
Outputs the loss uses without gradient (momentum keys and targets, SimSiam's stop-gradient z) get no
cached gradient and no backward. Cost: about one more forward per step (about +1/3 of a step's compute).

Same e_c in both passes: the global RNG (CPU, and the CUDA device when on CUDA; what
``torch.random.fork_rng`` forks) is set back before pass 2 and, after it, to where the plain step would
leave it; BatchNorm running statistics (the buffers of every ``_NormBase``) are snapshotted before pass 1
and restored after it, so pass 2 updates them once per chunk, as a plain forward of each chunk would.
BatchNorm in training mode normalises with the statistics of its input, so with BatchNorm the step is
that of a model whose BatchNorm normalises each chunk separately: per-chunk statistics, which is what the
released code's ``nn.DataParallel`` on 8 GPUs did (each replica's BatchNorm saw its 1/8 of the batch:
per-replica statistics), not the whole batch's. Without BatchNorm, L and the gradients equal the plain
step's up to float round-off.

Chunks: n = ceil(S / m), S the largest shard of the processes (this process's alone when single), and
each shard is cut into n contiguous chunks whose sizes differ by at most 1 (``shard_bounds``; like
``Tensor.tensor_split(n)``), so every chunk has at most m images and every process runs n chunks.

Under torchrun the trainer is DDP, whose reducer expects one forward and one backward per step, so this
path runs the unwrapped method and does DDP's job itself: after pass 2, one all-reduce averages the
gradients over the W processes. As with DDP the average is the gradient of the global-batch loss:
``gather_with_grad``'s backward sums over processes, so process r holds W x its shard's share
(``cecl.distributed``). Buffers are not broadcast, as the loop's DDP does not (``broadcast_buffers=False``,
``cecl.train.loop._training_module``): they are equal on every rank by construction.
SyncBatchNorm (CUDA) works outside DDP (torch checks only for an initialised process group): its
collectives run once per chunk in both passes, the same number on every process (n from the largest
shard), so chunk c is normalised over chunk c of every process. To know S every process all-reduces its
shard size once per step (one small host read; with ``micro_batch`` only). ``compute.compile`` compiles
the training module, which this path does not call: the chunks run eagerly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from cecl import distributed
from cecl.methods.base import Method


def chunk_count(images: int, micro_batch: int | None, device: torch.device) -> int:
    """n = ceil(S / m): chunks per process for shards of ``images`` (S the largest over processes).

    1 (the plain step) when ``micro_batch`` is None or holds the largest shard. Under torchrun the
    largest shard comes from the global batch the batch source declared (``set_global_batch``); without
    one, every process must call this (an all-reduce of the shard sizes), so all agree on n.
    """
    if micro_batch is None:
        return 1
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    largest = images
    declared = distributed.declared_global_batch()
    if distributed.is_distributed() and declared is not None:
        # every process's shard size is known from the shard bounds: no collective, no host read
        largest = max(distributed.shard_sizes(declared, distributed.world_size()))
    elif distributed.is_distributed():
        size = torch.tensor(images, dtype=torch.long, device=device)
        dist.all_reduce(size, op=dist.ReduceOp.MAX)
        largest = int(size)
    return max(1, math.ceil(largest / micro_batch))


def chunk_bounds(images: int, chunks: int) -> list[tuple[int, int]]:
    """[start, stop) of each of ``chunks`` contiguous chunks of ``images`` (sizes differ by <= 1)."""
    return [distributed.shard_bounds(images, c, chunks) for c in range(chunks)]


def backward(
    method: Method,
    views: Tensor,
    labels: Tensor,
    chunks: int,
    autocast: torch.dtype | None = None,
    on_loss: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Loss of ``views`` [B, V, C, H, W] and its gradients, accumulated in ``.grad``, in ``chunks`` chunks.

    ``autocast``: the dtype of ``torch.autocast`` around every forward and the loss (as the plain step);
    ``on_loss(loss)`` is called before any backward. Zero the gradients first. Returns the detached loss.
    """
    device = views.device
    bounds = chunk_bounds(views.shape[0], chunks)
    rng_before = _rng_state(device)
    norm_state = [(buffer, buffer.clone()) for buffer in _norm_buffers(method)]
    # Pass 1: embeddings of every chunk, no graph.
    with torch.no_grad(), autocast_context(device, autocast):
        parts = [_embed(method, views, labels, bounds, c) for c in range(chunks)]
    for buffer, saved in norm_state:
        buffer.copy_(saved)
    leaves = tuple(
        torch.cat(outputs).requires_grad_(outputs[0].is_floating_point())
        for outputs in zip(*parts, strict=True)
    )
    del parts
    with autocast_context(device, autocast):
        loss = method.loss_from(leaves, labels)
    if on_loss is not None:
        on_loss(loss)
    loss.backward()  # the cache dL/dE on the leaves, and the loss-only parameters' gradients
    cache = [leaf.grad for leaf in leaves]
    del leaves
    rng_after = _rng_state(device)
    _set_rng_state(device, rng_before)
    # Pass 2: each chunk again with a graph, backward of its outputs with their cached gradients.
    for c, (start, stop) in enumerate(bounds):
        with autocast_context(device, autocast):
            outputs = _embed(method, views, labels, bounds, c)
        pairs = [
            (output, grad[start:stop])
            for output, grad in zip(outputs, cache, strict=True)
            if grad is not None and output.requires_grad
        ]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        del outputs, pairs
    _set_rng_state(device, rng_after)
    if distributed.is_distributed():
        _average_gradients(method)
    return loss.detach()


def _embed(
    method: Method, views: Tensor, labels: Tensor, bounds: list[tuple[int, int]], c: int
) -> tuple[Tensor, ...]:
    """``method.embed`` of chunk ``c``; a chunk too small for BatchNorm is a one-line error naming it."""
    start, stop = bounds[c]
    try:
        return method.embed(views[start:stop], labels[start:stop])
    except ValueError as err:
        if "more than 1 value per channel" not in str(err):
            raise
        sizes = sorted({b - a for a, b in bounds})
        raise ValueError(
            f"pretrain.micro_batch: chunks of {sizes} images are too small for the method's BatchNorm "
            f"({str(err).splitlines()[0]}); raise micro_batch"
        ) from None


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``dtype`` on ``device``'s type (``compute.autocast``), or nothing for float32:
    the forward of the plain step and of every chunk here."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _norm_buffers(module: nn.Module) -> Iterator[Tensor]:
    """The buffers (running mean, variance, batch count) of every BatchNorm-like layer of ``module``."""
    for layer in module.modules():
        if isinstance(layer, _NormBase):
            yield from layer.buffers(recurse=False)


RngState = tuple[Tensor, Tensor | None]


def _rng_state(device: torch.device) -> RngState:
    """The global CPU generator's state and, on CUDA, ``device``'s."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: RngState) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _average_gradients(method: nn.Module) -> None:
    """grad <- (sum over processes of grad) / W for every parameter with a gradient, as DDP reduces.

    One all-reduce per (device, dtype): the gradients are flattened into one buffer and copied back.
    """
    world = distributed.world_size()
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for param in method.parameters():
        if param.grad is not None:
            groups.setdefault((param.grad.device, param.grad.dtype), []).append(param.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world)
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))
