"""The backbone registry: names, option validation, shapes, CIFAR stem, normalisation, payloads, MACs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torchvision
from torch import nn

from cecl.models import (
    Encoder,
    available_backbones,
    backbone_options_schema,
    build_backbone,
    count_macs,
    encoder_from_payload,
)

FEATURE_DIM = {"small_cnn": 64, "simple_conv_net": 128, "resnet18": 512, "resnet50": 2048}


def _build(name: str, in_channels: int = 3, options: dict | None = None) -> Encoder:
    return build_backbone(name, in_channels, [0.5] * in_channels, [0.5] * in_channels, options)


def _raises_one_line(match: str, fn, *args) -> str:
    with pytest.raises(ValueError, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _shuffle_bn_stats(model: nn.Module, in_channels: int, size: int = 16) -> None:
    """One train-mode forward so BN running statistics differ from their defaults."""
    model.train()
    with torch.no_grad():
        model(torch.rand(4, in_channels, size, size))
    model.eval()


def test_registry_lists_exactly_the_four_backbones() -> None:
    assert sorted(available_backbones()) == sorted(FEATURE_DIM)
    for name in FEATURE_DIM:
        assert backbone_options_schema(name)().model_dump() is not None  # defaults are valid


def test_unknown_backbone_is_a_one_line_value_error() -> None:
    msg = _raises_one_line("unknown backbone 'vgg'; known: ", backbone_options_schema, "vgg")
    assert all(name in msg for name in FEATURE_DIM)
    _raises_one_line("unknown backbone 'vgg'", _build, "vgg")


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("small_cnn", {"width": 0}, "width"),
        ("small_cnn", {"depth": 3}, "depth"),
        ("small_cnn", {"width": True}, "width"),
        ("simple_conv_net", {"width": 16}, "width"),
        ("resnet18", {"cifar_stem": "maybe"}, "cifar_stem"),
        ("resnet50", {"stem": True}, "stem"),
    ],
)
def test_bad_option_is_a_one_line_value_error_naming_the_key(name: str, options: dict, key: str) -> None:
    msg = _raises_one_line(f"'{key}'", _build, name, 3, options)
    assert name in msg


def test_bad_channel_statistics_are_value_errors() -> None:
    _raises_one_line(
        "mean has 2 values but in_channels is 3", build_backbone, "small_cnn", 3, [0.5] * 2, [0.5] * 3
    )
    _raises_one_line("std must be finite and positive", build_backbone, "small_cnn", 1, [0.5], [0.0])
    _raises_one_line("in_channels", build_backbone, "small_cnn", 0, [], [])


def test_options_instance_or_mapping_and_spec() -> None:
    schema = backbone_options_schema("small_cnn")
    from_instance = build_backbone("small_cnn", 1, [0.1], [0.3], schema(width=4))
    from_mapping = build_backbone("small_cnn", 1, [0.1], [0.3], {"width": 4})
    expected = {"backbone": "small_cnn", "in_channels": 1, "options": {"width": 4}}
    assert from_instance.spec == from_mapping.spec == expected
    assert from_instance.feature_dim == 16
    assert _build("small_cnn").spec["options"] == {"width": 16}  # None -> defaults
    assert _build("resnet18").spec["options"] == {"cifar_stem": False}


SHAPE_CASES = [
    (name, c, size)
    for name in FEATURE_DIM
    for c in (1, 3)
    for size in (28, 32)
    if not (name == "resnet50" and size == 28)  # ResNet-50 is slow on CPU: 32x32 only
]


@pytest.mark.parametrize(("name", "in_channels", "size"), SHAPE_CASES)
def test_output_shape(name: str, in_channels: int, size: int) -> None:
    encoder = _build(name, in_channels)
    assert encoder.feature_dim == FEATURE_DIM[name]
    out = encoder(torch.rand(2, in_channels, size, size))
    assert out.shape == (2, FEATURE_DIM[name])
    assert torch.isfinite(out).all()


def _layer1_resolution(encoder: Encoder, in_channels: int) -> tuple[int, ...]:
    """Spatial size of ``trunk.layer1``'s output for a 32x32 input (forward hook)."""
    seen = []
    handle = encoder.trunk.layer1.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    encoder.eval()
    with torch.no_grad():
        encoder(torch.rand(1, in_channels, 32, 32))
    handle.remove()
    return tuple(seen[0][2:])


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cifar_stem(name: str, in_channels: int) -> None:
    resolutions = {}
    for cifar_stem in (True, False):
        encoder = _build(name, in_channels, {"cifar_stem": cifar_stem})
        conv1 = encoder.trunk.conv1
        assert conv1.in_channels == in_channels and conv1.out_channels == 64 and conv1.bias is None
        if cifar_stem:
            assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((3, 3), (1, 1), (1, 1))
            assert isinstance(encoder.trunk.maxpool, nn.Identity)
        else:
            assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7), (2, 2), (3, 3))
            assert isinstance(encoder.trunk.maxpool, nn.MaxPool2d)
        resolutions[cifar_stem] = _layer1_resolution(encoder, in_channels)
    assert resolutions == {True: (32, 32), False: (8, 8)}


@pytest.mark.parametrize(
    ("name", "reference"),
    [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)],
)
def test_resnet_parameter_count_is_torchvision_minus_fc(name: str, reference) -> None:
    ref = reference(weights=None)
    expected = sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in ref.fc.parameters())
    assert sum(p.numel() for p in _build(name).parameters()) == expected
    stem = sum(p.numel() for p in _build(name, 3, {"cifar_stem": True}).parameters())
    assert stem == expected - 64 * 3 * (7 * 7 - 3 * 3)  # only conv1 shrinks


