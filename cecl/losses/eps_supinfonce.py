"""epsilon-SupInfoNCE, Barbano, Dufumier, Tartaglione, Grangetto & Gori, ICLR 2023, "Unbiased Supervised
Contrastive Learning", arXiv 2211.05568 (Eq. 9, the "out" form used in their experiments).

``features`` is [B, V, D], flattened view-major to N = V*B anchors and L2-normalised by the loss:
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau.

  P(i)   = { p != i : label_p == label_i },  N(i) = { n : label_n != label_i }   (labels given)
  P(i)   = { p != i : same source image },   N(i) = { n : different source image } (labels None)
  l_ip   = -log( exp(s_ip) / (exp(s_ip - eps) + sum_{n in N(i)} exp(s_in)) )
         = logaddexp(s_ip - eps, LSE_{n in N(i)} s_in) - s_ip
  loss_i = (tau / tau_base) * 1/|P(i)| * sum_{p in P(i)} l_ip
  L      = mean over all N anchors of loss_i

Unlike SupCon, the denominator holds only the positive at hand (shifted by the margin eps) and the
negatives, never the other positives. eps is a margin on the temperature-scaled logits (the authors' code
multiplies exp(s_ip) by exp(-eps) after dividing by tau); eps = 0 is SupInfoNCE.

Defaults: tau = 0.1, tau_base = 0.1 (scale 1, as in the authors' code where both default to the same value),
eps = 0.1 (the authors' code defaults to eps = 0 and tunes eps per dataset; 0.1 is this project's choice).
Degenerate anchors: with no negative (one class in the batch) the term is -log exp(eps) = -eps, finite with
zero gradient; no small constant is added inside the log (the authors' code adds 1e-6).

Numerics: float32 logits (float64 for float64 input) with autocast disabled; the N x N similarity matrix is
formed (O(N^2) memory) because every (anchor, positive) pair needs its own denominator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cecl.losses._base import TemperatureScaledLoss
from cecl.losses._common import (
    autocast_disabled,
    check_inputs,
    check_nonnegative,
    masked_logsumexp,
    normalized_anchors,
)
from cecl.plugin_options import EpsSupInfoNCEOptions, default_of


class EpsSupInfoNCELoss(TemperatureScaledLoss):
    """epsilon-SupInfoNCE; see the module docstring.

    Args:
        temperature: tau, > 0.
        base_temperature: tau_base, > 0; the loss is scaled by tau / tau_base.
        epsilon: the margin eps >= 0 on the scaled positive logit in the denominator.

    ``forward(features [B, V, D], labels [B] | None) -> scalar``. Features need not be normalised.
    """

    def __init__(
        self,
        temperature: float = default_of(EpsSupInfoNCEOptions, "temperature"),
        base_temperature: float = default_of(EpsSupInfoNCEOptions, "base_temperature"),
        epsilon: float = 0.1,
    ) -> None:
        super().__init__(temperature, base_temperature)
        self.epsilon = check_nonnegative("epsilon", epsilon)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epsilon={self.epsilon}"

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Unscaled per-anchor losses [N], view-major."""
        _, _, groups = check_inputs(features, labels)
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            s = (z @ z.T) / self.temperature
            same = groups[:, None] == groups[None, :]
            positive = same & ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
            lse_neg = masked_logsumexp(s, ~same, dim=1)
            terms = torch.logaddexp(s - self.epsilon, lse_neg[:, None]) - s
            return (terms * positive).sum(1) / positive.sum(1).to(s.dtype)
