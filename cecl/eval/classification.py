"""Classification metrics: top-1, top-5 and mean per-class accuracy.

- top-1 = mean_i [argmax_k logits_ik == y_i]
- top-5 = mean_i [y_i among the 5 largest logits of i] (only when there are more than 5 classes)
- mean per-class accuracy = mean over the classes present in the split of that class's top-1
  (the Caltech transfer protocol's metric: it weighs every class equally, however many images it has)
"""

from __future__ import annotations

import torch

from cecl.eval.base import Evaluator


class Classification(Evaluator):
    name = "classification"
    metrics = ("accuracy", "mean_per_class_accuracy")  # and "top5_accuracy" with more than 5 classes
    primary = metrics[0]

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
    ) -> dict[str, float]:
        logits, targets = self.check(logits, targets)
        correct = (logits.argmax(dim=1) == targets).double()
        counts = torch.bincount(targets, minlength=self.n_classes).double()
        hits = torch.bincount(targets, weights=correct, minlength=self.n_classes)
        present = counts > 0
        accuracy, per_class = float(correct.mean()), float((hits[present] / counts[present]).mean())
        scores = dict(zip(self.metrics, (accuracy, per_class), strict=True))
        if self.n_classes > 5:
            top5 = logits.topk(5, dim=1).indices
            scores["top5_accuracy"] = float((top5 == targets[:, None]).any(dim=1).double().mean())
        return scores
