"""Batched augmentations: shapes, range, seeding, per-sample independence, the identity settings,
horizontal flips and 1-channel images."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from cecl.data.augment import (
    AugmentParams,
    BatchAugment,
    _hue,
    _uniform,
    colour_constants,
    make_views,
    to_float,
)

IDENTITY = AugmentParams(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_jitter=0.0, grayscale_p=0.0, hflip_p=0.0
)
STRONG = AugmentParams(
    crop_scale=(0.2, 1.0), color_jitter=1.0, color_jitter_p=0.8, grayscale_p=0.2, hflip_p=0.5
)


def _images(b: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 [B, 3, 28, 28] with structure (a bright square) so crops are visible."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, 28, 28), generator=g, dtype=torch.uint8)
    images[:, :, 4:12, 6:20] = 255
    return images


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_float() -> None:
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([0.0, 128 / 255, 1.0]))
    assert to_float(x).dtype == torch.float32
    with pytest.raises(TypeError, match="uint8 or floating"):
        to_float(torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize("params", [AugmentParams(), STRONG, IDENTITY])
def test_shapes_and_range(params: AugmentParams) -> None:
    views = make_views(_images(), 3, BatchAugment(params), _gen())
    assert views.shape == (16, 3, 3, 28, 28) and views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_same_seed_same_views_other_seed_other_views() -> None:
    augment = BatchAugment(STRONG)
    a = make_views(_images(), 2, augment, _gen(7))
    b = make_views(_images(), 2, augment, _gen(7))
    c = make_views(_images(), 2, augment, _gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_independent_draws_per_sample_and_per_view() -> None:
    same = _images(1).expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    views = make_views(same, 2, BatchAugment(AugmentParams()), _gen())
    flat = views.reshape(64, -1)
    distances = torch.cdist(flat, flat)
    off_diagonal = distances[~torch.eye(64, dtype=torch.bool)]
    assert (off_diagonal > 1e-3).all()  # every sample and every view got its own crop
    assert not torch.allclose(views[:, 0], views[:, 1])


def test_full_scale_square_crop_without_jitter_is_identity() -> None:
    x = to_float(_images())
    out = BatchAugment(IDENTITY)(x, _gen())
    assert torch.allclose(out, x, atol=1e-5)
    views = make_views(_images(), 2, BatchAugment(IDENTITY), _gen())
    assert torch.allclose(views, x.unsqueeze(1).expand_as(views), atol=1e-5)


def test_crop_zooms_in() -> None:
    """A small crop box enlarges the content: a thin centred square grows in the output."""
    x = torch.zeros(64, 3, 28, 28)
    x[:, :, 12:16, 12:16] = 1.0
    params = AugmentParams(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0))
    out = BatchAugment(params)(x, _gen())
    assert out.sum(dim=(1, 2, 3)).max() > 2 * x[0].sum()  # at least one crop contains the square, enlarged


def test_grayscale_always_gives_equal_channels() -> None:
    params = IDENTITY.model_copy(update={"grayscale_p": 1.0, "crop_scale": (0.5, 1.0)})
    out = BatchAugment(params)(to_float(_images()), _gen())
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])


def test_zero_jitter_strength_changes_nothing() -> None:
    x = to_float(_images())
    no_jitter = IDENTITY.model_copy(update={"color_jitter": 0.0, "color_jitter_p": 1.0})
    assert torch.allclose(BatchAugment(no_jitter)(x, _gen()), x, atol=1e-5)


def test_jitter_changes_colours_per_sample_with_probability_p() -> None:
    x = to_float(_images(64))
    always = IDENTITY.model_copy(update={"color_jitter": 0.5, "color_jitter_p": 1.0})
    out = BatchAugment(always)(x, _gen())
    changed = (out - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert changed.all()
    sometimes = always.model_copy(update={"color_jitter_p": 0.5})
    changed = (BatchAugment(sometimes)(x, _gen()) - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0 < int(changed.sum()) < 64


def _reference_jitter(
    augment: BatchAugment, images: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """The jitter as it was first written: every op on the whole batch at every position, then a selection
    (16 ops); the same draws from the generator in the same order."""

    def gray(x: torch.Tensor) -> torch.Tensor:
        luma = torch.tensor([0.2989, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * luma).sum(dim=1, keepdim=True)

    def brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return (x * f.view(-1, 1, 1, 1)).clamp(0.0, 1.0)

    def contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        mean, f = gray(x).mean(dim=(1, 2, 3), keepdim=True), f.view(-1, 1, 1, 1)
        return (f * x + (1 - f) * mean).clamp(0.0, 1.0)

    def saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        f = f.view(-1, 1, 1, 1)
        return (f * x + (1 - f) * gray(x)).clamp(0.0, 1.0)

    b, s = len(images), augment.params.color_jitter
    apply = torch.rand(b, generator=generator) < augment.params.color_jitter_p
    factors = [_uniform(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s, b, images, generator) for _ in range(3)]
    hue = _uniform(-0.1 * s, 0.1 * s, b, images, generator)
    order = torch.rand(b, 4, generator=generator).argsort(dim=1)
    ops = (
        lambda x: brightness(x, factors[0]),
        lambda x: contrast(x, factors[1]),
        lambda x: saturation(x, factors[2]),
        lambda x: _hue(x, hue),
    )
    out = images
    for step in range(4):
        stepped = out
        for index, op in enumerate(ops):
            stepped = torch.where((order[:, step] == index).view(-1, 1, 1, 1), op(out), stepped)
        out = stepped
    return torch.where(apply.view(-1, 1, 1, 1), out, images)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_colour_map_per_position_equals_every_op_then_a_selection(dtype: torch.dtype) -> None:
    """Each position applies only the op a sample drew there: the same numbers as evaluating all four."""
    augment = BatchAugment(IDENTITY.model_copy(update={"color_jitter": 1.0, "color_jitter_p": 0.8}))
    x = to_float(_images(64)).to(dtype)
    out = augment.color_jitter(x, _gen(11))
    expected = _reference_jitter(augment, x, _gen(11))
    assert torch.equal(out, expected)  # the unchosen terms are exact zeros
    assert (out - x).abs().amax() > 0.1


def test_colour_constants_are_made_once_per_device_and_dtype() -> None:
    """The constants are copied to a device once and cached (a copy from the host per call makes the host
    wait on CUDA); the luma weights are rounded from the same floats as torchvision's."""
    first = colour_constants(torch.device("cpu"), torch.float32)
    assert all(
        a is b for a, b in zip(first, colour_constants(torch.device("cpu"), torch.float32), strict=True)
    )
    double = colour_constants(torch.device("cpu"), torch.float64)
    assert double[0].dtype == torch.float64 and double[0] is not first[0]
    assert torch.equal(first[0], torch.tensor([0.2989, 0.587, 0.114]))
    torch.testing.assert_close(double[2] @ double[1], torch.eye(3, dtype=torch.float64))


