"""Caltech-101 and Caltech-256: the paper's transfer targets (linear probe on a frozen encoder).

Sources (``<root>/caltech101/`` and ``<root>/caltech256/``, torchvision's folders):

* Caltech-101 (Fei-Fei, Fergus & Perona 2004): ``caltech-101.zip`` from CaltechDATA (md5
  3138e1922a9193bfa496528edbbc45d0), holding ``caltech-101/101_ObjectCategories.tar.gz`` (md5
  b224c7392d521a49829488ab0f1120d9, the file torchvision used to download directly; verified too)
  and ``Annotations.tar`` (not used). The inner archive is extracted next to the zip once and
  re-verified on every prepare. 102 folders; ``BACKGROUND_Google`` is not a class (torchvision drops
  it), leaving 101 classes and 8 677 images (31 to 800 per class), about 300 x 200 px.
* Caltech-256 (Griffin, Holub & Perona 2007): ``256_ObjectCategories.tar`` (md5
  67b4f42ca05d46448c6bb8ecd2220f6d), folders ``NNN.name/`` with ``NNN_MMMM.jpg``; ``257.clutter``
  is kept as a class, as torchvision does: 257 classes, about 30 600 images (80 to 827 per class).
* Either: the already extracted class-folder tree (``101_ObjectCategories/`` or
  ``256_ObjectCategories/`` in the same folder, e.g. from torchvision), used when no archive is
  there. It cannot be checked by a digest, so it is recorded as unverified.

Classes are torchvision's: the class folders sorted by Python string order (upper case first, so
Caltech-101's label 0 is ``Faces``), the label the position in that list. Only files directly in a
class folder with an image suffix count; anything else (Thumbs.db, .DS_Store, nested folders) is
skipped and counted in the manifest's ``sources``.

Protocol (neither dataset has an official split; the released CECL code trains and tests on the
whole set): per class, a seeded permutation of the class's sorted file names gives
``train_per_class`` training images (30 for Caltech-101, as TFDS; 60 for Caltech-256, following
Kornblith et al. 2019, not confirmed from a stored source, hence a parameter), of which the first
``val_per_class`` are held out as validation (epoch selection) and the rest are the probe's
training split; every other image of the class is test (``test_per_class`` caps it, for small
runs). The permutation is seeded by ``(seed, family, class name)``: deterministic, independent of
archive member order and of the other classes.

Images are decoded one at a time while streaming the archive, converted to RGB (some are
greyscale), reduced by torchvision's ``Resize(image_size) + CenterCrop(image_size)`` and stored as
uint8 (cecl/datasets/sources/images.py). ``image_size`` must be the input size of the encoder that
will be probed (32 for CIFAR-pretrained encoders).

Normalisation: ``mean``/``std`` are ImageNet's, but they are used only if an encoder is *pretrained*
on a Caltech entry. As a transfer target the data is probed with the SOURCE encoder, which
normalises with the statistics it was pretrained with (``cecl.models.Encoder`` keeps them as
buffers and in its payload; stages/probe.py feeds it uint8 / 255 through ``extract_features``).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import IMAGENET_MEAN, IMAGENET_STD, DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError
from cecl.datasets.sources import archives
from cecl.datasets.sources.images import is_image_name, load_resized, stack_images
from cecl.datasets.splitting import seeded_rng
from cecl.datasets.store import Split

SPLIT_NAMES = ("train", "val", "test")
_EXAMPLES = 5  # skipped file names recorded in the manifest, as examples


@dataclass(frozen=True)
class CaltechSource:
    """Where one Caltech dataset comes from: the archive, its digest, the class-folder tree inside it."""

    name: str  # for messages and descriptions: "Caltech-101"
    folder: str  # under options.root (torchvision's folder name)
    archive: str  # the published file
    url: str
    md5: str
    tree: str  # the top folder of class folders: "101_ObjectCategories"
    inner: str | None = None  # an archive inside ``archive`` that holds ``tree`` (Caltech-101)
    inner_md5: str | None = None
    dropped: tuple[str, ...] = ()  # folders that are not classes
    n_images: int = 0  # images in the class folders (the published total; the cost plan counts with it)


CALTECH101 = CaltechSource(
    name="Caltech-101",
    folder="caltech101",
    archive="caltech-101.zip",
    url="https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
    md5="3138e1922a9193bfa496528edbbc45d0",
    tree="101_ObjectCategories",
    inner="101_ObjectCategories.tar.gz",
    inner_md5="b224c7392d521a49829488ab0f1120d9",
    dropped=("BACKGROUND_Google",),
    n_images=8677,  # 9 146 less the 468 BACKGROUND_Google images (torchvision's Caltech101 length: 8 677)
)
CALTECH256 = CaltechSource(
    name="Caltech-256",
    folder="caltech256",
    archive="256_ObjectCategories.tar",
    url="https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar",
    md5="67b4f42ca05d46448c6bb8ecd2220f6d",
    tree="256_ObjectCategories",
    n_images=30607,  # the published total, 257.clutter included
)


class CaltechOptions(DatasetOptions):
    """Options shared by both families; each fixes ``family`` and its ``train_per_class`` default."""

    root: str = "data/raw"  # archives / trees are looked for (and downloaded) in <root>/<caltech101|256>/
    download: bool = True  # False: a missing archive is an error that says how to get it
    image_size: int = Field(32, ge=8, le=512)  # stored H = W; must be the probed encoder's input size
    train_per_class: int = Field(ge=2)  # the protocol's training images per class (validation included)
    val_per_class: int = Field(5, ge=1)  # carved out of the train_per_class images
    test_per_class: int | None = Field(None, ge=1)  # None: every image not used for training

    @model_validator(mode="after")
    def _val_inside_train(self) -> CaltechOptions:
        if self.val_per_class >= self.train_per_class:
            raise ValueError(
                f"val_per_class {self.val_per_class} must be smaller than train_per_class "
                f"{self.train_per_class} (validation is carved out of the training images)"
            )
        return self


class Caltech101Options(CaltechOptions):
    family: Literal["caltech101"] = "caltech101"
    train_per_class: int = Field(30, ge=2)


class Caltech256Options(CaltechOptions):
    family: Literal["caltech256"] = "caltech256"
    train_per_class: int = Field(60, ge=2)


# ----------------------------------------------------------------------------- reading the files


class _Reader:
    """Names and bytes of the files of one source (an archive, or a folder), ``tree/class/file`` names."""

    label: str  # for messages and the manifest (a file name, never an absolute path)

    def names(self) -> list[str]:
        raise NotImplementedError

    def read(self, names: set[str]) -> Iterator[tuple[str, bytes]]:
        raise NotImplementedError


class _ArchiveReader(_Reader):
    """A tar or zip archive, streamed with :func:`archives.iter_members` (one member in memory)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = path.name

    def names(self) -> list[str]:
        return [name for name, _ in archives.iter_members(self.path)]

    def read(self, names: set[str]) -> Iterator[tuple[str, bytes]]:
        return archives.iter_members(self.path, only=names)


