"""Momentum (EMA) target networks, shared by MoCo v2 / SupMoCo (key networks) and BYOL (target networks).

A target network is a deep copy of an online module whose parameters the optimiser never trains
(``requires_grad`` False); after every optimiser step they follow the online parameters as an exponential
moving average:

  theta_k <- m * theta_k + (1 - m) * theta_q

(He et al., CVPR 2020, MoCo, Eq. 2; Grill et al., NeurIPS 2020, BYOL, arXiv 2006.07733, Sec. 3.1, with
tau = m). m = 1 freezes the target, m = 0 copies the online weights. Only parameters are averaged: the
target's buffers (BatchNorm running statistics) come from its own forward passes, as in MoCo and in
lightly's ``update_momentum``.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def check_momentum(momentum: float) -> float:
    """The EMA coefficient m as a float in [0, 1] (NaN and non-numbers are rejected)."""
    try:
        value = float(momentum)
    except (TypeError, ValueError):
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    return value


def momentum_copy(module: ModuleT) -> ModuleT:
    """A deep copy of ``module`` whose parameters do not require gradients (a momentum target)."""
    target = copy.deepcopy(module)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q over the parameters of ``target`` (in place).

    Two multi-tensor ops over all parameters (``torch._foreach_mul_`` / ``_foreach_add_``), a few kernel
    launches instead of two per parameter; the same arithmetic as ``p_k.mul_(m).add_(p_q, alpha=1 - m)``.
    """
    online_params = [p.detach() for p in online.parameters()]
    target_params = list(target.parameters())
    if len(online_params) != len(target_params):
        raise ValueError(
            f"momentum_update: {len(online_params)} online parameters but {len(target_params)} target ones"
        )
    if not target_params:
        return
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
