"""Cross-entropy: the standard supervised reference (encoder + linear classifier, one view).

The loss is the mean over the global batch: under torchrun the per-sample losses of every process are
gathered with gradient, so uneven shards weigh each sample equally, as one process would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cecl.distributed import gather_with_grad
from cecl.methods.base import Method
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder
from cecl.plugin_options import CEOptions


class CrossEntropyMethod(Method):
    n_views = 1

    def __init__(self, encoder: Encoder, n_classes: int, augment: bool = False) -> None:
        super().__init__(encoder)
        self.augments = augment
        self.classifier = nn.Linear(encoder.feature_dim, n_classes)

    def embed(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The logits [b, classes] of the one view."""
        return (self.classifier(self.encoder(views[:, 0])),)

    def loss_from(self, embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the global batch."""
        (logits,) = embeddings
        return gather_with_grad(F.cross_entropy(logits, labels, reduction="none")).mean()

    def export(self, last_epoch: int) -> dict[str, Any]:
        """The encoder and its own head after the last epoch, so the probe stage also scores that head."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.classifier.state_dict().items()}
        return {**self.encoder.payload(), "classifier": {"state_dict": state, "epoch": last_epoch}}


@register_method("ce")
def _build(ctx: MethodContext, options: CEOptions) -> Method:
    return CrossEntropyMethod(ctx.make_encoder(), ctx.n_classes, augment=options.augment)
