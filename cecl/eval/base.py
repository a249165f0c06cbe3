"""The evaluator interface and the input checks every evaluator shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


class Evaluator(ABC):
    """``evaluator(logits [N, K], targets [N], bias [N] | None) -> {metric: float}`` (fractions).

    ``metrics`` declares the names every call returns (it may return more, e.g. top-5 only with more than
    5 classes); metrics.json's builder (cecl/records.py) checks the scores against it, and ``primary`` is
    one of them, so a metric name is spelled once, where the evaluator declares it.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the metrics every call returns, in the order it returns them
    primary: ClassVar[str]  # the metric used to select epochs on the validation split

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.primary not in cls.metrics:
            raise TypeError(f"{cls.__name__}: primary metric {cls.primary!r} is not among {cls.metrics}")

    def __init__(self, n_classes: int) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = n_classes

    @abstractmethod
    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> dict[str, float]: ...

    def check(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [N, n_classes] and targets [N] in 0..n_classes-1, on the CPU."""
        logits, targets = logits.detach().cpu(), targets.detach().cpu().long()
        if logits.ndim != 2 or logits.shape[1] != self.n_classes:
            raise ValueError(f"logits must be [N, {self.n_classes}], got {list(logits.shape)}")
        if targets.shape != (logits.shape[0],):
            raise ValueError(f"targets must be [{logits.shape[0]}], got {list(targets.shape)}")
        if targets.numel() == 0:
            raise ValueError("cannot evaluate an empty split")
        if targets.min() < 0 or targets.max() >= self.n_classes:
            raise ValueError(f"targets must lie in 0..{self.n_classes - 1}")
        return logits, targets
