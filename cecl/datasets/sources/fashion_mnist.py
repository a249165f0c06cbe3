"""Real Fashion-MNIST (Xiao et al. 2017) as uint8 numpy arrays, verified by SHA-256 before use.

Sources:

* ``debian`` (offline): the Debian/Ubuntu package ``dataset-fashion-mnist`` installs the original IDX
  files under ``/usr/share/datasets/fashion-mnist/`` (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``);
  ``make install`` installs it where it can. Read with :func:`cecl.datasets.sources.idx.read_idx`.
* ``torchvision``: ``torchvision.datasets.FashionMNIST`` (downloads into ``<root>/FashionMNIST/raw``
  when it has no copy; needs internet the first time).
* ``auto``: ``debian`` when its four files exist, else ``torchvision``; when that cannot download
  either, DataUnavailable says how to get the data.

Both give the same uint8 arrays: the Debian .gz files are the ones torchvision downloads with only
the gzip header changed (file name dropped, mtime reset); restoring it gives torchvision's MD5s
exactly (tests/test_fashion_mnist_source.py). So one set of digests checks either source, and any
other data fails loudly instead of silently changing every number downstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.arrays import GreyArrays
from cecl.datasets.sources.idx import read_idx

Source = Literal["auto", "debian", "torchvision"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
APT_INSTALL = f"apt-get install {DEBIAN_PACKAGE}"
# Array name -> IDX file name, as the Debian package ships them (the upstream names, gzip-compressed).
DEBIAN_FILES: Mapping[str, str] = MappingProxyType(
    {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
)

# SHA-256 of the decoded arrays (images as C-order uint8 bytes, labels as uint8 bytes), computed once
# from the files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, decoded independently
# by torchvision's read_image_file/read_label_file (on the gunzipped files) and by read_idx, which
# agree: hashlib.sha256(np.ascontiguousarray(array.astype(np.uint8)).tobytes()).hexdigest(). The
# arrays have Fashion-MNIST's published shape and balance, 6000 per class in train and 1000 per class
# in test (checked independently in tests/test_fashion_mnist_source.py).
FASHION_MNIST_SHA256: Mapping[str, str] = MappingProxyType(
    {
        "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    }
)


def ImageArrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    source: str,
) -> GreyArrays:
    """Fashion-MNIST as numpy arrays: images uint8 [N, 28, 28], labels int64 [N] in 0..9 (validated)."""
    return GreyArrays(
        train_images, train_labels, test_images, test_labels, source=source, name="Fashion-MNIST"
    )


def fashion_mnist_digests(data: GreyArrays) -> dict[str, str]:
    """SHA-256 of each array (keys as FASHION_MNIST_SHA256): images as C-order uint8, labels as uint8."""
    return data.digests()


def verify_fashion_mnist(
    data: GreyArrays, expected: Mapping[str, str] = FASHION_MNIST_SHA256
) -> dict[str, str]:
    """Check the digests against ``expected``; returns the actual ones (a mismatch names the array)."""
    return data.verify(expected)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _missing_debian_files(debian_dir: Path) -> list[Path]:
    return [debian_dir / name for name in DEBIAN_FILES.values() if not (debian_dir / name).is_file()]


def _from_debian(debian_dir: Path) -> GreyArrays:
    missing = _missing_debian_files(debian_dir)
    if missing:
        raise DataUnavailable(
            f"Fashion-MNIST file {missing[0]} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; install it with `{APT_INSTALL}` (Debian/Ubuntu) or use source='torchvision'"
        )
    arrays = {key: read_idx(debian_dir / name) for key, name in DEBIAN_FILES.items()}
    for key, name in DEBIAN_FILES.items():
        want = 3 if key.endswith("images") else 1
        if arrays[key].ndim != want:
            raise DataIntegrityError(
                f"{debian_dir / name}: {key} must have {want} dimension(s), got shape {arrays[key].shape}"
            )
    for split in ("train", "test"):
        n_images, n_labels = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_images != n_labels:
            raise DataIntegrityError(f"{debian_dir}: {n_images} {split} images but {n_labels} {split} labels")
    return ImageArrays(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        source="debian",
    )


def _how_to_get(root: Path) -> str:
    return (
        f"get it with `{APT_INSTALL}` (Debian/Ubuntu, offline), "
        f"or run once with internet so torchvision downloads it into {root}"
    )


def _from_torchvision(root: Path, debian_dir: Path | None) -> GreyArrays:
    """torchvision's copy in ``root`` (downloaded when absent); any failure -> DataUnavailable, one line.

    ``debian_dir``: where the Debian files were looked for first (``auto``), for the message.
    """
    try:
        from torchvision.datasets import FashionMNIST

        train = FashionMNIST(str(root), train=True, download=True)
        test = FashionMNIST(str(root), train=False, download=True)
    except (ImportError, RuntimeError, OSError) as err:  # URLError, HTTPError, timeouts are OSErrors
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        where = f"no Debian copy in {debian_dir} and " if debian_dir is not None else ""
        raise DataUnavailable(
            _one_line(
                f"Fashion-MNIST is unavailable: {where}torchvision could not get it into {root} "
                f"({type(err).__name__}: {first}); {_how_to_get(root)}"
            )
        ) from err
    return GreyArrays.from_torchvision(train, test, "Fashion-MNIST")


def load_fashion_mnist(
    source: Source = "auto",
    root: Path = Path("data/raw"),
    verify: bool = True,
    debian_dir: Path = DEBIAN_DIR,
) -> GreyArrays:
    """Fashion-MNIST from ``source``, checked against FASHION_MNIST_SHA256 unless ``verify`` is False.

    ``root``: where torchvision finds or downloads its copy; ``debian_dir``: where the Debian
    package's files are. ``verify=False`` is for stand-in data in tests only.
    Raises DataUnavailable (how to get the data) or DataIntegrityError (what is wrong), one line each.
    """
    root, debian_dir = Path(root), Path(debian_dir)
    if source == "debian":
        data = _from_debian(debian_dir)
    elif source == "torchvision":
        data = _from_torchvision(root, None)
    elif source == "auto":
        if _missing_debian_files(debian_dir):
            data = _from_torchvision(root, debian_dir)
        else:
            data = _from_debian(debian_dir)
    else:
        raise ValueError(f"unknown Fashion-MNIST source {source!r}; known: auto, debian, torchvision")
    if verify:
        verify_fashion_mnist(data)
    return data
