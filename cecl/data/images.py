"""Decoding one encoded image (JPEG, PNG, ...) into RGB: shared by the dataset plug-ins that read image
archives (cecl/datasets/sources/images.py) and the streaming loaders (cecl/data/streaming.py)."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from cecl.data.errors import DataIntegrityError


def decode_rgb(data: bytes, name: str = "image") -> Image.Image:
    """Decode ``data`` (any format PIL reads: greyscale, palette, CMYK, RGBA ...) into an RGB image.

    The pixels are loaded here, so a truncated or corrupt file fails now with a one-line
    DataIntegrityError naming ``name``, not later inside a transform.
    """
    try:
        with warnings.catch_warnings():
            # PIL warns for palette images with byte transparency; convert("RGB") drops alpha anyway.
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataIntegrityError(f"{name}: not a readable image ({reason})") from None
