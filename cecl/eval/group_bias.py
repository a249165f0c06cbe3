"""Group-bias metrics (ReBias, Bahng et al. 2020; BiasCon, Hong & Yang 2021) for any aligned mask.

A group is one (target, bias value) pair; ``aligned[t, b]`` says whether the pair is bias-aligned
(BiasedMNIST: colour b == digit t, the diagonal; CelebA / UTKFace: the majority pairs).
- accuracy: over all samples
- unbiased accuracy: mean over the non-empty groups of the group accuracy (every group counts equally)
- aligned / conflicting accuracy: the same mean over the non-empty aligned / other groups (NaN if none)
Empty groups are left out, not counted as 0 or 1.
"""

from __future__ import annotations

import numpy as np
import torch

from cecl.eval.base import Evaluator

# The names of the metrics above, in that order: spelled here once (GroupBias.metrics declares them).
GROUP_BIAS_METRICS = ("accuracy", "unbiased_accuracy", "aligned_accuracy", "conflicting_accuracy")


def group_bias_metrics(
    preds: np.ndarray, targets: np.ndarray, bias: np.ndarray, aligned: np.ndarray
) -> dict[str, float]:
    """The metrics above from integer predictions, targets and bias values (numpy, 1-D)."""
    n_classes, n_bias = aligned.shape
    preds, targets, bias = (np.asarray(a, dtype=np.int64) for a in (preds, targets, bias))
    if not (preds.shape == targets.shape == bias.shape) or preds.ndim != 1 or preds.size == 0:
        raise ValueError("preds, targets and bias must be non-empty 1-D arrays of one length")
    if bias.min() < 0 or bias.max() >= n_bias:
        raise ValueError(f"bias values must lie in 0..{n_bias - 1}")
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(f"targets must lie in 0..{n_classes - 1}")
    group = targets * n_bias + bias
    counts = np.bincount(group, minlength=n_classes * n_bias)
    correct = np.bincount(group, weights=(preds == targets).astype(np.float64), minlength=counts.size)
    present = counts > 0
    group_acc = np.divide(correct, counts, out=np.zeros_like(correct), where=present)
    mask = np.asarray(aligned, dtype=bool).ravel()

    def group_mean(selected: np.ndarray) -> float:
        return float(group_acc[selected].mean()) if selected.any() else float("nan")

    values = (
        float((preds == targets).mean()),
        group_mean(present),
        group_mean(present & mask),
        group_mean(present & ~mask),
    )
    return dict(zip(GROUP_BIAS_METRICS, values, strict=True))


class GroupBias(Evaluator):
    name = "group_bias"
    metrics = GROUP_BIAS_METRICS
    primary = GROUP_BIAS_METRICS[1]  # unbiased accuracy: every (target, bias) group counts equally

    def __init__(self, n_classes: int, aligned: np.ndarray) -> None:
        super().__init__(n_classes)
        aligned = np.asarray(aligned, dtype=bool)
        if aligned.ndim != 2 or aligned.shape[0] != n_classes:
            raise ValueError(f"aligned mask must be [{n_classes}, n_bias], got {list(aligned.shape)}")
        self.aligned = aligned

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> dict[str, float]:
        logits, targets = self.check(logits, targets)
        if bias is None:
            raise ValueError("the group-bias evaluator needs the bias attribute of every sample")
        preds = logits.argmax(dim=1).numpy()
        return group_bias_metrics(preds, targets.numpy(), bias.detach().cpu().numpy(), self.aligned)
