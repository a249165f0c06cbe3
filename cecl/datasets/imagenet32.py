"""ImageNet32 (Chrabaszcz, Loshchilov & Hutter 2017, "A downsampled variant of ImageNet"): 1000 classes,
32x32 RGB, one of the two ImageNet forms the released CECL code reads.

Source: ``Imagenet32_train.zip`` and ``Imagenet32_val.zip`` from image-net.org's download page
(https://image-net.org/download-images.php, "Downsampled ImageNet 32x32"; a login is needed, so the
user downloads them and places them in ``root``), or their extracted files. The train zip holds
``train_data_batch_1..10``, the val zip ``val_data``, either at the top or in one folder
(``Imagenet32_train/``); extracted files are looked for in ``root`` and ``root/Imagenet32_train/``
(``root/Imagenet32_val/``). Each file is a pickled dict: ``data`` uint8 [N, 3072] channel-planar
(1024 R, G, B values), ``labels`` ints 1..1000 (shifted here to 0..999), ``mean``; read with a
restricted unpickler that can only rebuild numpy arrays. 1 281 167 training, 50 000 val images.
The class order is the downsampled release's own, NOT the usual sorted-synset order.

Integrity: no checksums are published for these files. So the SHA-256 of every file read (the zips
and each member) is recorded in the manifest, identifying exactly which data a result came from;
pin them with ``expected_sha256`` (file or member name -> digest) to have later runs verified.

Protocol: the official val set is the test split (``test_size`` subsamples it, seeded); validation
is a seeded hold-out of ``val_size`` training images, ``train_size`` (None: all the rest) are trained
on. Held in memory as uint8 [N, 3, 32, 32] (the full training set is 3.9 GB).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import IMAGENET_MEAN, IMAGENET_STD, DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import file_digest, read_member, warn_unverified
from cecl.datasets.sources.pickled import int_labels, load_batch, planar_images
from cecl.datasets.splitting import indices_digests, select_splits, train_val_test_indices
from cecl.datasets.store import Split

N_TRAIN = 1281167
N_VAL = 50000
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
VAL_FILES = ("val_data",)
DOWNLOAD_PAGE = "https://image-net.org/download-images.php"


@dataclass(frozen=True)
class Part:
    """One half of the release: its zip, the batch files in it, and the folder it usually unzips to."""

    zip_name: str
    files: tuple[str, ...]
    folder: str


TRAIN = Part("Imagenet32_train.zip", TRAIN_FILES, "Imagenet32_train")
VAL = Part("Imagenet32_val.zip", VAL_FILES, "Imagenet32_val")


class ImageNet32Options(DatasetOptions):
    family: Literal["imagenet32"] = "imagenet32"
    root: str = "data/raw/imagenet32"  # where the two zips (or their extracted files) are
    train_size: int | None = Field(None, ge=10)  # None: every training image not held out
    val_size: int = Field(10000, ge=10, le=100000)  # held out of the training images
    test_size: int | None = Field(None, ge=10, le=N_VAL)  # None: all 50 000 official val images
    expected_sha256: dict[str, str] = Field(default_factory=dict)  # pinned digests (file/member -> hex)

    @model_validator(mode="after")
    def _fits(self) -> ImageNet32Options:
        if self.val_size + (self.train_size or 0) > N_TRAIN:
            raise ValueError(f"val_size + train_size exceed ImageNet32's {N_TRAIN} training images")
        return self


@dataclass(frozen=True)
class Located:
    """Where one part's batch files are: in a zip (member names) or as files (paths)."""

    kind: Literal["zip", "folder"]
    path: Path  # the zip, or the folder holding the files
    names: dict[str, str]  # batch file name -> zip member name, or file path


def _zip_members(zip_path: Path, part: Part) -> dict[str, str]:
    """batch name -> member name in the zip (at its top or one folder down); a missing one is an error."""
    with zipfile.ZipFile(zip_path) as zf:
        found = {
            PurePosixPath(n).name: n
            for n in zf.namelist()
            if len(PurePosixPath(n).parts) <= 2 and not n.endswith("/")
        }
    missing = [f for f in part.files if f not in found]
    if missing:
        raise DataIntegrityError(f"{zip_path}: has no {', '.join(missing)} (an incomplete or different zip?)")
    return {f: found[f] for f in part.files}


def locate(root: Path, part: Part) -> Located | list[str]:
    """The part's files in ``root`` (zip first, then extracted), or the list of what is missing."""
    zip_path = root / part.zip_name
    if zip_path.is_file():
        return Located("zip", zip_path, _zip_members(zip_path, part))
    for folder in (root, root / part.folder):
        present = [f for f in part.files if (folder / f).is_file()]
        if len(present) == len(part.files):
            return Located("folder", folder, {f: str(folder / f) for f in part.files})
        if present:  # a partly extracted folder: name exactly the files it lacks
            return [str(folder / f) for f in part.files if f not in present]
    files = f"{part.files[0]}..{part.files[-1].rsplit('_', 1)[-1]}" if len(part.files) > 1 else part.files[0]
    return [f"{part.zip_name} (or its extracted {files})"]


