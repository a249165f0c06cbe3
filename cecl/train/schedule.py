"""Learning-rate schedules: linear warm-up per step, then cosine per epoch (SupContrast's recipe) or
step decay at milestone epochs (BiasCon's BiasedMNIST recipe: x0.1 after epochs 26 and 53), or constant.

Written as a pure function of (epoch, step) rather than a torch scheduler so that resuming from a
checkpoint needs no scheduler state and cannot drift from an uninterrupted run.
"""

from __future__ import annotations

import math

from cecl.config import OptimizerParams


def _cosine(opt: OptimizerParams, epoch: int, total_epochs: int) -> float:
    eta_min = opt.lr * 1e-3
    return eta_min + (opt.lr - eta_min) * (1 + math.cos(math.pi * epoch / total_epochs)) / 2


def _after_warmup(opt: OptimizerParams, epoch: int, total_epochs: int) -> float:
    if opt.milestones:
        return opt.lr * opt.gamma ** sum(epoch >= m for m in opt.milestones)
    return _cosine(opt, epoch, total_epochs) if opt.cosine else opt.lr


def learning_rate(
    opt: OptimizerParams, epoch: int, step: int, steps_per_epoch: int, total_epochs: int
) -> float:
    """Learning rate for 0-based ``epoch`` and ``step`` within it."""
    if epoch < opt.warmup_epochs:
        target = _after_warmup(opt, opt.warmup_epochs, total_epochs)
        progress = (epoch * steps_per_epoch + step) / (opt.warmup_epochs * steps_per_epoch)
        return opt.warmup_from + progress * (target - opt.warmup_from)
    return _after_warmup(opt, epoch, total_epochs)
