"""The one interface every pretraining method implements, so the training loop never branches on a name.

A method owns the encoder plus whatever its objective needs (projection head, classifier, later a
momentum target or a queue) and turns a batch of augmented views into a scalar loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from cecl.models import Encoder


class Method(nn.Module, ABC):
    """Encoder + objective. ``n_views`` is how many augmented views per image the loop must make."""

    n_views: int = 2
    augments: bool = True  # False: the loop feeds the images un-augmented (vanilla cross-entropy)

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @abstractmethod
    def training_loss(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """views: [B, V, C, H, W] floats in [0, 1]; labels: [B]. Returns a scalar loss."""

    def after_step(self) -> None:
        """Hook after each optimiser step (momentum targets, queues). Default: nothing."""