def test_hue_rotation_keeps_luma_and_zero_is_identity() -> None:
    x = to_float(_images(4)) * 0.5 + 0.25  # away from the clamp
    assert torch.allclose(_hue(x, torch.zeros(4)), x, atol=1e-5)
    shifted = _hue(x, torch.full((4,), 0.05))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((shifted * luma).sum(1), (x * luma).sum(1), atol=1e-4)
    assert not torch.allclose(shifted, x)


def test_bad_inputs() -> None:
    augment = BatchAugment(AugmentParams())
    with pytest.raises(ValueError, match=r"float images \[B, C, H, W\]"):
        augment(torch.zeros(2, 28, 28), _gen())
    with pytest.raises(ValueError, match=r"float images \[B, C, H, W\]"):
        augment(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), _gen())  # make_views converts, callers must too
    with pytest.raises(ValueError, match="n_views"):
        make_views(_images(2), 0, augment, _gen())


def test_augment_params_validation() -> None:
    for bad in ({"hflip_p": 1.5}, {"hflip_p": -0.1}, {"crop_scale": (0.9, 0.2)}, {"crop_scale": (0.5, 1.2)}):
        with pytest.raises(ValidationError):
            AugmentParams(**bad)
    with pytest.raises(ValidationError):
        AugmentParams(hflip_p=float("nan"))
    assert AugmentParams().hflip_p == 0.0  # off unless a recipe asks (mirrored digits are not digits)
    assert not AugmentParams().needs_colour()
    assert AugmentParams(color_jitter=0.4).needs_colour()
    assert not AugmentParams(color_jitter=0.4, color_jitter_p=0.0).needs_colour()  # never applied
    assert AugmentParams(grayscale_p=0.1).needs_colour()
    assert not AugmentParams(hflip_p=1.0, crop_scale=(0.2, 1.0)).needs_colour()


# ----------------------------------------------------------------------------- horizontal flips


def _asymmetric(b: int = 8, c: int = 3) -> torch.Tensor:
    """float [B, C, 28, 28] images that differ from their mirror image everywhere it matters."""
    x = to_float(_images(b))[:, :c].clone()
    x[:, :, :, :5] = 0.0  # a dark left band: a mirrored image has it on the right
    return x


def test_hflip_p1_mirrors_exactly_after_an_identity_crop() -> None:
    x = _asymmetric()
    out = BatchAugment(IDENTITY.model_copy(update={"hflip_p": 1.0}))(x, _gen())
    assert torch.allclose(out, x.flip(-1), atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-2)
    assert torch.allclose(out[..., :, 0], x[..., :, -1], atol=1e-5)  # column 0 is the old last column


