"""Caltech-101 / Caltech-256 (cecl/datasets/caltech.py), through the real prepare on stand-ins in the
published on-disk formats (tests/fixtures/standins_caltech.py): the zip holding a tar.gz, the plain
tar, the extracted tree.

Pixels are checked against torchvision's ``Resize + CenterCrop`` of the stand-in files themselves,
and the split is checked by matching every stored image back to the one file it came from (the
stand-ins are random noise, so every file's reduced image is unique).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import cecl.datasets.sources.archives as archives_module
from cecl.datasets import DataIntegrityError, DataUnavailable, families, spec_for
from cecl.datasets.caltech import (
    CALTECH101,
    CALTECH256,
    Caltech101,
    Caltech101Options,
    Caltech256,
    Caltech256Options,
)
from cecl.datasets.store import load_split
from cecl.eval import Classification
from tests.fixtures.standins_caltech import (
    CALTECH101_COUNTS,
    CALTECH101_JUNK,
    CALTECH256_COUNTS,
    CALTECH256_JUNK,
    caltech101_files,
    caltech256_files,
    write_caltech101_zip,
    write_caltech256_tar,
    write_tree,
)

SIZE = 16
PROTOCOL = {"train_per_class": 5, "val_per_class": 2}  # tiny: 3 train, 2 val, the rest test
SPLITS = ("train", "val", "test")


# Stand-ins are prepared with verify: false, which warns once per file by design.
pytestmark = pytest.mark.filterwarnings("ignore:.*not verified:UserWarning")


def options101(root: Path, **extra) -> Caltech101Options:
    base = {"root": str(root), "verify": False, "download": False, "image_size": SIZE, **PROTOCOL}
    return Caltech101Options(**{**base, **extra})


def options256(root: Path, **extra) -> Caltech256Options:
    base = {"root": str(root), "verify": False, "download": False, "image_size": SIZE, **PROTOCOL}
    return Caltech256Options(**{**base, **extra})


def prepare(options, out: Path) -> tuple[dict, dict]:
    """Run the real prepare; returns the manifest and the splits read back from disk."""
    manifest = spec_for("c", options).prepare(out)
    return manifest, {s: load_split(out / f"{s}.npz") for s in SPLITS}


def reference(data: bytes) -> np.ndarray:
    """torchvision's evaluation transform of one file, as uint8 [3, S, S]."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = transforms.Compose([transforms.Resize(SIZE), transforms.CenterCrop(SIZE)])(image)
    return np.asarray(out).transpose(2, 0, 1)


def match_files(splits: dict, files: Mapping[str, bytes], classes: list[str]) -> dict[str, list[str]]:
    """Which stand-in file each stored image is (pixel-equal to torchvision's transform of it).

    Asserts each image matches exactly one image file of its own class.
    """
    by_pixels: dict[bytes, str] = {}
    for name, data in files.items():
        if name.endswith(".jpg"):
            key = reference(data).tobytes()
            assert key not in by_pixels, "stand-in images must be distinct"
            by_pixels[key] = name
    matched: dict[str, list[str]] = {}
    for split, data in splits.items():
        matched[split] = []
        for image, label in zip(data.images, data.targets.tolist(), strict=True):
            name = by_pixels.get(image.tobytes())
            assert name is not None, f"a {split} image equals no file's Resize+CenterCrop"
            assert name.split("/")[1] == classes[label], f"{name} stored with label {classes[label]}"
            matched[split].append(name)
    return matched


# ----------------------------------------------------------------------------- Caltech-101


