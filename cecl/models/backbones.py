"""Backbones (encoders) by their params.yaml name, each registered beside its option schema.

- ``small_cnn`` (CPU default; options ``width``): three 3x3 conv-BN-ReLU stages (width, 2*width,
  4*width channels), 2x2 max-pool after the first two, global average pool. With width 16 on 28x28:
  2.15 MMACs per image (``count_macs``), cheap enough to pretrain four methods on two rhos on CPU.
- ``simple_conv_net`` (no options): BiasCon's SimpleConvNet (Hong & Yang 2021) for paper-scale runs:
  four 7x7 convs (16, 32, 64, 128 channels, padding 3, no stride) each with BN and ReLU, global pool.
- ``resnet18`` / ``resnet50`` (options ``cifar_stem``): torchvision's ResNets without their fc (512 /
  2048 features). ``cifar_stem`` is the SupContrast / CECL CIFAR variant: 3x3 stride-1 conv1, no max-pool.

Every ``Encoder`` takes images in [0, 1] and normalises them with its own per-channel mean and std, so
callers never normalise; mean = std = 0.5 is the old built-in ``x * 2 - 1``, bit for bit. ``payload``
holds the backbone name, its options, mean, std and weights: ``encoder_from_payload`` rebuilds it alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from cecl.plugin_options import BACKBONE_OPTIONS, NoOptions, ResNetOptions, SmallCNNOptions
from cecl.schema import Strict

Factory = Callable[[int, Any], tuple[nn.Module, int]]


@dataclass(frozen=True)
class _Backbone:
    options: type[Strict]
    factory: Factory


_REGISTRY: dict[str, _Backbone] = {}


def register_backbone(name: str, options: type[Strict] | None = None) -> Callable[[Factory], Factory]:
    """Decorator: register ``factory(in_channels, options) -> (trunk, feature_dim)`` under ``name``.

    A built-in backbone passes no ``options``: its schema is cecl/plugin_options.py's (torch-free: the config
    reads it there). An added backbone passes its own (a cecl.schema.Strict subclass).
    The trunk maps normalised images [B, C, H, W] to features [B, feature_dim] (pooling included).
    """
    if (options is None) != (name in BACKBONE_OPTIONS):
        where = "declares no options" if options is None else "is declared in cecl/plugin_options.py"
        raise ValueError(f"backbone {name!r}: its options schema {where}; a schema is declared once")
    if options is None:
        options = BACKBONE_OPTIONS[name]
    if not (isinstance(options, type) and issubclass(options, Strict)):
        raise TypeError(f"options schema of backbone {name!r} must be a cecl.schema.Strict subclass")

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = _Backbone(options, factory)
        return factory

    return decorator


def available_backbones() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def _entry(name: object) -> _Backbone:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def backbone_options_schema(name: str) -> type[Strict]:
    return _entry(name).options


class Encoder(nn.Module):
    """Per-channel normalisation, then ``trunk`` (features [B, feature_dim], pooling included).

    ``mean`` and ``std`` are non-persistent buffers: they follow ``.to(device)`` but stay out of
    ``state_dict`` (so state dicts of the old ``trunk.*``-only encoders load), and travel in ``payload``.
    """

    def __init__(
        self, trunk: nn.Module, feature_dim: int, mean: Sequence[float], std: Sequence[float], spec: dict
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.spec = copy.deepcopy(dict(spec))
        self._stats = ([float(m) for m in mean], [float(s) for s in std])  # as given, for the payload
        self.register_buffer("mean", torch.tensor(self._stats[0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self._stats[1]).view(1, -1, 1, 1), persistent=False)
        self.channels_last = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.trunk(x)

    def use_channels_last(self, enabled: bool = True) -> Encoder:
        """Lay conv weights and activations out NHWC (or back to NCHW); the values do not change.

        A layout, not a part of the model: it is not in ``payload`` and state dicts load either way.
        """
        self.channels_last = enabled
        self.trunk.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def payload(self) -> dict[str, Any]:
        """Everything needed to rebuild this encoder (``encoder_from_payload``), no params file needed."""
        return {
            "spec": copy.deepcopy(self.spec),
            "mean": list(self._stats[0]),
            "std": list(self._stats[1]),
            "state_dict": self.state_dict(),
        }


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<options>"
        parts.append(f"{key!r}: {e['msg']} (got {e['input']!r})")
    return "; ".join(parts)


def _validate_options(name: str, schema: type[Strict], options: Strict | Mapping | None) -> Strict:
    if options is None:
        options = {}
    if isinstance(options, schema):
        return options
    if not isinstance(options, Mapping):
        raise ValueError(
            f"options of backbone {name!r} must be a mapping or a {schema.__name__}, "
            f"got {type(options).__name__}"
        )
    try:
        return schema.model_validate(dict(options))
    except ValidationError as err:
        raise ValueError(f"bad option for backbone {name!r}: {_one_line(err)}") from None


def _channel_stats(what: str, values: object, in_channels: int) -> list[float]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"{what} must be a sequence of {in_channels} floats, got {type(values).__name__}")
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a sequence of {in_channels} floats, got {values!r}") from None
    if len(out) != in_channels:
        raise ValueError(f"{what} has {len(out)} values but in_channels is {in_channels}")
    if not all(math.isfinite(v) for v in out) or (what == "std" and min(out) <= 0):
        raise ValueError(f"{what} must be finite{' and positive' if what == 'std' else ''}, got {out}")
    return out


def build_backbone(
    name: str,
    in_channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: Strict | Mapping | None = None,
) -> Encoder:
    """Encoder by its params.yaml name; ``options`` is the backbone's schema instance or a mapping for it."""
    entry = _entry(name)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    mean_, std_ = _channel_stats("mean", mean, in_channels), _channel_stats("std", std, in_channels)
    opts = _validate_options(name, entry.options, options)
    trunk, feature_dim = entry.factory(in_channels, opts)
    spec = {"backbone": name, "in_channels": in_channels, "options": opts.model_dump()}
    return Encoder(trunk, feature_dim, mean_, std_, spec)


