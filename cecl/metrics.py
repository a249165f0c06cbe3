"""Bias metrics on BiasedMNIST: plain, unbiased (group-mean), bias-aligned and bias-conflicting accuracy.

Definitions follow ReBias (Bahng et al., 2020) and BiasCon (Hong & Yang, 2021): a *group* is one
(digit, colour) pair; colour ``c`` is *aligned* with digit ``c``. The unbiased accuracy is the mean of
the per-group accuracies, so each of the 10x10 groups counts equally however many samples it has;
on the unbiased test set (rho = 0.1) it is close to, but not equal to, the plain accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_int_array(values: Any, name: str) -> np.ndarray:
    """A 1-D integer numpy array from a torch tensor (any device), numpy array or sequence."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _as_int_array(preds, "preds"), _as_int_array(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds and labels must have the same length, got {p.shape[0]} and {y.shape[0]}")
    if p.size == 0:
        raise ValueError("preds and labels are empty")
    return p, y


def accuracy(preds: Any, labels: Any) -> float:
    """Fraction of ``preds`` equal to ``labels`` (1-D, same length; torch or numpy)."""
    p, y = _check(preds, labels)
    return float((p == y).mean())


def bias_metrics(preds: Any, labels: Any, colours: Any, n_classes: int = 10) -> dict[str, float | int]:
    """Accuracy metrics of predictions on a coloured-digit set, as plain Python numbers.

    Returns
    - ``accuracy``: fraction of correct predictions over all samples.
    - ``unbiased_accuracy``: mean over the non-empty (digit, colour) groups of the group accuracy
      (ReBias/BiasCon's "unbiased" metric; empty groups are left out, not counted as 0 or 1).
    - ``aligned_accuracy``: mean of the group accuracies of the non-empty aligned groups
      (colour == digit); NaN when there is none.
    - ``conflicting_accuracy``: mean of the group accuracies of the non-empty bias-conflicting
      groups (colour != digit); NaN when there is none.
    - ``n_groups``: number of non-empty groups (100 on the full unbiased test set);
      ``n_aligned`` / ``n_conflicting``: number of *samples* in aligned / conflicting groups.
    """
    p, y = _check(preds, labels)
    c = _as_int_array(colours, "colours")
    if c.shape != y.shape:
        raise ValueError(f"colours must have the same length as labels, got {c.shape[0]} and {y.shape[0]}")
    for name, values in (("labels", y), ("colours", c)):
        if values.min() < 0 or values.max() >= n_classes:
            raise ValueError(f"{name} must lie in [0, {n_classes}), got [{values.min()}, {values.max()}]")

    group = y * n_classes + c
    counts = np.bincount(group, minlength=n_classes * n_classes)
    correct = np.bincount(group, weights=(p == y).astype(np.float64), minlength=n_classes * n_classes)
    present = counts > 0
    group_acc = np.divide(correct, counts, out=np.zeros_like(correct), where=present)
    aligned = np.eye(n_classes, dtype=bool).ravel()

    def group_mean(mask: np.ndarray) -> float:
        return float(group_acc[mask].mean()) if mask.any() else float("nan")

    return {
        "accuracy": float((p == y).mean()),
        "unbiased_accuracy": group_mean(present),
        "aligned_accuracy": group_mean(present & aligned),
        "conflicting_accuracy": group_mean(present & ~aligned),
        "n_groups": int(present.sum()),
        "n_aligned": int(counts[aligned].sum()),
        "n_conflicting": int(counts[~aligned].sum()),
    }
