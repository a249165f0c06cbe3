"""BiasedMNIST, the ReBias construction (Bahng et al. 2020) used by BiasCon and the CECL paper.

Digits are binarised: every non-zero pixel becomes white foreground, the background takes one of ten
colours. Colour c is "aligned" with digit c; for each digit a fraction rho of its images gets the
aligned colour and the rest are spread evenly over the nine other colours. Training rho is high
(0.99 .. 0.999: colour is an easy shortcut); the test set uses rho = 0.1, i.e. colour is independent
of the digit, so accuracy on it measures what the model learned about shape.

Every training rho uses the same MNIST images (only the colours differ), so rhos are comparable;
all randomness is seeded from ``(seed, rho, split)``, so the output does not depend on the order
of the rhos, and the .npz files are written byte-for-byte reproducibly (their digests go into the
manifest and from there into downstream fingerprints).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cecl.config import DataParams
from cecl.data.mnist_source import MNIST_SHA256, MnistArrays, load_mnist, mnist_digests
from cecl.io import atomic_dir, write_json

Split = Literal["train", "val", "test"]
N_CLASSES = 10
NPZ_KEYS = ("images", "labels", "colours")
MANIFEST_VERSION = 1

# ReBias's ten background colours (RGB), in the paper's order: colour c is aligned with digit c.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (225, 225, 0),
    (225, 0, 225),
    (0, 255, 255),
    (255, 128, 0),
    (255, 0, 128),
    (128, 0, 255),
    (128, 128, 128),
)
_COLOUR_TABLE = np.array(COLOURS, dtype=np.uint8)  # [10, 3]


@dataclass(frozen=True)
class BiasedSplit:
    """One split: images uint8 [N, 3, H, W], labels int64 [N], colours int64 [N] (both in 0..9)."""

    images: np.ndarray
    labels: np.ndarray
    colours: np.ndarray

    def __post_init__(self) -> None:
        _check_split_arrays(self.images, self.labels, self.colours)

    def __len__(self) -> int:
        return len(self.labels)


def _check_split_arrays(images: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}")
    n = len(images)
    for name, array in (("labels", labels), ("colours", colours)):
        if array.dtype != np.int64 or array.shape != (n,):
            raise ValueError(f"{name} must be int64 [{n}], got {array.dtype} {list(array.shape)}")
        if n and (array.min() < 0 or array.max() >= N_CLASSES):
            raise ValueError(f"{name} must be in 0..{N_CLASSES - 1}")


def groups(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """The (digit, colour) group of each image, ``label * 10 + colour`` (100 groups)."""
    return np.asarray(labels, dtype=np.int64) * N_CLASSES + np.asarray(colours, dtype=np.int64)


# ----------------------------------------------------------------------------- construction


def assign_colours(labels: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    """A colour per image: per digit, exactly round(rho * n_d) aligned, the rest spread evenly.

    "Evenly": the nine other colours' counts differ by at most one; which colours get the extra
    image, and which images get which colour, is random.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(f"labels must be in 0..{N_CLASSES - 1}")
    colours = np.empty(len(labels), dtype=np.int64)
    for digit in range(N_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_aligned = math.floor(rho * len(members) + 0.5)  # round half up (Python's round is half-even)
        n_rest = len(members) - n_aligned
        others = np.array([c for c in range(N_CLASSES) if c != digit])
        per_colour = np.full(len(others), n_rest // len(others))
        per_colour[rng.permutation(len(others))[: n_rest % len(others)]] += 1
        colours[members[:n_aligned]] = digit
        colours[members[n_aligned:]] = np.repeat(others, per_colour)  # members are in random order
    return colours


def colourize(images: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] grey digits -> uint8 [N, 3, 28, 28]: non-zero pixels white, the rest coloured."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {list(images.shape)}")
    colours = np.asarray(colours)
    if colours.shape != (len(images),):
        raise ValueError(f"need one colour per image, got {list(colours.shape)} for {len(images)} images")
    background = _COLOUR_TABLE[colours][:, :, None, None]  # [N, 3, 1, 1]
    foreground = (images != 0)[:, None, :, :]  # [N, 1, H, W]
    return np.where(foreground, np.uint8(255), background).astype(np.uint8)


def _rng(seed: int, *purpose: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and a purpose (e.g. rho and split), independent of call order."""
    text = ":".join(repr(part) for part in (seed, *purpose))
    entropy = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))


def train_val_indices(n_train: int, params: DataParams) -> tuple[np.ndarray, np.ndarray]:
    """Indices into MNIST train (sorted): the training split's and the held-out validation's.

    One permutation seeded by ``params.seed``: validation is its first ``val_size``, training the
    next ``train_size`` (None: all the rest). The same for every rho.
    """
    train_size = n_train - params.val_size if params.train_size is None else params.train_size
    if params.val_size + train_size > n_train:
        raise ValueError(
            f"val_size {params.val_size} + train_size {train_size} exceed the {n_train} MNIST training images"
        )
    order = _rng(params.seed, "train/val permutation").permutation(n_train)
    val = np.sort(order[: params.val_size])
    train = np.sort(order[params.val_size : params.val_size + train_size])
    return train, val


def mnist_test_indices(n_test: int, params: DataParams) -> np.ndarray:
    """Indices into MNIST test (sorted): all of it, or a seeded subsample of ``test_size``."""
    if params.test_size is None:
        return np.arange(n_test)
    if params.test_size > n_test:
        raise ValueError(f"test_size {params.test_size} exceeds the {n_test} MNIST test images")
    return np.sort(_rng(params.seed, "test subsample").permutation(n_test)[: params.test_size])


def _make_split(images: np.ndarray, labels: np.ndarray, rho: float, seed: int, split: Split) -> BiasedSplit:
    colours = assign_colours(labels, rho, _rng(seed, float(rho), split))
    return BiasedSplit(images=colourize(images, colours), labels=labels.astype(np.int64), colours=colours)


def _split_specs(params: DataParams) -> list[tuple[str, float, Split]]:
    """(key, rho, split) of every split, in a fixed order: per rho train and val, then test."""
    specs: list[tuple[str, float, Split]] = []
    for rho in params.rhos:
        specs += [(split_key(rho, "train"), rho, "train"), (split_key(rho, "val"), rho, "val")]
    return [*specs, (split_key(None, "test"), params.test_rho, "test")]


def iter_biased_mnist(
    mnist: MnistArrays, params: DataParams
) -> Iterator[tuple[str, float, Split, BiasedSplit]]:
    """(key, rho, split, data) of every split, one at a time (so only one is in memory)."""
    train_idx, val_idx = train_val_indices(len(mnist.train_labels), params)
    test_idx = mnist_test_indices(len(mnist.test_labels), params)
    sources = {
        "train": (mnist.train_images, mnist.train_labels, train_idx),
        "val": (mnist.train_images, mnist.train_labels, val_idx),
        "test": (mnist.test_images, mnist.test_labels, test_idx),
    }
    for key, rho, split in _split_specs(params):
        images, labels, idx = sources[split]
        yield key, rho, split, _make_split(images[idx], labels[idx], rho, params.seed, split)


def build_biased_mnist(mnist: MnistArrays, params: DataParams) -> dict[str, BiasedSplit]:
    """All splits in memory, keyed by :func:`split_key` (``rho_0.99/train``, ``rho_0.99/val``, ``test``)."""
    return {key: split for key, _, _, split in iter_biased_mnist(mnist, params)}


# ----------------------------------------------------------------------------- paths


def rho_dir_name(rho: float) -> str:
    """``rho_0.99``, ``rho_0.997``, ``rho_1``: ``:g``, or repr where ``:g`` would round (e.g. 0.9999999)."""
    short = f"{rho:g}"
    return f"rho_{short}" if float(short) == rho else f"rho_{float(rho)!r}"


def split_key(rho: float | None, split: Split) -> str:
    """``rho_0.99/train`` for train/val (per rho); ``test`` for the shared test split (rho ignored)."""
    if split == "test":
        return "test"
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; known: train, val, test")
    if rho is None:
        raise ValueError(f"the {split} split needs a rho")
    return f"{rho_dir_name(rho)}/{split}"


def split_path(out_dir: str | Path, rho: float | None, split: Split) -> Path:
    """Where a split's .npz lives under ``out_dir`` (the only place these paths are formatted)."""
    return Path(out_dir) / f"{split_key(rho, split)}.npz"


# ----------------------------------------------------------------------------- files


def _npz_bytes(split: BiasedSplit) -> bytes:
    """A compressed .npz (np.load reads it) with fixed zip timestamps, so equal data gives equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in NPZ_KEYS:
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                array = np.ascontiguousarray(getattr(split, key))
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def save_split(path: str | Path, split: BiasedSplit) -> None:
    """Write ``split`` as a compressed .npz (keys images, labels, colours), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _npz_bytes(split)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_split(path: str | Path) -> BiasedSplit:
    """Read a split written by :func:`save_split`; a malformed file raises ValueError naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if keys != set(NPZ_KEYS):
                raise ValueError(f"keys must be {list(NPZ_KEYS)}, got {sorted(keys)}")
            arrays = {key: archive[key] for key in NPZ_KEYS}
        return BiasedSplit(**arrays)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: not a valid BiasedMNIST split: {err}") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_stats(split: BiasedSplit) -> dict[str, Any]:
    """Count, colour-label agreement, per-digit / per-colour / per-(digit, colour) counts."""
    counts = np.bincount(groups(split.labels, split.colours), minlength=N_CLASSES**2).reshape(N_CLASSES, -1)
    return {
        "count": len(split),
        "agreement": float(np.mean(split.labels == split.colours)) if len(split) else 0.0,
        "per_digit": counts.sum(axis=1).tolist(),
        "per_colour": counts.sum(axis=0).tolist(),
        "group_counts": counts.tolist(),  # [digit][colour]
    }


def _indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def prepare_biased_mnist(params: DataParams, out_dir: str | Path, mnist: MnistArrays | None = None) -> dict:
    """Build every split, write them and manifest.json under ``out_dir``; returns the manifest.

    ``mnist`` defaults to :func:`load_mnist` from ``params.source`` (digests verified). Everything is
    written into a temporary sibling folder that replaces ``out_dir`` only once complete, so a
    failure leaves the previous ``out_dir`` (or none) and no partial output.
    """
    out_dir = Path(out_dir)
    if mnist is None:
        mnist = load_mnist(params.source, params.root)
    digests = mnist_digests(mnist)
    train_idx, val_idx = train_val_indices(len(mnist.train_labels), params)
    test_idx = mnist_test_indices(len(mnist.test_labels), params)
    source_indices = {"train": train_idx, "val": val_idx, "test": test_idx}

    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "construction": "ReBias BiasedMNIST: non-zero pixels white, background coloured",
        "colours": [list(c) for c in COLOURS],
        "mnist": {
            "source": mnist.source,
            "sha256": digests,
            "verified": digests == dict(MNIST_SHA256),
        },
        "params": params.model_dump(),
        "splits": {},
        "files": {},
    }
    with atomic_dir(out_dir) as tmp:
        for key, rho, name, split in iter_biased_mnist(mnist, params):
            path = split_path(tmp, rho, name)
            save_split(path, split)
            relative = path.relative_to(tmp).as_posix()
            file_digest = _sha256_file(path)
            manifest["files"][relative] = file_digest
            manifest["splits"][key] = {
                "split": name,
                "rho": rho,
                "file": relative,
                "sha256": file_digest,
                "mnist_indices_sha256": _indices_sha256(source_indices[name]),
                **split_stats(split),
            }
        write_json(tmp / "manifest.json", manifest)
    return manifest
