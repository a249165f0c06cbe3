"""Momentum-queue methods: MoCo v2 and supervised MoCo (SupMoCo), behind the ``Method`` interface.

Both use two views per image: view 0 goes through the trained encoder + projection head (the query
q_i), view 1 through a momentum copy of them (the key k_i, no gradient). A FIFO queue holds the K most
recent keys (of earlier steps, gathered from all processes) as extra contrast samples. All vectors are
L2-normalised; s(a, b) = a . b / tau. Logits and log-sum-exps are computed in float32 (float64 for
float64 input) with autocast disabled.

MoCo v2 (He et al., CVPR 2020, "Momentum Contrast for Unsupervised Visual Representation Learning";
Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning", arXiv 2003.04297: MLP head,
tau = 0.2, stronger augmentation), InfoNCE over the key and the queue:

  loss_i = -log( exp(s(q_i, k_i)) / [ exp(s(q_i, k_i)) + sum_{j=1..K} exp(s(q_i, u_j)) ] )

SupMoCo (supervised MoCo). The form implemented here is SupCon's L_out (Khosla et al. 2020) with the
contrast set of MoCo: anchor q_i, contrast set A(i) = {k_i} u queue, positives P(i) = {k_i} u
{u_j : y(u_j) = y_i} (the own key plus the same-label keys in the queue; the queue stores labels):

  loss_i = -1/|P(i)| * sum_{p in P(i)} [ s(q_i, p) - log sum_{a in A(i)} exp(s(q_i, a)) ]

This follows the supervised momentum-contrast idea of Majumder et al. 2021 ("Supervised Momentum
Contrastive Learning for Few-Shot Classification"), written here as above; other keys of the current batch
are not in A(i) (they enter the queue after the step). With no same-label key in the queue it equals MoCo
v2's loss. The initial queue holds random unit vectors with label -1 (negatives for every anchor), as in
MoCo.

The loss is the mean of loss_i over the *global* batch: per-sample losses are gathered across processes
with ``gather_with_grad``, so under DDP every process returns the same loss and the averaged gradients
equal one process's on the concatenated batch (see ``cecl.distributed``). Keys and labels are
gathered across processes in ``loss_from`` and enqueued, in rank order, in ``after_step``, right after
the momentum update theta_k <- m * theta_k + (1 - m) * theta_q (``cecl.methods.momentum``: parameters
only; the key networks keep their own BatchNorm statistics). Not implemented: MoCo's shuffling BN and the
symmetrised loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cecl.distributed import gather_no_grad, gather_with_grad
from cecl.losses._common import autocast_disabled, check_count, check_positive, compute_dtype
from cecl.methods.base import Method
from cecl.methods.momentum import check_momentum, momentum_copy, momentum_update
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder, head_output_dim
from cecl.plugin_options import MoCoOptions, SupMoCoOptions, default_of


def moco_logits(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """[B, 1 + K] logits: column 0 is s(q_i, k_i), columns 1..K are s(q_i, u_j) over the queue."""
    positive = torch.linalg.vecdot(queries, keys).unsqueeze(1)
    return torch.cat([positive, queries @ queue.T], dim=1) / temperature


def info_nce_loss(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's per-sample InfoNCE [B]: logsumexp of the logits minus the positive logit."""
    logits = moco_logits(queries, keys, queue, temperature)
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def supmoco_loss(
    queries: Tensor, keys: Tensor, labels: Tensor, queue: Tensor, queue_labels: Tensor, temperature: float
) -> Tensor:
    """SupMoCo's per-sample loss [B]: SupCon L_out over [own key, queue] (module docstring)."""
    logits = moco_logits(queries, keys, queue, temperature)
    own = torch.ones_like(labels, dtype=torch.bool).unsqueeze(1)
    positives = torch.cat([own, labels.unsqueeze(1) == queue_labels.unsqueeze(0)], dim=1)
    mean_positive = (logits * positives).sum(1) / positives.sum(1)
    return torch.logsumexp(logits, dim=1) - mean_positive


@torch.no_grad()
def fifo_slots(queue_ptr: Tensor, count: int, size: int) -> tuple[Tensor, int]:
    """Ring-buffer slots for appending ``count`` rows to a FIFO of length ``size`` at ``queue_ptr``.

    Returns (index, kept): write the last ``kept = min(count, size)`` rows to ``index``. Equivalent to
    appending the rows one by one: with more than ``size`` rows only the last ``size`` survive, at the
    positions sequential writing would leave them. Advances ``queue_ptr`` (a 0-d long tensor) in place.

    The slots are computed on the pointer's device and the pointer is never read on the host (a read is a
    host-device sync on CUDA every step); the buffer stays the pointer's one copy, so state dicts,
    checkpoints, DDP's buffer broadcast and direct writes (``queue_ptr.fill_``) all keep working.
    """
    kept = min(count, size)
    start = (queue_ptr + (count - kept)) % size
    index = (start + torch.arange(kept, device=queue_ptr.device)) % size
    queue_ptr.add_(count).remainder_(size)
    return index, kept


