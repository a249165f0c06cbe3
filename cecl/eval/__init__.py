"""Evaluators: turn a classifier's logits on a split into the metrics a paper table reports.

- ``Classification``: top-1, top-5 (when there are more than 5 classes) and mean per-class accuracy.
- ``GroupBias``: plain, unbiased (mean over (target, bias) groups), bias-aligned and bias-conflicting
  accuracy for any aligned mask (the diagonal for BiasedMNIST, majority pairs for CelebA / UTKFace).

A dataset spec says which evaluator it uses; the probe and the report only see the metric names.
"""

from cecl.eval.base import Evaluator
from cecl.eval.classification import Classification
from cecl.eval.group_bias import GroupBias, group_bias_metrics

__all__ = ["Classification", "Evaluator", "GroupBias", "group_bias_metrics"]