class _FolderReader(_Reader):
    """An extracted tree: names are paths relative to ``base`` (the folder that holds the tree)."""

    def __init__(self, base: Path, tree: str) -> None:
        self.base = base
        self.tree = tree
        self.label = f"{tree}/"

    def names(self) -> list[str]:
        top = self.base / self.tree
        return [p.relative_to(self.base).as_posix() for p in top.rglob("*") if p.is_file()]

    def read(self, names: set[str]) -> Iterator[tuple[str, bytes]]:
        for name in sorted(names):
            yield name, (self.base / name).read_bytes()


def class_of(name: str, tree: str) -> tuple[str, str] | None:
    """``(class folder, file name)`` of ``tree/class/file`` (a leading ``./`` allowed); None otherwise."""
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if len(parts) != 3 or parts[0] != tree:
        return None
    return parts[1], parts[2]


@dataclass(frozen=True)
class Inventory:
    """The images of a source by class (sorted names), the classes in label order, what was skipped."""

    by_class: dict[str, list[str]]
    classes: list[str]
    skipped: list[str]


def take_inventory(names: list[str], source: CaltechSource) -> Inventory:
    """Sort a source's file names into classes (torchvision's order), dropping non-classes and non-images."""
    by_class: dict[str, list[str]] = {}
    skipped: list[str] = []
    for name in names:
        parsed = class_of(name, source.tree)
        if parsed is None or not is_image_name(parsed[1]):
            skipped.append(name)
        elif parsed[0] not in source.dropped:
            by_class.setdefault(parsed[0], []).append(name)
    classes = sorted(by_class)  # Python string order, as torchvision's sorted(os.listdir(...))
    return Inventory({c: sorted(by_class[c]) for c in classes}, classes, sorted(skipped))


