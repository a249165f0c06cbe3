"""SupCon's L_in (Khosla et al., NeurIPS 2020, "Supervised Contrastive Learning", arXiv 2004.11362, Eq. 3):
the mean over positives taken *inside* the log (the paper's L_out, ``SupConLoss``, takes it outside).

``features`` is [B, V, D], flattened view-major to N = V*B anchors and L2-normalised by the loss:
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau.

  P(i)   = { p != i : label_p == label_i }   (labels given)  or  { p != i : same source image } (None)
  loss_i = -(tau / tau_base) * log( 1/|P(i)| * sum_{p in P(i)} exp(s_ip) / sum_{k != i} exp(s_ik) )
         =  (tau / tau_base) * ( LSE_{k != i} s_ik - LSE_{p in P(i)} s_ip + log |P(i)| )
  L      = mean over all N anchors of loss_i

By Jensen, L_in <= L_out, with equality when every anchor has exactly one positive (V = 2 and all labels
distinct, or labels None with V = 2). Defaults as ``SupConLoss``: tau = 0.1, tau_base = 0.07. Every anchor
has at least V - 1 >= 1 positives, so no anchor is degenerate.

Numerics: float32 logits (float64 for float64 input) with autocast disabled. The positives' log-sum-exp is
a masked log-sum-exp over the N x N similarity matrix, which this loss does form (O(N^2) memory).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cecl.losses._base import TemperatureScaledLoss
from cecl.losses._common import autocast_disabled, check_inputs, masked_logsumexp, normalized_anchors
from cecl.plugin_options import TemperatureOptions, default_of


class SupConInLoss(TemperatureScaledLoss):
    """SupCon L_in; ``labels=None`` uses the other views of the same image as the positives.

    Args:
        temperature: tau, > 0.
        base_temperature: tau_base, > 0; the loss is scaled by tau / tau_base.

    ``forward(features [B, V, D], labels [B] | None) -> scalar``. Features need not be normalised.
    """

    def __init__(
        self,
        temperature: float = default_of(TemperatureOptions, "temperature"),
        base_temperature: float = default_of(TemperatureOptions, "base_temperature"),
    ) -> None:
        super().__init__(temperature, base_temperature)

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Unscaled per-anchor losses [N], view-major: LSE_all(i) - LSE_pos(i) + log |P(i)|."""
        _, _, groups = check_inputs(features, labels)
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            s = (z @ z.T) / self.temperature
            not_self = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
            positive = (groups[:, None] == groups[None, :]) & not_self
            lse_all = masked_logsumexp(s, not_self, dim=1)
            lse_pos = masked_logsumexp(s, positive, dim=1)
            return lse_all - lse_pos + positive.sum(1).to(s.dtype).log()
