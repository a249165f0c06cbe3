"""Cross-entropy: the standard supervised reference (encoder + linear classifier, one view)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cecl.methods.base import Method
from cecl.models import Encoder


class CrossEntropyMethod(Method):
    n_views = 1

    def __init__(self, encoder: Encoder, n_classes: int) -> None:
        super().__init__(encoder)
        self.classifier = nn.Linear(encoder.feature_dim, n_classes)

    def training_loss(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(self.encoder(views[:, 0])), labels)
