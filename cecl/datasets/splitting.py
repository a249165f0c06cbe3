"""Seeded, order-independent split indices shared by the dataset families.

Every random choice is drawn from a generator seeded by ``(seed, purpose...)`` through SHA-256, so a
split never depends on which other splits or entries were built before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cecl.data.rng import seeded_rng as seeded_rng
from cecl.datasets.store import array_sha256


def holdout_indices(
    n: int, val_size: int, train_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices into ``n`` training images: one seeded permutation, validation its
    first ``val_size``, training the next ``train_size`` (None: all the rest)."""
    train_size = n - val_size if train_size is None else train_size
    if val_size + train_size > n:
        raise ValueError(f"val_size {val_size} + train_size {train_size} exceed the {n} training images")
    order = seeded_rng(seed, "train/val permutation").permutation(n)
    return np.sort(order[val_size : val_size + train_size]), np.sort(order[:val_size])


def subsample_indices(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of ``size`` out of ``n`` (all when None)."""
    if size is None:
        return np.arange(n)
    if size > n:
        raise ValueError(f"test_size {size} exceeds the {n} test images")
    return np.sort(seeded_rng(seed, "test subsample").permutation(n)[:size])


def train_val_test_indices(
    n_train: int, n_test: int, val_size: int, train_size: int | None, test_size: int | None, seed: int
) -> dict[str, np.ndarray]:
    """The usual protocol: validation held out of the official training images, the rest (or a seeded
    ``train_size`` of them) trained on, the official test images (or a seeded ``test_size``) tested."""
    train, val = holdout_indices(n_train, val_size, train_size, seed)
    return {"train": train, "val": val, "test": subsample_indices(n_test, test_size, seed)}


def indices_digests(indices: dict[str, np.ndarray]) -> dict[str, str]:
    """SHA-256 of each split's indices (little-endian int64), for the manifest: same digest, same split."""
    return {name: array_sha256(np.asarray(idx).astype("<i8")) for name, idx in indices.items()}


def select_splits(
    indices: dict[str, np.ndarray], train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(split, images, labels) for train/val (from the official training arrays) and test (official test)."""
    for name in ("train", "val", "test"):
        images, labels = test if name == "test" else train
        yield name, images[indices[name]], labels[indices[name]]
