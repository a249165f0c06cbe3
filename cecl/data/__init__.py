"""Data: real MNIST (verified), BiasedMNIST (ReBias construction) and batched view augmentations."""

from cecl.data.augment import BatchAugment, make_views, to_float
from cecl.data.biased_mnist import (
    COLOURS,
    BiasedSplit,
    assign_colours,
    build_biased_mnist,
    colourize,
    groups,
    load_split,
    prepare_biased_mnist,
    rho_dir_name,
    save_split,
    split_key,
    split_path,
)
from cecl.data.mnist_source import MNIST_SHA256, DataIntegrityError, MnistArrays, load_mnist, verify_mnist

__all__ = [
    "COLOURS",
    "MNIST_SHA256",
    "BatchAugment",
    "BiasedSplit",
    "DataIntegrityError",
    "MnistArrays",
    "assign_colours",
    "build_biased_mnist",
    "colourize",
    "groups",
    "load_mnist",
    "load_split",
    "make_views",
    "prepare_biased_mnist",
    "rho_dir_name",
    "save_split",
    "split_key",
    "split_path",
    "to_float",
    "verify_mnist",
]
