"""CelebA (Liu et al. 2015) as a bias benchmark: BiasCon's construction (Hong & Yang 2021).

Source: the aligned & cropped CelebA images and annotations (http://mmlab.ie.cuhk.edu.hk/projects/
CelebA.html; non-commercial research only). Three files under ``root`` (default
``data/raw/celeba``; torchvision's ``<root>/celeba`` folder works as it is):

* ``img_align_celeba.zip`` (folder ``img_align_celeba/`` of 000001.jpg .. 202599.jpg, 178x218),
* ``list_attr_celeba.txt`` (count, the 40 attribute names, then ``filename v1 .. v40`` with -1/1),
* ``list_eval_partition.txt`` (``filename p``: 0 train, 1 valid, 2 test),

each checked against torchvision's md5 unless ``verify: false`` (warned, recorded in the manifest).
``download: true`` fetches missing files with torchvision's Google Drive downloader (needs the
``gdown`` package; Drive's quota makes it unreliable, hence off by default); otherwise the files
are placed by hand.

BiasCon's construction (``debias/datasets/celeba.py``), seeded by ``seed`` here: bias ``Male``
(attribute 20; 0 female, 1 male), target ``Blond_Hair`` (9) or ``Heavy_Makeup`` (18), attributes
mapped -1/1 -> 0/1. The blond task keeps only 2 000 random (female, not blond) images of the
official train partition (BiasCon's ``build_blonde``; the makeup task keeps them all). Training =
a random 80% of that, validation = the other 20% (so validation is as biased as training);
BiasCon's "test" is the official *valid* partition (``test_partition: valid``, the default; ``test``
gives the official test partition instead). ``train_size`` / ``val_size`` / ``test_size`` cap the
splits by seeded subsampling, for small runs.

Aligned (majority) pairs, stated from the protocol and checked against the training split's group
counts in the manifest (``majority_matches_aligned``): for both targets the attribute goes with
women, so (target 1, female) and (target 0, male) are aligned, the anti-diagonal; blond men and
non-blond women are the conflicting groups.

Images are streamed from the zip (only the selected members are read and decoded) and resized to
``image_size`` x ``image_size``: ``resize: squash`` (default) is BiasCon's Resize((S, S)) of the whole
178x218 image; ``center_crop`` is Resize(S) + CenterCrop(S). BiasCon trains at 224 px, but 200k
images at 224 px uint8 are 30 GB, so the default stored size is 64 (128 is 10 GB for all images).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np
from pydantic import Field

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import IMAGENET_MEAN, IMAGENET_STD, BiasAttribute, DatasetOptions, DatasetSpec
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import iter_members, verify_file
from cecl.datasets.sources.images import decode_rgb, resize_center_crop
from cecl.datasets.splitting import indices_digests, seeded_rng
from cecl.datasets.store import Split

HOMEPAGE = "http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
IMAGES = "img_align_celeba.zip"
IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTES = "list_attr_celeba.txt"
PARTITIONS = "list_eval_partition.txt"
FILES = (IMAGES, ATTRIBUTES, PARTITIONS)
# torchvision 0.29's CelebA.file_list: (Google Drive file id, md5) per file.
GDRIVE_IDS = MappingProxyType(
    {
        IMAGES: "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
        ATTRIBUTES: "0B7EVK8r0v71pblRyaVFSWGxPY0U",
        PARTITIONS: "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
    }
)
CELEBA_MD5 = MappingProxyType(
    {
        IMAGES: "00d2c5bc6d35e252742224ab0c1e8fcb",
        ATTRIBUTES: "75e246fa4810816ffd6ee81facbd244c",
        PARTITIONS: "d32c9cbf5e040fd4025c592c306e6668",
    }
)
ATTRIBUTE_NAMES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
PARTITION_CODES = MappingProxyType({"train": 0, "valid": 1, "test": 2})
BLOND_FEMALE_NOT_BLOND_KEPT = 2000  # BiasCon's build_blonde
TRAIN_FRACTION = 0.8
ALIGNED = np.array([[False, True], [True, False]])  # [target, bias]: (0, male) and (1, female)


class CelebAOptions(DatasetOptions):
    family: Literal["celeba"] = "celeba"
    root: str = "data/raw/celeba"
    target: Literal["Blond_Hair", "Heavy_Makeup"] = "Blond_Hair"
    bias: Literal["Male"] = "Male"
    image_size: int = Field(64, ge=8, le=256)  # stored size; 224 px for all 200k images is 30 GB
    resize: Literal["squash", "center_crop"] = "squash"
    test_partition: Literal["valid", "test"] = "valid"  # BiasCon tests on the official valid partition
    download: bool = False  # torchvision's Google Drive downloader (gdown); quota makes it unreliable
    train_size: int | None = Field(None, ge=1)  # seeded caps, for small runs
    val_size: int | None = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)


# ----------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Annotations:
    """The parsed annotation files: image names, attributes 0/1 int8 [N, 40], partition int64 [N]."""

    filenames: list[str]
    attributes: np.ndarray
    partition: np.ndarray
    attribute_names: tuple[str, ...]

    def column(self, name: str) -> np.ndarray:
        return self.attributes[:, self.attribute_names.index(name)].astype(np.int64)


def parse_attributes(text: str, source: str = ATTRIBUTES) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """list_attr_celeba.txt -> (file names, attributes 0/1 int8 [N, 40], attribute names).

    Whitespace-separated (the real file pads with two spaces before a 1 and may end lines in CRLF);
    the count line, the 40 names in the published order and every value in {-1, 1} are checked.
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise DataIntegrityError(f"{source}: expected a count line and an attribute-name line")
    names = tuple(lines[1])
    if names != ATTRIBUTE_NAMES:
        raise DataIntegrityError(f"{source}: attribute names are not CelebA's 40 in order (got {len(names)})")
    rows = lines[2:]
    if int(lines[0][0]) != len(rows):
        raise DataIntegrityError(f"{source}: the count line says {lines[0][0]} but {len(rows)} rows follow")
    bad = next((row[0] for row in rows if len(row) != len(names) + 1), None)
    if bad is not None:
        raise DataIntegrityError(f"{source}: row {bad!r} does not have {len(names)} values")
    try:
        values = np.array([row[1:] for row in rows], dtype=np.int64).reshape(len(rows), len(names))
    except ValueError as err:
        raise DataIntegrityError(f"{source}: a value is not an integer ({err})") from None
    if not np.isin(values, (-1, 1)).all():
        raise DataIntegrityError(f"{source}: attribute values must be -1 or 1")
    return [row[0] for row in rows], ((values + 1) // 2).astype(np.int8), names


def parse_partitions(text: str, source: str = PARTITIONS) -> tuple[list[str], np.ndarray]:
    """list_eval_partition.txt -> (file names, partition int64 [N] in 0 train, 1 valid, 2 test)."""
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if any(len(row) != 2 or row[1] not in ("0", "1", "2") for row in rows):
        raise DataIntegrityError(f"{source}: every line must be 'filename 0|1|2'")
    return [row[0] for row in rows], np.array([int(row[1]) for row in rows], dtype=np.int64)


def read_annotations(root: Path) -> Annotations:
    """Both annotation files, parsed and checked to list the same images in the same order."""
    names, attributes, attribute_names = parse_attributes(
        (root / ATTRIBUTES).read_text(), str(root / ATTRIBUTES)
    )
    partition_names, partition = parse_partitions((root / PARTITIONS).read_text(), str(root / PARTITIONS))
    if partition_names != names:
        raise DataIntegrityError(
            f"{root}: {ATTRIBUTES} and {PARTITIONS} do not list the same images in order"
        )
    return Annotations(names, attributes, partition, attribute_names)


# ----------------------------------------------------------------------------- files


def how_to_get(root: Path) -> str:
    ids = ", ".join(f"{name} {file_id}" for name, file_id in GDRIVE_IDS.items())
    return (
        f"place them in {root}/: from the CelebA homepage {HOMEPAGE} ('Align&Cropped Images' and "
        f"'Anno'/'Eval'; non-commercial research only) or torchvision's Google Drive ids ({ids}); "
        f"or set download: true (needs gdown)"
    )


def missing_files(root: Path) -> list[str]:
    return [name for name in FILES if not (root / name).is_file()]


def _download(root: Path, names: list[str]) -> None:
    """Fetch ``names`` from Google Drive with torchvision's downloader; failures -> one DataUnavailable."""
    try:
        from torchvision.datasets.utils import download_file_from_google_drive

        for name in names:
            download_file_from_google_drive(GDRIVE_IDS[name], str(root), name, CELEBA_MD5[name])
    except Exception as err:  # gdown missing (RuntimeError), quota, network, gdown's own errors
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise DataUnavailable(
            f"CelebA download into {root} failed ({type(err).__name__}: {first}); {how_to_get(root)}"
        ) from err


def locate_files(root: Path, download: bool, verify: bool) -> dict[str, bool]:
    """Make sure the three files are in ``root`` (downloaded when allowed) and check their md5s.

    Returns {file: verified}. Missing files raise ONE DataUnavailable line listing all of them.
    """
    missing = missing_files(root)
    if missing and download:
        _download(root, missing)
        missing = missing_files(root)
    if missing:
        raise DataUnavailable(f"CelebA files missing in {root}: {', '.join(missing)}; {how_to_get(root)}")
    return {name: verify_file(root / name, CELEBA_MD5[name], "md5", verify=verify) for name in FILES}


# ----------------------------------------------------------------------------- construction


def blond_cap_indices(
    targets: np.ndarray, bias: np.ndarray, keep: int, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices kept by BiasCon's build_blonde: ``keep`` random (female, not blond), all others."""
    capped = np.flatnonzero((bias == 0) & (targets == 0))
    others = np.flatnonzero(~((bias == 0) & (targets == 0)))
    return np.sort(np.concatenate([rng.permutation(capped)[:keep], others]))


def cap(indices: np.ndarray, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """A sorted seeded subsample of ``size`` of ``indices`` (all of them when None or larger)."""
    if size is None or size >= len(indices):
        return np.sort(indices)
    return np.sort(rng.permutation(indices)[:size])


def select_splits(ann: Annotations, options: CelebAOptions) -> dict[str, np.ndarray]:
    """Image indices of train, val and test under BiasCon's protocol (see the module docstring)."""
    o = options
    targets, bias = ann.column(o.target), ann.column(o.bias)
    pool = np.flatnonzero(ann.partition == PARTITION_CODES["train"])
    if o.target == "Blond_Hair":
        rng = seeded_rng(o.seed, "celeba", "blond cap")
        pool = pool[blond_cap_indices(targets[pool], bias[pool], BLOND_FEMALE_NOT_BLOND_KEPT, rng)]
    order = seeded_rng(o.seed, "celeba", o.target, "train/val").permutation(pool)
    n_train = int(TRAIN_FRACTION * len(order))
    test = np.flatnonzero(ann.partition == PARTITION_CODES[o.test_partition])
    return {
        "train": cap(order[:n_train], o.train_size, seeded_rng(o.seed, "celeba", "train cap")),
        "val": cap(order[n_train:], o.val_size, seeded_rng(o.seed, "celeba", "val cap")),
        "test": cap(test, o.test_size, seeded_rng(o.seed, "celeba", "test cap")),
    }


def squash_resize(data: bytes, size: int, name: str) -> np.ndarray:
    """uint8 [3, S, S]: torchvision's Resize((S, S)) of the whole image (BiasCon's eval transform)."""
    import torchvision.transforms.functional as TF  # lazily: see cecl/datasets/sources/images.py
    from torchvision.transforms import InterpolationMode

    image = TF.resize(decode_rgb(data, name), [size, size], InterpolationMode.BILINEAR, antialias=True)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def read_images(zip_path: Path, filenames: list[str], size: int, resize: str) -> np.ndarray:
    """uint8 [len(filenames), 3, S, S] of the named images, streamed from the zip in one pass."""
    position = {f"{IMAGE_FOLDER}/{name}": i for i, name in enumerate(filenames)}
    out = np.zeros((len(filenames), 3, size, size), dtype=np.uint8)
    seen = np.zeros(len(filenames), dtype=bool)
    for member, data in iter_members(zip_path, only=set(position)):
        i = position[member]
        out[i] = (
            squash_resize(data, size, member)
            if resize == "squash"
            else resize_center_crop(decode_rgb(data, member), size)
        )
        seen[i] = True
    if not seen.all():
        first = filenames[int(np.flatnonzero(~seen)[0])]
        raise DataIntegrityError(
            f"{zip_path}: no member {IMAGE_FOLDER}/{first} ({int((~seen).sum())} annotated images missing)"
        )
    return out


# ----------------------------------------------------------------------------- the family


@register_dataset("celeba")
class CelebA(DatasetSpec):
    Options = CelebAOptions
    options: CelebAOptions
    n_classes = 2
    channels = 3
    image_size = (64, 64)  # the default; an instance has its option's size
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def default_augment(self) -> AugmentParams:
        return SUPCON_RECIPE

    def bias_attribute(self) -> BiasAttribute:
        return BiasAttribute(self.options.bias, 2, ALIGNED.copy())

    def expected_sizes(self) -> dict[str, int]:
        """Upper bounds from the official partitions (162 770 train / 19 867 valid / 19 962 test images)
        and the caps: the Blond_Hair task keeps fewer training images (BiasCon's build_blonde)."""
        o = self.options
        train_partition = 162770
        test = {"valid": 19867, "test": 19962}[o.test_partition]

        def capped(n: int, cap: int | None) -> int:
            return n if cap is None else min(n, cap)

        return {
            "train": capped(int(train_partition * TRAIN_FRACTION), o.train_size),
            "val": capped(train_partition - int(train_partition * TRAIN_FRACTION), o.val_size),
            "test": capped(test, o.test_size),
        }

    def sizes_are_upper_bounds(self) -> bool:
        return True

    def describe(self) -> str:
        o = self.options
        return f"CelebA {o.target}, bias {o.bias}, {o.image_size} px, test = official {o.test_partition}"

    def val_description(self) -> str:
        return "20% of the (capped) official CelebA train partition (biased like training)"

    def build(self) -> Iterator[tuple[str, Split]]:
        o = self.options
        root = Path(o.root)
        verified = locate_files(root, o.download, o.verify)
        ann = read_annotations(root)
        chosen = select_splits(ann, o)
        targets, bias = ann.column(o.target), ann.column(o.bias)
        train_groups = np.zeros((2, 2), dtype=np.int64)
        np.add.at(train_groups, (targets[chosen["train"]], bias[chosen["train"]]), 1)
        self._source = {
            "homepage": HOMEPAGE,
            "root": str(root),
            "md5": dict(CELEBA_MD5) if o.verify else "not verified",
            "verified": all(verified.values()),
            "n_annotated": len(ann.filenames),
            "majority_matches_aligned": bool((train_groups.argmax(axis=0) == ALIGNED.argmax(axis=0)).all()),
            "indices_sha256": indices_digests(chosen),
        }
        for split, idx in chosen.items():
            names = [ann.filenames[i] for i in idx]
            images = read_images(root / IMAGES, names, o.image_size, o.resize)
            yield split, Split(images=images, targets=targets[idx], bias=bias[idx])
