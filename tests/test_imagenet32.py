"""ImageNet32: the real reading code on stand-ins in the release's format (zips of pickled batches, or
the extracted files; tests/fixtures/standins_cifar.py), the missing-file message, SHA-256 provenance
and pinning, the restricted unpickler on Python 3 numpy pickles, and the spec end to end."""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cecl.datasets import families, spec_for
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.imagenet32 import ImageNet32, ImageNet32Options
from cecl.datasets.sources.pickled import load_batch, restricted_loads
from cecl.datasets.splitting import holdout_indices, subsample_indices
from tests.fixtures.standins_cifar import IMAGENET32_TRAIN, imagenet32_members, write_imagenet32

PER_BATCH, N_VAL = 3, 5  # 30 training images in 10 batch files, 5 val images


def spec(root: Path, **options) -> ImageNet32:
    opts = {"root": str(root), "val_size": 10, **options}
    return spec_for("in32", ImageNet32Options(**opts))  # type: ignore[return-value]


def read_unverified(s: ImageNet32):
    with pytest.warns(UserWarning, match="not verified") as caught:
        arrays = s.read()
    assert len([w for w in caught if "not verified" in str(w.message)]) == 1
    return arrays


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("protocol", [2, 4, 5])  # numpy pickles via _reconstruct (2, 4) or _frombuffer (5)
@pytest.mark.parametrize("prefix", ["", "Imagenet32_{split}/"])
def test_zip_form_decodes_exactly(tmp_path: Path, protocol: int, prefix: str) -> None:
    written = write_imagenet32(tmp_path, "zip", PER_BATCH, N_VAL, protocol=protocol, prefix=prefix)
    train_x, train_y, val_x, val_y = read_unverified(spec(tmp_path))
    assert train_x.dtype == np.uint8 and train_x.shape == (10 * PER_BATCH, 3, 32, 32)
    np.testing.assert_array_equal(train_x, written.train_images)
    np.testing.assert_array_equal(train_y, written.train_labels - 1)  # 1..1000 -> 0..999
    np.testing.assert_array_equal(val_x, written.test_images)
    np.testing.assert_array_equal(val_y, written.test_labels - 1)
    assert train_y.dtype == np.int64


@pytest.mark.parametrize("prefix", ["", "Imagenet32_{split}/"])
def test_extracted_form_decodes_exactly(tmp_path: Path, prefix: str) -> None:
    written = write_imagenet32(tmp_path, "folder", PER_BATCH, N_VAL, prefix=prefix)
    s = spec(tmp_path)
    train_x, train_y, val_x, _ = read_unverified(s)
    np.testing.assert_array_equal(train_x, written.train_images)
    np.testing.assert_array_equal(train_y, written.train_labels - 1)
    np.testing.assert_array_equal(val_x, written.test_images)
    assert s.source_info()["source"] == {"train": "folder", "val": "folder"}


def test_batches_are_read_in_numeric_order_not_name_order(tmp_path: Path) -> None:
    # "train_data_batch_10" sorts before "_2" by name: the concatenation must follow 1, 2, ..., 10.
    written = write_imagenet32(tmp_path, "zip", PER_BATCH, N_VAL)
    train_x, *_ = read_unverified(spec(tmp_path))
    np.testing.assert_array_equal(train_x[-PER_BATCH:], written.train_images[9 * PER_BATCH :])
    assert IMAGENET32_TRAIN[-1] == "train_data_batch_10"


def test_sha256_of_every_file_is_recorded(tmp_path: Path) -> None:
    write_imagenet32(tmp_path, "zip", PER_BATCH, N_VAL)
    s = spec(tmp_path)
    read_unverified(s)
    info = s.source_info()
    digests = info["sha256"]
    assert digests["Imagenet32_train.zip"] == sha256((tmp_path / "Imagenet32_train.zip").read_bytes())
    assert digests["Imagenet32_val.zip"] == sha256((tmp_path / "Imagenet32_val.zip").read_bytes())
    with zipfile.ZipFile(tmp_path / "Imagenet32_train.zip") as zf:
        assert digests["train_data_batch_7"] == sha256(zf.read("train_data_batch_7"))
    assert len(digests) == 2 + 11 and info["verified"] is False and info["published_checksums"] is None


