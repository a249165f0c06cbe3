"""SwAV (Caron et al., NeurIPS 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", arXiv 2006.09882) behind the ``Method`` interface.

Every view x_bv goes through the encoder and the projection head, is L2-normalised to z_bv (again in the
compute dtype, so bf16 autocast does not round the cosines), and is scored against K trainable prototypes
c_k (the rows of a bias-free ``nn.Linear(proj_dim, K)``): s_bvk = z_bv . c_k. The loss is
``cecl.losses.swav.SwaVLoss`` on s [B, V, K]: Sinkhorn-Knopp codes per view over the batch, and the code
of each view predicted from every other view (formula in that module). The prototypes are L2-normalised
row-wise, without gradient, at construction and after every optimiser step (``after_step``), as the
official code does at the start of every iteration, so the scores stay cosine similarities.

Global batch under torchrun: the loss is wrapped in ``GatherLoss``, so every process gathers the scores of
all processes (with gradient, rank order) and runs Sinkhorn and the loss on the global batch; this equals
one process on the concatenated batch (also for uneven shards), which is what the official code's
all-reduced Sinkhorn computes. Single process: the gather is the identity. BatchNorm in the encoder is
per process unless converted to SyncBatchNorm (see ``cecl.distributed``).

Defaults: tau = 0.1, 3 Sinkhorn iterations, eps = 0.05 (the paper's), K = 30 prototypes (the paper uses
3000 for ImageNet's 1000 classes, about 3 x the classes; 30 for 10-class MNIST-like data).

Not implemented: multi-crop (all V views are full-resolution views that get codes), the queue of earlier
batches' scores (useful only for small batches on large K), and freezing the prototypes during the first
iterations (the official ``freeze_prototypes_niters``): the ``Method`` interface has no hook between the
backward pass and the optimiser step, detaching the prototypes would leave DDP (built without
``find_unused_parameters``) waiting for their gradient, and zeroing it is not the same as freezing for
Adam (its step counter still advances).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cecl.distributed import GatherLoss
from cecl.losses._common import autocast_disabled, check_count, compute_dtype
from cecl.losses.swav import SwaVLoss
from cecl.methods.base import Method
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder, head_output_dim
from cecl.plugin_options import SwAVOptions


class SwAV(Method):
    """Encoder + projection head + L2-normalised prototypes + the SwAV loss on the global batch.

    Args:
        encoder: the backbone.
        head: projection head (``ProjectionHead``; its output is re-normalised here anyway).
        n_prototypes: number of prototypes K, a positive integer.
        temperature: tau of the prediction softmax, > 0.
        sinkhorn_iterations: Sinkhorn-Knopp iterations, a positive integer.
        sinkhorn_epsilon: entropic regularisation of the codes, > 0.
        n_views: views per image, >= 2.
        proj_dim: the head's output size; inferred from its last ``nn.Linear`` when None.
    """

    def __init__(
        self,
        encoder: Encoder,
        head: nn.Module,
        n_prototypes: int = 30,
        temperature: float = 0.1,
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
        n_views: int = 2,
        *,
        proj_dim: int | None = None,
    ) -> None:
        super().__init__(encoder)
        check_count("n_prototypes", n_prototypes, 1)
        self.n_views = check_count("n_views", n_views, 2)
        dim = check_count("proj_dim", proj_dim, 1) if proj_dim is not None else head_output_dim(head)
        self.head = head
        self.prototypes = nn.Linear(dim, n_prototypes, bias=False)
        self.loss = GatherLoss(SwaVLoss(temperature, sinkhorn_iterations, sinkhorn_epsilon))
        self.normalize_prototypes()

    def extra_repr(self) -> str:
        return f"n_prototypes={self.n_prototypes}, n_views={self.n_views}"

    @property
    def n_prototypes(self) -> int:
        return int(self.prototypes.out_features)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """c_k <- c_k / ||c_k|| for every prototype (row of the weight), in place, without gradient."""
        weight = self.prototypes.weight
        weight.copy_(F.normalize(weight, dim=1))

    def embed(self, views: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """The L2-normalised projections z [b, V, D] (compute dtype) of views [b, V, C, H, W]."""
        if views.dim() != 5 or views.shape[1] != self.n_views:
            raise ValueError(
                f"SwAV was built for {self.n_views} views: needs views [B, {self.n_views}, C, H, W], "
                f"got {tuple(views.shape)}"
            )
        batch, n_views = views.shape[:2]
        projected = self.head(self.encoder(views.flatten(0, 1)))
        with autocast_disabled(views.device.type):
            dtype = compute_dtype(projected.dtype)
            return (F.normalize(projected.to(dtype), dim=1).view(batch, n_views, -1),)

    def prototype_scores(self, z: Tensor) -> Tensor:
        """s_bvk = z_bv . c_k [B, V, K] of normalised projections z [B, V, D], in z's dtype.

        The prototypes enter here, not in ``embed``: they are shared by the whole batch, so under gradient
        caching their gradient comes from the one backward of the loss.
        """
        with autocast_disabled(z.device.type):
            scores = F.linear(z.flatten(0, 1), self.prototypes.weight.to(z.dtype))
            return scores.view(*z.shape[:2], -1)

    def scores(self, views: Tensor) -> Tensor:
        """Prototype scores [B, V, K] (compute dtype) of views [B, V, C, H, W]."""
        return self.prototype_scores(self.embed(views)[0])

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor | None = None) -> Tensor:
        """The SwAV loss (Sinkhorn codes, swapped prediction) on the global batch's scores."""
        (z,) = embeddings
        return self.loss(self.prototype_scores(z), labels)

    def after_step(self) -> None:
        """Re-normalise the prototypes after the optimiser step."""
        self.normalize_prototypes()


@register_method("swav")
def _build(ctx: MethodContext, options: SwAVOptions) -> Method:
    """Encoder + projection head + prototypes; Sinkhorn codes, swapped prediction over all views."""
    encoder = ctx.make_encoder()
    return SwAV(
        encoder,
        ctx.projection_head(encoder),
        **options.model_dump(),
        n_views=ctx.views,
        proj_dim=ctx.proj_dim,
    )
