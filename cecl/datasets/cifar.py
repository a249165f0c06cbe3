"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): the paper's classification tables, 32x32 RGB, 10 / 100 classes.

Source: the official "python version" archives from https://www.cs.toronto.edu/~kriz/cifar.html
(``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``), found in ``root`` or downloaded there
(``download: true``), or their extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``)
placed in ``root`` by hand. The archive's published md5 and each member's md5 (the values
torchvision checks, listed below) are verified unless ``verify: false``. Members are read straight
out of the archive (nothing is extracted to disk) and unpickled with a restricted unpickler that can
only rebuild numpy arrays (cecl/datasets/sources/pickled.py).

Each batch is a Python 2 pickle of a dict: ``data`` uint8 [N, 3072] channel-planar (1024 R, then G,
then B values, row-major), reshaped to the stored uint8 [N, 3, 32, 32]; ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100, the 100-class task). 50 000 training and 10 000 test images.

Protocol: the official test set is the test split (``test_size`` may subsample it, seeded);
validation is a seeded hold-out of ``val_size`` training images and ``train_size`` (None: all the
rest) are trained on. SupContrast (which the CECL code forks) trains on all 50 000 and has no
validation split; ``val_size`` images are what this pipeline holds back for honest model selection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources.archives import file_digest, locate_or_download, read_members, warn_unverified
from cecl.datasets.sources.pickled import int_labels, load_batch, planar_images
from cecl.datasets.splitting import indices_digests, select_splits, train_val_test_indices
from cecl.datasets.store import Split

N_TRAIN = 50000
N_TEST = 10000


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files are and what their published md5s are (from datasets.md; the
    same values as torchvision.datasets.CIFAR10/CIFAR100, which tests/test_cifar.py checks)."""

    title: str
    archive: str
    url: str
    archive_md5: str
    folder: str
    train: Mapping[str, str]  # member file name -> md5, in reading order
    test: Mapping[str, str]
    meta: Mapping[str, str]
    label_key: str
    names_key: str  # the meta key with the class names

    def members(self) -> dict[str, str]:
        """Every member (file name in ``folder``) -> its published md5."""
        return {**self.train, **self.test, **self.meta}


CIFAR10 = CifarLayout(
    title="CIFAR-10",
    archive="cifar-10-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train=MappingProxyType(
        {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        }
    ),
    test=MappingProxyType({"test_batch": "40351d587109b95175f43aff81a1287e"}),
    meta=MappingProxyType({"batches.meta": "5ff9c542aee3614f3951f8cda6e48888"}),
    label_key="labels",
    names_key="label_names",
)
CIFAR100 = CifarLayout(
    title="CIFAR-100",
    archive="cifar-100-python.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train=MappingProxyType({"train": "16019d7e3df5f24257cddd939b257f8d"}),
    test=MappingProxyType({"test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
    meta=MappingProxyType({"meta": "7973b15100ade9c7d40fb424638fde48"}),
    label_key="fine_labels",
    names_key="fine_label_names",
)


class CifarOptions(DatasetOptions):
    """Options shared by cifar10 and cifar100 (each fixes ``family``)."""

    root: str = "data/raw"  # where the archive (or its extracted folder) is, or is downloaded to
    download: bool = True  # download the official archive into root when neither is there
    train_size: int | None = Field(None, ge=10)  # None: every training image not held out
    val_size: int = Field(5000, ge=10, le=25000)  # held out of the 50 000 training images
    test_size: int | None = Field(None, ge=10, le=N_TEST)  # None: the whole official test set

    @model_validator(mode="after")
    def _fits(self) -> CifarOptions:
        if self.val_size + (self.train_size or 0) > N_TRAIN:
            raise ValueError(f"val_size + train_size exceed CIFAR's {N_TRAIN} training images")
        return self


class Cifar10Options(CifarOptions):
    family: Literal["cifar10"] = "cifar10"


class Cifar100Options(CifarOptions):
    family: Literal["cifar100"] = "cifar100"


@dataclass(frozen=True)
class CifarArrays:
    """Decoded CIFAR: images uint8 [N, 3, 32, 32], labels int64, class names, and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: dict[str, Any]


def how_to_get(layout: CifarLayout, root: Path) -> str:
    """The instruction for a missing CIFAR archive: the file, its URL and the folder alternative."""
    return (
        f"download {layout.url} (md5 {layout.archive_md5}) into {root}, or place its extracted folder "
        f"{root / layout.folder} there, or set download: true"
    )


def _member_digests(
    files: Mapping[str, bytes], layout: CifarLayout, where: Path, verify: bool
) -> dict[str, str]:
    """md5 of each member's bytes; with ``verify``, a mismatch with the published md5 is an error."""
    digests = {}
    for name, expected in layout.members().items():
        got = hashlib.md5(files[name]).hexdigest()
        if verify and got != expected:
            raise DataIntegrityError(f"{where / name}: md5 {got} does not match the published {expected}")
        digests[name] = got
    return digests


