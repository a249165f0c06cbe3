"""Supervised contrastive loss (SupCon, Khosla et al. 2020) and SimCLR's NT-Xent as its label-free case.

``features`` is [B, V, D] (V >= 2 views of B source images), flattened view-major to N = V*B anchors and
L2-normalised by the loss itself along D (callers may pass unnormalised projections):
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau. This is SupCon's L_out with contrast mode "all":

  P(i)    = P_a(i) = { p != i : label_p == label_i }   when labels are given (SupCon)
          = P_b(i) = { p != i : same source image }     when labels is None (SimCLR NT-Xent)
  loss_i  = -(tau / tau_base) * 1/|P(i)| * sum_{p in P(i)} [ s_ip - log sum_{k != i} exp(s_ik) ]
  L       = mean over all N anchors of loss_i

Every anchor has at least V - 1 >= 1 positives (its own other views), so there is no degenerate case.
Logits and log-sum-exps are computed in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

from torch import Tensor

from cecl.losses._base import TemperatureScaledLoss
from cecl.losses._common import (
    autocast_disabled,
    check_block_rows,
    check_features,
    check_labels,
    group_index,
    group_positive_dots,
    normalized_anchors,
    row_logsumexp,
    view_positive_dots,
)
from cecl.plugin_options import TemperatureOptions, default_of


class SupConLoss(TemperatureScaledLoss):
    """SupCon L_out ("all" contrast mode); ``labels=None`` gives SimCLR's NT-Xent.

    Args:
        temperature: tau, > 0.
        base_temperature: tau_base, > 0; the loss is scaled by tau / tau_base.
        block_rows: rows of the similarity matrix processed at once (performance only).

    ``forward(features [B, V, D], labels [B] | None) -> scalar``. Features need not be normalised.
    """

    def __init__(
        self,
        temperature: float = default_of(TemperatureOptions, "temperature"),
        base_temperature: float = default_of(TemperatureOptions, "base_temperature"),
        *,
        block_rows: int | None = None,
    ) -> None:
        super().__init__(temperature, base_temperature)
        self.block_rows = check_block_rows(block_rows)

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Unscaled per-anchor losses [N], view-major: -1/|P(i)| sum_p [s_ip - log sum_{k!=i} exp(s_ik)]."""
        batch, n_views, _ = check_features(features)
        checked = check_labels(labels, batch, features.device, required=False)
        inv_tau = 1.0 / self.temperature
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            lse_all, _ = row_logsumexp(z, None, inv_tau, self.block_rows)
            if checked is None:
                positives = view_positive_dots(z, n_views)
                n_positive: Tensor | int = n_views - 1
            else:
                groups, group_sizes, n_groups = group_index(checked, n_views)
                positives = group_positive_dots(z, groups, n_groups)
                n_positive = (group_sizes - 1).to(z.dtype)
            return lse_all - inv_tau * positives / n_positive


class SimCLRLoss(SupConLoss):
    """SimCLR's NT-Xent: a ``SupConLoss`` whose forward ignores the labels (always P_b)."""

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return super().forward(features, None)
