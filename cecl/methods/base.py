"""The one interface every pretraining method implements, so the training loop never branches on a name.

A method owns the encoder plus whatever its objective needs (projection head, classifier, later a
momentum target or a queue) and turns a batch of augmented views into a scalar loss, in two parts:

  training_loss(views, labels) = loss_from(embed(views, labels), labels)

``embed`` is everything computed per source image (encoder, heads, predictors, momentum targets under
no_grad): each output has the source images along dim 0, so ``embed`` of a batch equals the concatenation
of ``embed`` of its chunks, BatchNorm statistics aside. ``loss_from`` is everything that couples the batch
(gathers across processes, the loss, queue look-ups, Sinkhorn, the enqueue bookkeeping of the step). The
split is what gradient caching needs (cecl/train/grad_cache.py: embed in chunks, one loss over all).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from cecl.models import Encoder


class Method(nn.Module, ABC):
    """Encoder + objective. ``n_views`` is how many augmented views per image the loop must make."""

    n_views: int = 2
    augments: bool = True  # False: the loop feeds the images un-augmented (vanilla cross-entropy)
    # The best-epoch hook (joint training): True makes the loop score ``self.classifier`` on validation
    # every monitored epoch and keep the best epoch's encoder and classifier in ``best_epoch`` and
    # ``best_state`` (and in the checkpoint), which ``export`` saves. The loop reads this flag, never the
    # method's type.
    selects_best_epoch: ClassVar[bool] = False

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @abstractmethod
    def embed(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """views: [b, V, C, H, W] floats in [0, 1]; labels: [b]. The per-image outputs, each [b, ...]."""

    @abstractmethod
    def loss_from(self, embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """The scalar loss of the (process's shard of the) batch from all of its ``embed`` outputs.

        Called once per step: side effects that belong to the step (a queue's pending keys) happen here.
        """

    def training_loss(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """views: [B, V, C, H, W] floats in [0, 1]; labels: [B]. Returns a scalar loss."""
        return self.loss_from(self.embed(views, labels), labels)

    def after_step(self) -> None:
        """Hook after each optimiser step (momentum targets, queues). Default: nothing."""

    def export(self, last_epoch: int) -> dict[str, Any]:
        """What the pretrain stage saves of this method after ``last_epoch`` (cecl/saved_model.py).

        The encoder's payload (``cecl.models.encoder_from_payload`` reads it back); a method whose own
        head is scored as well adds ``classifier: {state_dict, epoch}``. The loop asks the method, so it
        never checks a method's type to decide what to save.
        """
        return self.encoder.payload()