def read_cifar_files(layout: CifarLayout, root: Path, download: bool, verify: bool) -> dict[str, Any]:
    """The member bytes (name -> bytes) and their provenance, from the archive or the extracted folder.

    Order: the archive in ``root`` when present; else the extracted folder; else the archive
    downloaded (when allowed); else DataUnavailable (one line naming the file, URL and folder).
    """
    archive, folder = root / layout.archive, root / layout.folder
    if not archive.is_file() and folder.is_dir():
        missing = [n for n in layout.members() if not (folder / n).is_file()]
        if missing:
            raise DataIntegrityError(f"{folder}: {missing[0]} is missing ({how_to_get(layout, root)})")
        if not verify:
            warn_unverified(folder, "verification turned off")
        files = {n: (folder / n).read_bytes() for n in layout.members()}
        return {"files": files, "kind": "folder", "path": folder, "archive_md5": None}
    path = locate_or_download(
        root,
        layout.archive,
        url=layout.url if download else None,
        expected=layout.archive_md5,
        allow_download=download,
        verify=verify,
        how_to_get=how_to_get(layout, root),
    )
    members = read_members(path, [f"{layout.folder}/{n}" for n in layout.members()])
    files = {n: members[f"{layout.folder}/{n}"] for n in layout.members()}
    digest = layout.archive_md5 if verify else file_digest(path)
    return {"files": files, "kind": "archive", "path": path, "archive_md5": digest}


def _decode(
    files: Mapping[str, bytes], names: Mapping[str, str], layout: CifarLayout, where: Path, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """The named batches' images uint8 [N, 3, 32, 32] and labels int64 [N], concatenated in order."""
    images, labels = [], []
    for name in names:
        what = str(where / name)
        batch = load_batch(files[name], what, ("data", layout.label_key))
        images.append(planar_images(batch["data"], what))
        labels.append(int_labels(batch[layout.label_key], len(images[-1]), what, 0, n_classes - 1))
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(layout: CifarLayout, n_classes: int, root: Path, download: bool, verify: bool) -> CifarArrays:
    """CIFAR decoded and (unless ``verify`` is False) verified: archive md5, then every member's md5."""
    found = read_cifar_files(layout, Path(root), download, verify)
    files, path = found["files"], Path(found["path"])
    shown = path if found["kind"] == "folder" else path / layout.folder  # member names in messages
    digests = _member_digests(files, layout, shown, verify)
    train_images, train_labels = _decode(files, layout.train, layout, shown, n_classes)
    test_images, test_labels = _decode(files, layout.test, layout, shown, n_classes)
    meta_name = next(iter(layout.meta))
    meta = load_batch(files[meta_name], str(shown / meta_name), (layout.names_key,))
    names = [str(n) for n in meta[layout.names_key]]
    if len(names) != n_classes:
        raise DataIntegrityError(f"{shown / meta_name}: {len(names)} class names, expected {n_classes}")
    source = {
        "source": found["kind"],
        "path": str(found["path"]),
        "archive_md5": found["archive_md5"],
        "members_md5": digests,
        "verified": verify,
    }
    return CifarArrays(train_images, train_labels, test_images, test_labels, names, source)


class _Cifar(DatasetSpec):
    """What CIFAR-10 and CIFAR-100 share; subclasses set the layout, class count and statistics."""

    layout: ClassVar[CifarLayout]
    options: CifarOptions
    channels = 3
    image_size = (32, 32)

    def default_augment(self) -> AugmentParams:
        return SUPCON_RECIPE

    def expected_sizes(self) -> dict[str, int]:
        o = self.options
        train = N_TRAIN - o.val_size if o.train_size is None else o.train_size
        return {"train": train, "val": o.val_size, "test": o.test_size or N_TEST}

    def describe(self) -> str:
        n = self.expected_sizes()
        return f"{self.layout.title} ({n['train']} training, {n['val']} validation, {n['test']} test images)"

    def val_description(self) -> str:
        return f"held-out {self.layout.title} training images"

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        data = load_cifar(self.layout, self.n_classes, Path(o.root), o.download, o.verify)
        idx = train_val_test_indices(
            len(data.train_labels), len(data.test_labels), o.val_size, o.train_size, o.test_size, o.seed
        )
        self._source = {
            **data.source,
            "class_names": data.class_names,
            "indices_sha256": indices_digests(idx),
        }
        train, test = (data.train_images, data.train_labels), (data.test_images, data.test_labels)
        for name, images, labels in select_splits(idx, train, test):
            yield name, Split(images=np.ascontiguousarray(images), targets=labels)


@register_dataset("cifar10")
class Cifar10(_Cifar):
    Options = Cifar10Options
    layout = CIFAR10
    n_classes = 10
    mean = (0.4914, 0.4822, 0.4465)  # SupContrast's CIFAR-10 statistics
    std = (0.2023, 0.1994, 0.2010)


@register_dataset("cifar100")
class Cifar100(_Cifar):
    Options = Cifar100Options
    layout = CIFAR100
    n_classes = 100
    mean = (0.5071, 0.4867, 0.4408)  # SupContrast's CIFAR-100 statistics
    std = (0.2675, 0.2565, 0.2761)
