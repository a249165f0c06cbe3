"""UTKFace (Zhang et al. 2017) as a bias benchmark: BiasCon's construction (Hong & Yang 2021).

Source: the "Aligned & Cropped Faces" of https://susanqq.github.io/UTKFace/ (manual download, for
non-commercial research only). Place ONE of these under ``root`` (default ``data/raw/utkface``):

* ``UTKFace.tar.gz``, the published archive (folder ``UTKFace/`` of 200x200 JPEGs), or
* the extracted folder ``UTKFace/``, or the JPEGs directly in ``root``.

File names are ``[age]_[gender]_[race]_[datetime].jpg`` (the archive's are ``....jpg.chip.jpg``):
age 0..116, gender 0 male / 1 female, race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others. A few
published names are malformed (e.g. ``39_1_20170116174525125.jpg.chip.jpg`` has no race); they are
skipped and counted in the manifest (BiasCon drops them too: its parser gives them gender 10).

There is no published checksum, so nothing can be verified against one: ``verify`` defaults to
False here, and the manifest records the SHA-256 of the archive (or, for a folder, of its sorted
file names and bytes). Pin that digest as ``sha256`` and set ``verify: true`` to check later copies.

BiasCon's construction (``debias/datasets/utk_face.py``), seeded here by ``seed`` (BiasCon's is not):
target gender; bias ``race`` (0 White, 1 not White) or ``age`` (0: age >= 20, 1: age <= 10; ages
11..19 dropped). The (target, bias) pairs (male, bias 0) and (female, bias 1) are the majority
(aligned) pairs: the aligned mask is the diagonal. Shuffle the well-formed files, the first
int(0.8 n) are the training pool, the rest the test pool. Training split: per bias value b, all
aligned samples (target b) plus floor(n_aligned * (1 - bias_rate)) random conflicting ones (target
1 - b), at most as many as there are: at 0.9 the conflicting samples are 10% of the aligned count.
Test pool: ``test_balance: balanced`` (default) keeps, per (target, bias) group, as many random
samples as the smallest group has, and gives half of each group to validation and the rest to test;
``all`` keeps every sample of the four groups and splits them randomly in half, as BiasCon's code
does (its unbiased accuracy averages group accuracies, so both estimate the same quantity).

Images: decoded to RGB (greyscale files too), resized (shorter side) and centre-cropped to
``image_size`` (default 64), stored once. BiasCon trains with RandomResizedCrop(64) of the 200 px
image and tests on Resize(72) + CenterCrop(64), i.e. the central 89%; here train and test share
the one stored 64 px view, and the training crops are the batched augmentation's.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import IMAGENET_MEAN, IMAGENET_STD, BiasAttribute, DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import file_digest, iter_members, verify_file, warn_unverified
from cecl.datasets.sources.images import load_resized, stack_images
from cecl.datasets.splitting import indices_digests, seeded_rng
from cecl.datasets.store import Split

HOMEPAGE = "https://susanqq.github.io/UTKFace/"
ARCHIVE = "UTKFace.tar.gz"
FOLDER = "UTKFace"
TRAIN_FRACTION = 0.8
# [age]_[gender]_[race]_[datetime].jpg, optionally .chip.jpg (the aligned & cropped archive's names).
_NAME = re.compile(r"^(\d{1,3})_(\d)_(\d)_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)
_EPS = 1e-9  # floor(n * (1 - rate)) without float artefacts: 100 * (1 - 0.9) is 9.999999999999998


class UTKFaceOptions(DatasetOptions):
    family: Literal["utkface"] = "utkface"
    root: str = "data/raw/utkface"
    target: Literal["gender"] = "gender"
    bias: Literal["race", "age"] = "race"
    bias_rate: float = Field(0.9, gt=0.5, lt=1.0)  # aligned fraction per bias value in training
    image_size: int = Field(64, ge=8, le=256)  # stored size (S x S)
    test_balance: Literal["balanced", "all"] = "balanced"
    verify: bool = False  # no published checksum: only a pinned ``sha256`` can be verified
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # the digest of your copy (manifest)

    @model_validator(mode="after")
    def _verify_needs_a_digest(self) -> UTKFaceOptions:
        if self.verify and self.sha256 is None:
            raise ValueError(
                "utkface has no published checksum: verify: true needs sha256 (the digest of your "
                "copy, recorded in a previous manifest's sources), or leave verify false"
            )
        return self


# ----------------------------------------------------------------------------- names


@dataclass(frozen=True)
class FaceLabels:
    """The labels encoded in one UTKFace file name."""

    age: int
    gender: int
    race: int


def parse_name(name: str) -> FaceLabels | None:
    """Labels from a file or member name (its base name); None when malformed or out of range."""
    match = _NAME.match(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    age, gender, race = (int(match.group(i)) for i in (1, 2, 3))
    if age > 116 or gender > 1 or race > 4:
        return None
    return FaceLabels(age, gender, race)


def bias_value(labels: FaceLabels, bias: str) -> int | None:
    """BiasCon's binary bias: race 0 White / 1 not; age 0 (>= 20) / 1 (<= 10), None for 11..19."""
    if bias == "race":
        return 0 if labels.race == 0 else 1
    if bias == "age":
        return 0 if labels.age >= 20 else 1 if labels.age <= 10 else None
    raise ValueError(f"unknown UTKFace bias {bias!r}")


