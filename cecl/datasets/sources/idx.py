"""A strict reader of IDX files (the MNIST family's format), numpy only.

Layout: a 4-byte magic ``00 00 TT NN`` (TT: element type, 0x08 = uint8; NN: number of dims), then NN
big-endian uint32 dimension sizes, then the elements in C order. ``read_idx`` accepts uint8 only and
checks every part of that, so a truncated download or a file of another kind fails with one line
naming the file and the problem instead of becoming a wrongly shaped array.

Why not torchvision's reader (checked against torchvision 0.29.2, torchvision/datasets/mnist.py):
``read_sn3_pascalvincent_tensor`` / ``read_image_file`` / ``read_label_file`` do accept any path (only
the ``FashionMNIST`` dataset class needs its ``<root>/FashionMNIST/raw/`` layout), but they return
torch tensors (labels widened to int64), open the file with plain ``open`` so the ``.gz`` files as
shipped cannot be read without decompressing them first (the docstring's "compressed filename" is
not implemented), skip the payload-length check (``strict=False``), and validate with ``assert``,
which ``python -O`` strips. Here: numpy arrays, gzip or raw, every check an explicit error.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from cecl.datasets.errors import DataIntegrityError

UINT8_TYPE_CODE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path`` (gzip-compressed when its name ends in .gz).

    Raises FileNotFoundError when ``path`` does not exist, DataIntegrityError (one line naming the
    file) when it is not a well-formed uint8 IDX file.
    """
    path = Path(path)
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise DataIntegrityError(f"{path}: not a readable gzip file ({err})") from None
    if len(data) < 4:
        raise DataIntegrityError(f"{path}: {len(data)} bytes, too short for an IDX magic number")
    if data[0] != 0 or data[1] != 0:
        raise DataIntegrityError(f"{path}: bad IDX magic {data[:4].hex()} (must start with two zero bytes)")
    if data[2] != UINT8_TYPE_CODE:
        raise DataIntegrityError(
            f"{path}: IDX type code 0x{data[2]:02x} is not supported (only 0x{UINT8_TYPE_CODE:02x}, uint8)"
        )
    ndim = data[3]
    if ndim == 0:
        raise DataIntegrityError(f"{path}: IDX magic declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataIntegrityError(
            f"{path}: {len(data)} bytes, too short for the header of {ndim} dimension sizes "
            f"({header_len} bytes)"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = 1
    for d in dims:
        expected *= d  # Python ints: no overflow however large the declared sizes
    payload = len(data) - header_len
    if payload != expected:
        raise DataIntegrityError(
            f"{path}: payload is {payload} bytes but dimensions {dims} need {expected}"
            + (" (truncated)" if payload < expected else " (trailing bytes)")
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims).copy()