def split_class(
    n: int, train_per_class: int, val_per_class: int, test_per_class: int | None, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Indices into one class's ``n`` sorted images: val, train (the rest of the training budget), test."""
    order = rng.permutation(n)
    test = order[train_per_class:]
    if test_per_class is not None:
        test = test[:test_per_class]
    return {"train": order[val_per_class:train_per_class], "val": order[:val_per_class], "test": test}


def assign_splits(
    inventory: Inventory, options: CaltechOptions, family: str, dataset: str
) -> dict[str, list[tuple[str, int]]]:
    """(file name, label) per split, sorted by (label, name); each class split by its own seeded draw."""
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLIT_NAMES}
    for label, cls in enumerate(inventory.classes):
        names = inventory.by_class[cls]
        if len(names) <= options.train_per_class:
            raise DataIntegrityError(
                f"{dataset}: class {cls!r} has {len(names)} images, needs more than train_per_class "
                f"{options.train_per_class} (at least one test image)"
            )
        rng = seeded_rng(options.seed, family, "class split", cls)
        chosen = split_class(
            len(names), options.train_per_class, options.val_per_class, options.test_per_class, rng
        )
        for split, idx in chosen.items():
            out[split].extend((names[i], label) for i in sorted(idx.tolist()))
    return out


def _names_sha256(items: list[tuple[str, int]]) -> str:
    """A digest of which files (and labels) a split holds, for the manifest."""
    text = "\n".join(f"{label}\t{name}" for name, label in items)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------- the families


