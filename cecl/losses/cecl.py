"""Context-Enriched Contrastive Loss (CECL; the authors' ConTeX), Deng & Yang, IEEE TMM 2025.

A batch has B source images, each with V >= 2 augmented views: ``features`` is [B, V, D]. It is
flattened to N = V*B anchors, view-major (all first views, then all second views, ...). The loss
L2-normalises the features itself along D, so callers may pass unnormalised projections:
z_i = x_i / ||x_i||, s_ij = z_i . z_j / tau.

  P_a(i) = { p != i : label_p == label_i }  (includes i's own other views)
  N_a(i) = { n : label_n != label_i }
  P_b(i) = { p != i : same source image }
  D_b(i) = { k : k != i }

  L_a(i) = -1/|P_a(i)| * sum_{p in P_a(i)} [ s_ip - log sum_{n in N_a(i)} exp(s_in) ]
  L_b(i) = -1/|P_b(i)| * sum_{p in P_b(i)} [ s_ip - log sum_{k in D_b(i)} exp(s_ik) ]
  L = (tau / tau_base) * mean_i [ w * L_a(i) + (1 - w) * L_b(i) ]

  variant "hinge": each bracket term of L_a is replaced by min(0, s_ip - LSE_neg(i)),
  where LSE_neg(i) = log sum_{n in N_a(i)} exp(s_in).

L_b is exactly SimCLR's NT-Xent. Unlike SupCon, L_a's denominator excludes the positive (it holds only
different-label samples), so L_a is unbounded below; the hinge variant bounds it (L_a >= 0).

Degenerate anchors: an anchor with no context negative (every label in the batch equals its label) has
L_a(i) := 0, because there is nothing to contrast the label part against. L_b still counts, and the mean
is still over all N anchors; values and gradients stay finite (the official code returns inf/NaN here).

Numerics: similarity logits and log-sum-exps are computed in float32 (float64 for float64 input) with
autocast disabled, in row blocks that never hold the N x N matrix; see ``cecl.losses._common``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_block_rows,
    check_features,
    check_labels,
    check_positive,
    group_index,
    group_positive_dots,
    hinge_positive_sum,
    normalized_anchors,
    row_logsumexp,
    view_positive_dots,
)
from cecl.plugin_options import CECLOptions, default_of

Variant = Literal["official", "hinge"]
VARIANTS: tuple[str, ...] = ("official", "hinge")


class CECLLoss(nn.Module):
    """CECL / ConTeX loss; see the module docstring for the exact definition.

    Args:
        temperature: tau, > 0.
        base_temperature: tau_base, > 0; the loss is scaled by tau / tau_base (as in SupCon).
        weight: w in [0, 1], the weight of the label part L_a; the self part L_b gets 1 - w.
        variant: "official" or "hinge" (each L_a term clamped with min(0, .)).
        block_rows: rows of the similarity matrix processed at once (performance only; default picks
            about 2**21 elements per block on CPU, 2**26 elsewhere).

    ``forward(features [B, V, D], labels [B]) -> scalar``. Features need not be normalised.
    """

    def __init__(
        self,
        temperature: float = default_of(CECLOptions, "temperature"),
        base_temperature: float = default_of(CECLOptions, "base_temperature"),
        weight: float = 0.5,
        variant: Variant = "official",
        *,
        block_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive("base_temperature", base_temperature)
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"weight must be a number in [0, 1], got {weight!r}") from None
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight!r}")
        self.weight = w
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.variant: str = variant
        self.block_rows = check_block_rows(block_rows)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
            f"weight={self.weight}, variant={self.variant!r}"
        )

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        l_a, l_b = self._parts(features, labels, need_a=self.weight > 0, need_b=self.weight < 1)
        total: Tensor | None = None
        if l_a is not None:
            total = self.weight * l_a
        if l_b is not None:
            part = (1.0 - self.weight) * l_b
            total = part if total is None else total + part
        assert total is not None
        return (self.temperature / self.base_temperature) * total.mean()

    def components(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-anchor (L_a, L_b), each [N] in view-major order, unscaled (no tau / tau_base, no w).

        ``forward`` equals ``(tau / tau_base) * mean(w * L_a + (1 - w) * L_b)``. Differentiable.
        """
        l_a, l_b = self._parts(features, labels, need_a=True, need_b=True)
        assert l_a is not None and l_b is not None
        return l_a, l_b

    def _parts(
        self, features: Tensor, labels: Tensor, *, need_a: bool, need_b: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        batch, n_views, _ = check_features(features)
        checked = check_labels(labels, batch, features.device, required=True)
        assert checked is not None
        inv_tau = 1.0 / self.temperature
        with autocast_disabled(features.device.type):
            z = normalized_anchors(features)
            n = z.shape[0]
            groups, group_sizes, n_groups = group_index(checked, n_views)
            lse_all, lse_neg = row_logsumexp(
                z, groups if need_a else None, inv_tau, self.block_rows, n_groups=n_groups
            )
            l_a = l_b = None
            if need_b:
                positives = inv_tau * view_positive_dots(z, n_views)
                l_b = lse_all - positives / (n_views - 1)
            if need_a:
                has_negative = group_sizes < n
                n_positive = (group_sizes - 1).to(z.dtype)
                safe_lse_neg = torch.where(has_negative, lse_neg, 0.0)
                if self.variant == "hinge":
                    clamped = hinge_positive_sum(z, lse_neg, groups, inv_tau, self.block_rows)
                    per_anchor = -clamped / n_positive
                else:
                    positives = inv_tau * group_positive_dots(z, groups, n_groups)
                    per_anchor = safe_lse_neg - positives / n_positive
                l_a = torch.where(has_negative, per_anchor, 0.0)
        return l_a, l_b
