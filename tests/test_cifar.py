"""CIFAR-10 / CIFAR-100: the real reading code on stand-ins in the true on-disk format
(tests/fixtures/standins_cifar.py), checked pixel for pixel against torchvision's own CIFAR readers,
plus checksum verification, the missing-file instruction, the restricted unpickler and the spec.

torchvision is pointed at the extracted stand-in with ONLY its md5 check replaced
(``torchvision.datasets.cifar.check_integrity`` -> "the file exists"): the stand-ins' digests cannot
match the published ones, everything else in torchvision's reading path is its own.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import os
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets
import torchvision.datasets.cifar as tv_cifar

from cecl.data.augment import AugmentParams
from cecl.datasets import families, spec_for
from cecl.datasets.cifar import (
    CIFAR10,
    CIFAR100,
    Cifar10,
    Cifar10Options,
    Cifar100,
    Cifar100Options,
    CifarLayout,
    load_cifar,
)
from cecl.datasets.errors import DataIntegrityError, DataUnavailable
from cecl.datasets.sources.archives import file_digest, safe_extract
from cecl.datasets.sources.pickled import int_labels, load_batch, planar_images
from cecl.datasets.splitting import holdout_indices
from tests.fixtures.standins_cifar import cifar_members, py2_pickle, write_cifar_archive, write_cifar_folder

LAYOUTS = {10: CIFAR10, 100: CIFAR100}
TORCHVISION = {10: torchvision.datasets.CIFAR10, 100: torchvision.datasets.CIFAR100}
PER_BATCH, N_TEST = 6, 7  # CIFAR-10: 5 x 6 = 30 training images; CIFAR-100: one batch of 30


def unverified_load(layout: CifarLayout, n_classes: int, root: Path, download: bool = False):
    with pytest.warns(UserWarning, match="not verified"):
        return load_cifar(layout, n_classes, root, download=download, verify=False)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def standin_layout(layout: CifarLayout, n_classes: int, archive: Path) -> CifarLayout:
    """``layout`` with the stand-in's own digests as the "published" ones."""
    members, *_ = cifar_members(n_classes, PER_BATCH, N_TEST)
    digests = {name.split("/", 1)[1]: md5(data) for name, data in members.items()}
    pick = lambda part: {n: digests[n] for n in part}  # noqa: E731
    return dataclasses.replace(
        layout,
        archive_md5=file_digest(archive),
        train=pick(layout.train),
        test=pick(layout.test),
        meta=pick(layout.meta),
    )


# ----------------------------------------------------------------------------- constants


