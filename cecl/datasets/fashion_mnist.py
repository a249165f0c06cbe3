"""Fashion-MNIST (Xiao et al. 2017): the CPU default's real classification dataset, 10 classes, 28x28 grey.

Sources (``source``): the Debian package ``dataset-fashion-mnist`` (offline; ``make install`` installs
it where it can), torchvision's download, or ``auto`` (Debian files when present, else torchvision);
the decoded arrays are verified by SHA-256 either way. Validation is a seeded hold-out of
``val_size`` training images; ``train_size`` subsamples the rest (the CPU default), ``test_size``
the 10 000 test images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import DatasetOptions, DatasetSpec
from cecl.datasets.sources.fashion_mnist import FASHION_MNIST_SHA256, load_fashion_mnist
from cecl.datasets.splitting import indices_digests, select_splits, train_val_test_indices
from cecl.datasets.store import Split

N_TRAIN = 60000
N_TEST = 10000


class FashionMNISTOptions(DatasetOptions):
    family: Literal["fashion_mnist"] = "fashion_mnist"
    train_size: int | None = Field(None, ge=10)  # None: all training images left after validation
    val_size: int = Field(5000, ge=10, le=20000)
    test_size: int | None = Field(None, ge=10, le=N_TEST)
    source: Literal["auto", "debian", "torchvision"] = "auto"
    root: str = "data/raw"

    @model_validator(mode="after")
    def _fits(self) -> FashionMNISTOptions:
        if self.val_size + (self.train_size or 0) > N_TRAIN:
            raise ValueError(f"val_size + train_size exceed Fashion-MNIST's {N_TRAIN} training images")
        return self


@register_dataset("fashion_mnist")
class FashionMNIST(DatasetSpec):
    Options = FashionMNISTOptions
    options: FashionMNISTOptions
    n_classes = 10
    channels = 1
    image_size = (28, 28)
    mean = (0.2860,)  # Fashion-MNIST training-set pixel mean and std
    std = (0.3530,)

    def default_augment(self) -> AugmentParams:
        # Crops and flips (garments are left-right symmetric classes); no colour ops on grey images.
        return AugmentParams(crop_scale=(0.6, 1.0), color_jitter=0.0, grayscale_p=0.0, hflip_p=0.5)

    def expected_sizes(self) -> dict[str, int]:
        o = self.options
        train = N_TRAIN - o.val_size if o.train_size is None else o.train_size
        return {"train": train, "val": o.val_size, "test": o.test_size or N_TEST}

    def describe(self) -> str:
        size = "all" if self.options.train_size is None else f"{self.options.train_size}"
        return f"Fashion-MNIST ({size} training images)"

    def val_description(self) -> str:
        return "held-out Fashion-MNIST training images"

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        data = load_fashion_mnist(o.source, Path(o.root), verify=o.verify)
        idx = train_val_test_indices(
            len(data.train_labels), len(data.test_labels), o.val_size, o.train_size, o.test_size, o.seed
        )
        self._source = {
            "source": data.source,
            "verified": o.verify,
            "sha256": dict(FASHION_MNIST_SHA256) if o.verify else "not verified",
            "indices_sha256": indices_digests(idx),
        }
        train, test = (data.train_images, data.train_labels), (data.test_images, data.test_labels)
        for name, images, labels in select_splits(idx, train, test):
            yield name, Split(images=images[:, None], targets=labels.astype(np.int64))
