"""Negative cosine similarity between predictions and stop-gradient targets: the loss of SimSiam (Chen & He,
CVPR 2021, "Exploring Simple Siamese Representation Learning", arXiv 2011.10566, Eq. 1) and, up to the
affine map 2 - 2 * cos, of BYOL (Grill et al., NeurIPS 2020, arXiv 2006.07733, Eq. 2).

  D(p, z) = -1/M * sum_m  p_m . stopgrad(z_m) / (||p_m|| ||z_m||)

over the M = prod(shape[:-1]) vectors (the feature axis is the last one). This is a building block, NOT a
[B, V, D] contrastive loss: ``negative_cosine_similarity(p, z)`` / ``NegativeCosineSimilarity()(p, z)`` take
predictions and targets of the same shape [..., D]; methods combine the directions themselves, e.g.
SimSiam's symmetric L = D(p1, z2) / 2 + D(p2, z1) / 2.

``stop_gradient=True`` (default) detaches z. Values equal lightly's ``NegativeCosineSimilarity()(p, z)``;
gradients equal it with respect to p, while z gets none (lightly does not detach: callers do). Zero vectors
raise ValueError instead of being absorbed by an epsilon (on ``cecl.losses._common.EAGER_CHECK_DEVICES``;
elsewhere they give NaN, as do non-finite inputs, without a host-device sync). Computed in float32
(float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cecl.losses._common import autocast_disabled, check_bool, compute_dtype, eager_checks


def _unit(name: str, x: Tensor) -> Tensor:
    """``x / ||x||`` along the last dim; a zero vector raises (eager devices) or becomes NaN (elsewhere)."""
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if not eager_checks(x.device):
        return x / torch.where(norms > 0, norms, math.nan)
    if not bool((norms > 0).all()):
        raise ValueError(f"{name} contains a zero-norm vector, whose cosine similarity is undefined")
    return x / norms


def negative_cosine_similarity(p: Tensor, z: Tensor, *, stop_gradient: bool = True) -> Tensor:
    """-mean cosine similarity of ``p`` and ``z`` (detached unless ``stop_gradient=False``) along dim -1."""
    for name, x in (("p", p), ("z", z)):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape [..., D], got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] < 1 or x.numel() == 0:
            raise ValueError(f"{name} must be a non-empty tensor of shape [..., D], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if eager_checks(x.device) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if p.shape != z.shape:
        raise ValueError(f"p and z must have the same shape, got {tuple(p.shape)} and {tuple(z.shape)}")
    if stop_gradient:
        z = z.detach()
    with autocast_disabled(p.device.type):
        dtype = torch.float64 if torch.float64 in (p.dtype, z.dtype) else compute_dtype(p.dtype)
        cosines = (_unit("p", p.to(dtype)) * _unit("z", z.to(dtype))).sum(-1)
        return -cosines.mean()


class NegativeCosineSimilarity(nn.Module):
    """Module form of ``negative_cosine_similarity``: ``forward(p [..., D], z [..., D]) -> scalar``."""

    def __init__(self, stop_gradient: bool = True) -> None:
        super().__init__()
        self.stop_gradient = check_bool("stop_gradient", stop_gradient)

    def extra_repr(self) -> str:
        return f"stop_gradient={self.stop_gradient}"

    def forward(self, p: Tensor, z: Tensor) -> Tensor:
        return negative_cosine_similarity(p, z, stop_gradient=self.stop_gradient)