# ----------------------------------------------------------------------------- construction


def n_conflicting(n_aligned: int, bias_rate: float) -> int:
    """How many conflicting samples go with ``n_aligned`` aligned ones: floor(n_aligned * (1 - rate))."""
    return math.floor(n_aligned * (1.0 - bias_rate) + _EPS)


def biased_train_indices(
    targets: np.ndarray, bias: np.ndarray, bias_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of BiasCon's training split: per bias value b, every aligned sample (target b)
    and floor(n_aligned * (1 - rate)) random conflicting ones (target 1 - b), capped at those there are.
    """
    chosen = []
    for b in (0, 1):
        aligned = np.flatnonzero((bias == b) & (targets == b))
        conflicting = rng.permutation(np.flatnonzero((bias == b) & (targets == 1 - b)))
        chosen += [aligned, conflicting[: n_conflicting(len(aligned), bias_rate)]]
    return np.sort(np.concatenate(chosen))


def split_test_pool(
    targets: np.ndarray, bias: np.ndarray, balance: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (val, test) indices of the test pool (see the module docstring for ``balance``)."""
    if balance == "all":
        pool = rng.permutation(len(targets))
        half = len(pool) // 2
        return np.sort(pool[:half]), np.sort(pool[half:])
    groups = [np.flatnonzero((targets == t) & (bias == b)) for t in (0, 1) for b in (0, 1)]
    per_group = min(len(g) for g in groups)
    val, test = [], []
    for group in groups:
        kept = rng.permutation(group)[:per_group]
        val.append(kept[: per_group // 2])
        test.append(kept[per_group // 2 :])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


# ----------------------------------------------------------------------------- raw files


@dataclass(frozen=True)
class RawFaces:
    """The well-formed files of one copy: names (sorted), their bytes, and what was skipped."""

    names: list[str]
    data: dict[str, bytes]
    labels: list[FaceLabels]
    skipped: list[str]
    source: str  # the archive or folder read
    sha256: str  # of the archive file, or of the folder's sorted (name, bytes)
    digest_of: str


def _how_to_get(root: Path) -> str:
    return (
        f"download the 'Aligned&Cropped Faces' {ARCHIVE} from {HOMEPAGE} (non-commercial research "
        f"only) and place it, or its extracted folder {FOLDER}/ of [age]_[gender]_[race]_[datetime].jpg "
        f"files, in {root}/"
    )


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _locate(root: Path) -> tuple[str, Path]:
    """('archive', path) or ('folder', path): the first of root/UTKFace.tar.gz, root/UTKFace/, root."""
    if (root / ARCHIVE).is_file():
        return "archive", root / ARCHIVE
    if (root / FOLDER).is_dir():
        return "folder", root / FOLDER
    if root.is_dir() and any(parse_name(p.name) for p in _folder_files(root)):
        return "folder", root
    raise DataUnavailable(
        f"UTKFace not found: no {root / ARCHIVE} and no {root / FOLDER}/; {_how_to_get(root)}"
    )


def _folder_digest(items: list[tuple[str, bytes]]) -> str:
    """SHA-256 over the sorted (name, SHA-256 of bytes) pairs of a folder's files."""
    digest = hashlib.sha256()
    for name, data in sorted(items):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def read_faces(root: Path, expected_sha256: str | None, verify: bool) -> RawFaces:
    """Every file of the UTKFace copy under ``root`` (one pass), verified against a pinned digest."""
    kind, path = _locate(Path(root))
    if kind == "archive":
        verify_file(path, expected_sha256, "sha256", verify=verify)
        items = list(iter_members(path))
        sha, digest_of = file_digest(path, "sha256"), "archive file"
    else:
        items = [(p.name, p.read_bytes()) for p in _folder_files(path)]
        sha, digest_of = _folder_digest(items), "sorted (file name, SHA-256 of bytes) of the folder"
        if verify and expected_sha256 is not None and sha != expected_sha256:
            raise DataIntegrityError(
                f"{path}: folder sha256 {sha} does not match the pinned {expected_sha256}"
            )
        if not verify:
            warn_unverified(path, "verification turned off")
    parsed = sorted(((name, data, parse_name(name)) for name, data in items), key=lambda item: item[0])
    good = [(n, d, lab) for n, d, lab in parsed if lab is not None]
    if not good:
        raise DataUnavailable(
            f"{path}: no [age]_[gender]_[race]_[datetime].jpg files; {_how_to_get(Path(root))}"
        )
    return RawFaces(
        names=[n for n, _, _ in good],
        data={n: d for n, d, _ in good},
        labels=[lab for _, _, lab in good],
        skipped=[n for n, _, lab in parsed if lab is None],
        source=str(path),
        sha256=sha,
        digest_of=digest_of,
    )


# ----------------------------------------------------------------------------- the family


@register_dataset("utkface")
class UTKFace(DatasetSpec):
    Options = UTKFaceOptions
    options: UTKFaceOptions
    n_classes = 2
    channels = 3
    image_size = (64, 64)  # the default; an instance has its option's size
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def default_augment(self) -> AugmentParams:
        return SUPCON_RECIPE

    def bias_attribute(self) -> BiasAttribute:
        return BiasAttribute(self.options.bias, 2, np.eye(2, dtype=bool))  # (male, 0), (female, 1)

    def expected_sizes(self) -> dict[str, int]:
        """Upper bounds from the 23 708 published images: the training pool (TRAIN_FRACTION) before the
        bias subsampling, and half of the test pool each for validation and test."""
        pool = 23708
        held_out = pool - int(pool * TRAIN_FRACTION)
        return {"train": int(pool * TRAIN_FRACTION), "val": held_out // 2, "test": held_out - held_out // 2}

    def sizes_are_upper_bounds(self) -> bool:
        return True

    def describe(self) -> str:
        o = self.options
        return f"UTKFace {o.target}, bias {o.bias} (rate {o.bias_rate:g}), {o.image_size} px"

    def val_description(self) -> str:
        kind = "group-balanced" if self.options.test_balance == "balanced" else "unbalanced"
        return f"half of the held-out UTKFace test pool ({kind})"

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        raw = read_faces(Path(o.root), o.sha256, o.verify)
        values = [bias_value(lab, o.bias) for lab in raw.labels]
        usable = np.array([v is not None for v in values])
        targets = np.array([lab.gender for lab in raw.labels], dtype=np.int64)
        bias = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        order = seeded_rng(o.seed, "utkface", "pool permutation").permutation(len(raw.names))
        n_train = int(len(order) * TRAIN_FRACTION)
        train_pool = np.sort(order[:n_train][usable[order[:n_train]]])
        test_pool = np.sort(order[n_train:][usable[order[n_train:]]])
        train = train_pool[
            biased_train_indices(
                targets[train_pool], bias[train_pool], o.bias_rate, seeded_rng(o.seed, "utkface", "train")
            )
        ]
        val_at, test_at = split_test_pool(
            targets[test_pool], bias[test_pool], o.test_balance, seeded_rng(o.seed, "utkface", "test")
        )
        chosen = {"train": train, "val": test_pool[val_at], "test": test_pool[test_at]}
        self._source = {
            "homepage": HOMEPAGE,
            "source": raw.source,
            "sha256": raw.sha256,
            "sha256_of": raw.digest_of,
            "verified": bool(o.verify and o.sha256 is not None),
            "n_files": len(raw.names) + len(raw.skipped),
            "n_skipped_malformed": len(raw.skipped),
            "skipped_examples": raw.skipped[:10],
            "n_dropped_age_11_19": int((~usable).sum()),
            "files_sha256": {
                split: hashlib.sha256("\n".join(raw.names[i] for i in idx).encode()).hexdigest()
                for split, idx in chosen.items()
            },
            "indices_sha256": indices_digests(chosen),
        }
        for split, idx in chosen.items():
            images = stack_images(
                (load_resized(raw.data[raw.names[i]], o.image_size, raw.names[i]) for i in idx), o.image_size
            )
            yield split, Split(images=images, targets=targets[idx], bias=bias[idx])
