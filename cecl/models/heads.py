"""Heads on top of an encoder.

- ``ProjectionHead``: Linear-ReLU-Linear to ``out_dim``, L2-normalised (SupContrast's MLP head).
- ``mlp_head``: an un-normalised two-layer MLP, Linear-[BN]-ReLU-Linear-[BN], the projector / predictor
  shape of SimSiam, BYOL and NNCLR (their losses normalise themselves, and the predictor must see the raw
  projection).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim or in_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=-1)


def mlp_head(
    in_dim: int, hidden_dim: int, out_dim: int, *, batch_norm: bool = True, output_norm: bool = False
) -> nn.Sequential:
    """Linear(in, hidden) - [BatchNorm1d] - ReLU - Linear(hidden, out) - [BatchNorm1d(affine=False)].

    ``batch_norm`` puts BN on the hidden layer (bias-free Linear before it); ``output_norm`` (only with
    ``batch_norm``) adds SimSiam's affine-free BN on the output (Chen & He 2021, BN ablation).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(), nn.Linear(hidden_dim, out_dim, bias=not (batch_norm and output_norm))]
    if batch_norm and output_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def head_output_dim(head: nn.Module) -> int:
    """Output size of a head: the ``out_features`` of its last Linear layer (queue and prototype sizes)."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot infer the head's output size (no nn.Linear); pass its size explicitly")
    return linears[-1].out_features
