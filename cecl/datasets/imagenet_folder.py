"""ImageNet (ILSVRC2012) as an image folder, the second ImageNet form the released CECL code reads,
streamed from disk by cecl/data/streaming.py instead of being stored (140+ GB of JPEGs).

Source: the extracted ILSVRC2012 images in class folders, ``<root>/train/<wnid>/*.JPEG`` (1 281 167)
and ``<root>/val/<wnid>/*.JPEG`` (50 000), 1000 classes, the layout torchvision's ``ImageFolder``
reads. The released code reads ``<data_folder>/Training_set`` and ``Validation_set`` the same way:
set ``train_dir`` / ``val_dir``. The official val tarball unpacks flat (no class folders); it must be
sorted into ``<wnid>/`` folders first (``torchvision.datasets.ImageNet(root, split="val")`` does it
from the tarball and the devkit), which the error for a flat val folder says.

Classes and files are torchvision's rules, by its own functions: ``find_classes`` (the class folders
sorted by Python string order: label i is the i-th wnid) and ``make_dataset`` with ImageFolder's
``IMG_EXTENSIONS`` (sorted walk of each class folder, links followed). The val classes must be the
train classes; val labels come from the train folders' order, as ImageFolder's would for equal sets.

Prepare copies no image. It indexes the tree: every file's size and, with ``scan: full`` (default),
its SHA-256 and a decode check, read once with ``workers`` threads (hashlib and PIL release the GIL).
Why SHA-256 of every file and not only a digest of the file list: the list cannot see a file whose
bytes changed (a re-encoded or truncated copy), while the per-file digests make the index a
content address of the tree, and the index's own SHA-256 enters every downstream fingerprint. It
costs one read of the tree (minutes on local NVMe); ``scan: stat`` records sizes only (no read:
for slow network storage), and then a changed file is caught when streamed only if its size differs.
No checksums are published for the extracted files (only for the tarballs), so the tree's index
digest (``sources.index_sha256``) is recorded and can be pinned with ``expected_index_sha256``;
``verified`` is true only for a full scan that matched a pin.

An unreadable file (cannot be read, or does not decode: truncated, corrupt, not an image) is an
error by default, one line naming it (``on_corrupt: skip`` skips such files instead, counts them and
lists examples in the manifest). Note the released code sets PIL's ``LOAD_TRUNCATED_IMAGES``, which
silently trains on partly grey truncated JPEGs; nothing here does.

Protocol: the official val set is the test split (``test_per_class`` caps it per class, seeded).
Validation is carved out of train: per class, a permutation seeded by ``(seed, wnid)`` of the class's
sorted files gives ``val_per_class`` validation images (10 per class: 10 000, as ImageNet32's hold-out
here), and the rest is trained on (``train_per_class`` caps it, for subsets). Per-class seeding keeps
each class's split independent of the other classes and of how the tree was walked. Each split's
index is ``<split>.tsv`` (label, bytes, SHA-256, path relative to ``root``), written atomically with
the manifest.

Serving: ``batch_source`` streams a split (random-resized-crop views at ``image_size``, the family's
SupContrast recipe), decoded by PIL in the loader workers or, when training on CUDA (option ``decode``:
``auto``, the default; ``device`` / ``pil`` force one), in batches on the GPU with nvJPEG;
``load`` / ``tensors`` decode a split with the evaluation transform (Resize
``eval_resize`` + CenterCrop ``image_size``) into memory only when it fits ``in_memory_limit_gb``.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from cecl.data.recipe import SUPCON_RECIPE, AugmentParams
from cecl.datasets import register_dataset
from cecl.datasets.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MANIFEST_VERSION,
    SPLITS,
    DatasetOptions,
    DatasetSpec,
)
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import warn_unverified
from cecl.datasets.splitting import seeded_rng
from cecl.datasets.store import MANIFEST, Split
from cecl.io import atomic_dir, write_json

if TYPE_CHECKING:
    import torch

    from cecl.data.streaming import FolderIndex, StreamingSource

INDEX_HEADER = "label\tbytes\tsha256\tpath\n"
WORKERS_ENV = "CECL_LOADER_WORKERS"
SERVING_OPTIONS = {
    "workers",
    "prefetch_factor",
    "in_memory_limit_gb",
    "decode",
}  # how batches are served, not data
_EXAMPLES = 5  # skipped files named in the manifest
_CHUNK = 4096  # files per batch of scanning jobs (bounds the number of pending futures)


class ImageNetFolderOptions(DatasetOptions):
    family: Literal["imagenet"] = "imagenet"
    root: str = "data/raw/imagenet"  # holds train_dir/ and val_dir/
    train_dir: str = "train"  # the released code: "Training_set"
    val_dir: str = "val"  # the released code: "Validation_set"; the official val set = the test split
    n_classes: int = Field(1000, ge=2)  # class folders expected (a subset tree, e.g. ImageNet-100: its own)
    image_size: int = Field(224, ge=8, le=1024)  # crop size H = W fed to the encoder
    eval_resize: int | None = Field(None, ge=8)  # evaluation Resize; None: image_size * 256 / 224 (256)
    val_per_class: int = Field(10, ge=1)  # carved out of each class's training images
    train_per_class: int | None = Field(None, ge=1)  # cap on the rest (seeded), for subsets; None: all
    test_per_class: int | None = Field(None, ge=1)  # cap on each class's official val images; None: all
    scan: Literal["full", "stat"] = "full"  # full: size + SHA-256 + decode check; stat: sizes only
    on_corrupt: Literal["error", "skip"] = "error"  # an unreadable file: one-line error, or skip + count
    expected_index_sha256: str | None = None  # pin of sources.index_sha256 (the whole tree's index)
    workers: int | None = Field(None, ge=0)  # scan threads + loader processes; None: $CECL_LOADER_WORKERS
    # or this process's share of the cores but one, up to 16. Bytes never depend on it; leave it None so
    # moving to another host changes no param (DVC would re-run prepare and, via datasets.<entry>, every
    # pretraining).
    prefetch_factor: int = Field(2, ge=1)  # batches each loader worker prepares ahead
    in_memory_limit_gb: float = Field(4.0, gt=0)  # load()/tensors() refuse larger splits (stream them)
    # Where training views are decoded (cecl/data/streaming.py StreamingSource): "pil" in the loader
    # workers, "device" in batches on the training device (torchvision.io.decode_jpeg, then the batched
    # augmentation there; the workers only read bytes), "auto" device when training on CUDA, else pil.
    decode: Literal["auto", "pil", "device"] = "auto"

    @model_validator(mode="after")
    def _resize_covers_crop(self) -> ImageNetFolderOptions:
        if self.eval_resize is not None and self.eval_resize < self.image_size:
            raise ValueError(f"eval_resize {self.eval_resize} is smaller than image_size {self.image_size}")
        return self


@dataclass(frozen=True, slots=True)  # slots: 1.3 million of them at prepare
class Entry:
    """One indexed file: its path relative to root (POSIX), label, size and SHA-256 ('-' when not read)."""

    path: str
    label: int
    size: int
    sha256: str

    def line(self) -> str:
        return f"{self.label}\t{self.size}\t{self.sha256}\t{self.path}\n"


@dataclass(frozen=True)
class Scanned:
    """What one file's scan found: its size and digest, or why it is unreadable."""

    size: int
    sha256: str
    problem: str | None = None


def decode_problem(data: bytes) -> str | None:
    """None when ``data`` decodes as an image, else the reason (one line).

    Only a readability check, so JPEGs are decoded with PIL's draft mode (DCT-domain downscaling to
    about 1/8): every entropy-coded byte is still read, so truncation and corruption are found, at a
    fraction of a full decode's cost. The pixels are not kept.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency etc.; only errors matter here
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (64, 64))
                image.load()
    except Exception as err:  # any failure of PIL's decoders on these bytes means "not readable"
        return " ".join(str(err).split()) or type(err).__name__
    return None


def scan_file(path: Path, full: bool) -> Scanned:
    """Size (and with ``full`` SHA-256 and a decode check) of one file."""
    try:
        if not full:
            return Scanned(path.stat().st_size, "-")
        data = path.read_bytes()
    except OSError as err:
        return Scanned(-1, "-", f"cannot be read ({err.strerror or err})")
    return Scanned(len(data), hashlib.sha256(data).hexdigest(), decode_problem(data))


def scan_files(paths: list[Path], full: bool, workers: int) -> Iterator[Scanned]:
    """:func:`scan_file` of every path, in order, on ``workers`` threads (0: in this thread)."""
    if workers == 0:
        yield from (scan_file(p, full) for p in paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), _CHUNK):
            yield from pool.map(scan_file, paths[start : start + _CHUNK], [full] * _CHUNK)


def index_text(entries: list[Entry]) -> bytes:
    """A split's index file (TSV with a header): equal entries give equal bytes."""
    return (INDEX_HEADER + "".join(e.line() for e in entries)).encode()


def parse_index(data: bytes, where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, labels, sizes) of an index file written by :func:`index_text`."""
    text = data.decode()
    if not text.startswith(INDEX_HEADER):
        raise DataIntegrityError(f"{where}: not an index file (no {INDEX_HEADER.strip()!r} header)")
    rows = [line.split("\t", 3) for line in text[len(INDEX_HEADER) :].splitlines()]
    if any(len(row) != 4 for row in rows):
        raise DataIntegrityError(f"{where}: malformed index line")
    labels = np.array([int(r[0]) for r in rows], dtype=np.int64)
    sizes = np.array([int(r[1]) for r in rows], dtype=np.int64)
    return [r[3] for r in rows], labels, sizes


@register_dataset("imagenet")
class ImageNetFolder(DatasetSpec):
    Options = ImageNetFolderOptions
    options: ImageNetFolderOptions
    n_classes = 1000  # the class default; an entry's ``n_classes`` option sets its own
    channels = 3
    image_size = (224, 224)
    mean = IMAGENET_MEAN  # the released code's "path" branch
    std = IMAGENET_STD

    def __init__(self, name: str, options: DatasetOptions) -> None:
        super().__init__(name, options)
        self.n_classes = self.options.n_classes  # per entry (a subset tree has its own)

    def default_augment(self) -> AugmentParams:
        return SUPCON_RECIPE  # the released code's train transform, at image_size (streaming.py)

    def expected_sizes(self) -> dict[str, int]:
        """ILSVRC2012's 1 281 167 train / 50 000 val images for 1000 classes (about 1 281 / 50 per class:
        a subset tree of ``n_classes`` is counted pro rata), less the held-out and capped images."""
        o = self.options
        per_class_train = min(1281167 / 1000 - o.val_per_class, o.train_per_class or 10**9)
        per_class_test = min(50, o.test_per_class or 50)
        n = self.n_classes
        return {"train": round(per_class_train * n), "val": o.val_per_class * n, "test": per_class_test * n}

    def sizes_are_upper_bounds(self) -> bool:
        return self.n_classes != 1000  # a subset tree's classes may hold fewer images than the average

    def describe(self) -> str:
        o = self.options
        train = "the rest" if o.train_per_class is None else f"up to {o.train_per_class} per class"
        test = "" if o.test_per_class is None else f" (up to {o.test_per_class} per class)"
        return (
            f"ImageNet image folder ({self.n_classes} classes, {o.image_size} px; {o.val_per_class} "
            f"validation images per class held out of train, {train} trained on; official val{test} = test)"
        )

    def val_description(self) -> str:
        return f"{self.options.val_per_class} training images per class held out"

    @property
    def workers(self) -> int:
        """Scan threads and loader workers per process: the option, else $CECL_LOADER_WORKERS, else this
        process's share of the cores (torchrun's LOCAL_WORLD_SIZE processes share a host) minus one, <= 16."""
        if self.options.workers is not None:
            return self.options.workers
        if os.environ.get(WORKERS_ENV):
            return int(os.environ[WORKERS_ENV])
        share = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return min(16, max(0, share - 1))

    @property
    def eval_resize(self) -> int:
        return self.options.eval_resize or round(self.options.image_size * 256 / 224)

    # ------------------------------------------------------------------ the tree

    def _folder(self, which: str, name: str) -> Path:
        """``root/name``, or a one-line error saying exactly what is expected where."""
        root = Path(self.options.root)
        expected = (
            f"expected {root}/{self.options.train_dir}/<wnid>/*.JPEG and {root}/{self.options.val_dir}/"
            "<wnid>/*.JPEG (the extracted ILSVRC2012 train and val images in class folders)"
        )
        if not root.is_dir():
            raise DataUnavailable(f"ImageNet folder {root} not found: {expected}")
        folder = root / name
        if not folder.is_dir():
            raise DataUnavailable(
                f"ImageNet {which} folder {folder} not found: expected {folder}/<wnid>/*.JPEG"
            )
        return folder

    def _classes(self, which: str, folder: Path) -> list[str]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

        try:
            classes, _ = find_classes(folder)
        except FileNotFoundError:
            loose = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
            hint = (
                f" (it holds {loose} images directly: the official val tarball unpacks flat; sort them into "
                '<wnid>/ folders, e.g. with torchvision.datasets.ImageNet(root, split="val"))'
                if loose
                else ""
            )
            expected = f"expected {folder}/<wnid>/*.JPEG{hint}"
            raise DataUnavailable(
                f"ImageNet {which} folder {folder} has no class folders: {expected}"
            ) from None
        return classes

    def _samples(self, which: str, folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
        """ImageFolder's (path relative to root, label) list of ``folder``; an empty class is an error."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        empty = sorted(set(class_to_idx) - {Path(p).relative_to(folder).parts[0] for p, _ in samples})
        if empty:
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise DataIntegrityError(
                f"ImageNet {which}: class folder {folder / empty[0]}{more} has no image files "
                f"({', '.join(IMG_EXTENSIONS)})"
            )
        root = Path(self.options.root)
        return [(Path(p).relative_to(root).as_posix(), label) for p, label in samples]

    def _tree(self) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
        """The class list (torchvision's order) and ImageFolder's samples of the folders, keyed by folder
        role: "train" (train_dir) and "val" (val_dir, the official val set, which becomes the test split)."""
        o = self.options
        train_folder = self._folder("train", o.train_dir)
        val_folder = self._folder("val", o.val_dir)
        classes = self._classes("train", train_folder)
        if len(classes) != self.n_classes:
            raise DataIntegrityError(
                f"{self.name}: found {len(classes)} class folders in {train_folder}, expected n_classes "
                f"{self.n_classes} (set n_classes for a subset tree)"
            )
        val_classes = self._classes("val", val_folder)
        if val_classes != classes:
            missing = sorted(set(classes) - set(val_classes))
            extra = sorted(set(val_classes) - set(classes))
            what = f"lacks {missing[0]}/" if missing else f"has {extra[0]}/, which {train_folder} lacks"
            count = len(missing) + len(extra)
            raise DataIntegrityError(
                f"ImageNet val folder {val_folder} {what}"
                + (f" ({count} class folders differ)" if count > 1 else "")
                + ": train and val need the same class folders"
            )
        class_to_idx = {c: i for i, c in enumerate(classes)}  # val labelled by the train folders' order
        samples = {
            "train": self._samples("train", train_folder, class_to_idx),
            "val": self._samples("val", val_folder, class_to_idx),
        }
        return classes, samples

    def scan(self) -> tuple[list[str], dict[str, list[Entry]], dict[str, Any]]:
        """Index the tree: (classes, entries of the train and val folders, what the scan found)."""
        o = self.options
        classes, samples = self._tree()
        root = Path(o.root)
        full = o.scan == "full"
        entries: dict[str, list[Entry]] = {}
        skipped: list[str] = []
        digest = hashlib.sha256()
        for part, items in samples.items():
            kept = []
            found = scan_files([root / p for p, _ in items], full, self.workers)
            for (path, label), scanned in zip(items, found, strict=True):
                digest.update(f"{part}\t{label}\t{scanned.size}\t{scanned.sha256}\t{path}\n".encode())
                if scanned.problem is None:
                    kept.append(Entry(path, label, scanned.size, scanned.sha256))
                elif o.on_corrupt == "skip":
                    skipped.append(path)
                else:
                    raise DataIntegrityError(
                        f"{root / path}: not a readable image ({scanned.problem}); remove or replace it, "
                        "or set on_corrupt: skip"
                    )
            entries[part] = kept
        info = {
            "files": {"train": len(samples["train"]), "val": len(samples["val"])},
            "skipped_unreadable": len(skipped),
            "skipped_examples": skipped[:_EXAMPLES],
            "index_sha256": digest.hexdigest(),
        }
        return classes, entries, info

    def carve(self, entries: dict[str, list[Entry]], classes: list[str]) -> dict[str, list[Entry]]:
        """train / val / test entries, each sorted by (label, path): seeded per class (see the docstring)."""
        o = self.options
        by_class: dict[str, list[list[Entry]]] = {part: [[] for _ in classes] for part in ("train", "val")}
        for part, items in entries.items():
            for entry in items:
                by_class[part][entry.label].append(entry)
        out: dict[str, list[Entry]] = {s: [] for s in SPLITS}
        for label, wnid in enumerate(classes):
            files = by_class["train"][label]
            if len(files) <= o.val_per_class:
                raise DataIntegrityError(
                    f"{self.name}: class {wnid} has {len(files)} training images, needs more than "
                    f"val_per_class {o.val_per_class}"
                )
            order = seeded_rng(o.seed, self.family, "validation", wnid).permutation(len(files))
            rest = order[o.val_per_class :]
            if o.train_per_class is not None:
                rest = rest[: o.train_per_class]
            out["val"].extend(files[i] for i in np.sort(order[: o.val_per_class]))
            out["train"].extend(files[i] for i in np.sort(rest))
            test = by_class["val"][label]  # the official val images
            keep = np.arange(len(test))
            if o.test_per_class is not None:
                rng = seeded_rng(o.seed, self.family, "test subsample", wnid)
                keep = np.sort(rng.permutation(len(test))[: o.test_per_class])
            out["test"].extend(test[i] for i in keep)
        return out

    # ------------------------------------------------------------------ prepare: the index, not the images

    def build(self) -> Iterator[tuple[str, Split]]:
        """Not used: this family stores an index, not images (:meth:`prepare` writes it)."""
        raise TypeError(f"{self.family} is indexed, not stored: use prepare()")

    def prepare(self, out_dir: Path) -> dict[str, Any]:
        """Index the tree, carve the splits, write ``<split>.tsv`` and manifest.json atomically."""
        o = self.options
        classes, entries, info = self.scan()
        verified = self._check_pin(info["index_sha256"])
        self._source = {
            "source": "folder",
            "path": o.root,
            "train_dir": o.train_dir,
            "val_dir": o.val_dir,
            "classes": classes,
            "scan": o.scan,
            "per_file": "bytes + sha256 + decode check" if o.scan == "full" else "bytes",
            **info,
            "published_checksums": None,
            "verified": verified,
            "verified_against": "expected_index_sha256 (pinned by the user)" if verified else None,
        }
        splits = self.carve(entries, classes)
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "dataset": self.name,
            **self.contract(),
            # serving knobs left out: equal data gives an equal manifest (and equal DVC hashes downstream)
            "options": o.model_dump(mode="json", exclude=SERVING_OPTIONS),
            "description": self.describe(),
            "verified": verified,
            "sources": self._source,
            "storage": "index",  # the splits are file lists read from sources.path, not images
            "splits": {},
        }
        with atomic_dir(Path(out_dir)) as tmp:
            for name in SPLITS:
                items = splits[name]
                data = index_text(items)
                (tmp / f"{name}.tsv").write_bytes(data)
                labels = np.array([e.label for e in items], dtype=np.int64)
                manifest["splits"][name] = {
                    "file": f"{name}.tsv",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "count": len(items),
                    "per_class": np.bincount(labels, minlength=self.n_classes).tolist(),
                }
            write_json(tmp / MANIFEST, manifest)
        return manifest

    def _check_pin(self, digest: str) -> bool:
        """Whether the tree matched a pinned index digest (a mismatch raises); warns when unverified."""
        o = self.options
        if o.verify and o.expected_index_sha256 is not None:
            if digest != o.expected_index_sha256.lower():
                raise DataIntegrityError(
                    f"ImageNet folder {o.root}: index sha256 {digest} does not match the pinned "
                    f"expected_index_sha256 {o.expected_index_sha256}"
                )
            if o.scan == "full":
                return True
        if not o.verify:
            reason = "verification turned off"
        elif o.expected_index_sha256 is not None:
            reason = "scan: stat reads no file, so the pin covers sizes only"
        else:
            reason = "no published checksums; pin sources.index_sha256 as expected_index_sha256"
        warn_unverified(f"ImageNet folder {o.root}", reason)
        return False

    # ------------------------------------------------------------------ serving

    def read_index(self, data_dir: Path, split: str) -> FolderIndex:
        """The split's file index, checked against the manifest (digest, count)."""
        from cecl.data.streaming import FolderIndex

        path = self.split_file(data_dir, split)
        entry = self.read_manifest(data_dir)["splits"][split]
        paths, labels, sizes = parse_index(path.read_bytes(), str(path))
        if len(paths) != entry["count"] or (len(labels) and labels.max() >= self.n_classes):
            raise DataIntegrityError(f"{path}: does not match the manifest (count or labels)")
        encoded = np.array([p.encode() for p in paths], dtype=np.bytes_) if paths else np.zeros(0, "S1")
        return FolderIndex(Path(self.options.root), encoded, labels, sizes)

    def batch_source(
        self,
        data_dir: Path,
        split: str,
        device: torch.device | str = "cpu",
        *,
        seed: int,
        augment: AugmentParams | None = None,
        workers: int | None = None,
    ) -> StreamingSource:
        """The split streamed by DataLoader workers (cecl/data/streaming.py); ``augment`` None: the
        entry's recipe, ``workers`` None: the entry's option."""
        from cecl.data.streaming import ImageTransforms, StreamingSource

        o = self.options
        return StreamingSource(
            self.read_index(data_dir, split),
            seed=seed,
            transforms=ImageTransforms(o.image_size, self.eval_resize, augment or self.augment),
            device=device,
            workers=self.workers if workers is None else workers,
            prefetch_factor=o.prefetch_factor,
            decode=o.decode,
        )

    def load(self, data_dir: Path, split: str) -> Split:
        """The split decoded in memory with the evaluation transform, if it fits ``in_memory_limit_gb``."""
        import torch

        source = self.batch_source(data_dir, split, seed=0)
        size = self.options.image_size
        gigabytes = len(source) * 3 * size * size / 1e9
        if gigabytes > self.options.in_memory_limit_gb:
            raise DataIntegrityError(
                f"{self.name} {split}: {len(source)} images at {size} px are {gigabytes:.1f} GB in memory, "
                f"over in_memory_limit_gb {self.options.in_memory_limit_gb}: this family is streamed "
                "(cecl.data.streaming: spec.batch_source for training, features_of for probes)"
            )
        images = torch.zeros((len(source), 3, size, size), dtype=torch.uint8)
        start = 0
        for batch, _ in source.eval_batches(256):
            images[start : start + len(batch)] = batch
            start += len(batch)
        split_data = Split(images=images.numpy(), targets=source.index.targets.copy())
        self._check(split_data, split)
        return split_data
