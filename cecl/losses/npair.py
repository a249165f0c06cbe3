"""Multi-class N-pair loss, Sohn, NeurIPS 2016, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", on the pairs formed by two views of each source image.

``features`` is [B, V, D]; every feature is L2-normalised by the loss: z_{v,b} = x_{b,v} / ||x_{b,v}||.
For an ordered view pair (v, w), image b's anchor is z_{v,b} and its positive z_{w,b}; the other images'
w-views are its negatives, except those with the anchor's label (N-pair assumes one pair per class):

  l_{bj}        = z_{v,b} . z_{w,j} / tau
  K(b)          = { j : j == b or label_j != label_b }           (labels None: every j, all pairs distinct)
  loss_{v,w}(b) = log( 1 + sum_{j in K(b), j != b} exp(l_{bj} - l_{bb}) ) = LSE_{j in K(b)} l_{bj} - l_{bb}
  L             = mean over b and over the ordered view pairs: all (v, w) with v != w (symmetric=True),
                  or only (v, w) = (0, 1), Sohn's asymmetric anchor/positive form (symmetric=False)

Sohn's embeddings are unnormalised with an L2 penalty; here they are normalised (as every loss in this
package and pytorch-metric-learning's ``NPairsLoss`` with its default ``DotProductSimilarity``), and tau
(default 1.0, no scaling) is an optional temperature. With all labels distinct (or labels None) and
symmetric=False, tau = 1, this equals pml ``NPairsLoss()(cat[view 0, view 1], cat[ids, ids])``; pml with
repeated labels instead keeps one pair per label and drops the rest (and may pair two first views), which
is a different estimator. Labels are used only to take same-label pairs out of an anchor's negatives.

Numerics: float32 logits (float64 for float64 input) with autocast disabled; B x B logits per view pair.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_bool,
    check_features,
    check_labels,
    check_positive,
    masked_logsumexp,
    normalized_anchors,
)
from cecl.plugin_options import NPairOptions, default_of


class NPairLoss(nn.Module):
    """Multi-class N-pair loss on view pairs; see the module docstring.

    Args:
        temperature: tau, > 0 (1.0 = Sohn's unscaled inner products).
        symmetric: average over all ordered view pairs (True) or use view 0 -> view 1 only (False).

    ``forward(features [B, V, D], labels [B] | None) -> scalar``. Features need not be normalised.
    """

    def __init__(
        self, temperature: float = default_of(NPairOptions, "temperature"), symmetric: bool = True
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.symmetric = check_bool("symmetric", symmetric)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, symmetric={self.symmetric}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        batch, n_views, _ = check_features(features)
        checked = check_labels(labels, batch, features.device, required=False)
        with autocast_disabled(features.device.type):
            views = normalized_anchors(features).view(n_views, batch, -1)
            eye = torch.eye(batch, dtype=torch.bool, device=views.device)
            keep = torch.ones_like(eye) if checked is None else eye | (checked[:, None] != checked[None, :])
            pairs = [(v, w) for v in range(n_views) for w in range(n_views) if v != w]
            if not self.symmetric:
                pairs = [(0, 1)]
            total = views.new_zeros(())
            for v, w in pairs:
                logits = (views[v] @ views[w].T) / self.temperature
                total = total + (masked_logsumexp(logits, keep, dim=1) - logits.diagonal()).mean()
            return total / len(pairs)
