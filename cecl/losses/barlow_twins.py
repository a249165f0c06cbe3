"""Barlow Twins, Zbontar, Jing, Misra, LeCun & Deny, ICML 2021, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", arXiv 2103.03230.

``features`` is [B, V, D] (not L2-normalised: each feature dimension is standardised over the batch
instead, so zero vectors are valid input). For two views a, b with embeddings Z^a, Z^b [B, D]:

  Zhat   = (Z - mean_batch Z) / sqrt(var_batch Z + 1e-5)   (BatchNorm without affine: biased variance)
  C_ij   = 1/B * sum_b Zhat^a_bi Zhat^b_bj                  (cross-correlation, D x D)
  L_ab   = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2
  L      = mean of L_ab over the V(V-1)/2 unordered view pairs (V = 2: exactly L_01)

L_ab = L_ba (C transposes), so the loss is symmetric in the views. Default lambda = 5e-3 (the paper's).
This is exactly lightly's ``BarlowTwinsLoss(lambda_param)`` for V = 2 (unscaled sum, as in the paper).
Labels are accepted (validated) and ignored. B >= 2 is required (batch statistics). A dimension that is
constant over the batch standardises to 0 (the 1e-5 keeps it finite).
Computed in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cecl.losses._common import autocast_disabled, check_features, check_labels, compute_dtype

BN_EPS = 1e-5


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss; see the module docstring.

    Args:
        lambda_param: weight of the off-diagonal (redundancy) term, >= 0.

    ``forward(features [B, V, D], labels [B] | None) -> scalar``; labels are ignored.
    """

    def __init__(self, lambda_param: float = 5e-3) -> None:
        super().__init__()
        try:
            lam = float(lambda_param)
        except (TypeError, ValueError):
            raise ValueError(f"lambda_param must be a number >= 0, got {lambda_param!r}") from None
        if not (0.0 <= lam < math.inf):
            raise ValueError(f"lambda_param must be a finite number >= 0, got {lambda_param!r}")
        self.lambda_param = lam

    def extra_repr(self) -> str:
        return f"lambda_param={self.lambda_param}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        batch, n_views, dim = check_features(features)
        check_labels(labels, batch, features.device, required=False)
        if batch < 2:
            raise ValueError(f"Barlow Twins needs at least 2 source images (B >= 2), got B={batch}")
        with autocast_disabled(features.device.type):
            x = features.to(compute_dtype(features.dtype))
            mean = x.mean(0, keepdim=True)
            standardised = (x - mean) / torch.sqrt(x.var(0, unbiased=False, keepdim=True) + BN_EPS)
            eye = torch.eye(dim, dtype=torch.bool, device=x.device)
            total = x.new_zeros(())
            n_pairs = 0
            for v in range(n_views):
                for w in range(v + 1, n_views):
                    c = standardised[:, v].T @ standardised[:, w] / batch
                    on_diagonal = (1.0 - c.diagonal()).pow(2).sum()
                    off_diagonal = c.masked_fill(eye, 0.0).pow(2).sum()
                    total = total + on_diagonal + self.lambda_param * off_diagonal
                    n_pairs += 1
            return total / n_pairs
