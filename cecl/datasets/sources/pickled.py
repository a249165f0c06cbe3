"""Reading the pickled batch files of CIFAR-10/100 and ImageNet32 without letting a pickle run code.

Both datasets ship as pickled dicts (CIFAR: Python 2 ``cPickle``, read with ``encoding="latin1"``;
ImageNet32: Python 3 pickles) holding numpy arrays. ``pickle.load`` would call any importable
callable the file names (``os.system`` included), so :class:`RestrictedUnpickler` resolves only the
numpy globals that rebuild arrays and scalars, under both their numpy 1 (``numpy.core``) and numpy 2
(``numpy._core``) module paths, and refuses every other global with a one-line DataIntegrityError.

Why the numpy globals are needed at all: the CIFAR batches' ``data`` and ImageNet32's ``data`` and
``mean`` are ndarrays, which pickle as ``_reconstruct`` + ``ndarray`` + ``dtype`` (protocols 0-4) or
``_frombuffer`` (protocol 5); ``scalar`` rebuilds numpy integers some writers store as labels;
Python 3 writes bytes at protocol 2 as ``_codecs.encode(text, "latin1")``, allowed for latin1 only.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from cecl.datasets.errors import DataIntegrityError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild bytes (``_codecs.encode(text, "latin1")``);
    any other codec is refused, so this global cannot be used for anything but that."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


_NUMPY_GLOBALS: dict[str, Any] = {
    "multiarray._reconstruct": _reconstruct,
    "multiarray.scalar": scalar,
    "numeric._frombuffer": _frombuffer,
}
ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = MappingProxyType(
    {
        **{
            (f"{package}.{path.split('.')[0]}", path.split(".")[1]): obj
            for package in ("numpy.core", "numpy._core")
            for path, obj in _NUMPY_GLOBALS.items()
        },
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays (and plain Python containers) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def restricted_loads(data: bytes, what: str) -> Any:
    """The object pickled in ``data`` (latin1 for Python 2 strings), globals restricted as above.

    ``what`` names the file (and member) in the one-line DataIntegrityError for a refused or broken
    pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise DataIntegrityError(f"{what}: not a readable batch pickle ({message})") from None


def load_batch(data: bytes, what: str, required: tuple[str, ...]) -> dict[str, Any]:
    """A pickled dict with str keys (bytes keys decoded latin1) that has every key in ``required``."""
    obj = restricted_loads(data, what)
    if not isinstance(obj, dict):
        raise DataIntegrityError(f"{what}: expected a pickled dict, got {type(obj).__name__}")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    missing = [k for k in required if k not in batch]
    if missing:
        raise DataIntegrityError(f"{what}: the batch has no key {missing[0]!r} (keys: {sorted(batch)})")
    return batch


def planar_images(data: Any, what: str, size: int = 32) -> np.ndarray:
    """Channel-planar rows uint8 [N, 3 * size * size] (all R, then G, then B) -> uint8 [N, 3, size, size]."""
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        kind = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataIntegrityError(f"{what}: 'data' must be uint8 [N, {3 * size * size}], got {kind}")
    if data.shape[1] != 3 * size * size:
        raise DataIntegrityError(
            f"{what}: 'data' rows have {data.shape[1]} values, {size}x{size} RGB needs {3 * size * size}"
        )
    return np.ascontiguousarray(data.reshape(len(data), 3, size, size))


def int_labels(values: Any, n: int, what: str, low: int, high: int) -> np.ndarray:
    """Labels (a list or array of ints) as int64 [n], each in [low, high]; else DataIntegrityError."""
    try:
        labels = np.asarray(values)
        if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
            raise TypeError
    except (TypeError, ValueError):
        raise DataIntegrityError(f"{what}: labels must be a list of integers") from None
    if len(labels) != n:
        raise DataIntegrityError(f"{what}: {len(labels)} labels for {n} images")
    if n and (labels.min() < low or labels.max() > high):
        raise DataIntegrityError(
            f"{what}: labels must be in {low}..{high}, got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)
