"""Contrastive methods: encoder -> projection head (L2-normalised) -> a [B, V, D] loss from cecl.losses.

cecl, supcon, simclr and the other [B, V, D] losses differ only in the loss; simclr's ignores the labels.
Under torchrun the projected features and labels of every process are gathered (with gradient) before the
loss, so each process computes the loss of the global batch (see ``cecl.distributed``); in a single
process the gather is the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cecl import losses
from cecl.distributed import GatherLoss
from cecl.methods.base import Method
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder, ProjectionHead
from cecl.plugin_options import LOSS_METHODS
from cecl.schema import Strict


class ContrastiveMethod(Method):
    def __init__(self, encoder: Encoder, head: ProjectionHead, loss: nn.Module, n_views: int = 2) -> None:
        super().__init__(encoder)
        self.head = head
        self.loss = GatherLoss(loss)
        self.n_views = n_views

    def embed(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The projected views [b, V, D]: all views of the chunk through the networks in one call."""
        batch, n_views = views.shape[:2]
        projected = self.head(self.encoder(views.flatten(0, 1)))
        return (projected.view(batch, n_views, -1),)

    def loss_from(self, embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """The [B, V, D] loss on the global batch (gathered under torchrun)."""
        (projected,) = embeddings
        return self.loss(projected, labels)


def _loss_method(loss_name: str) -> Callable[[MethodContext, Strict], Method]:
    def build(ctx: MethodContext, options: Strict) -> Method:
        encoder = ctx.make_encoder()
        loss = losses.build(loss_name, **options.model_dump())
        return ContrastiveMethod(encoder, ctx.projection_head(encoder), loss, n_views=ctx.views)

    return build


for _name in LOSS_METHODS:  # their options schemas: cecl/plugin_options.py
    register_method(_name)(_loss_method(_name))
