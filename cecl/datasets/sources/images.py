"""Encoded images (JPEG, PNG, ...) -> fixed-size uint8 RGB arrays, one image at a time.

Shared by the image-folder datasets (Caltech-101/256, UTKFace, CelebA): their archives hold
thousands of arbitrarily sized files, which are decoded, resized and cropped while streaming so
only the small [3, S, S] results are kept, never a decoded full-size image.

The geometry is torchvision's evaluation transform ``Compose([Resize(S), CenterCrop(S)])`` on a PIL
image, computed by the same ``torchvision.transforms.functional`` calls (so PIL's antialiased
bilinear filter, torchvision's rounding of the longer side and of the crop offset), and the colour
conversion is torchvision's ``pil_loader`` (``Image.convert("RGB")``): the stored pixels are what a
torchvision ``ImageFolder`` pipeline would feed the network. Like it, EXIF orientation is ignored
and no JPEG draft (DCT-domain downscaling) is used, which would change the pixels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from cecl.data.images import decode_rgb as decode_rgb
from cecl.datasets.errors import DataIntegrityError

# Suffixes treated as images by the folder datasets; anything else (Thumbs.db, .DS_Store, README) is
# skipped and counted by the caller.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def is_image_name(name: str) -> bool:
    """Whether an archive member or file name looks like an image (by suffix; AppleDouble ``._x`` not)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [3, size, size]: shorter side resized to ``size`` (bilinear, antialiased), centre crop.

    Exactly torchvision's ``Compose([Resize(size), CenterCrop(size)])`` on the RGB PIL image.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image (decode_rgb), got mode {image.mode!r}")
    # Imported here: torchvision pulls in torch._dynamo (about 2.5 s), and every stage imports this
    # package while only prepare decodes images.
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    resized = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    cropped = TF.center_crop(resized, size)
    return np.ascontiguousarray(np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1))


def load_resized(data: bytes, size: int, name: str = "image") -> np.ndarray:
    """Decode one encoded image and reduce it to uint8 [3, size, size]; the full-size image is dropped."""
    return resize_center_crop(decode_rgb(data, name), size)


def stack_images(arrays: Iterable[np.ndarray], size: int) -> np.ndarray:
    """uint8 [N, 3, size, size] from an iterable of uint8 [3, size, size] (e.g. a generator of
    :func:`load_resized` results, so only small arrays are ever held); N may be 0."""
    items = []
    for index, array in enumerate(arrays):
        if array.dtype != np.uint8 or array.shape != (3, size, size):
            raise DataIntegrityError(
                f"image {index}: expected uint8 [3, {size}, {size}], got {array.dtype} {list(array.shape)}"
            )
        items.append(array)
    if not items:
        return np.zeros((0, 3, size, size), dtype=np.uint8)
    return np.stack(items)
