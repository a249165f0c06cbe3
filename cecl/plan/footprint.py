"""What one image costs a backbone, measured once on the CPU: activation bytes, MACs, parameters.

Activation memory is the bytes of the tensors autograd saves for the backward pass
(``torch.autograd.graph.saved_tensors_hooks``, storages counted once, parameters excluded), measured at
1 and 2 images so the per-image slope excludes constants (e.g. bf16 weight casts). It scales linearly with
the images in one forward, which is what the training step's peak memory grows with. Autocast bf16 is
measured under CPU autocast, whose casts match CUDA's for convolutions and matmuls (the saved inputs are
bf16); BatchNorm's saved statistics are float32 either way. MACs are the conv and linear multiply-adds
(``cecl.models.count_macs``). Each figure is measured in well under 2 s (ResNet-50 at 224 px) and
cached per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import torch

from cecl.models import build_backbone
from cecl.models.backbones import count_macs


@dataclass(frozen=True)
class Footprint:
    """Per image of one backbone at one input shape and precision."""

    activation_bytes: float  # saved for backward per image in one training forward
    macs: int  # forward multiply-adds per image
    parameters: int  # encoder parameters


def _saved_bytes(encoder: torch.nn.Module, images: torch.Tensor, bf16: bool) -> int:
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        encoder(images)
    return sum(storages.values())


def _encoder(backbone: str, options_json: str, channels: int) -> torch.nn.Module:
    encoder = build_backbone(
        backbone, channels, (0.5,) * channels, (0.5,) * channels, json.loads(options_json)
    ).use_channels_last(True)
    return encoder.train()


@cache
def _macs(backbone: str, options_json: str, shape: tuple[int, int, int]) -> tuple[int, int]:
    encoder = _encoder(backbone, options_json, shape[0])
    return count_macs(encoder, (1, *shape)), sum(p.numel() for p in encoder.parameters())


@cache
def _activation_bytes(backbone: str, options_json: str, shape: tuple[int, int, int], bf16: bool) -> float:
    encoder = _encoder(backbone, options_json, shape[0])
    generator = torch.Generator().manual_seed(0)
    one, two = (_saved_bytes(encoder, torch.rand(n, *shape, generator=generator), bf16) for n in (1, 2))
    return float(two - one)


def macs(backbone: str, options: dict, shape: tuple[int, int, int]) -> int:
    """Forward multiply-adds per image of ``backbone`` on images of ``shape`` (C, H, W)."""
    return _macs(backbone, json.dumps(options, sort_keys=True), tuple(shape))[0]


@cache
def _feature_dim(backbone: str, options_json: str, channels: int) -> int:
    return int(_encoder(backbone, options_json, channels).feature_dim)


def feature_dim(backbone: str, options: dict, channels: int) -> int:
    """The encoder's feature width (what the linear probe is fitted on)."""
    return _feature_dim(backbone, json.dumps(options, sort_keys=True), channels)


def footprint(backbone: str, options: dict, shape: tuple[int, int, int], bf16: bool) -> Footprint:
    """The per-image :class:`Footprint` of ``backbone`` (``options``) on images of ``shape`` (C, H, W)."""
    key = (backbone, json.dumps(options, sort_keys=True), tuple(shape))
    n_macs, parameters = _macs(*key)
    return Footprint(_activation_bytes(*key, bf16), n_macs, parameters)
