"""Contrastive methods: encoder -> projection head (L2-normalised) -> a [B, V, D] loss from cecl.losses.

cecl, supcon, simclr and the other [B, V, D] losses differ only in the loss; simclr's ignores the labels.
Under torchrun the projected features and labels of every process are gathered (with gradient) before the
loss, so each process computes the loss of the global batch (see ``cecl.train.distributed``); in a single
process the gather is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from cecl.methods.base import Method
from cecl.models import Encoder, ProjectionHead
from cecl.train.distributed import GatherLoss


class ContrastiveMethod(Method):
    def __init__(self, encoder: Encoder, head: ProjectionHead, loss: nn.Module, n_views: int = 2) -> None:
        super().__init__(encoder)
        self.head = head
        self.loss = GatherLoss(loss)
        self.n_views = n_views

    def training_loss(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, n_views = views.shape[:2]
        projected = self.head(self.encoder(views.flatten(0, 1)))
        return self.loss(projected.view(batch, n_views, -1), labels)
