"""Seeded, order-independent split indices shared by the dataset families.

Every random choice is drawn from a generator seeded by ``(seed, purpose...)`` through SHA-256, so a
split never depends on which other splits or entries were built before it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def seeded_rng(seed: int, *purpose: object) -> np.random.Generator:
    """A generator seeded from ``seed`` and a purpose (e.g. rho and split), independent of call order."""
    text = ":".join(repr(part) for part in (seed, *purpose))
    entropy = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "little")
    return np.random.default_rng(np.random.SeedSequence(entropy))


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