class CaltechBase(DatasetSpec):
    """Shared by Caltech-101 and Caltech-256; a subclass sets ``source``, ``n_classes`` and ``Options``."""

    source: ClassVar[CaltechSource]
    options: CaltechOptions
    channels = 3
    mean = IMAGENET_MEAN  # used only when pretraining on this entry (see the module docstring)
    std = IMAGENET_STD

    image_size = (32, 32)  # the default; an instance has its option's size (as cecl/datasets/celeba.py)

    def default_augment(self) -> AugmentParams:
        # SupContrast's recipe for natural images, in case an entry is pretrained on (not needed to probe).
        return SUPCON_RECIPE

    def expected_sizes(self) -> dict[str, int]:
        """Per-class protocol counts; test is the rest of ``source.n_images`` (the published total)."""
        o = self.options
        n = self.n_classes
        test = self.source.n_images - o.train_per_class * n
        if o.test_per_class is not None:
            test = min(test, o.test_per_class * n)
        return {"train": (o.train_per_class - o.val_per_class) * n, "val": o.val_per_class * n, "test": test}

    def sizes_are_upper_bounds(self) -> bool:
        return True  # classes with fewer images than train_per_class give fewer

    def describe(self) -> str:
        o = self.options
        test = "the rest" if o.test_per_class is None else f"up to {o.test_per_class}"
        return (
            f"{self.source.name} ({o.train_per_class} training images per class incl. {o.val_per_class} "
            f"validation, test {test}; {o.image_size} px)"
        )

    def val_description(self) -> str:
        o = self.options
        return f"{o.val_per_class} images per class held out of the {o.train_per_class} training images"

    @property
    def folder(self) -> Path:
        return Path(self.options.root) / self.source.folder

    def how_to_get(self) -> str:
        s = self.source
        return (
            f"download {s.url} (md5 {s.md5}) into {self.folder}/, or put the extracted {s.tree}/ class "
            "folders there, or set download: true"
        )

    # ------------------------------------------------------------------ locating the source

    def _tree_exists(self) -> bool:
        return (self.folder / self.source.tree).is_dir()

    def _open(self) -> tuple[_Reader, dict[str, Any]]:
        """The source to read (archive preferred: it can be verified) and what the manifest says of it."""
        s, o = self.source, self.options
        if s.inner is not None:
            inner = self._cached_inner()
            if inner is not None:
                verified = archives.verify_file(inner, s.inner_md5, verify=o.verify)
                return _ArchiveReader(inner), self._archive_info(inner, verified, outer_checked=False)
        if (self.folder / s.archive).is_file() or not self._tree_exists():
            path = archives.locate_or_download(
                self.folder,
                s.archive,
                url=s.url,
                expected=s.md5,
                allow_download=o.download,
                verify=o.verify,
                how_to_get=self.how_to_get(),
            )
            if s.inner is None:
                return _ArchiveReader(path), self._archive_info(path, o.verify, outer_checked=True)
            inner = self._extract_inner(path)
            verified = archives.verify_file(inner, s.inner_md5, verify=o.verify)
            return _ArchiveReader(inner), self._archive_info(inner, verified, outer_checked=True)
        archives.warn_unverified(self.folder / s.tree, "an extracted folder has no published digest")
        info = {"source": "folder", "file": f"{s.tree}/", "verified": False}
        return _FolderReader(self.folder, s.tree), info

    def _cached_inner(self) -> Path | None:
        """The inner archive extracted by an earlier prepare (or placed by the user), if any."""
        s = self.source
        assert s.inner is not None
        candidates = [self.folder / s.inner, *sorted(self.folder.glob(f"*/{s.inner}"))]
        return next((p for p in candidates if p.is_file() and "__MACOSX" not in p.parts), None)

    def _extract_inner(self, outer: Path) -> Path:
        """Extract the inner archive (e.g. ``caltech-101/101_ObjectCategories.tar.gz``) next to ``outer``."""
        s = self.source
        members = [n for n in _zip_names(outer) if PurePosixPath(n).name == s.inner and "__MACOSX" not in n]
        if not members:
            raise DataIntegrityError(f"{outer}: no member named {s.inner} (is it the published {s.archive}?)")
        archives.safe_extract(outer, self.folder, members=[members[0]])
        return self.folder / members[0]

    def _archive_info(self, path: Path, verified: bool, *, outer_checked: bool) -> dict[str, Any]:
        s = self.source
        md5 = {s.archive: s.md5} if outer_checked else {}
        if s.inner is not None:
            md5[s.inner] = s.inner_md5
        return {
            "source": "archive",
            "file": path.relative_to(self.folder).as_posix(),
            "md5": md5 if verified else "not verified",
            "verified": bool(verified),
        }

    # ------------------------------------------------------------------ building the splits

    def build(self) -> Iterator[tuple[str, Split]]:
        o, s = self.options, self.source
        reader, info = self._open()
        inventory = take_inventory(reader.names(), s)
        self._check_classes(inventory)
        assigned = assign_splits(inventory, o, self.family, self.name)
        wanted = {name for items in assigned.values() for name, _ in items}
        arrays: dict[str, np.ndarray] = {}
        for name, data in reader.read(wanted):
            arrays[name] = load_resized(data, o.image_size, name=f"{reader.label}:{name}")
        missing = sorted(wanted - set(arrays))
        if missing:
            raise DataIntegrityError(f"{reader.label}: {missing[0]} listed but not readable")
        self._source = {
            **info,
            "classes": inventory.classes,
            "dropped_classes": list(s.dropped),
            "images": sum(len(v) for v in inventory.by_class.values()),
            "per_class_images": [len(inventory.by_class[c]) for c in inventory.classes],
            "skipped_files": len(inventory.skipped),
            "skipped_examples": inventory.skipped[:_EXAMPLES],
            "files_sha256": {split: _names_sha256(items) for split, items in assigned.items()},
        }
        for split in SPLIT_NAMES:
            items = assigned[split]
            images = stack_images((arrays.pop(name) for name, _ in items), o.image_size)
            yield split, Split(images=images, targets=np.array([label for _, label in items], dtype=np.int64))

    def _check_classes(self, inventory: Inventory) -> None:
        found = len(inventory.classes)
        if found > self.n_classes or (self.options.verify and found != self.n_classes):
            raise DataIntegrityError(
                f"{self.name}: found {found} classes in {self.source.tree}/, {self.source.name} has "
                f"{self.n_classes}"
            )


def _zip_names(path: Path) -> list[str]:
    """Member names of a zip, from its central directory alone (no member is read)."""
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


@register_dataset("caltech101")
class Caltech101(CaltechBase):
    Options = Caltech101Options
    options: Caltech101Options
    source = CALTECH101
    n_classes = 101


@register_dataset("caltech256")
class Caltech256(CaltechBase):
    Options = Caltech256Options
    options: Caltech256Options
    source = CALTECH256
    n_classes = 257