def test_hflip_p0_never_flips() -> None:
    x = _asymmetric(64)
    for seed in range(3):
        assert torch.allclose(BatchAugment(IDENTITY)(x, _gen(seed)), x, atol=1e-5)


def test_hflip_is_drawn_per_sample_and_per_view() -> None:
    x = _asymmetric(1).expand(256, -1, -1, -1).contiguous()  # one image, 256 times
    out = BatchAugment(IDENTITY.model_copy(update={"hflip_p": 0.3}))(x, _gen())
    as_is = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    mirrored = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (as_is ^ mirrored).all()  # every sample is either untouched or exactly mirrored
    assert abs(float(mirrored.double().mean()) - 0.3) < 0.1  # about p of them, drawn independently
    views = make_views(
        (_asymmetric(1) * 255).round().to(torch.uint8).expand(64, -1, -1, -1),
        2,
        BatchAugment(IDENTITY.model_copy(update={"hflip_p": 0.5})),
        _gen(1),
    )
    differ = (views[:, 0] - views[:, 1]).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert 0 < int(differ.sum()) < 64  # the two views of an image flip independently


def test_hflip_follows_the_generator() -> None:
    augment = BatchAugment(IDENTITY.model_copy(update={"hflip_p": 0.5}))
    x = _asymmetric(64)
    a, b, c = augment(x, _gen(5)), augment(x, _gen(5)), augment(x, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------- 1-channel images


def test_one_channel_images_crop_and_flip() -> None:
    x = _asymmetric(16, c=1)
    params = AugmentParams(crop_scale=(0.3, 0.8), hflip_p=0.5)
    out = BatchAugment(params)(x, _gen())
    assert out.shape == (16, 1, 28, 28) and out.min() >= 0.0 and out.max() <= 1.0
    assert not torch.allclose(out, x)
    assert torch.allclose(BatchAugment(IDENTITY)(x, _gen()), x, atol=1e-5)
    views = make_views((x * 255).round().to(torch.uint8), 2, BatchAugment(params), _gen())
    assert views.shape == (16, 2, 1, 28, 28)
    # the crop is the same operation on one channel as on each of three
    three = BatchAugment(AugmentParams(crop_scale=(0.3, 0.8), hflip_p=0.5))(x.expand(-1, 3, -1, -1), _gen())
    assert torch.allclose(three[:, :1], out, atol=1e-6)


@pytest.mark.parametrize(
    "colour",
    [{"color_jitter": 0.5}, {"color_jitter": 0.5, "color_jitter_p": 1.0}, {"grayscale_p": 0.2}],
)
def test_colour_ops_on_one_channel_raise(colour: dict) -> None:
    augment = BatchAugment(AugmentParams(**colour))
    with pytest.raises(ValueError, match="3-channel") as info:
        augment(torch.zeros(2, 1, 28, 28), _gen())
    assert "\n" not in str(info.value)
    assert augment(torch.zeros(2, 3, 28, 28), _gen()).shape == (2, 3, 28, 28)  # fine on colour images


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_seed_and_rejects_cpu_generator() -> None:
    images = _images().cuda()
    augment = BatchAugment(STRONG)
    gen = torch.Generator(device="cuda")
    a = make_views(images, 2, augment, gen.manual_seed(3))
    b = make_views(images, 2, augment, gen.manual_seed(3))
    assert a.device.type == "cuda" and torch.equal(a, b)
    with pytest.raises(ValueError, match="generator"):
        make_views(images, 2, augment, _gen())


def test_crop_resize_matches_torchvision_resized_crop() -> None:
    """For a whole-pixel box the crop equals torchvision's crop + bilinear resize (all but the outer ring)."""
    import torchvision.transforms.v2.functional as TF

    from cecl.data.augment import crop_resize

    x = to_float(_images(2))
    top, left, height, width = 4, 6, 14, 20
    expected = TF.resized_crop(x, top, left, height, width, [28, 28], antialias=True)
    boxes = torch.tensor([[left / 28, top / 28, width / 28, height / 28]]).expand(2, 4)
    out = crop_resize(x, boxes)
    assert torch.allclose(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5)


def test_sampled_boxes_follow_scale_and_ratio() -> None:
    params = AugmentParams(crop_scale=(0.3, 0.8), crop_ratio=(0.5, 2.0))
    boxes = BatchAugment(params).sample_boxes(4096, 28, 28, torch.zeros(1), _gen())
    left, top, width, height = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + width <= 1 + 1e-6).all()
    assert (top + height <= 1 + 1e-6).all()
    unclipped = (width < 1) & (height < 1)
    area, ratio = (width * height)[unclipped], (width / height)[unclipped]
    assert area.min() >= 0.3 - 1e-5 and area.max() <= 0.8 + 1e-5
    assert ratio.min() >= 0.5 - 1e-5 and ratio.max() <= 2.0 + 1e-5
    assert abs(ratio.log().mean().item()) < 0.05  # log-uniform around 1
