"""The dataset plug-in interface: everything specific to one dataset family lives in its spec.

A family (``biased_mnist``, ``fashion_mnist``, ...) is a :class:`DatasetSpec` subclass registered with
``@register_dataset``. It declares its options schema (``Options``, validated under
``params.yaml: datasets.<entry>``), and from an entry's options it knows the number of classes, the
image shape, the normalisation, the augmentation recipe, the bias attribute (if any), the evaluator,
and how to build its splits from the raw sources. The generic parts (writing the store and the
manifest atomically, reading a split back and checking it against the manifest) are here, so a
family module only says what is specific to it.

The manifest is the dataset's contract (as nanoGPT's meta file): the loop, the probe and the report
read n_classes, shape and normalisation from the spec and check them against it; nothing downstream
infers them from the data (never ``labels.max() + 1``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from cecl.data.recipe import AugmentParams
from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.store import MANIFEST, Split, file_sha256, load_split, save_split
from cecl.io import atomic_dir, write_json
from cecl.schema import Strict

if TYPE_CHECKING:
    import torch

    from cecl.data.splits import TensorSplit
    from cecl.eval import Evaluator

# torch (the evaluators, TensorSplit) is imported where a split is served or scored, not here: reading a
# family's options and sizes (cecl/config.py; the aggregate stage) stays torch-free.

MANIFEST_VERSION = 2
SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # normalisation of natural-image families (torchvision's)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetOptions(Strict):
    """Options every family has; a family's ``Options`` subclasses this and fixes ``family``."""

    family: str
    seed: int = 0  # the data seed: subsamples and splits (training seeds are params.yaml ``seeds``)
    verify: bool = True  # False skips checksum verification (stand-ins, private copies): warned + recorded
    augment: AugmentParams | None = None  # None: the family's recipe
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-entry model/pretrain/probe


@dataclass(frozen=True)
class BiasAttribute:
    """A bias attribute: its name, number of values and which (target, value) pairs are aligned."""

    name: str
    n_values: int
    aligned: np.ndarray  # bool [n_classes, n_values]


