"""cecl/datasets/sources/images.py: decoding any image to RGB, and torchvision's Resize + CenterCrop.

The reference for the geometry is torchvision's own ``Compose([Resize(S), CenterCrop(S)])`` applied to
the PIL image, compared pixel for pixel (the module calls torchvision.transforms.functional, so this
guards the shorter-side rule, the crop, the channel order and the array layout, and any future
hand-written replacement).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources.images import (
    decode_rgb,
    is_image_name,
    load_resized,
    resize_center_crop,
    stack_images,
)


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _reference(image: Image.Image, size: int) -> np.ndarray:
    ref = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])(image)
    return np.asarray(ref).transpose(2, 0, 1)


# ----------------------------------------------------------------------------- decode_rgb


def test_greyscale_jpeg_becomes_three_equal_channels() -> None:
    grey = Image.fromarray(_noise((20, 30)))
    decoded = decode_rgb(_encode(grey, "JPEG"), "g.jpg")
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB" and pixels.shape == (20, 30, 3)
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 1])
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(Image.open(io.BytesIO(_encode(grey, "JPEG")))))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
    ],
)
def test_any_mode_decodes_to_rgb_as_pil_convert(mode: str, fmt: str) -> None:
    """Every mode gives RGB, equal to what torchvision's pil_loader (``convert("RGB")``) gives."""
    source = Image.fromarray(_noise((9, 13, 3), seed=1)).convert(mode)
    data = _encode(source, fmt)
    decoded = decode_rgb(data, f"x.{fmt.lower()}")
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    assert decoded.mode == "RGB" and decoded.size == (13, 9)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected))


def test_palette_png_keeps_its_colours() -> None:
    rgb = Image.fromarray(np.repeat(np.repeat(_noise((2, 2, 3), seed=2), 4, 0), 4, 1))  # 4 colours
    palette = rgb.quantize(colors=4)
    decoded = decode_rgb(_encode(palette, "PNG"), "p.png")
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(rgb))


@pytest.mark.parametrize(
    "data",
    [b"", b"Thumbs.db\x00\x00garbage", _encode(Image.fromarray(_noise((64, 64, 3))), "JPEG")[:300]],
    ids=["empty", "not-an-image", "truncated-jpeg"],
)
def test_corrupt_image_is_a_one_line_error_naming_it(data: bytes) -> None:
    with pytest.raises(DataIntegrityError, match=r"^zoo/ant/image_0007\.jpg: not a readable image") as err:
        decode_rgb(data, "zoo/ant/image_0007.jpg")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- resize_center_crop


@pytest.mark.parametrize("size", [8, 32, 33])
@pytest.mark.parametrize("wh", [(300, 200), (200, 300), (64, 64), (37, 101), (20, 12), (32, 32), (5, 90)])
def test_resize_center_crop_equals_torchvision(wh: tuple[int, int], size: int) -> None:
    image = Image.fromarray(_noise((wh[1], wh[0], 3), seed=wh[0] * 7 + wh[1]))
    out = resize_center_crop(image, size)
    assert out.dtype == np.uint8 and out.shape == (3, size, size) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, _reference(image, size))


def test_resize_is_antialiased_not_nearest() -> None:
    """A 1-pixel checkerboard shrunk 4x must average to grey (nearest or unfiltered bilinear would not)."""
    board = (np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)
    out = resize_center_crop(Image.fromarray(board).convert("RGB"), 32)
    assert np.all(np.abs(out.astype(int) - 128) <= 2)


def test_resize_center_crop_rejects_non_rgb_and_bad_size() -> None:
    with pytest.raises(ValueError, match="RGB"):
        resize_center_crop(Image.fromarray(_noise((10, 10))), 8)
    with pytest.raises(ValueError, match="positive"):
        resize_center_crop(Image.fromarray(_noise((10, 10, 3))), 0)


def test_load_resized_is_decode_then_resize() -> None:
    image = Image.fromarray(_noise((45, 70)))  # greyscale
    data = _encode(image, "PNG")
    np.testing.assert_array_equal(load_resized(data, 16, "a.png"), _reference(image.convert("RGB"), 16))


# ----------------------------------------------------------------------------- stacking, names


def test_stack_images_consumes_a_generator_and_checks_shapes() -> None:
    arrays = [_noise((3, 4, 4), seed=i) for i in range(3)]
    stacked = stack_images((a for a in arrays), 4)
    assert stacked.shape == (3, 3, 4, 4) and stacked.dtype == np.uint8
    np.testing.assert_array_equal(stacked[1], arrays[1])
    assert stack_images(iter([]), 4).shape == (0, 3, 4, 4)
    with pytest.raises(DataIntegrityError, match=r"image 1: expected uint8 \[3, 4, 4\]"):
        stack_images([arrays[0], _noise((3, 5, 4))], 4)
    with pytest.raises(DataIntegrityError, match="image 0"):
        stack_images([arrays[0].astype(np.float32)], 4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("101_ObjectCategories/ant/image_0001.jpg", True),
        ("x/IMAGE.JPEG", True),
        ("a.png", True),
        ("x/Thumbs.db", False),
        ("x/.DS_Store", False),
        ("__MACOSX/x/._image_0001.jpg", False),
        ("198.spider/RENAME2", False),
    ],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected
