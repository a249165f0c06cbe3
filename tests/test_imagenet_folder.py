"""ImageNet as an image folder (cecl/datasets/imagenet_folder.py) and the batch sources
(cecl/data/streaming.py), on a tiny stand-in tree in the real layout (tests/fixtures/
standins_imagenet_folder.py).

References are independent where there is one: torchvision's ``ImageFolder`` (classes, samples, the
evaluation transform through its own loader), ``hashlib`` of the written bytes, torchvision's v2
transforms applied by hand from the documented per-sample seed, and the loop's own batching lines.
"""

from __future__ import annotations

import gc
import hashlib
import json
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets
from torchvision.transforms import v2

from cecl import distributed
from cecl.config import load_params
from cecl.data.augment import SUPCON_RECIPE, BatchAugment, make_views
from cecl.data.streaming import (
    BatchSource,
    StreamingSource,
    TensorBatchSource,
    _FolderDataset,
    _Requests,
    epoch_order,
    sample_seed,
)
from cecl.datasets import DataIntegrityError, DataUnavailable, families, spec_for
from cecl.datasets.imagenet_folder import ImageNetFolder, ImageNetFolderOptions
from cecl.eval.features import extract_features, features_of
from tests.fixtures.standins_imagenet_folder import (
    IGNORED,
    TRAIN_COUNTS,
    VAL_COUNTS,
    WNIDS,
    truncate,
    write_flat_val,
    write_imagenet_folder,
)
from tests.helpers import bn_free_encoder, synthetic_split

SIZE = 16
REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore:.*not verified:UserWarning")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and on a shared 2-core host two threads spin (the
    augmentations of one epoch took 3.3 s with two threads, 0.06 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def options(root: Path, **extra) -> ImageNetFolderOptions:
    base = {
        "root": str(root),
        "n_classes": len(WNIDS),
        "image_size": SIZE,
        "val_per_class": 2,
        "verify": False,
        "workers": 0,
    }
    return ImageNetFolderOptions(**{**base, **extra})


def prepare(root: Path, out: Path, **extra) -> tuple[ImageNetFolder, dict]:
    spec = spec_for("inet", options(root, **extra))
    assert isinstance(spec, ImageNetFolder)
    return spec, spec.prepare(out)


def rows(out: Path, split: str) -> list[tuple[int, int, str, str]]:
    """(label, bytes, sha256, path) of a prepared split's index."""
    lines = (out / f"{split}.tsv").read_text().splitlines()[1:]
    return [(int(a), int(b), c, d) for a, b, c, d in (line.split("\t") for line in lines)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """One stand-in tree shared by the read-only tests (written once)."""
    root = tmp_path_factory.mktemp("imagenet") / "raw"
    return root, write_imagenet_folder(root)


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory: pytest.TempPathFactory) -> tuple[ImageNetFolder, Path]:
    out = tmp_path_factory.mktemp("prepared") / "inet"
    spec, _ = prepare(tree[0], out)
    return spec, out


def batches(source: StreamingSource, epoch: int, batch_size: int = 4, **kw) -> list[tuple]:
    return [(v.clone(), t.clone()) for v, t in source.uint8_batches(epoch, batch_size, 2, **kw)]


def assert_same(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for (va, ta), (vb, tb) in zip(a, b, strict=True):
        assert torch.equal(va, vb) and torch.equal(ta, tb)


# ----------------------------------------------------------------------------- the index


def test_registered_with_its_options() -> None:
    assert families()["imagenet"] is ImageNetFolder
    o = ImageNetFolderOptions()
    assert (o.root, o.train_dir, o.val_dir, o.image_size, o.n_classes) == (
        "data/raw/imagenet",
        "train",
        "val",
        224,
        1000,
    )
    assert spec_for("x", o).eval_resize == 256  # the released code's Resize(256) at 224
    with pytest.raises(ValueError, match="eval_resize 100 is smaller than image_size 224"):
        ImageNetFolderOptions(eval_resize=100)


def test_classes_and_files_are_torchvision_imagefolders(tree, prepared) -> None:
    root, _ = tree
    spec, out = prepared
    manifest = json.loads((out / "manifest.json").read_text())
    train_ref = datasets.ImageFolder(str(root / "train"))
    val_ref = datasets.ImageFolder(str(root / "val"))
    assert manifest["sources"]["classes"] == train_ref.classes == sorted(WNIDS)
    # train + val splits together are exactly ImageFolder's training samples; test its val samples
    ours = sorted((str(root / p), label) for s in ("train", "val") for label, _, _, p in rows(out, s))
    assert ours == sorted(train_ref.samples)
    assert [(str(root / p), label) for label, _, _, p in rows(out, "test")] == val_ref.samples
    assert IGNORED not in {p for s in ("train", "val", "test") for *_, p in rows(out, s)}
    assert manifest["n_classes"] == spec.n_classes == 3 and manifest["shape"] == [3, SIZE, SIZE]
    assert manifest["storage"] == "index" and not list(out.glob("*.npz"))  # no image copied


def test_index_records_every_files_size_and_sha256(tree, prepared, tmp_path: Path) -> None:
    root, files = tree
    _, out = prepared
    indexed = {p: (size, sha) for s in ("train", "val", "test") for _, size, sha, p in rows(out, s)}
    assert indexed == {p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()}
    manifest = json.loads((out / "manifest.json").read_text())
    for split, entry in manifest["splits"].items():
        assert entry["sha256"] == hashlib.sha256((out / f"{split}.tsv").read_bytes()).hexdigest()
    _, stat = prepare(root, tmp_path / "stat", scan="stat")
    assert {sha for s in ("train", "val", "test") for _, _, sha, _ in rows(tmp_path / "stat", s)} == {"-"}
    assert stat["sources"]["index_sha256"] != manifest["sources"]["index_sha256"]


def test_prepare_is_deterministic_and_seeded(tree, prepared, tmp_path: Path) -> None:
    root, _ = tree
    _, out = prepared
    prepare(root, tmp_path / "again", workers=3)  # threads do not change the index
    for name in ("train.tsv", "val.tsv", "test.tsv", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    prepare(root, tmp_path / "seed1", seed=1)
    val0, val1 = rows(out, "val"), rows(tmp_path / "seed1", "val")
    assert val0 != val1
    for o in (out, tmp_path / "seed1"):
        val, train = rows(o, "val"), rows(o, "train")
        assert not {r[3] for r in val} & {r[3] for r in train}
        assert np.bincount([r[0] for r in val]).tolist() == [2, 2, 2]  # val_per_class each
        assert [r[0] for r in train] == sorted(r[0] for r in train)  # sorted by (label, path)
        assert len(train) == sum(TRAIN_COUNTS.values()) - 6


def test_split_caps_and_per_class_independence(tree, tmp_path: Path) -> None:
    root, _ = tree
    _, capped = prepare(root, tmp_path / "capped", train_per_class=3, test_per_class=2)
    assert capped["splits"]["train"]["per_class"] == [3, 3, 3]
    assert capped["splits"]["test"]["per_class"] == [min(2, VAL_COUNTS[w]) for w in sorted(WNIDS)]
    # one more file in one class changes that class's split only (each class has its own seeded draw)
    other = tmp_path / "other"
    write_imagenet_folder(other, {**TRAIN_COUNTS, WNIDS[2]: TRAIN_COUNTS[WNIDS[2]] + 1})
    prepare(root, tmp_path / "a")
    prepare(other, tmp_path / "b")
    for label in (0, 1):
        picked = [[r[3] for r in rows(tmp_path / d, "val") if r[0] == label] for d in ("a", "b")]
        assert picked[0] == picked[1]


def test_released_code_folder_names(tmp_path: Path) -> None:
    write_imagenet_folder(tmp_path / "raw", train_dir="Training_set", val_dir="Validation_set")
    _, manifest = prepare(
        tmp_path / "raw", tmp_path / "out", train_dir="Training_set", val_dir="Validation_set"
    )
    assert manifest["splits"]["test"]["count"] == sum(VAL_COUNTS.values())


def test_pinned_index_digest(tree, prepared, tmp_path: Path) -> None:
    root, _ = tree
    digest = json.loads((prepared[1] / "manifest.json").read_text())["sources"]["index_sha256"]
    _, manifest = prepare(root, tmp_path / "ok", verify=True, expected_index_sha256=digest)
    assert manifest["verified"] is True
    with pytest.raises(DataIntegrityError, match="does not match the pinned") as err:
        prepare(root, tmp_path / "bad", verify=True, expected_index_sha256="0" * 64)
    assert "\n" not in str(err.value) and not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- one-line errors


def _layout(tmp: Path, case: str) -> tuple[Path, dict]:
    """A broken tree for ``case``; returns its root and any option changes."""
    root = tmp / "raw"
    if case == "no root":
        return root, {}
    write_imagenet_folder(root)
    if case == "no train":
        (root / "train").rename(tmp / "elsewhere")
    elif case == "no val":
        (root / "val").rename(tmp / "elsewhere")
    elif case == "train without classes":
        for path in sorted((root / "train").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    elif case == "flat val":
        (root / "val").rename(tmp / "elsewhere")
        write_flat_val(root)
    elif case == "empty class":
        for path in (root / "val" / WNIDS[1]).iterdir():
            path.unlink()
    elif case == "class count":
        return root, {"n_classes": 4}
    elif case == "val lacks a class":
        (root / "val" / WNIDS[0]).rename(tmp / "elsewhere")
    return root, {}


@pytest.mark.parametrize(
    ("case", "error", "expected"),
    [
        ("no root", DataUnavailable, "ImageNet folder {root} not found: expected {root}/train/<wnid>/*.JPEG"),
        ("no train", DataUnavailable, "ImageNet train folder {root}/train not found: expected {root}/train/"),
        ("no val", DataUnavailable, "ImageNet val folder {root}/val not found: expected {root}/val/<wnid>/"),
        (
            "train without classes",
            DataUnavailable,
            "{root}/train has no class folders: expected {root}/train/",
        ),
        (
            "flat val",
            DataUnavailable,
            "{root}/val has no class folders: expected {root}/val/<wnid>/*.JPEG (it ",
        ),
        ("empty class", DataIntegrityError, "class folder {root}/val/n01443537 has no image files"),
        ("class count", DataIntegrityError, "found 3 class folders in {root}/train, expected n_classes 4"),
        ("val lacks a class", DataIntegrityError, "{root}/val lacks n01440764/"),
    ],
)
def test_missing_or_empty_folders_are_one_line_errors(
    tmp_path: Path, case: str, error: type, expected: str
) -> None:
    root, extra = _layout(tmp_path, case)
    with pytest.raises(error) as err:
        prepare(root, tmp_path / "out", **extra)
    message = str(err.value)
    assert "\n" not in message and expected.format(root=root) in message, message
    if case == "flat val":
        assert "holds 4 images directly" in message and "<wnid>/ folders" in message
    assert not (tmp_path / "out").exists()


def test_corrupt_jpeg_is_an_error_or_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write_imagenet_folder(root)
    bad = f"train/{WNIDS[0]}/{WNIDS[0]}_1074.JPEG"
    truncate(root / bad)
    with pytest.raises(DataIntegrityError) as err:
        prepare(root, tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{root / bad}: not a readable image (")
    assert "on_corrupt: skip" in message and not (tmp_path / "out").exists()
    _, manifest = prepare(root, tmp_path / "out", on_corrupt="skip")
    assert manifest["sources"]["skipped_unreadable"] == 1 and manifest["sources"]["skipped_examples"] == [bad]
    assert bad not in {r[3] for s in ("train", "val", "test") for r in rows(tmp_path / "out", s)}
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 20


def test_files_changed_after_prepare_fail_in_one_line_from_workers(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write_imagenet_folder(root)
    spec, _ = prepare(root, tmp_path / "out")
    source = spec.batch_source(tmp_path / "out", "train", seed=0, workers=1)
    victim = source.index.path(0)
    truncate(victim)  # a different size than indexed
    with pytest.raises(DataIntegrityError) as err:
        batches(source, 0, batch_size=len(source))
    assert str(err.value) == (
        f"{victim}: {victim.stat().st_size} bytes, the index says {source.index.sizes[0]} "
        "(changed since prepare: re-run prepare)"
    )
    victim.write_bytes(b"\xff\xd8" + b"\x00" * (int(source.index.sizes[0]) - 2))  # same size, not a JPEG
    with pytest.raises(DataIntegrityError) as err:
        batches(source, 0, batch_size=len(source))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{victim}: not a readable image")


def test_tampered_index_is_refused(tree, prepared, tmp_path: Path) -> None:
    spec, out = prepared
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "val.tsv").write_bytes((copy / "val.tsv").read_bytes().replace(b"\t0\t", b"\t1\t", 1) + b"\n")
    with pytest.raises(DataIntegrityError, match="does not match the manifest's"):
        spec.read_index(copy, "val")


# ----------------------------------------------------------------------------- serving


def test_eval_transform_is_torchvisions_through_imagefolder(tree, prepared) -> None:
    root, _ = tree
    spec, out = prepared
    ours = spec.tensors(out, "test", torch.device("cpu"))
    reference = datasets.ImageFolder(
        str(root / "val"), transform=v2.Compose([v2.Resize(18), v2.CenterCrop(SIZE), v2.PILToTensor()])
    )
    expected = torch.stack([reference[i][0] for i in range(len(reference))])
    assert torch.equal(ours.images, expected) and ours.targets.tolist() == reference.targets


def test_training_views_are_torchvisions_transforms_from_the_sample_seed(prepared) -> None:
    spec, out = prepared
    source = spec.batch_source(out, "train", seed=7)
    (views, targets), *_ = batches(source, 3)
    shard = source.shard_indices(3, 4, 0, 1)[0]
    recipe = v2.Compose(
        [
            v2.RandomResizedCrop(SIZE, scale=(0.2, 1.0)),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(0.2),
            v2.PILToTensor(),
        ]
    )
    loader = datasets.folder.default_loader  # ImageFolder's own (PIL, convert("RGB"))
    for row, i in enumerate(shard):
        image = loader(str(source.index.path(int(i))))
        torch.manual_seed(sample_seed(7, 3, int(i)))
        expected = torch.stack([recipe(image), recipe(image)])
        assert torch.equal(views[row], expected)
        assert targets[row] == source.index.targets[i]
    assert sorted(np.concatenate(source.shard_indices(3, 4, 0, 1)).tolist()) == sorted(
        epoch_order(7, 3, len(source))[: 4 * source.steps(4)].tolist()
    )


def test_streamed_bytes_do_not_depend_on_the_number_of_workers(prepared) -> None:
    spec, out = prepared
    runs = {
        w: [batches(spec.batch_source(out, "train", seed=0, workers=w), e) for e in (0, 1)] for w in (0, 1, 2)
    }
    for w in (1, 2):
        for epoch in (0, 1):
            assert_same(runs[w][epoch], runs[0][epoch])
    assert not torch.equal(runs[0][0][0][0], runs[0][1][0][0])  # epochs differ
    assert len(runs[0][0]) == 15 // 4  # full global batches only


@pytest.mark.parametrize(("batch_size", "world"), [(4, 2), (5, 2), (5, 3)])
def test_rank_shards_concatenate_to_the_global_batch(prepared, batch_size: int, world: int) -> None:
    spec, out = prepared
    source = spec.batch_source(out, "train", seed=0)
    whole = batches(source, 1, batch_size, rank=0, world_size=1)
    shards = [batches(source, 1, batch_size, rank=r, world_size=world) for r in range(world)]
    for step, (views, targets) in enumerate(whole):
        parts = [shards[r][step] for r in range(world)]
        assert [len(p[1]) for p in parts] == [
            b - a for a, b in (distributed.shard_bounds(batch_size, r, world) for r in range(world))
        ]
        assert torch.equal(torch.cat([p[0] for p in parts]), views)
        assert torch.equal(torch.cat([p[1] for p in parts]), targets)


def test_starting_at_epoch_e_equals_running_through(prepared) -> None:
    spec, out = prepared
    through = spec.batch_source(out, "train", seed=3, workers=1)
    for epoch in (0, 1):
        batches(through, epoch)
    torch.rand(5)  # unrelated use of the global generator between epochs changes nothing
    assert_same(batches(spec.batch_source(out, "train", seed=3), 2), batches(through, 2))


def test_decoding_in_process_leaves_the_global_rng_alone(prepared) -> None:
    spec, out = prepared
    state = torch.get_rng_state()
    batches(spec.batch_source(out, "train", seed=0, workers=0), 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_epoch_batches_are_float_views_on_the_device(prepared) -> None:
    spec, out = prepared
    source = spec.batch_source(out, "train", seed=0)
    assert isinstance(source, BatchSource)
    (views, targets), *_ = list(source.epoch_batches(0, 4, 2))
    (raw, raw_targets), *_ = batches(source, 0)
    assert views.dtype == torch.float32 and torch.equal(views, raw.float() / 255.0)
    assert torch.equal(targets, raw_targets)
    (plain, _), *_ = list(source.epoch_batches(0, 4, 2, augment=False))  # ce: the images themselves
    assert torch.equal(plain[:, 0], plain[:, 1])


def _arrays(obj: object, seen: set[int] | None = None, depth: int = 0) -> list[np.ndarray | torch.Tensor]:
    """Every array or tensor reachable from ``obj``'s attributes (a few levels deep)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray | torch.Tensor):
        return [obj]
    children = obj.values() if isinstance(obj, dict) else getattr(obj, "__dict__", {}).values()
    if isinstance(obj, list | tuple):
        children = obj
    return [a for child in children for a in _arrays(child, seen, depth + 1)]


def test_memory_stays_bounded(prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, out = prepared
    source = spec.batch_source(out, "train", seed=0, workers=0)
    index_bytes = sum(a.nbytes for a in (source.index.paths, source.index.targets, source.index.sizes))
    held = _arrays(source)
    assert held and all(a.ndim == 1 for a in held)  # only the index: paths, targets, sizes
    assert sum(a.nbytes if isinstance(a, np.ndarray) else a.numel() for a in held) <= index_bytes
    # lazily decoded: one batch taken, one batch read (workers 0), nothing kept by the source
    decoded: list[int] = []
    original = _FolderDataset.decode
    monkeypatch.setattr(_FolderDataset, "decode", lambda self, i: decoded.append(i) or original(self, i))
    stream = source.uint8_batches(0, 4, 2)
    views, _ = next(stream)
    assert len(decoded) == 4
    alive = weakref.ref(views)
    del views
    next(stream)
    gc.collect()
    assert alive() is None and len(decoded) == 8
    stream.close()
    assert all(a.ndim == 1 for a in _arrays(source))
    # with workers: at most workers x prefetch_factor batches in flight, by the DataLoader's contract
    loader = spec.batch_source(out, "train", seed=0, workers=2).loader(_Requests([], 0, 2, True))
    assert (loader.num_workers, loader.prefetch_factor) == (2, spec.options.prefetch_factor)


def test_features_of_streams_what_extract_features_computes(prepared) -> None:
    spec, out = prepared
    torch.manual_seed(0)
    encoder = bn_free_encoder(width=5)
    encoder.train()
    tensors = spec.tensors(out, "val", torch.device("cpu"))
    streamed = features_of(encoder, spec.batch_source(out, "val", seed=0, workers=1), batch_size=4)
    assert encoder.training  # restored
    assert torch.allclose(streamed, extract_features(encoder, tensors.images), atol=1e-6)
    assert torch.allclose(
        features_of(encoder, tensors, batch_size=3), extract_features(encoder, tensors.images)
    )


def test_load_refuses_a_split_over_the_memory_limit(tree, tmp_path: Path) -> None:
    spec, _ = prepare(tree[0], tmp_path / "out", in_memory_limit_gb=1e-6)
    with pytest.raises(DataIntegrityError, match="over in_memory_limit_gb 1e-06: this family is streamed"):
        spec.tensors(tmp_path / "out", "train", torch.device("cpu"))


# ----------------------------------------------------------------------------- the in-memory adapter


def _loop_reference(split, seed, epoch, batch_size, n_views, augment, rank, world):
    """The loop's batching as cecl/train/loop.py has it before the batch-source change (start_epoch and
    train_step), verbatim but for the names: the (seed, epoch) generator, the device randperm, the views
    of the whole global batch, then this rank's shard."""
    device = split.images.device
    batch_size = min(batch_size, len(split))
    steps = len(split) // batch_size
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(split), generator=generator, device=device)
    out = []
    for step in range(steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        views = make_views(split.images[idx], n_views, augment, generator)
        out.append(tuple(distributed.split_batch([views, split.targets[idx]], rank, world)))
    return out


@pytest.mark.parametrize(("rank", "world", "augmented"), [(0, 1, True), (1, 2, True), (0, 1, False)])
def test_tensor_source_reproduces_the_loops_batches(rank: int, world: int, augmented: bool) -> None:
    split = synthetic_split(70, seed=1)
    augment = BatchAugment(SUPCON_RECIPE)
    source = TensorBatchSource(split, seed=5, augment=augment)
    assert isinstance(source, BatchSource) and source.steps(32) == 2 and source.steps(500) == 1
    for epoch in (0, 3):
        ours = list(source.epoch_batches(epoch, 32, 2, augmented, rank=rank, world_size=world))
        assert_same(
            ours, _loop_reference(split, 5, epoch, 32, 2, augment if augmented else None, rank, world)
        )


def test_paper_profile_entry_has_the_released_recipe() -> None:
    params = load_params(REPO / "profiles" / "paper.yaml")
    spec = params.spec("imagenet")
    assert spec.family == "imagenet" and spec.image_size == (224, 224) and spec.n_classes == 1000
    recipe = params.recipe("imagenet")
    assert recipe.model.backbone == "resnet50" and recipe.model.backbone_options["cifar_stem"] is False
    assert (recipe.pretrain.epochs, recipe.pretrain.batch_size) == (1000, 1024)
    opt = recipe.pretrain.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay, opt.warmup_epochs) == (
        "sgd",
        0.5,
        0.9,
        1e-4,
        10,
    )
    assert recipe.augment == SUPCON_RECIPE