@pytest.mark.parametrize("n_classes", [10, 100])
def test_published_constants_agree_with_torchvision(n_classes: int) -> None:
    ours, theirs = LAYOUTS[n_classes], TORCHVISION[n_classes]
    assert (ours.url, ours.archive, ours.archive_md5, ours.folder) == (
        theirs.url,
        theirs.filename,
        theirs.tgz_md5,
        theirs.base_folder,
    )
    assert list(ours.train.items()) == [tuple(x) for x in theirs.train_list]
    assert list(ours.test.items()) == [tuple(x) for x in theirs.test_list]
    assert dict(ours.meta) == {theirs.meta["filename"]: theirs.meta["md5"]}
    assert ours.names_key == theirs.meta["key"]


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("n_classes", [10, 100])
def test_archive_pixels_round_trip_against_torchvision(
    tmp_path: Path, n_classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_cifar_archive(tmp_path / "raw", n_classes, PER_BATCH, N_TEST)
    ours = unverified_load(LAYOUTS[n_classes], n_classes, tmp_path / "raw")
    assert not (tmp_path / "raw" / LAYOUTS[n_classes].folder).exists()  # read in place, not extracted

    safe_extract(written.path, tmp_path / "tv")  # torchvision reads the same archive, extracted
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    for train, images, labels in (
        (True, ours.train_images, ours.train_labels),
        (False, ours.test_images, ours.test_labels),
    ):
        theirs = TORCHVISION[n_classes](str(tmp_path / "tv"), train=train)
        assert images.dtype == np.uint8 and images.shape == (len(theirs), 3, 32, 32)
        np.testing.assert_array_equal(images.transpose(0, 2, 3, 1), theirs.data)  # torchvision: NHWC
        np.testing.assert_array_equal(labels, np.asarray(theirs.targets))
    assert ours.class_names == theirs.classes
    np.testing.assert_array_equal(ours.train_images, written.train_images)  # and what the writer put in
    np.testing.assert_array_equal(ours.test_labels, written.test_labels)
    assert ours.source["source"] == "archive" and ours.source["verified"] is False
    assert ours.source["archive_md5"] == file_digest(written.path)


@pytest.mark.parametrize("n_classes", [10, 100])
def test_extracted_folder_is_read(tmp_path: Path, n_classes: int) -> None:
    written = write_cifar_folder(tmp_path, n_classes, PER_BATCH, N_TEST)
    ours = unverified_load(LAYOUTS[n_classes], n_classes, tmp_path)
    np.testing.assert_array_equal(ours.train_images, written.train_images)
    np.testing.assert_array_equal(ours.train_labels, written.train_labels)
    np.testing.assert_array_equal(ours.test_images, written.test_images)
    assert ours.source["source"] == "folder" and ours.source["archive_md5"] is None
    assert ours.source["members_md5"]["meta" if n_classes == 100 else "batches.meta"] == md5(
        (written.path / ("meta" if n_classes == 100 else "batches.meta")).read_bytes()
    )


def test_folder_with_a_missing_member(tmp_path: Path) -> None:
    written = write_cifar_folder(tmp_path, 10, PER_BATCH, N_TEST)
    (written.path / "data_batch_3").unlink()
    with pytest.raises(DataIntegrityError, match="data_batch_3 is missing"):
        load_cifar(CIFAR10, 10, tmp_path, download=False, verify=False)


# ----------------------------------------------------------------------------- verification


def test_verify_true_on_standin_fails_with_md5_message_before_writing(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path / "raw", 10, PER_BATCH, N_TEST).path
    spec = spec_for("c10", Cifar10Options(root=str(tmp_path / "raw"), download=False, val_size=10))
    with pytest.raises(DataIntegrityError) as info:
        spec.prepare(tmp_path / "out")
    message = str(info.value)
    assert (
        message == f"{archive}: md5 {file_digest(archive)} does not match the published {CIFAR10.archive_md5}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output, no temp folder


def test_verify_true_on_extracted_standin_names_the_member(tmp_path: Path) -> None:
    written = write_cifar_folder(tmp_path, 100, PER_BATCH, N_TEST)
    with pytest.raises(DataIntegrityError) as info:
        load_cifar(CIFAR100, 100, tmp_path, download=False, verify=True)
    got = md5((written.path / "train").read_bytes())
    assert (
        str(info.value)
        == f"{written.path / 'train'}: md5 {got} does not match the published {CIFAR100.train['train']}"
    )


def test_member_md5s_are_checked_inside_a_matching_archive(tmp_path: Path) -> None:
    archive = write_cifar_archive(tmp_path, 10, PER_BATCH, N_TEST).path
    good = standin_layout(CIFAR10, 10, archive)
    data = load_cifar(good, 10, tmp_path, download=False, verify=True)  # every digest matches: verified
    assert data.source["verified"] is True and data.source["members_md5"] == {
        **good.train,
        **good.test,
        **good.meta,
    }
    bad = dataclasses.replace(good, test={"test_batch": "0" * 32})  # archive fine, one member not
    with pytest.raises(
        DataIntegrityError,
        match=r"cifar-10-batches-py/test_batch: md5 [0-9a-f]{32} does not match the published 0{32}",
    ):
        load_cifar(bad, 10, tmp_path, download=False, verify=True)


def test_missing_archive_without_download_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as info:
        load_cifar(CIFAR10, 10, tmp_path, download=False, verify=True)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-python.tar.gz") in message
    assert CIFAR10.url in message and str(tmp_path / "cifar-10-batches-py") in message


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local (127.0.0.1) HTTP server over a folder: no network is touched."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    httpd.shutdown()
    httpd.server_close()


def test_download_fetches_the_archive_when_allowed(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    base, served = file_server
    written = write_cifar_archive(served, 10, PER_BATCH, N_TEST)
    layout = dataclasses.replace(CIFAR10, url=f"{base}/{written.path.name}")
    data = unverified_load(layout, 10, tmp_path / "raw", download=True)
    assert (tmp_path / "raw" / CIFAR10.archive).read_bytes() == written.path.read_bytes()
    np.testing.assert_array_equal(data.train_images, written.train_images)


# ----------------------------------------------------------------------------- the restricted unpickler


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": Evil(marker), "labels": [0]}, protocol=2)
    pickle.loads(
        pickle.dumps(Evil(tmp_path / "control"), protocol=2)
    )  # the payload is live: plain pickle runs it
    assert (tmp_path / "control").exists()
    with pytest.raises(DataIntegrityError) as info:
        load_batch(payload, "evil_batch", ("data", "labels"))
    message = str(info.value)
    assert "\n" not in message and "evil_batch" in message and "system" in message
    assert not marker.exists()


def test_malicious_member_inside_a_cifar_archive_is_refused(tmp_path: Path) -> None:
    members, *_ = cifar_members(10, PER_BATCH, N_TEST)
    marker = tmp_path / "pwned"
    members["cifar-10-batches-py/data_batch_2"] = pickle.dumps(Evil(marker), protocol=2)
    with tarfile.open(tmp_path / CIFAR10.archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with (
        pytest.raises(DataIntegrityError, match="data_batch_2: not a readable batch pickle"),
        pytest.warns(UserWarning),
    ):
        load_cifar(CIFAR10, 10, tmp_path, download=False, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "must be uint8"),
        ({"data": np.zeros((2, 1000), np.uint8), "labels": [0, 1]}, "rows have 1000 values"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "1 labels for 2 images"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, r"labels must be in 0\.\.9"),
        ({"labels": [0, 1]}, "no key 'data'"),
    ],
)
def test_malformed_batches_are_one_line_errors(batch: dict, message: str) -> None:
    with pytest.raises(DataIntegrityError, match=message):
        loaded = load_batch(py2_pickle(batch), "b", ("data", "labels"))
        images = planar_images(loaded["data"], "b")
        int_labels(loaded["labels"], len(images), "b", 0, 9)


def test_planar_layout_is_channel_major() -> None:
    row = np.arange(3072, dtype=np.int64) % 251  # distinct-ish values: R plane, then G, then B
    image = planar_images(row.astype(np.uint8)[None], "x")[0]
    assert image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32] and image[1, 0, 0] == row[1024]
    assert image[2, 31, 31] == row[3071]


# ----------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("n_classes", "family", "options"), [(10, "cifar10", Cifar10Options), (100, "cifar100", Cifar100Options)]
)
def test_spec_prepare_and_load(tmp_path: Path, n_classes: int, family: str, options: type) -> None:
    written = write_cifar_archive(tmp_path / "raw", n_classes, PER_BATCH, N_TEST)
    opts = options(
        root=str(tmp_path / "raw"), download=False, verify=False, val_size=10, test_size=None, seed=3
    )
    spec = spec_for("c", opts)
    assert isinstance(spec, families()[family]) and spec.family == family
    with pytest.warns(UserWarning, match="not verified"):
        manifest = spec.prepare(tmp_path / "out")
    assert manifest["verified"] is False and manifest["sources"]["verified"] is False
    assert manifest["sources"]["archive_md5"] == file_digest(written.path)
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == manifest
    assert manifest["n_classes"] == n_classes and manifest["shape"] == [3, 32, 32]
    assert "\n" not in spec.describe() and spec.layout.title in spec.describe()
    train_idx, val_idx = holdout_indices(5 * PER_BATCH, 10, None, 3)
    expected = {
        "train": (written.train_images[train_idx], written.train_labels[train_idx]),
        "val": (written.train_images[val_idx], written.train_labels[val_idx]),
        "test": (written.test_images, written.test_labels),
    }
    for split, (images, labels) in expected.items():
        data = spec.load(tmp_path / "out", split)
        assert data.images.shape == (len(labels), 3, 32, 32) and data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images, images)
        np.testing.assert_array_equal(data.targets, labels)
        assert manifest["splits"][split]["count"] == len(labels)
        assert len(manifest["splits"][split]["per_class"]) == n_classes


def test_spec_recipe_and_statistics() -> None:
    c10, c100 = Cifar10("c10", Cifar10Options()), Cifar100("c100", Cifar100Options())
    recipe = AugmentParams(
        crop_scale=(0.2, 1.0), color_jitter=1.0, color_jitter_p=0.8, grayscale_p=0.2, hflip_p=0.5
    )
    assert c10.augment == recipe and c100.augment == recipe and recipe.crop_ratio == (0.75, 4.0 / 3.0)
    assert (c10.n_classes, c100.n_classes) == (10, 100) and c10.shape() == c100.shape() == (3, 32, 32)
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c100.std == (0.2675, 0.2565, 0.2761)
    assert c10.describe() == "CIFAR-10 (45000 training, 5000 validation, 10000 test images)"


def test_options_refuse_sizes_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="exceed CIFAR's 50000"):
        Cifar10Options(train_size=46000, val_size=5000)
    with pytest.raises(ValueError):
        Cifar100Options(test_size=20000)
