"""Evaluating a frozen encoder on a dataset entry's splits: the probe and transfer stages' one entry point.

- :func:`probe_encoder`: features of every split, then the converged linear probe
  (cecl/eval/linear_probe.py), its L2 strength selected on validation, scored on test.
- :func:`score_classifier`: nothing is fitted; a saved classifier head (protocol joint's, or ce's own)
  is scored on validation and test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from cecl.config import ProbeParams
from cecl.data.splits import TensorSplit
from cecl.data.streaming import BatchSource
from cecl.eval.base import Evaluator
from cecl.eval.features import features_of
from cecl.eval.linear_probe import ProbeResult, linear_probe, logits_of

Splits = dict[str, TensorSplit | BatchSource]


def probe_encoder(
    encoder: nn.Module,
    splits: Splits,
    evaluator: Evaluator,
    params: ProbeParams,
    progress: Callable[[str], None] | None = None,
    autocast: torch.dtype | None = None,
) -> ProbeResult:
    """The linear probe of ``encoder`` on ``splits`` (train, val, test); ``progress`` gets one line a step."""
    say = progress or (lambda line: None)
    started = time.perf_counter()
    features = {name: features_of(encoder, split, autocast=autocast) for name, split in splits.items()}
    counts = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    say(f"features of {counts} images in {time.perf_counter() - started:.1f}s")
    return linear_probe(
        features,
        {name: split.targets for name, split in splits.items()},
        {name: split.bias for name, split in splits.items()},
        evaluator,
        params,
        progress=say,
    )


def classifier_metrics(
    encoder: nn.Module, classifier: nn.Module, split: TensorSplit | BatchSource, evaluator: Evaluator
) -> dict[str, float]:
    """The evaluator's metrics of ``classifier(encoder(images))`` on ``split`` (eval mode, unaugmented)."""
    return evaluator(logits_of(classifier, features_of(encoder, split)), split.targets, split.bias)


def score_classifier(
    encoder: nn.Module, classifier: nn.Module, epoch: int, splits: Splits, evaluator: Evaluator
) -> ProbeResult:
    """Score a saved head (its pretraining ``epoch``) on val and test: no test-selected counterpart."""
    scored = {
        name: classifier_metrics(encoder, classifier, splits[name], evaluator) for name in ("val", "test")
    }
    row: dict[str, float] = {"epoch": epoch}
    for name, metrics in scored.items():
        row.update({f"{name}_{k}": v for k, v in metrics.items()})
    return ProbeResult(
        selected={"epoch": epoch}, val=scored["val"], test=scored["test"], official=None, curve=[row]
    )
