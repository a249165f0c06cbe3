"""Encoders for 28x28 colour digits.

- ``small_cnn`` (CPU default): three 3x3 conv-BN-ReLU stages (width, 2*width, 4*width channels),
  2x2 max-pool after the first two, global average pool. With width 16: 2.15 MMACs per image
  (``count_macs``), cheap enough to pretrain four methods on two rhos inside the CPU budget.
- ``simple_conv_net``: BiasCon's SimpleConvNet (Hong & Yang 2021) for paper-scale runs: four 7x7
  convs (16, 32, 64, 128 channels, padding 3, no stride) each with BN and ReLU, global average pool.

Both take images in [0, 1] and centre them to [-1, 1] themselves, so callers never normalise.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class Encoder(nn.Module):
    """Conv trunk + global average pool; ``feature_dim`` is the size of the output vector."""

    def __init__(self, trunk: nn.Sequential, feature_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images * 2.0 - 1.0).mean(dim=(2, 3))


def small_cnn(width: int = 16, in_channels: int = 3) -> Encoder:
    w = width
    trunk = nn.Sequential(
        *_conv_bn_relu(in_channels, w, 3),
        nn.MaxPool2d(2),
        *_conv_bn_relu(w, 2 * w, 3),
        nn.MaxPool2d(2),
        *_conv_bn_relu(2 * w, 4 * w, 3),
    )
    return Encoder(trunk, 4 * w)


def simple_conv_net(in_channels: int = 3) -> Encoder:
    layers: list[nn.Module] = []
    for c_in, c_out in zip((in_channels, 16, 32, 64), (16, 32, 64, 128), strict=True):
        layers += _conv_bn_relu(c_in, c_out, 7)
    return Encoder(nn.Sequential(*layers), 128)


def build_encoder(name: str, width: int = 16) -> Encoder:
    """Encoder by its params.yaml name (``model.backbone``)."""
    if name == "small_cnn":
        return small_cnn(width)
    if name == "simple_conv_net":
        return simple_conv_net()
    raise ValueError(f"unknown backbone {name!r}; known: small_cnn, simple_conv_net")


def count_macs(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 28, 28)) -> int:
    """Multiply-accumulates of one forward pass through the conv and linear layers (per batch given)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += out.numel() * k

    def linear_hook(module: nn.Linear, _inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
