"""Joint training (protocol ``joint``): cross-entropy on a linear classifier head plus a method's own loss.

BiasCon's protocol for the bias benchmarks (Hong & Yang 2021, "Unbiased Classification through
Bias-Contrastive and Bias-Balanced Learning", NeurIPS; github.com/grayhong/bias-contrastive-learning)
trains encoder and classifier end to end and scores the jointly trained classifier, instead of fitting
a linear probe on a frozen encoder afterwards. For a method with loss L_method:

    L = CE(W f(x_1), y) + w * L_method(views, y)

where f is the method's encoder, x_1 the first view of each image (``views[:, 0]``), W a linear head
``nn.Linear(feature_dim, n_classes)`` and w = ``pretrain.joint_weight``. (BiasCon weights the CE by 0.01
and its contrastive loss by 1: up to a rescaling of the whole loss, to which Adam is nearly invariant,
that is w = 100.) Cross-entropy
itself already has a classifier head: joint ce is plain ce (its head, its loss, unweighted).

The per-sample cross-entropies are gathered with gradient over the processes before the mean (as in
``cross_entropy.py``), so torchrun training stays exactly the single-process objective on the global
batch. This wrapper is not a registered method: the loop wraps the configured method in it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cecl.distributed import gather_with_grad
from cecl.methods.base import Method
from cecl.methods.cross_entropy import CrossEntropyMethod


class JointMethod(Method):
    """``inner`` + a linear head trained jointly: CE(classifier(encoder(views[:, 0]))) + w * inner loss."""

    selects_best_epoch = True  # the loop keeps best_epoch / best_state (cecl/methods/base.py)

    def __init__(self, inner: Method, n_classes: int, weight: float) -> None:
        super().__init__(inner.encoder)  # shared: one set of encoder parameters
        if weight < 0:
            raise ValueError(f"joint weight must be >= 0, got {weight}")
        self.inner = inner
        self.weight = float(weight)
        self.is_cross_entropy = isinstance(inner, CrossEntropyMethod)
        # Set by the training loop: the best validation epoch (1-based) and its CPU state dicts
        # {"encoder": ..., "classifier": ...}, i.e. what the protocol reports.
        self.best_epoch: int | None = None
        self.best_state: dict[str, dict[str, torch.Tensor]] | None = None
        # Cross-entropy's own head is the jointly trained classifier; every other method gets a new one.
        self.classifier = (
            inner.classifier if self.is_cross_entropy else nn.Linear(inner.encoder.feature_dim, n_classes)
        )

    @property
    def n_views(self) -> int:  # type: ignore[override]
        return self.inner.n_views

    @property
    def augments(self) -> bool:  # type: ignore[override]
        return self.inner.augments

    def embed(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logits [b, classes] of view 0, *the inner method's embeddings); joint ce: ce's own."""
        if self.is_cross_entropy:
            return self.inner.embed(views, labels)  # joint ce == ce
        logits = self.classifier(self.encoder(views[:, 0]))
        return (logits, *self.inner.embed(views, labels))

    def loss_from(self, embeddings: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """CE(logits, y) + w * the inner method's loss (both on the global batch)."""
        if self.is_cross_entropy:
            return self.inner.loss_from(embeddings, labels)
        logits, *inner = embeddings
        ce = gather_with_grad(F.cross_entropy(logits, labels, reduction="none")).mean()
        return ce + self.weight * self.inner.loss_from(tuple(inner), labels)

    def after_step(self) -> None:
        self.inner.after_step()

    def export(self, last_epoch: int) -> dict[str, Any]:
        """The encoder and the jointly trained head of the validation-selected epoch (not the last)."""
        if self.best_state is None:
            raise ValueError("joint training kept no best epoch (no epoch was scored on validation)")
        payload = self.encoder.payload()
        payload["state_dict"] = self.best_state["encoder"]
        payload["classifier"] = {"state_dict": self.best_state["classifier"], "epoch": self.best_epoch}
        return payload