def how_to_get(root: Path, missing: list[str]) -> str:
    return (
        f"ImageNet32 not found: {'; '.join(missing)} missing in {root}; download Imagenet32_train.zip and "
        f"Imagenet32_val.zip (Downsampled ImageNet 32x32) from {DOWNLOAD_PAGE} after logging in, "
        f"and place them in {root}"
    )


def _check_pinned(name: str, shown: str, digest: str, pinned: dict[str, str], verify: bool) -> bool:
    """Whether file ``name`` (``shown`` in messages) matched its pinned digest; a mismatch raises."""
    expected = pinned.get(name)
    if not verify or expected is None:
        return False
    if digest != expected.lower():
        raise DataIntegrityError(f"{shown}: sha256 {digest} does not match the pinned {expected}")
    return True


@dataclass
class _Reader:
    """Reads the batches of located parts, recording the SHA-256 of every file and member read and
    checking those pinned in ``expected_sha256``."""

    pinned: dict[str, str]
    verify: bool
    digests: dict[str, str]
    files: list[str]  # what was read from disk: the zips, or the extracted files
    checked: list[str]

    def part(self, located: Located) -> tuple[np.ndarray, np.ndarray]:
        if located.kind == "zip":
            digest = file_digest(located.path, "sha256")
            self._record(located.path.name, str(located.path), digest, on_disk=True)
        images, labels = [], []
        for name, where in located.names.items():
            if located.kind == "zip":
                data, what = read_member(located.path, where), f"{located.path}:{where}"
            else:
                data, what = Path(where).read_bytes(), where
            self._record(name, what, hashlib.sha256(data).hexdigest(), on_disk=located.kind == "folder")
            batch = load_batch(data, what, ("data", "labels"))
            del data  # one pickled batch (~400 MB) in memory at a time
            images.append(planar_images(batch["data"], what))
            labels.append(int_labels(batch["labels"], len(images[-1]), what, 1, 1000) - 1)
        return np.concatenate(images), np.concatenate(labels)

    def _record(self, name: str, shown: str, digest: str, on_disk: bool) -> None:
        self.digests[name] = digest
        if on_disk:
            self.files.append(name)
        if _check_pinned(name, shown, digest, self.pinned, self.verify):
            self.checked.append(name)

    def verified(self) -> bool:
        """Every file read from disk matched a pinned digest (a zip's digest covers its members)."""
        return self.verify and all(f in self.checked for f in self.files)


@register_dataset("imagenet32")
class ImageNet32(DatasetSpec):
    Options = ImageNet32Options
    options: ImageNet32Options
    n_classes = 1000
    channels = 3
    image_size = (32, 32)
    mean = IMAGENET_MEAN  # the released code's "else" branch
    std = IMAGENET_STD

    def default_augment(self) -> AugmentParams:
        return SUPCON_RECIPE

    def expected_sizes(self) -> dict[str, int]:
        o = self.options
        train = N_TRAIN - o.val_size if o.train_size is None else o.train_size
        return {"train": train, "val": o.val_size, "test": N_VAL if o.test_size is None else o.test_size}

    def describe(self) -> str:
        sizes = self.expected_sizes()
        return (
            f"ImageNet32 ({sizes['train']} training, {sizes['val']} validation, {sizes['test']} test images)"
        )

    def val_description(self) -> str:
        return "held-out ImageNet32 training images"

    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train images, train labels, val images, val labels) from ``root``, digests recorded."""
        root = Path(self.options.root)
        located = {"train": locate(root, TRAIN), "val": locate(root, VAL)}
        missing = [m for found in located.values() if isinstance(found, list) for m in found]
        if missing:
            raise DataUnavailable(how_to_get(root, missing))
        reader = _Reader(self.options.expected_sha256, self.options.verify, {}, [], [])
        train_images, train_labels = reader.part(located["train"])  # type: ignore[arg-type]
        val_images, val_labels = reader.part(located["val"])  # type: ignore[arg-type]
        unknown = sorted(set(self.options.expected_sha256) - set(reader.digests))
        if unknown:
            raise DataIntegrityError(
                f"expected_sha256 names {unknown[0]!r}, which is not a file that was read"
            )
        verified = reader.verified()
        if not verified:
            reason = "verification turned off" if not self.options.verify else "no published checksums"
            warn_unverified(
                f"ImageNet32 in {root}", f"{reason}; SHA-256 of each file recorded in the manifest"
            )
        self._source = {
            "source": {k: v.kind for k, v in located.items()},  # type: ignore[union-attr]
            "path": str(root),
            "sha256": reader.digests,
            "published_checksums": None,
            "verified": verified,
            "verified_against": "expected_sha256 (pinned by the user)" if verified else None,
        }
        return train_images, train_labels, val_images, val_labels

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        train_images, train_labels, test_images, test_labels = self.read()
        idx = train_val_test_indices(
            len(train_labels), len(test_labels), o.val_size, o.train_size, o.test_size, o.seed
        )
        self._source["indices_sha256"] = indices_digests(idx)
        for name, images, labels in select_splits(
            idx, (train_images, train_labels), (test_images, test_labels)
        ):
            yield name, Split(images=np.ascontiguousarray(images), targets=labels)
