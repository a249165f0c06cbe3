"""Batch-hard triplet margin loss, Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
Re-Identification", arXiv 1703.07737 (margin form of the batch-hard loss; FaceNet's margin 0.2).

``features`` is [B, V, D], flattened view-major to N = V*B anchors and L2-normalised by the loss;
d(i, j) = || z_i - z_j ||_2 (Euclidean distance between unit vectors, in [0, 2]).

  P(i)   = { p != i : label_p == label_i }   (labels given)  or  { p != i : same source image } (None)
  N(i)   = { n : label_n != label_i }        (labels given)  or  { n : different source image } (None)
  loss_i = max(0, max_{p in P(i)} d(i, p) - min_{n in N(i)} d(i, n) + margin)    (hardest pos. / neg.)
  L      = mean of loss_i over the valid anchors (N(i) non-empty)          reduction = "mean" (Hermans)
         = mean of loss_i over the anchors with loss_i > 0 (0 if none)      reduction = "mean_nonzero"

"mean_nonzero" is exactly pytorch-metric-learning's ``TripletMarginLoss(margin)`` (default
``AvgNonZeroReducer``, ``LpDistance`` on normalised embeddings) fed the triplets of ``BatchHardMiner()``
on the flattened embeddings and labels repeated per view; "mean" = that value * (#nonzero / #valid).
If no anchor has a negative (one class in the batch), the loss is 0 (with a zero gradient).

The hardest positive and negative are mined without gradient from the cosine similarities (float32, or
float64 for float64 input, autocast disabled; the N x N matrix is formed); the two selected distances are
then recomputed exactly as norms of differences, so identical vectors give a zero, finite gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from cecl.losses._common import autocast_disabled, check_inputs, check_nonnegative, normalized_anchors

Reduction = Literal["mean", "mean_nonzero"]
REDUCTIONS: tuple[str, ...] = ("mean", "mean_nonzero")


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet margin loss on L2-normalised embeddings; see the module docstring.

    Args:
        margin: the margin, >= 0 (default 0.2).
        reduction: "mean" over valid anchors (Hermans et al.) or "mean_nonzero" (pytorch-metric-learning).

    ``forward(features [B, V, D], labels [B] | None) -> scalar``. Features need not be normalised.
    """

    def __init__(self, margin: float = 0.2, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.margin = check_nonnegative("margin", margin)
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
        self.reduction: str = reduction

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        losses, valid = self.per_anchor(features, labels)
        count = valid.sum() if self.reduction == "mean" else (valid & (losses > 0)).sum()
        return losses.sum() / count.clamp_min(1).to(losses.dtype)

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-anchor losses [N] (0 for invalid anchors) and the valid-anchor mask [N], view-major."""
        _, _, groups = check_inputs(features, labels)
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            with torch.no_grad():
                cos = z @ z.T
                same = groups[:, None] == groups[None, :]
                not_self = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
                # Farthest positive = smallest cosine; nearest negative = largest cosine.
                hardest_pos = cos.masked_fill(~(same & not_self), math.inf).argmin(1)
                hardest_neg = cos.masked_fill(same, -math.inf).argmax(1)
                valid = (~same).any(1)
            d_ap = torch.linalg.vector_norm(z - z[hardest_pos], dim=1)
            d_an = torch.linalg.vector_norm(z - z[hardest_neg], dim=1)
            losses = torch.relu(d_ap - d_an + self.margin)
            return torch.where(valid, losses, 0.0), valid