@pytest.fixture(scope="module")
def prepared101(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("raw101")
    files = caltech101_files()
    write_caltech101_zip(root / "caltech101", files)
    out = tmp_path_factory.mktemp("out101") / "c"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        manifest, splits = prepare(options101(root), out)
    return root, files, manifest, splits, out


def test_caltech101_classes_drop_background_and_follow_torchvision_order(prepared101) -> None:
    _, _, manifest, splits, _ = prepared101
    classes = manifest["sources"]["classes"]
    assert classes == sorted(set(CALTECH101_COUNTS) - {"BACKGROUND_Google"})
    assert classes[0] == "Faces"  # Python's sort: upper case first, as torchvision's sorted(os.listdir)
    assert "BACKGROUND_Google" not in classes and manifest["sources"]["dropped_classes"] == [
        "BACKGROUND_Google"
    ]
    assert manifest["n_classes"] == 101 and manifest["shape"] == [3, SIZE, SIZE]
    assert manifest["family"] == "caltech101"
    assert all(int(s.targets.max()) < len(classes) for s in splits.values())


def test_caltech101_per_class_counts_follow_the_protocol(prepared101) -> None:
    _, _, manifest, splits, _ = prepared101
    classes = manifest["sources"]["classes"]
    for label, cls in enumerate(classes):
        n = CALTECH101_COUNTS[cls]
        counts = {s: int((splits[s].targets == label).sum()) for s in SPLITS}
        assert counts == {"train": 3, "val": 2, "test": n - 5}, cls
        assert [manifest["splits"][s]["per_class"][label] for s in SPLITS] == [3, 2, n - 5]
    assert manifest["sources"]["images"] == sum(CALTECH101_COUNTS[c] for c in classes)


def test_caltech101_pixels_are_torchvisions_and_splits_partition_each_class(prepared101) -> None:
    _, files, manifest, splits, _ = prepared101
    matched = match_files(splits, files, manifest["sources"]["classes"])
    used = [name for names in matched.values() for name in names]
    assert len(used) == len(set(used))  # no file in two splits, or twice in one
    expected = {n for n in files if n.endswith(".jpg") and "/BACKGROUND_Google/" not in n}
    assert set(used) == expected  # test = every image not used for training


def test_caltech101_greyscale_files_are_stored_as_three_equal_channels(prepared101) -> None:
    _, files, manifest, splits, _ = prepared101
    matched = match_files(splits, files, manifest["sources"]["classes"])
    grey = 0
    for split, names in matched.items():
        for image, name in zip(splits[split].images, names, strict=True):
            if Image.open(io.BytesIO(files[name])).mode == "L":
                grey += 1
                assert image.shape == (3, SIZE, SIZE)
                assert np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])
    assert grey >= 5  # the stand-ins mix greyscale and RGB JPEGs


def test_caltech101_skips_and_counts_non_images_and_extracts_the_inner_archive(prepared101) -> None:
    root, _, manifest, _, _ = prepared101
    sources = manifest["sources"]
    assert sources["skipped_files"] == len(CALTECH101_JUNK)
    assert set(sources["skipped_examples"]) == set(CALTECH101_JUNK)
    assert sources["file"] == "caltech-101/101_ObjectCategories.tar.gz" and sources["verified"] is False
    assert (root / "caltech101" / "caltech-101" / "101_ObjectCategories.tar.gz").is_file()
    assert not (root / "caltech101" / "__MACOSX").exists()  # only the one member was extracted


def test_caltech101_the_cached_inner_archive_and_the_tree_give_the_same_store(prepared101, tmp_path) -> None:
    root, files, manifest, _, _ = prepared101
    (tmp_path / "caltech101").mkdir()
    inner = root / "caltech101" / "caltech-101" / "101_ObjectCategories.tar.gz"
    (tmp_path / "caltech101" / inner.name).write_bytes(inner.read_bytes())  # no zip: the tar.gz alone
    again, _ = prepare(options101(tmp_path), tmp_path / "out_inner")
    tree_root = tmp_path / "tree"
    write_tree(tree_root / "caltech101", files)
    tree, _ = prepare(options101(tree_root), tmp_path / "out_tree")
    assert tree["sources"]["source"] == "folder" and tree["sources"]["verified"] is False
    for other in (again, tree):
        assert {s: other["splits"][s]["sha256"] for s in SPLITS} == {
            s: manifest["splits"][s]["sha256"] for s in SPLITS
        }


def test_caltech101_deterministic_and_independent_of_member_order(prepared101, tmp_path) -> None:
    _, files, manifest, _, _ = prepared101
    digests = {s: manifest["splits"][s]["sha256"] for s in SPLITS}
    names = list(files)
    for index, order in enumerate((names, names[::-1], sorted(names, key=lambda n: n[::-1]))):
        root = tmp_path / f"raw{index}"
        write_caltech101_zip(root / "caltech101", files, order)
        again, _ = prepare(options101(root), tmp_path / f"out{index}")
        assert {s: again["splits"][s]["sha256"] for s in SPLITS} == digests
    other_seed, _ = prepare(options101(tmp_path / "raw0", seed=1), tmp_path / "seed1")
    assert other_seed["sources"]["files_sha256"] != manifest["sources"]["files_sha256"]


def test_caltech101_test_per_class_caps_the_test_split(prepared101, tmp_path) -> None:
    root, _, manifest, _, _ = prepared101
    capped, splits = prepare(options101(root, test_per_class=2), tmp_path / "capped")
    classes = capped["sources"]["classes"]
    for label, cls in enumerate(classes):
        assert int((splits["test"].targets == label).sum()) == min(2, CALTECH101_COUNTS[cls] - 5)
    # The cap leaves train and validation exactly as without it.
    assert capped["splits"]["train"]["sha256"] == manifest["splits"]["train"]["sha256"]
    assert capped["splits"]["val"]["sha256"] == manifest["splits"]["val"]["sha256"]


