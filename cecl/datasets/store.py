"""The compact on-disk store of a prepared dataset: one .npz per split plus manifest.json.

Each split is a compressed .npz with the keys ``images`` (uint8 [N, C, H, W]), ``targets`` (int64 [N])
and, for bias benchmarks, ``bias`` (int64 [N]). Files are written with fixed zip timestamps, so equal
data gives equal bytes: their SHA-256 digests go into the manifest and from there into every
downstream fingerprint, and a re-run of prepare leaves DVC's hashes unchanged.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cecl.datasets.errors import DataIntegrityError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Split:
    """One split: images uint8 [N, C, H, W], targets int64 [N], optional bias attribute int64 [N]."""

    images: np.ndarray
    targets: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataIntegrityError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {list(self.images.shape)}"
            )
        n = len(self.images)
        arrays = {"targets": self.targets} | ({} if self.bias is None else {"bias": self.bias})
        for name, array in arrays.items():
            if array.dtype != np.int64 or array.shape != (n,):
                raise DataIntegrityError(f"{name} must be int64 [{n}], got {array.dtype} {list(array.shape)}")
            if n and array.min() < 0:
                raise DataIntegrityError(f"{name} must be non-negative")

    def __len__(self) -> int:
        return len(self.targets)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"images": self.images, "targets": self.targets}
        return out if self.bias is None else {**out, "bias": self.bias}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (np.load reads it) with fixed timestamps: equal arrays give equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_split(path: Path, split: Split) -> str:
    """Write ``split`` atomically; returns the file's SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = npz_bytes(split.arrays())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def load_split(path: Path) -> Split:
    """Read a split written by :func:`save_split`; a malformed file raises DataIntegrityError naming it."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"images", "targets"} <= keys <= {"images", "targets", "bias"}:
                raise ValueError(f"keys must be images, targets[, bias], got {sorted(keys)}")
            arrays = {key: archive[key] for key in keys}
        return Split(**arrays)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataIntegrityError(f"{path}: not a valid split file: {err}") from None


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (a missing file raises FileNotFoundError)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