class MomentumQueueMethod(Method):
    """Shared machinery: momentum key networks, the key queue, the gathered global-batch loss.

    ``temperature=None`` takes the default of the class's ``Options`` schema (cecl/plugin_options.py).
    """

    n_views = 2
    stores_labels = False
    Options: ClassVar[type[MoCoOptions]] = MoCoOptions  # its temperature's default and validation

    def __init__(
        self,
        encoder: Encoder,
        head: nn.Module,
        temperature: float | None = None,
        queue_size: int = 4096,
        momentum: float = 0.99,
        *,
        key_dim: int | None = None,
    ) -> None:
        super().__init__(encoder)
        if temperature is None:
            temperature = default_of(self.Options, "temperature")
        check_count("queue_size", queue_size)
        self.head = head
        self.temperature = check_positive("temperature", temperature)
        self.momentum = check_momentum(momentum)
        self.key_encoder = momentum_copy(encoder)
        self.key_head = momentum_copy(head)
        dim = key_dim or head_output_dim(head)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        if self.stores_labels:
            self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self._pending: list[tuple[Tensor, Tensor | None]] = []

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, queue_size={self.queue.shape[0]}, momentum={self.momentum}"

    @property
    def queue_size(self) -> int:
        return int(self.queue.shape[0])

    def per_sample_loss(self, queries: Tensor, keys: Tensor, labels: Tensor) -> Tensor:
        """Per-sample losses [B] of this method; ``queries``/``keys`` normalised, compute dtype."""
        raise NotImplementedError

    def embed(self, views: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """(query projections [b, D] of view 0, key projections [b, D] of view 1, without gradient)."""
        if views.dim() != 5 or views.shape[1] != 2:
            raise ValueError(f"{type(self).__name__} needs views [B, 2, C, H, W], got {tuple(views.shape)}")
        query_out = self.head(self.encoder(views[:, 0]))
        with torch.no_grad():
            key_out = self.key_head(self.key_encoder(views[:, 1]))
        return query_out, key_out

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor) -> Tensor:
        """Mean per-sample loss over the global batch; keeps the step's gathered keys for ``after_step``."""
        query_out, key_out = embeddings
        with autocast_disabled(query_out.device.type):
            dtype = compute_dtype(query_out.dtype)
            queries = F.normalize(query_out.to(dtype), dim=1)
            keys = F.normalize(key_out.detach().to(dtype), dim=1)  # keys carry no gradient
            per_sample = self.per_sample_loss(queries, keys, labels)
            loss = gather_with_grad(per_sample).mean()
        if self.training:
            global_labels = gather_no_grad(labels) if self.stores_labels else None
            self._pending.append((gather_no_grad(keys), global_labels))
        return loss

    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q for the key encoder and key head parameters."""
        momentum_update(self.encoder, self.key_encoder, self.momentum)
        momentum_update(self.head, self.key_head, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Write ``keys`` (and labels) into the ring buffer at the pointer, overwriting the oldest entries.

        Equivalent to appending the keys one by one to a FIFO of length K: with more than K keys, only the
        last K survive, at the positions sequential writing would leave them (``fifo_slots``).
        """
        if self.stores_labels and labels is None:
            raise ValueError(f"{type(self).__name__} stores labels: enqueue needs them")
        index, kept = fifo_slots(self.queue_ptr, keys.shape[0], self.queue_size)
        self.queue[index] = keys[keys.shape[0] - kept :].to(self.queue.dtype)
        if self.stores_labels:
            assert labels is not None
            kept_labels = labels[labels.shape[0] - kept :]
            self.queue_labels[index] = kept_labels.to(self.queue_labels.device, self.queue_labels.dtype)

    def after_step(self) -> None:
        """Momentum update of the key networks, then enqueue the keys of the step (all processes)."""
        self.momentum_update()
        for keys, labels in self._pending:
            self.enqueue(keys, labels)
        self._pending.clear()


class MoCoV2(MomentumQueueMethod):
    """MoCo v2: InfoNCE of the query against its momentum key and the queue (labels unused)."""

    def per_sample_loss(self, queries: Tensor, keys: Tensor, labels: Tensor) -> Tensor:
        return info_nce_loss(queries, keys, self.queue.to(queries.dtype), self.temperature)


class SupMoCo(MomentumQueueMethod):
    """Supervised MoCo: positives are the own key and the same-label keys of the queue."""

    stores_labels = True
    Options = SupMoCoOptions

    def per_sample_loss(self, queries: Tensor, keys: Tensor, labels: Tensor) -> Tensor:
        if labels is None:
            raise ValueError("supmoco needs labels: pass an integer tensor of shape [B]")
        queue_labels = self.queue_labels
        return supmoco_loss(
            queries,
            keys,
            labels.to(queue_labels.device),
            self.queue.to(queries.dtype),
            queue_labels,
            self.temperature,
        )


def _queue_method(cls: type[MomentumQueueMethod]):
    def build(ctx: MethodContext, options: MoCoOptions) -> Method:
        if ctx.views != 2:
            raise ValueError(f"pretrain.views must be 2 for {cls.__name__} (got {ctx.views})")
        encoder = ctx.make_encoder()
        return cls(encoder, ctx.projection_head(encoder), **options.model_dump())

    return build


register_method("moco_v2")(_queue_method(MoCoV2))
register_method("supmoco")(_queue_method(SupMoCo))