def test_caltech101_md5_mismatch_is_one_line_and_writes_nothing(tmp_path) -> None:
    folder = tmp_path / "caltech101"
    write_caltech101_zip(folder)
    spec = spec_for("c101", options101(tmp_path, verify=True))
    with pytest.raises(DataIntegrityError, match=r"caltech-101\.zip: md5 [0-9a-f]{32} does not match") as err:
        spec.prepare(tmp_path / "out")
    assert "\n" not in str(err.value) and CALTECH101.md5 in str(err.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["caltech-101.zip"]  # nothing extracted


def test_caltech101_inner_md5_is_checked_too(tmp_path) -> None:
    folder = tmp_path / "caltech101"
    write_caltech101_zip(folder)
    archives_module.safe_extract(
        folder / "caltech-101.zip", folder, ["caltech-101/101_ObjectCategories.tar.gz"]
    )
    spec = spec_for("c101", options101(tmp_path, verify=True))
    with pytest.raises(
        DataIntegrityError, match=r"101_ObjectCategories\.tar\.gz: md5 .* does not match"
    ) as err:
        spec.prepare(tmp_path / "out")
    assert CALTECH101.inner_md5 in str(err.value) and not (tmp_path / "out").exists()


def test_caltech101_missing_archive_without_download_names_file_url_and_folder(tmp_path) -> None:
    spec = spec_for("c101", options101(tmp_path / "raw"))
    with pytest.raises(DataUnavailable) as err:
        spec.prepare(tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message
    assert "caltech-101.zip not found" in message and CALTECH101.url in message
    assert str(tmp_path / "raw" / "caltech101") in message and "101_ObjectCategories/" in message
    assert not (tmp_path / "out").exists()


def test_caltech101_download_fetches_the_official_url_into_the_folder(tmp_path, monkeypatch) -> None:
    calls = []
    staged = write_caltech101_zip(tmp_path / "staged")

    def fake_download(url, dest, expected, algorithm="md5", *, verify=True, timeout=60):
        calls.append((url, Path(dest), expected, algorithm))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(staged.read_bytes())
        return Path(dest)

    monkeypatch.setattr(archives_module, "download", fake_download)
    manifest, _ = prepare(options101(tmp_path / "raw", download=True), tmp_path / "out")
    assert calls == [
        (CALTECH101.url, tmp_path / "raw" / "caltech101" / "caltech-101.zip", CALTECH101.md5, "md5")
    ]
    assert manifest["splits"]["train"]["count"] == 3 * 4


def test_caltech101_verified_tree_must_hold_all_101_classes(tmp_path) -> None:
    write_tree(tmp_path / "caltech101", caltech101_files())
    spec = spec_for("c101", options101(tmp_path, verify=True))
    with pytest.raises(
        DataIntegrityError, match="found 4 classes in 101_ObjectCategories/, Caltech-101 has 101"
    ):
        spec.prepare(tmp_path / "out")


def test_a_class_smaller_than_the_training_budget_is_named(tmp_path) -> None:
    write_tree(tmp_path / "caltech101", caltech101_files({"Faces": 9, "ant": 5}))
    spec = spec_for("c101", options101(tmp_path))
    with pytest.raises(
        DataIntegrityError, match=r"class 'ant' has 5 images, needs more than train_per_class 5"
    ):
        spec.prepare(tmp_path / "out")


def test_a_corrupt_jpeg_is_named(tmp_path) -> None:
    files = caltech101_files({"Faces": 7})
    files["101_ObjectCategories/Faces/image_0003.jpg"] = files["101_ObjectCategories/Faces/image_0003.jpg"][
        :50
    ]
    write_caltech101_zip(tmp_path / "caltech101", files)
    spec = spec_for("c101", options101(tmp_path))
    with pytest.raises(
        DataIntegrityError, match=r"101_ObjectCategories/Faces/image_0003\.jpg: not a readable"
    ) as err:
        spec.prepare(tmp_path / "out")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- Caltech-256


def test_caltech256_keeps_clutter_and_follows_the_protocol(tmp_path) -> None:
    files = caltech256_files()
    write_caltech256_tar(tmp_path / "caltech256", files)
    manifest, splits = prepare(options256(tmp_path), tmp_path / "out")
    classes = manifest["sources"]["classes"]
    assert classes == sorted(CALTECH256_COUNTS) and classes[-1] == "257.clutter"
    assert manifest["n_classes"] == 257 and manifest["family"] == "caltech256"
    assert manifest["sources"]["file"] == "256_ObjectCategories.tar"
    assert manifest["sources"]["skipped_files"] == len(CALTECH256_JUNK)
    for label, cls in enumerate(classes):
        counts = [int((splits[s].targets == label).sum()) for s in SPLITS]
        assert counts == [3, 2, CALTECH256_COUNTS[cls] - 5], cls
    matched = match_files(splits, files, classes)
    used = [n for names in matched.values() for n in names]
    assert sorted(used) == sorted(n for n in files if n.endswith(".jpg"))


def test_caltech256_member_order_does_not_matter(tmp_path) -> None:
    files = caltech256_files()
    write_caltech256_tar(tmp_path / "a" / "caltech256", files)
    write_caltech256_tar(tmp_path / "b" / "caltech256", files, list(files)[::-1])
    first, _ = prepare(options256(tmp_path / "a"), tmp_path / "out_a")
    second, _ = prepare(options256(tmp_path / "b"), tmp_path / "out_b")
    assert [first["splits"][s]["sha256"] for s in SPLITS] == [second["splits"][s]["sha256"] for s in SPLITS]


def test_caltech256_md5_mismatch_and_missing_archive(tmp_path) -> None:
    write_caltech256_tar(tmp_path / "raw" / "caltech256")
    with pytest.raises(
        DataIntegrityError, match=r"256_ObjectCategories\.tar: md5 .* 67b4f42ca05d46448c6bb8ecd2220f6d"
    ):
        spec_for("c256", options256(tmp_path / "raw", verify=True)).prepare(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataUnavailable) as err:
        spec_for("c256", options256(tmp_path / "empty")).prepare(tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and "256_ObjectCategories.tar not found" in message
    assert CALTECH256.url in message and str(tmp_path / "empty" / "caltech256") in message


# ----------------------------------------------------------------------------- options, spec, config


def test_options_defaults_and_checks() -> None:
    assert (Caltech101Options().train_per_class, Caltech256Options().train_per_class) == (30, 60)
    o = Caltech101Options()
    assert (o.val_per_class, o.image_size, o.test_per_class, o.download, o.root) == (
        5,
        32,
        None,
        True,
        "data/raw",
    )
    with pytest.raises(ValueError, match="val_per_class 30 must be smaller than train_per_class 30"):
        Caltech101Options(val_per_class=30)
    with pytest.raises(ValueError):
        Caltech256Options(image_size=4)


def test_spec_describes_itself(tmp_path) -> None:
    assert families()["caltech101"] is Caltech101 and families()["caltech256"] is Caltech256
    spec = spec_for("c", Caltech256Options(image_size=64))
    assert spec.shape() == (3, 64, 64) and spec.n_classes == 257
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    evaluator = spec.evaluator()
    assert isinstance(evaluator, Classification) and evaluator.n_classes == 257
    assert "60 training images per class incl. 5 validation" in spec.describe()
    assert "5 images per class held out of the 60" in spec.val_description()


def test_prepared_store_loads_as_tensors_for_the_probe(prepared101) -> None:
    _, _, manifest, _, out = prepared101
    spec = spec_for("c", Caltech101Options(**manifest["options"]))
    split = spec.tensors(out, "val", torch.device("cpu"))
    assert split.images.dtype == torch.uint8 and tuple(split.images.shape[1:]) == (3, SIZE, SIZE)
    assert len(split) == 2 * 4 and json.loads((out / "manifest.json").read_text())["verified"] is False


def test_params_accept_caltech_as_transfer_targets() -> None:
    from tests.helpers import tiny_params

    params = tiny_params(
        datasets={
            "c101": {"family": "caltech101", "image_size": 28},
            "c256": {"family": "caltech256", "image_size": 28, "train_per_class": 60},
        },
        transfer={"sources": ["bm"], "targets": ["c101", "c256"]},
    )
    assert params.transfer_pairs() == [("bm", "c101"), ("bm", "c256")]
    assert params.spec("c101").shape() == (3, 28, 28)


def test_a_frozen_encoder_of_another_dataset_probes_the_store(prepared101) -> None:
    """What the transfer stage does (cecl/evaluate.py evaluate_encoder): the source encoder, with its own
    normalisation, is linearly probed on the target's splits; the evaluator is sized by the target spec."""
    from cecl.config import ProbeParams
    from cecl.eval.encoder import probe_encoder
    from cecl.models import build_backbone
    from cecl.pipeline import load_splits

    _, _, manifest, _, out = prepared101
    spec = spec_for("c", Caltech101Options(**manifest["options"]))
    torch.manual_seed(0)
    encoder = build_backbone("small_cnn", 3, (0.5,) * 3, (0.5,) * 3, {"width": 4})  # a "BiasedMNIST" encoder
    splits = load_splits(spec, torch.device("cpu"), data_dir=out)
    params = ProbeParams(l2_min=1e-3, l2_max=0.1, l2_per_decade=1, patience=None)
    result = probe_encoder(encoder, splits, spec.evaluator(), params)
    assert set(result.test) >= {"accuracy", "top5_accuracy", "mean_per_class_accuracy"}
    assert 0.0 <= result.test["accuracy"] <= 1.0 and len(result.curve) == len(params.grid()) == 3
