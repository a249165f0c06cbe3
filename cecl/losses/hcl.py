"""Hard-negative contrastive loss (HCL), Robinson, Chuang, Sra & Jegelka, ICLR 2021, "Contrastive Learning
with Hard Negative Samples", arXiv 2010.04592: the debiased contrastive loss (Chuang et al. 2020) with
negatives importance-weighted by their hardness.

``features`` is [B, V, D], flattened view-major to N = V*B anchors and L2-normalised by the loss:
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau.

  P(i)   = { p != i : same source image },  N(i) = { k : different source image },  M = |N(i)| = N - V
  R(i)   = M * sum_{k in N(i)} exp((1 + beta) s_ik) / sum_{k in N(i)} exp(beta s_ik)
           (the hardness-reweighted negative mass: importance weights exp(beta s_ik), normalised to mean 1)
  Ng(ip) = max( (R(i) - tau_plus * M * exp(s_ip)) / (1 - tau_plus),  M * exp(-1 / tau) )
  loss_i = 1/|P(i)| * sum_{p in P(i)} -log( exp(s_ip) / (exp(s_ip) + Ng(ip)) )
  L      = mean over all N anchors of loss_i

tau_plus is the class prior (the probability that a "negative" shares the anchor's class; debiasing), beta
the hardness concentration; the lower clamp is the theoretical minimum of Ng (every exp(s) >= exp(-1/tau)).
The importance weights are differentiated through, as in the authors' code. For V = 2 each anchor has one
positive and this is the authors' objective; for V > 2 the per-positive terms are averaged.

Defaults (the paper's CIFAR settings): tau = 0.5, beta = 1.0, tau_plus = 0.1. beta = 0, tau_plus = 0 gives
SimCLR's NT-Xent exactly. Labels are accepted (validated) and ignored (HCL is self-supervised). B >= 2 is
required (negatives). Everything is computed in log space (R, exp(s_ip) and the clamp floor share one
shift), in float32 (float64 for float64 input) with autocast disabled; the two negative log-sum-exps use
``row_logsumexp`` with source-image groups and never materialise the N x N matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_block_rows,
    check_inputs,
    check_nonnegative,
    check_positive,
    normalized_anchors,
    row_logsumexp,
)
from cecl.plugin_options import HCLOptions, default_of


class HCLLoss(nn.Module):
    """Hard-negative (debiased) contrastive loss; see the module docstring.

    Args:
        temperature: tau, > 0.
        beta: hardness concentration, >= 0 (0 = uniform weights over negatives).
        tau_plus: class prior for debiasing, in [0, 1) (0 = no debiasing).
        block_rows: rows of the similarity matrix processed at once (performance only).

    ``forward(features [B, V, D], labels [B] | None) -> scalar``; labels are ignored.
    """

    def __init__(
        self,
        temperature: float = default_of(HCLOptions, "temperature"),
        beta: float = 1.0,
        tau_plus: float = 0.1,
        *,
        block_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.beta = check_nonnegative("beta", beta)
        self.tau_plus = check_nonnegative("tau_plus", tau_plus)
        if not self.tau_plus < 1.0:
            raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus!r}")
        self.block_rows = check_block_rows(block_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}, tau_plus={self.tau_plus}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.per_anchor(features, labels).mean()

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-anchor losses [N], view-major."""
        batch, n_views, _ = check_inputs(features, labels, negatives_for="HCL")
        inv_tau = 1.0 / self.temperature
        n = batch * n_views
        log_m = math.log(n - n_views)
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            source = torch.arange(batch, device=z.device).repeat(n_views)
            hard_tau, weight_tau = inv_tau * (1.0 + self.beta), inv_tau * self.beta
            _, lse_hard = row_logsumexp(z, source, hard_tau, self.block_rows, n_groups=batch)
            _, lse_weight = row_logsumexp(z, source, weight_tau, self.block_rows, n_groups=batch)
            log_r = (log_m + lse_hard - lse_weight)[:, None]  # [N, 1]
            views = z.view(n_views, batch, -1)
            s_pos = inv_tau * torch.einsum("vbd,wbd->vbw", views, views).reshape(n, n_views)  # [N, V]
            log_floor = log_m - inv_tau
            shift = torch.maximum(torch.maximum(log_r, s_pos), torch.full_like(s_pos, log_floor)).detach()
            debiased = (log_r - shift).exp()
            if self.tau_plus > 0:
                debiased = debiased - (math.log(self.tau_plus) + log_m + s_pos - shift).exp()
            negatives = torch.maximum(debiased / (1.0 - self.tau_plus), (log_floor - shift).exp())
            terms = shift + torch.log((s_pos - shift).exp() + negatives) - s_pos  # [N, V]
            is_positive = (
                torch.arange(n_views, device=z.device).repeat_interleave(batch)[:, None]
                != (torch.arange(n_views, device=z.device)[None, :])
            )
            return (terms * is_positive).sum(1) / (n_views - 1)
