"""Decoupled Contrastive Learning loss (DCL and its weighted form DCLW), Yeh et al., ECCV 2022,
"Decoupled Contrastive Learning", arXiv 2110.06848.

``features`` is [B, V, D], flattened view-major to N = V*B anchors and L2-normalised by the loss:
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau. DCL is SimCLR's NT-Xent with the positive removed from the
denominator ("decoupled"):

  P(i)   = { p != i : same source image }            (the other V - 1 views of i's image)
  N(i)   = { k : different source image }            (so k != i and k not in P(i))
  w_ip   = 1                                         (DCL)
         = 2 - exp(c_ip / sigma) / mean_{(j,q) positive pairs} exp(c_jq / sigma)   (DCLW)
  loss_i = -1/|P(i)| * sum_{p in P(i)} w_ip * s_ip + log sum_{k in N(i)} exp(s_ik)
  L      = mean over all N anchors of loss_i

c_ip = z_i . z_p is the cosine similarity (no temperature); the von Mises-Fisher weight w_ip uses
sigma = 0.5 (the paper's value) and is treated as a constant (no gradient flows through it), like lightly's
``DCLWLoss``. For V = 2 this is exactly lightly's ``DCLLoss`` / ``DCLWLoss`` (the mean of the two
directions view 1 -> view 2 and view 2 -> view 1); for V > 2 the positives are all other views of the
same image and the weights are normalised by the mean over all V(V-1)B ordered positive pairs.

Defaults: tau = 0.1, sigma = 0.5. Labels are accepted (validated) and ignored: DCL is self-supervised.
B >= 2 is required (with one source image there are no negatives and the loss is -inf).
Logits and log-sum-exps are computed in float32 (float64 for float64 input) with autocast disabled; the
negatives' log-sum-exp never materialises the N x N matrix (``row_logsumexp`` with source-image groups).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_block_rows,
    check_bool,
    check_inputs,
    check_positive,
    normalized_anchors,
    row_logsumexp,
)
from cecl.plugin_options import DCLOptions, DCLWOptions, default_of


class DCLLoss(nn.Module):
    """Decoupled contrastive loss; ``weighted=True`` gives DCLW. See the module docstring.

    Args:
        temperature: tau, > 0.
        weighted: multiply each positive term by the von Mises-Fisher weight w_ip (DCLW).
        sigma: the weight's scale, > 0 (used only when ``weighted``).
        block_rows: rows of the similarity matrix processed at once (performance only).

    ``forward(features [B, V, D], labels [B] | None) -> scalar``; labels are ignored.
    """

    def __init__(
        self,
        temperature: float = default_of(DCLOptions, "temperature"),
        weighted: bool = False,
        sigma: float = 0.5,
        *,
        block_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.weighted = check_bool("weighted", weighted)
        self.sigma = check_positive("sigma", sigma)
        self.block_rows = check_block_rows(block_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weighted={self.weighted}, sigma={self.sigma}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.per_anchor(features, labels).mean()

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-anchor losses [N], view-major."""
        batch, n_views, _ = check_inputs(features, labels, negatives_for="DCL")
        inv_tau = 1.0 / self.temperature
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            source = torch.arange(batch, device=z.device).repeat(n_views)
            _, lse_neg = row_logsumexp(z, source, inv_tau, self.block_rows, n_groups=batch)
            views = z.view(n_views, batch, -1)
            cosines = torch.einsum("vbd,wbd->vwb", views, views)  # c between views v and w of image b
            off_diagonal = ~torch.eye(n_views, dtype=torch.bool, device=z.device)[:, :, None]
            if self.weighted:
                scaled = (cosines.detach() / self.sigma).masked_fill(~off_diagonal, float("-inf"))
                n_pairs = n_views * (n_views - 1) * batch
                weights = 2.0 - n_pairs * torch.softmax(scaled.flatten(), 0).view_as(cosines)
                cosines = cosines * weights
            positives = cosines.masked_fill(~off_diagonal, 0.0).sum(1).flatten() / (n_views - 1)
            return lse_neg - inv_tau * positives


class DCLWLoss(DCLLoss):
    """DCLW: ``DCLLoss`` with the von Mises-Fisher weighting (sigma = 0.5) always on."""

    def __init__(
        self,
        temperature: float = default_of(DCLWOptions, "temperature"),
        sigma: float = 0.5,
        *,
        block_rows: int | None = None,
    ) -> None:
        super().__init__(temperature, weighted=True, sigma=sigma, block_rows=block_rows)