def test_pinned_digests_verify_and_mismatch_fails_before_writing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_imagenet32(raw, "zip", PER_BATCH, N_VAL)
    pins = {
        name: sha256((raw / name).read_bytes()) for name in ("Imagenet32_train.zip", "Imagenet32_val.zip")
    }
    s = spec(raw, expected_sha256=pins)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified: no "not verified" warning
        manifest = s.prepare(tmp_path / "out")
    assert manifest["sources"]["verified"] is True

    bad = {**pins, "Imagenet32_val.zip": "f" * 64}
    with pytest.raises(DataIntegrityError) as info:
        spec(raw, expected_sha256=bad).prepare(tmp_path / "out2")
    message = str(info.value)
    got = pins["Imagenet32_val.zip"]
    assert message == f"{raw / 'Imagenet32_val.zip'}: sha256 {got} does not match the pinned {'f' * 64}"
    assert not (tmp_path / "out2").exists()
    with pytest.raises(DataIntegrityError, match=re.escape("names 'val_data.zip', which is not a file")):
        spec(raw, expected_sha256={"val_data.zip": "0" * 64}).read()


def test_missing_files_name_exactly_what_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as info:
        spec(tmp_path).read()
    message = str(info.value)
    assert (
        "\n" not in message and str(tmp_path) in message and "image-net.org" in message and "log" in message
    )
    assert "Imagenet32_train.zip (or its extracted train_data_batch_1..10)" in message
    assert "Imagenet32_val.zip (or its extracted val_data)" in message

    train, _, _ = imagenet32_members(PER_BATCH, N_VAL)
    with zipfile.ZipFile(tmp_path / "Imagenet32_train.zip", "w") as zf:
        for name, data in train.items():
            zf.writestr(name, data)
    with pytest.raises(DataUnavailable) as info:
        spec(tmp_path).read()
    assert "Imagenet32_val.zip" in str(info.value) and "Imagenet32_train.zip (or" not in str(info.value)


def test_partly_extracted_folder_names_the_missing_files(tmp_path: Path) -> None:
    write_imagenet32(tmp_path, "folder", PER_BATCH, N_VAL)
    (tmp_path / "train_data_batch_4").unlink()
    (tmp_path / "train_data_batch_9").unlink()
    with pytest.raises(DataUnavailable) as info:
        spec(tmp_path).read()
    message = str(info.value)
    assert f"{tmp_path / 'train_data_batch_4'}; {tmp_path / 'train_data_batch_9'} missing" in message
    assert "val_data" not in message.split("; download")[0]


def test_incomplete_zip_is_an_integrity_error(tmp_path: Path) -> None:
    train, val, _ = imagenet32_members(PER_BATCH, N_VAL)
    for zip_name, members in (("Imagenet32_train.zip", train), ("Imagenet32_val.zip", val)):
        with zipfile.ZipFile(tmp_path / zip_name, "w") as zf:
            for name, data in members.items():
                if name != "train_data_batch_6":
                    zf.writestr(name, data)
    with pytest.raises(DataIntegrityError, match="has no train_data_batch_6"):
        spec(tmp_path).read()