class DatasetSpec(ABC):
    """One named dataset entry of a registered family. Subclasses set the class attributes below."""

    family: ClassVar[str]
    Options: ClassVar[type[DatasetOptions]]
    n_classes: ClassVar[int]
    channels: ClassVar[int]
    image_size: tuple[int, int]  # (H, W) of the stored images (a class default; an entry may set its own)
    mean: ClassVar[tuple[float, ...]]  # per-channel normalisation the encoder applies
    std: ClassVar[tuple[float, ...]]

    def __init__(self, name: str, options: DatasetOptions) -> None:
        self.name = name
        self.options = options
        size = getattr(options, "image_size", None)  # families that store at a chosen size (S x S)
        if isinstance(size, int):
            self.image_size = (size, size)
        self._source: dict[str, Any] = {}  # filled by build(): what the raw data was

    # ------------------------------------------------------------------ what a family says about itself

    @abstractmethod
    def build(self) -> Iterator[tuple[str, Split]]:
        """Read (or download) and verify the raw sources; yield (split name, data) for train, val, test."""

    @abstractmethod
    def describe(self) -> str:
        """One line for tables and captions, e.g. ``BiasedMNIST rho 0.95, 10 000 training images``."""

    def expected_sizes(self) -> dict[str, int]:
        """Images per split (train, val, test) as the options will prepare them, read from no data: what
        the cost plan (cecl/plan) counts before anything is downloaded. Where the exact count depends on
        the data (bias subsampling), an upper bound, which the plan says it is."""
        raise NotImplementedError(f"dataset family {self.family!r} does not say its expected split sizes")

    def sizes_are_upper_bounds(self) -> bool:
        """True where :meth:`expected_sizes` is an upper bound rather than the exact count."""
        return False

    def source_info(self) -> dict[str, Any]:
        """What the raw data was and whether it was verified (recorded in the manifest; set by build())."""
        return self._source

    def default_augment(self) -> AugmentParams:
        return AugmentParams()

    def bias_attribute(self) -> BiasAttribute | None:
        return None

    def val_description(self) -> str:
        return "held-out training images"

    # ------------------------------------------------------------------ derived, generic

    @property
    def augment(self) -> AugmentParams:
        return self.options.augment or self.default_augment()

    def evaluator(self) -> Evaluator:
        from cecl.eval import Classification, GroupBias

        bias = self.bias_attribute()
        if bias is None:
            return Classification(self.n_classes)
        return GroupBias(self.n_classes, bias.aligned)

    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def contract(self) -> dict[str, Any]:
        """What the manifest must agree with: the spec's own description of the data."""
        bias = self.bias_attribute()
        return {
            "family": self.family,
            "n_classes": self.n_classes,
            "shape": list(self.shape()),
            "mean": list(self.mean),
            "std": list(self.std),
            "bias": None if bias is None else {"name": bias.name, "n_values": bias.n_values},
        }

    # ------------------------------------------------------------------ the store

    def prepare(self, out_dir: Path) -> dict[str, Any]:
        """Build every split, write the .npz files and manifest.json atomically; returns the manifest.

        Everything goes into a temporary sibling folder that replaces ``out_dir`` only when complete,
        so a failure (a bad checksum, a missing file) leaves the previous folder (or none).
        """
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "dataset": self.name,
            **self.contract(),
            "options": self.options.model_dump(mode="json"),
            "description": self.describe(),
            "verified": self.options.verify,
            "sources": self.source_info(),
            "splits": {},
        }
        with atomic_dir(Path(out_dir)) as tmp:
            for name, split in self.build():
                self._check(split, name)
                digest = save_split(tmp / f"{name}.npz", split)
                manifest["splits"][name] = {
                    "file": f"{name}.npz",
                    "sha256": digest,
                    **self.split_stats(split),
                }
            manifest["sources"] = self.source_info()  # known only once build() has run
            # A family may find it could not verify (e.g. an extracted folder has no published digest).
            manifest["verified"] = bool(self.options.verify and manifest["sources"].get("verified", True))
            missing = [s for s in SPLITS if s not in manifest["splits"]]
            if missing:
                raise DataIntegrityError(f"{self.family}.build() produced no {missing[0]!r} split")
            write_json(tmp / MANIFEST, manifest)
        return manifest

    def split_stats(self, split: Split) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "count": len(split),
            "per_class": np.bincount(split.targets, minlength=self.n_classes).tolist(),
        }
        bias = self.bias_attribute()
        if bias is not None and split.bias is not None:
            groups = np.bincount(
                split.targets * bias.n_values + split.bias, minlength=self.n_classes * bias.n_values
            )
            table = groups.reshape(self.n_classes, bias.n_values)
            stats["group_counts"] = table.tolist()
            stats["aligned_fraction"] = float(table[bias.aligned].sum() / max(1, len(split)))
        return stats

    def _check(self, split: Split, name: str) -> None:
        if len(split) == 0:
            raise DataIntegrityError(
                f"{self.name} {name}: the split is empty (too few source images for these options)"
            )
        if tuple(split.images.shape[1:]) != self.shape():
            raise DataIntegrityError(
                f"{self.name} {name}: images are {list(split.images.shape[1:])}, "
                f"the spec says {list(self.shape())}"
            )
        if len(split) and split.targets.max() >= self.n_classes:
            raise DataIntegrityError(f"{self.name} {name}: a target >= n_classes {self.n_classes}")
        if (self.bias_attribute() is None) != (split.bias is None):
            raise DataIntegrityError(f"{self.name} {name}: bias attribute present/absent unlike the spec")

    def read_manifest(self, data_dir: Path) -> dict[str, Any]:
        """The manifest, checked against this spec; a mismatch is a one-line error naming the key."""
        path = Path(data_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run prepare@{self.name} first (dvc repro)")
        manifest = json.loads(path.read_text())
        if manifest.get("version") != MANIFEST_VERSION:
            raise DataIntegrityError(
                f"{path}: manifest version {manifest.get('version')}, expected {MANIFEST_VERSION}"
            )
        for key, expected in self.contract().items():
            if manifest.get(key) != expected:
                raise DataIntegrityError(
                    f"{path}: {key} is {manifest.get(key)!r} but the {self.family} spec says {expected!r}"
                )
        return manifest

    def data_verified(self, data_dir: Path) -> bool:
        """Whether the prepared data came from verified raw files: the manifest's ``verified``, which is
        false under ``verify: false`` and also when the family could not verify (e.g. an extracted tree)."""
        return bool(self.read_manifest(data_dir).get("verified", False))

    def split_file(self, data_dir: Path, split: str) -> Path:
        """The prepared file of ``split``, after checking its SHA-256 against the manifest."""
        manifest = self.read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"{self.name} has no split {split!r}; it has {', '.join(manifest['splits'])}")
        entry = manifest["splits"][split]
        path = Path(data_dir) / entry["file"]
        digest = file_sha256(path)
        if digest != entry["sha256"]:
            raise DataIntegrityError(
                f"{path}: SHA-256 {digest} does not match the manifest's {entry['sha256']} "
                f"(re-run prepare@{self.name})"
            )
        return path

    def load(self, data_dir: Path, split: str) -> Split:
        path = self.split_file(data_dir, split)
        data = load_split(path)
        self._check(data, split)
        return data

    def tensors(self, data_dir: Path, split: str, device: torch.device) -> TensorSplit:
        """How batches are served: the whole split in memory on ``device`` (uint8)."""
        from cecl.data.splits import TensorSplit

        return TensorSplit.from_split(self.load(data_dir, split), device)