def test_encoder_normalises_per_channel() -> None:
    mean, std = [0.1, 0.5, 0.9], [0.2, 1.0, 4.0]
    encoder = build_backbone("small_cnn", 3, mean, std, {"width": 4})
    _shuffle_bn_stats(encoder, 3)
    x = torch.rand(2, 3, 12, 12)
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), encoder.trunk(by_hand))
        assert not torch.allclose(encoder(x), encoder.trunk(x))  # it does normalise


def _old_small_cnn_trunk(width: int) -> nn.Sequential:
    """The trunk of the pre-registry ``small_cnn`` (forward: ``trunk(x * 2 - 1).mean(dim=(2, 3))``)."""

    def cbr(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    w = width
    return nn.Sequential(*cbr(3, w), nn.MaxPool2d(2), *cbr(w, 2 * w), nn.MaxPool2d(2), *cbr(2 * w, 4 * w))


@pytest.mark.parametrize("width", [4, 16])
def test_small_cnn_at_half_half_is_the_old_encoder(width: int) -> None:
    old = _old_small_cnn_trunk(width)
    _shuffle_bn_stats(old, 3)
    old_state = {f"trunk.{k}": v for k, v in old.state_dict().items()}
    encoder = _build("small_cnn", 3, {"width": width})
    assert set(encoder.state_dict()) == set(old_state)  # mean/std buffers stay out of the state dict
    encoder.load_state_dict(old_state)  # strict: old checkpoints load
    encoder.eval()
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(encoder(x), old(x * 2 - 1).mean(dim=(2, 3)))
        assert torch.equal(encoder(x), encoder.trunk(x * 2 - 1))


@pytest.mark.parametrize(
    ("name", "in_channels", "options"),
    [("small_cnn", 1, {"width": 4}), ("simple_conv_net", 3, None), ("resnet18", 1, {"cifar_stem": True})],
)
def test_payload_round_trip(name: str, in_channels: int, options: dict | None) -> None:
    mean, std = [0.13, 0.4, 0.7][:in_channels], [0.31, 0.2, 0.5][:in_channels]
    encoder = build_backbone(name, in_channels, mean, std, options)
    _shuffle_bn_stats(encoder, in_channels)
    buffer = io.BytesIO()
    torch.save(encoder.payload(), buffer)
    buffer.seek(0)
    payload = torch.load(buffer, weights_only=True)  # plain data: loads without unpickling code
    assert payload["mean"] == mean and payload["std"] == std
    rebuilt = encoder_from_payload(payload).eval()
    assert rebuilt.spec == encoder.spec
    x = torch.rand(2, in_channels, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), encoder(x))


def test_malformed_payload_is_a_one_line_value_error() -> None:
    good = _build("small_cnn", 3, {"width": 4}).payload()
    _raises_one_line("lacks spec", encoder_from_payload, {k: v for k, v in good.items() if k != "spec"})
    _raises_one_line("payload must be a mapping", encoder_from_payload, [good])
    unknown = {**good, "spec": {**good["spec"], "backbone": "vgg"}}
    _raises_one_line("unknown backbone 'vgg'", encoder_from_payload, unknown)
    _raises_one_line("spec must map", encoder_from_payload, {**good, "spec": {"backbone": "small_cnn"}})
    bad_option = {**good, "spec": {**good["spec"], "options": {"width": 0}}}
    _raises_one_line("'width'", encoder_from_payload, bad_option)
    state = dict(good["state_dict"])
    state.pop("trunk.0.weight")
    _raises_one_line("missing trunk.0.weight", encoder_from_payload, {**good, "state_dict": state})
    wider = {**good, "spec": {**good["spec"], "options": {"width": 8}}}
    _raises_one_line("wrong shapes", encoder_from_payload, wider)


def test_count_macs_small_cnn_width_16_is_2_15_mmacs() -> None:
    macs = count_macs(_build("small_cnn", 3, {"width": 16}), (1, 3, 28, 28))
    assert macs == pytest.approx(2.15e6, rel=0.01)
    with pytest.raises(TypeError):
        count_macs(_build("small_cnn"))  # input_shape is required


@pytest.mark.parametrize(
    "name,in_channels,options", [("small_cnn", 3, {"width": 4}), ("resnet18", 3, {"cifar_stem": True})]
)
def test_channels_last_is_a_layout_not_a_model(name, in_channels, options) -> None:
    """NHWC gives NCHW's outputs and gradients: both float32 layouts agree with a float64 reference."""
    torch.manual_seed(0)
    plain = build_backbone(name, in_channels, [0.4] * in_channels, [0.3] * in_channels, options)
    nhwc = copy.deepcopy(plain).use_channels_last()
    reference = copy.deepcopy(plain).double()
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and nhwc.channels_last
    images = torch.rand(6, in_channels, 32, 32)
    outputs = {"nchw": plain(images), "nhwc": nhwc(images)}
    expected = reference(images.double())
    expected.square().sum().backward()
    for layout, model in (("nchw", plain), ("nhwc", nhwc)):
        torch.testing.assert_close(outputs[layout].double(), expected, rtol=1e-4, atol=1e-5)
        outputs[layout].square().sum().backward()
        # Relative to the gradient's norm. Train-mode BatchNorm on 6 images amplifies float32 rounding,
        # and oneDNN's NHWC kernels sum in another order: measured up to 5e-3 on resnet18's first conv
        # (NCHW about 1e-5). A layout bug (a wrong permutation) is an O(1) error.
        for (key, p), r in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert (p.grad.double() - r.grad).norm() <= 2e-2 * r.grad.norm() + 1e-9, (layout, key)
    assert nhwc.payload()["spec"] == plain.payload()["spec"]
    assert nhwc.state_dict().keys() == plain.state_dict().keys()
    nhwc.use_channels_last(False)
    assert conv.weight.is_contiguous() and not nhwc.channels_last