@pytest.mark.parametrize("labels", [[0, 1, 2], [1, 2, 1001]])
def test_labels_outside_1_to_1000_are_refused(tmp_path: Path, labels: list[int]) -> None:
    write_imagenet32(tmp_path, "folder", PER_BATCH, N_VAL)
    batch = {"data": np.zeros((3, 3072), np.uint8), "labels": labels, "mean": np.zeros(3072)}
    (tmp_path / "train_data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataIntegrityError, match=r"train_data_batch_2: labels must be in 1\.\.1000"):
        spec(tmp_path, verify=False).read()


class _Global:
    """Pickles as a call of ``module.name`` (the hostile part of a tampered file)."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("func", [eval, np.load, np.frombuffer, __import__])
def test_only_numpy_array_reconstruction_is_allowed(tmp_path: Path, func) -> None:
    marker = tmp_path / "ran"
    args = (
        (f"open({str(marker)!r}, 'w')",) if func is eval else (str(marker),) if func is np.load else (b"x",)
    )
    if func is __import__:
        args = ("os",)
    payload = pickle.dumps({"data": _Global(func, *args), "labels": [1]}, protocol=4)
    with pytest.raises(DataIntegrityError, match="refusing to unpickle global") as info:
        load_batch(payload, "train_data_batch_1", ("data", "labels"))
    assert "\n" not in str(info.value) and not marker.exists()


def test_numpy_arrays_and_scalars_still_load() -> None:
    obj = {"mean": np.linspace(0, 1, 7), "n": np.int64(3), "x": np.arange(6, dtype=np.uint8).reshape(2, 3)}
    for protocol in (2, 4, 5):
        back = restricted_loads(pickle.dumps(obj, protocol=protocol), "x")
        np.testing.assert_array_equal(back["mean"], obj["mean"])
        np.testing.assert_array_equal(back["x"], obj["x"])
        assert back["n"] == 3 and back["x"].dtype == np.uint8


def test_malicious_member_in_zip_never_runs(tmp_path: Path) -> None:
    import os

    write_imagenet32(tmp_path, "zip", PER_BATCH, N_VAL)
    marker = tmp_path / "pwned"
    train, _, _ = imagenet32_members(PER_BATCH, N_VAL)
    train["train_data_batch_3"] = pickle.dumps(_Global(os.system, f"touch {marker}"))
    with zipfile.ZipFile(tmp_path / "Imagenet32_train.zip", "w") as zf:
        for name, data in train.items():
            zf.writestr(name, data)
    with pytest.raises(DataIntegrityError, match=r"Imagenet32_train\.zip:train_data_batch_3: not a readable"):
        spec(tmp_path, verify=False).read()
    assert not marker.exists()


@pytest.mark.parametrize("form", ["zip", "folder"])
def test_spec_prepare_and_load(tmp_path: Path, form: str) -> None:
    written = write_imagenet32(tmp_path / "raw", form, PER_BATCH, N_VAL)
    s = spec(tmp_path / "raw", seed=5, test_size=None)
    assert isinstance(s, families()["imagenet32"])
    with pytest.warns(UserWarning, match="no published checksums"):
        manifest = s.prepare(tmp_path / "out")
    assert manifest["n_classes"] == 1000 and manifest["shape"] == [3, 32, 32]
    assert manifest["mean"] == [0.485, 0.456, 0.406] and manifest["std"] == [0.229, 0.224, 0.225]
    assert manifest["sources"]["verified"] is False and len(manifest["sources"]["sha256"]) == 11 + (
        2 if form == "zip" else 0
    )
    assert "\n" not in manifest["description"]
    train_idx, val_idx = holdout_indices(10 * PER_BATCH, 10, None, 5)
    test_idx = subsample_indices(N_VAL, None, 5)
    expected = {
        "train": (written.train_images[train_idx], written.train_labels[train_idx] - 1),
        "val": (written.train_images[val_idx], written.train_labels[val_idx] - 1),
        "test": (written.test_images[test_idx], written.test_labels[test_idx] - 1),
    }
    for split, (images, labels) in expected.items():
        data = s.load(tmp_path / "out", split)
        assert data.images.shape == (len(labels), 3, 32, 32)
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.targets, labels)
        assert len(manifest["splits"][split]["per_class"]) == 1000


def test_test_size_subsamples_the_official_val_set(tmp_path: Path) -> None:
    write_imagenet32(tmp_path, "zip", PER_BATCH, n_val=12)
    s = spec(tmp_path, verify=False, test_size=10)
    with pytest.warns(UserWarning):
        splits = dict(s.build())
    assert len(splits["test"]) == 10 and len(splits["train"]) == 20 and len(splits["val"]) == 10


def test_recipe_and_options() -> None:
    s = ImageNet32("in32", ImageNet32Options())
    assert s.augment.crop_scale == (0.2, 1.0) and s.augment.color_jitter == 1.0 and s.augment.hflip_p == 0.5
    assert s.augment.grayscale_p == 0.2 and s.augment.color_jitter_p == 0.8
    assert s.describe() == "ImageNet32 (1271167 training, 10000 validation, 50000 test images)"
    assert ImageNet32Options().root == "data/raw/imagenet32"
    with pytest.raises(ValueError):
        ImageNet32Options(test_size=60000)


def test_codecs_encode_is_allowed_for_latin1_only() -> None:
    import codecs

    assert restricted_loads(pickle.dumps({"b": b"\x00\xffraw"}, protocol=2), "x") == {"b": b"\x00\xffraw"}
    payload = pickle.dumps(_Global(codecs.encode, "abc", "rot13"), protocol=2)
    assert b"_codecs" in payload
    with pytest.raises(DataIntegrityError, match="codec 'rot13'"):
        restricted_loads(payload, "x")
