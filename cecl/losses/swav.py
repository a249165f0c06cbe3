"""SwAV, Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, NeurIPS 2020, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", arXiv 2006.09882 (Sec. 3.1, Eq. 1-3, Algorithm 1).

``scores`` is [B, V, K]: s_bvk = z_bv . c_k, the prototype scores of view v of image b (cosine
similarities of the L2-normalised projection z_bv with the L2-normalised prototypes c_1..c_K; the loss
itself accepts any finite scores).

Codes (Sinkhorn-Knopp on the DETACHED scores, separately for each view v, over the batch): with the
K x B matrix Q_kb = exp(s_bvk / eps), normalised to sum to 1,

  repeat n times:   Q_kb <- Q_kb / sum_b' Q_kb'          (rows: equal mass 1/K per prototype)
                    Q_kb <- Q_kb / (B * sum_k' Q_k'b)    (columns: equal mass 1/B per image)
  q_bv = B * Q_:b                                         (so sum_k q_bvk = 1)

(the official code's extra 1/K after the row step cancels in the column step). Here the iterations run in
the log domain: log Q is shifted by row / column log-sum-exps instead of multiplying exponentials, the
same algorithm up to rounding, but finite for any finite scores and epsilon (exp(s / eps) overflows
float32 once s / eps > 88).

Swapped prediction: p_bv = softmax(s_bv / tau) over the K prototypes, and

  L = 1 / (V (V - 1)) * sum_t sum_{s != t} 1/B * sum_b [ - sum_k q_btk log p_bsk ]

(the code of view t is predicted from every other view s; mean over images and over the V (V - 1) ordered
view pairs). The gradient flows only through log p (the codes are targets). Defaults: tau = 0.1,
n = 3 iterations, eps = 0.05 (the paper's). Symmetric in the views and invariant to permuting the
batch. Labels are accepted (validated) and ignored.

Relation to lightly 1.6.0: L equals ``lightly.loss.SwaVLoss(tau, n, eps)(high_resolution_outputs=[scores[:,
v] for v in range(V)], low_resolution_outputs=[])`` in value and gradient; lightly returns a tensor of shape
[1] (its 1/(n_crops - 1) per code and 1/(number of high-resolution crops) is the same pair average),
this loss a 0-d scalar. Not implemented here: multi-crop (low-resolution views that get no codes) and the
queue of earlier batches' scores.

Computed in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cecl.losses._common import (
    autocast_disabled,
    check_count,
    check_features,
    check_labels,
    check_positive,
    compute_dtype,
)
from cecl.plugin_options import SwAVOptions, default_of


def check_scores(scores: Tensor) -> tuple[int, int, int]:
    """Validate prototype ``scores`` of shape [B, V, K]; returns (B, V, K)."""
    return check_features(scores, name="scores", last="K")


@torch.no_grad()
def sinkhorn_codes(scores: Tensor, iterations: int = 3, epsilon: float = 0.05) -> Tensor:
    """Soft codes q [B, V, K] of each view from Sinkhorn-Knopp over the batch (module docstring).

    ``scores`` [B, V, K] in the compute dtype (no gradient is taken). Each q_bv sums to 1 over K; the
    prototypes' total mass over the batch tends to B / K as ``iterations`` grows (equipartition).
    """
    log_q = scores / epsilon
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)  # rows: each prototype over the images
        log_q = log_q - torch.logsumexp(log_q, dim=2, keepdim=True)  # columns: each image over prototypes
    return log_q.exp()


class SwaVLoss(nn.Module):
    """SwAV swapped-prediction loss on prototype scores; see the module docstring.

    Args:
        temperature: tau of the prediction softmax, > 0.
        sinkhorn_iterations: Sinkhorn-Knopp iterations n, a positive integer.
        sinkhorn_epsilon: entropic regularisation eps of the codes, > 0.

    ``forward(scores [B, V, K], labels [B] | None) -> scalar``; labels are ignored.
    """

    def __init__(
        self,
        temperature: float = default_of(SwAVOptions, "temperature"),
        sinkhorn_iterations: int = 3,
        sinkhorn_epsilon: float = 0.05,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.sinkhorn_iterations = check_count("sinkhorn_iterations", sinkhorn_iterations)
        self.sinkhorn_epsilon = check_positive("sinkhorn_epsilon", sinkhorn_epsilon)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, sinkhorn_iterations={self.sinkhorn_iterations}, "
            f"sinkhorn_epsilon={self.sinkhorn_epsilon}"
        )

    def codes(self, scores: Tensor) -> Tensor:
        """The Sinkhorn codes q [B, V, K] (compute dtype, no gradient) of validated ``scores``."""
        check_scores(scores)
        with autocast_disabled(scores.device.type):
            x = scores.detach().to(compute_dtype(scores.dtype))
            return sinkhorn_codes(x, self.sinkhorn_iterations, self.sinkhorn_epsilon)

    def forward(self, scores: Tensor, labels: Tensor | None = None) -> Tensor:
        batch, n_views, _ = check_scores(scores)
        check_labels(labels, batch, scores.device, required=False)
        with autocast_disabled(scores.device.type):
            x = scores.to(compute_dtype(scores.dtype))
            q = sinkhorn_codes(x.detach(), self.sinkhorn_iterations, self.sinkhorn_epsilon)
            log_p = F.log_softmax(x / self.temperature, dim=2)
            # sum_{t} sum_{s != t} q_t . log p_s = (sum_t q_t) . (sum_s log p_s) - sum_t q_t . log p_t
            all_pairs = torch.sum(q.sum(1) * log_p.sum(1))
            same_view = torch.sum(q * log_p)
            return -(all_pairs - same_view) / (batch * n_views * (n_views - 1))