def encoder_from_payload(payload: Mapping) -> Encoder:
    """Rebuild an encoder from ``Encoder.payload()`` (e.g. after ``torch.load(..., weights_only=True)``)."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"encoder payload must be a mapping, got {type(payload).__name__}")
    missing = [k for k in ("spec", "mean", "std", "state_dict") if k not in payload]
    if missing:
        raise ValueError(f"encoder payload lacks {', '.join(missing)} (has: {', '.join(map(str, payload))})")
    spec, state = payload["spec"], payload["state_dict"]
    if not isinstance(spec, Mapping) or not {"backbone", "in_channels", "options"} <= set(spec):
        raise ValueError(f"encoder payload spec must map backbone, in_channels and options, got {spec!r}")
    if not isinstance(state, Mapping):
        raise ValueError(f"encoder payload state_dict must be a mapping, got {type(state).__name__}")
    encoder = build_backbone(
        spec["backbone"], spec["in_channels"], payload["mean"], payload["std"], spec["options"]
    )
    expected = encoder.state_dict()
    lacking = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if lacking or extra:
        raise ValueError(
            f"encoder payload state_dict does not fit backbone {spec['backbone']!r}: "
            f"missing {_few(lacking)}, unexpected {_few(extra)}"
        )
    wrong = [
        f"{k} {tuple(getattr(state[k], 'shape', ()))} != {tuple(v.shape)}"
        for k, v in expected.items()
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"encoder payload state_dict has wrong shapes: {_few(wrong)}")
    encoder.load_state_dict(state)
    return encoder


def _few(items: list[str], n: int = 3) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


class _GlobalAvgPool(nn.Module):
    """[B, C, H, W] -> [B, C]: the same ``mean(dim=(2, 3))`` the old encoders applied after the trunk."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _conv_bn_relu(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


# The pooling module goes last, so the conv/BN indices (and the ``trunk.*`` state-dict keys) are the
# old encoders' ones.
@register_backbone("small_cnn")
def small_cnn(in_channels: int, options: SmallCNNOptions) -> tuple[nn.Module, int]:
    w = options.width
    trunk = nn.Sequential(
        *_conv_bn_relu(in_channels, w, 3),
        nn.MaxPool2d(2),
        *_conv_bn_relu(w, 2 * w, 3),
        nn.MaxPool2d(2),
        *_conv_bn_relu(2 * w, 4 * w, 3),
        _GlobalAvgPool(),
    )
    return trunk, 4 * w


@register_backbone("simple_conv_net")
def simple_conv_net(in_channels: int, options: NoOptions) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    for c_in, c_out in zip((in_channels, 16, 32, 64), (16, 32, 64, 128), strict=True):
        layers += _conv_bn_relu(c_in, c_out, 7)
    return nn.Sequential(*layers, _GlobalAvgPool()), 128


# torchvision's ResNets rather than hand-written ones: a well-kept, widely used implementation (its
# Bottleneck puts the stride on the 3x3 conv, "ResNet v1.5", and initialises as He et al.), so only the
# stem and the fc are ours to get right. SupContrast's own CIFAR ResNet has the same blocks, and its
# stem is ``cifar_stem``.
def _resnet(arch: str, in_channels: int, options: ResNetOptions) -> nn.Module:
    import torchvision.models  # here, not at module level: it adds ~1.5 s to every stage's start-up

    net = getattr(torchvision.models, arch)(weights=None)
    if options.cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if options.cifar_stem or in_channels != 3:  # the init torchvision gives every conv
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()
    return net


@register_backbone("resnet18")
def resnet18(in_channels: int, options: ResNetOptions) -> tuple[nn.Module, int]:
    return _resnet("resnet18", in_channels, options), 512


@register_backbone("resnet50")
def resnet50(in_channels: int, options: ResNetOptions) -> tuple[nn.Module, int]:
    return _resnet("resnet50", in_channels, options), 2048


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
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
