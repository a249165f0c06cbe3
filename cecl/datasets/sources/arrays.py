"""Ten-class 28x28 greyscale train/test arrays (MNIST, Fashion-MNIST) and their SHA-256 verification.

Both sources decode to the same container, checked the same way: the digests are of the arrays
(images as C-order uint8 bytes, labels as uint8 bytes), so they hold whatever file format, compression
or download path the pixels came through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from cecl.datasets.errors import DataIntegrityError

KEYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class GreyArrays:
    """images uint8 [N, 28, 28] and labels int64 [N] in 0..9, for train and test; ``name`` for messages."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str = "unknown"
    name: str = "dataset"

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
                raise DataIntegrityError(f"{self.name} {split} images and labels must be numpy arrays")
            if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
                raise DataIntegrityError(
                    f"{self.name} {split} images must be uint8 [N, 28, 28], got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.int64 or labels.shape != (len(images),):
                raise DataIntegrityError(
                    f"{self.name} {split} labels must be int64 [{len(images)}], "
                    f"got {labels.dtype} {labels.shape}"
                )
            if len(labels) and (labels.min() < 0 or labels.max() > 9):
                raise DataIntegrityError(
                    f"{self.name} {split} labels must be in 0..9, got {labels.min()}..{labels.max()}"
                )

    @staticmethod
    def from_torchvision(train: Any, test: Any, name: str) -> GreyArrays:
        """From a torchvision MNIST-style dataset pair (``.data`` uint8 [N, 28, 28], ``.targets``)."""
        return GreyArrays(
            train_images=np.ascontiguousarray(train.data.numpy(), dtype=np.uint8),
            train_labels=np.ascontiguousarray(train.targets.numpy(), dtype=np.int64),
            test_images=np.ascontiguousarray(test.data.numpy(), dtype=np.uint8),
            test_labels=np.ascontiguousarray(test.targets.numpy(), dtype=np.int64),
            source="torchvision",
            name=name,
        )

    def digests(self) -> dict[str, str]:
        """SHA-256 of each array (keys KEYS): images as C-order uint8 bytes, labels as uint8 bytes."""
        return {
            key: hashlib.sha256(
                np.ascontiguousarray(getattr(self, key).astype(np.uint8, copy=False)).tobytes()
            ).hexdigest()
            for key in KEYS
        }

    def verify(self, expected: Mapping[str, str] | None) -> dict[str, str]:
        """Check the digests against ``expected`` (None: skip); returns the actual ones.

        Raises DataIntegrityError naming the split and array, the expected and the actual digest.
        """
        actual = self.digests()
        if expected is None:
            return actual
        if set(expected) != set(actual):
            raise ValueError(
                f"expected digests need exactly the keys {sorted(actual)}, got {sorted(expected)}"
            )
        for key, digest in actual.items():
            if digest != expected[key]:
                split = key.split("_")[0]
                raise DataIntegrityError(
                    f"{self.name} {split} split failed its integrity check ({key}, from {self.source}): "
                    f"expected SHA-256 {expected[key]}, got {digest}"
                )
        return actual
