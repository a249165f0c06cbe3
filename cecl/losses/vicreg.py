"""VICReg, Bardes, Ponce & LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", arXiv 2105.04906.

``features`` is [B, V, D] (not L2-normalised, so zero vectors are valid input). For two views a, b with
embeddings Z^a, Z^b [B, D]:

  s(Z^a, Z^b) = 1/(B D) * sum_b || Z^a_b - Z^b_b ||^2                          (invariance, MSE)
  v(Z)        = 1/D * sum_j max(0, 1 - sqrt(Var_unbiased(Z_:j) + eps))         (variance hinge, eps 1e-4)
  c(Z)        = 1/D * sum_{i != j} Cov(Z)_ij^2,  Cov = (Z - mean)^T (Z - mean) / (B - 1)
  L_ab        = lambda * s + mu * (v(Z^a) + v(Z^b)) / 2 + nu * (c(Z^a) + c(Z^b))
  L           = mean of L_ab over the V(V-1)/2 unordered view pairs (V = 2: exactly L_01)

Defaults: lambda = mu = 25, nu = 1 (the paper's). The variance term averages the two branches and the
covariance term sums them, as in the authors' code; this is exactly lightly's
``VICRegLoss(lambda_param, mu_param, nu_param, eps=1e-4)`` for V = 2. Symmetric in the views.
Labels are accepted (validated) and ignored. B >= 2 is required (unbiased variance).
Computed in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_features,
    check_labels,
    check_nonnegative,
    compute_dtype,
)


class VICRegLoss(nn.Module):
    """VICReg loss; see the module docstring.

    Args:
        lambda_param: invariance weight, >= 0.
        mu_param: variance weight, >= 0.
        nu_param: covariance weight, >= 0.
        eps: added to the variance inside the square root, >= 0.

    ``forward(features [B, V, D], labels [B] | None) -> scalar``; labels are ignored.
    """

    def __init__(
        self, lambda_param: float = 25.0, mu_param: float = 25.0, nu_param: float = 1.0, eps: float = 1e-4
    ) -> None:
        super().__init__()
        self.lambda_param = check_nonnegative("lambda_param", lambda_param)
        self.mu_param = check_nonnegative("mu_param", mu_param)
        self.nu_param = check_nonnegative("nu_param", nu_param)
        self.eps = check_nonnegative("eps", eps)

    def extra_repr(self) -> str:
        return (
            f"lambda_param={self.lambda_param}, mu_param={self.mu_param}, nu_param={self.nu_param}, "
            f"eps={self.eps}"
        )

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        batch, n_views, dim = check_features(features)
        check_labels(labels, batch, features.device, required=False)
        if batch < 2:
            raise ValueError(f"VICReg needs at least 2 source images (B >= 2), got B={batch}")
        with autocast_disabled(features.device.type):
            x = features.to(compute_dtype(features.dtype))
            centred = x - x.mean(0, keepdim=True)
            variance = centred.pow(2).sum(0) / (batch - 1)  # [V, D]
            # eps = 0 with a constant dimension would give sqrt(0), whose gradient is infinite.
            std = torch.sqrt(variance + self.eps) if self.eps > 0 else torch.sqrt(variance.clamp_min(1e-30))
            variance_term = torch.relu(1.0 - std).mean(1)  # [V]
            cov = torch.einsum("bvi,bvj->vij", centred, centred) / (batch - 1)  # [V, D, D]
            off_diagonal = ~torch.eye(dim, dtype=torch.bool, device=x.device)
            covariance_term = cov.pow(2).masked_fill(~off_diagonal, 0.0).sum((1, 2)) / dim  # [V]
            total = x.new_zeros(())
            n_pairs = 0
            for v in range(n_views):
                for w in range(v + 1, n_views):
                    invariance = (x[:, v] - x[:, w]).pow(2).mean()
                    total = (
                        total
                        + self.lambda_param * invariance
                        + self.mu_param * 0.5 * (variance_term[v] + variance_term[w])
                        + self.nu_param * (covariance_term[v] + covariance_term[w])
                    )
                    n_pairs += 1
            return total / n_pairs
