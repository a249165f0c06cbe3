"""UTKFace family: the name parser, BiasCon's construction and the real prepare on a stand-in archive.

The stand-in (tests/fixtures/standins_faces.py) is a real ``UTKFace.tar.gz`` of tiny JPEGs with
published-style names, greyscale files and malformed names. Expected group counts are computed here
independently (plain loops over the fixture's labels, exact fractions), never with the module's code.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cecl.datasets import DataIntegrityError, DataUnavailable, families, spec_for
from cecl.datasets.store import load_split
from cecl.datasets.utkface import (
    UTKFace,
    UTKFaceOptions,
    biased_train_indices,
    n_conflicting,
    parse_name,
    split_test_pool,
)
from cecl.eval import GroupBias
from tests.fixtures.standins_faces import (
    MALFORMED_UTKFACE,
    FaceFile,
    decode_flag,
    utkface_files,
    write_utkface_archive,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*not verified:UserWarning")
SPLITS = ("train", "val", "test")
SIZE = 16


@pytest.fixture(scope="module")
def faces() -> list[FaceFile]:
    return utkface_files()


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory, faces: list[FaceFile]) -> Path:
    root = tmp_path_factory.mktemp("utkface")
    write_utkface_archive(root, faces)
    return root


def spec(root: Path, **options) -> UTKFace:
    made = spec_for("utk", UTKFaceOptions(**{"root": str(root), "image_size": SIZE, **options}))
    assert isinstance(made, UTKFace)
    return made


def prepared(spec_: UTKFace, out: Path) -> tuple[dict, dict]:
    manifest = spec_.prepare(out)
    return manifest, {name: load_split(out / f"{name}.npz") for name in SPLITS}


def table(targets: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[target, bias] counts by a plain loop."""
    out = np.zeros((2, 2), dtype=np.int64)
    for t, b in zip(targets.tolist(), bias.tolist(), strict=True):
        out[t, b] += 1
    return out


def fixture_table(faces: list[FaceFile], bias: str) -> np.ndarray:
    """[gender, bias value] counts of the well-formed stand-in files (ages 11..19 left out for age)."""
    out = np.zeros((2, 2), dtype=np.int64)
    for f in faces:
        if bias == "race":
            out[f.gender, 0 if f.race == 0 else 1] += 1
        elif f.age >= 20 or f.age <= 10:
            out[f.gender, 0 if f.age >= 20 else 1] += 1
    return out


def expected_train(pool: np.ndarray, rate: float) -> np.ndarray:
    """BiasCon's training table from the training pool's table: all aligned (t == b), and
    floor(aligned * (1 - rate)) conflicting ones, at most what the pool has (exact fractions)."""
    out = np.zeros((2, 2), dtype=np.int64)
    for b in (0, 1):
        aligned, available = int(pool[b, b]), int(pool[1 - b, b])
        wanted = int(aligned * (1 - Fraction(str(rate))))  # exact: no float floor artefact
        out[b, b], out[1 - b, b] = aligned, min(wanted, available)
    return out


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- the spec


def test_registered_with_biascon_defaults(tmp_path: Path) -> None:
    assert families()["utkface"] is UTKFace
    s = spec_for("utk", UTKFaceOptions())
    assert s.options.root == "data/raw/utkface" and s.options.bias == "race" and s.options.bias_rate == 0.9
    assert s.shape() == (3, 64, 64) and spec(tmp_path, image_size=32).shape() == (3, 32, 32)
    assert s.contract()["bias"] == {"name": "race", "n_values": 2} and s.n_classes == 2
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)  # ImageNet's
    a = s.augment  # BiasCon's contrastive recipe
    assert a.crop_scale == (0.2, 1.0) and a.hflip_p == 0.5 and a.grayscale_p == 0.2
    assert (a.color_jitter, a.color_jitter_p) == (1.0, 0.8)  # ColorJitter(0.4, 0.4, 0.4, 0.1), p 0.8
    np.testing.assert_array_equal(s.bias_attribute().aligned, [[True, False], [False, True]])


def test_verify_needs_a_pinned_digest() -> None:
    """No published checksum: verify true without sha256 is a config error, not a silent 'verified'."""
    assert UTKFaceOptions().verify is False
    with pytest.raises(ValidationError, match="no published checksum"):
        UTKFaceOptions(verify=True)
    UTKFaceOptions(verify=True, sha256="0" * 64)


# ----------------------------------------------------------------------------- names and construction


def test_parse_name_reads_fields_and_rejects_malformed() -> None:
    labels = parse_name("UTKFace/26_1_2_20170116174525125.jpg.chip.jpg")
    assert labels is not None and (labels.age, labels.gender, labels.race) == (26, 1, 2)
    plain = parse_name("100_0_4_20170112213500903.jpg")  # the extracted-folder spelling
    assert plain is not None and (plain.age, plain.gender, plain.race) == (100, 0, 4)
    for name in (*MALFORMED_UTKFACE, "117_0_0_20170112213500903.jpg", "20_0_5_2017.jpg", "notes.txt"):
        assert parse_name(name) is None, name


def test_n_conflicting_is_exact_in_the_rate() -> None:
    # float: 100 * (1 - 0.9) == 9.999999999999998, which int() (BiasCon's) would floor to 9
    assert [n_conflicting(100, r) for r in (0.9, 0.8, 0.95, 0.99)] == [10, 20, 5, 1]
    assert n_conflicting(19, 0.9) == 1 and n_conflicting(9, 0.9) == 0


def test_biased_train_indices_keeps_all_aligned_and_caps_conflicting() -> None:
    targets = np.array([0] * 50 + [1] * 3 + [1] * 20 + [0] * 30)
    bias = np.array([0] * 53 + [1] * 50)
    chosen = biased_train_indices(targets, bias, 0.9, np.random.default_rng(0))
    got = table(targets[chosen], bias[chosen])
    assert got.tolist() == [[50, 2], [3, 20]]  # bias 0: 50 aligned + 3 (cap 5); bias 1: 20 + 2
    assert len(set(chosen.tolist())) == len(chosen)


def test_split_test_pool_balanced_halves() -> None:
    targets = np.array([0] * 9 + [0] * 5 + [1] * 7 + [1] * 30)
    bias = np.array([0] * 9 + [1] * 5 + [0] * 7 + [1] * 30)
    val, test = split_test_pool(targets, bias, "balanced", np.random.default_rng(0))
    assert table(targets[val], bias[val]).tolist() == [[2, 2], [2, 2]]
    assert table(targets[test], bias[test]).tolist() == [[3, 3], [3, 3]]
    assert not set(val.tolist()) & set(test.tolist())
    val, test = split_test_pool(targets, bias, "all", np.random.default_rng(0))
    assert sorted(val.tolist() + test.tolist()) == list(range(len(targets))) and len(val) == len(targets) // 2


# ----------------------------------------------------------------------------- the real prepare


@pytest.mark.parametrize(("bias", "rate"), [("race", 0.9), ("race", 0.8), ("age", 0.9)])
def test_train_groups_follow_bias_rate_exactly(
    archive_root: Path, faces: list[FaceFile], tmp_path: Path, bias: str, rate: float
) -> None:
    """With test_balance 'all' the test pool is val + test, so the training pool's table is the full
    table minus theirs; the training split must then be exactly BiasCon's function of it."""
    manifest, splits = prepared(spec(archive_root, bias=bias, bias_rate=rate, test_balance="all"), tmp_path)
    held_out = table(splits["val"].targets, splits["val"].bias) + table(
        splits["test"].targets, splits["test"].bias
    )
    pool = fixture_table(faces, bias) - held_out
    assert (pool >= 0).all()
    got = table(splits["train"].targets, splits["train"].bias)
    np.testing.assert_array_equal(got, expected_train(pool, rate))
    assert got[1, 0] > 0 and got[0, 1] > 0  # the stand-in is big enough to have conflicting samples
    if bias == "race":  # every well-formed file is usable: the test pool is the last 20% exactly
        assert held_out.sum() == len(faces) - int(0.8 * len(faces))
    assert manifest["splits"]["train"]["group_counts"] == got.tolist()


def test_prepare_counts_malformed_and_drops_teen_ages(
    archive_root: Path, faces: list[FaceFile], tmp_path: Path
) -> None:
    manifest, _ = prepared(spec(archive_root, bias="age"), tmp_path)
    src = manifest["sources"]
    assert src["n_skipped_malformed"] == len(MALFORMED_UTKFACE) == 4
    assert sorted(Path(n).name for n in src["skipped_examples"]) == sorted(MALFORMED_UTKFACE)
    assert src["n_files"] == len(faces) + 4
    assert src["n_dropped_age_11_19"] == sum(11 <= f.age <= 19 for f in faces) > 0
    assert src["verified"] is False and manifest["verified"] is False
    assert src["sha256"] == hashlib.sha256((archive_root / "UTKFace.tar.gz").read_bytes()).hexdigest()


def test_balanced_test_pool_and_train_independent_of_balance(archive_root: Path, tmp_path: Path) -> None:
    """Balanced val / test: every (target, bias) group the same size, test at most one more than val,
    drawn from the same test pool as 'all' mode (its smallest group sets the size); train identical."""
    m_all, s_all = prepared(spec(archive_root, test_balance="all"), tmp_path / "all")
    m_bal, s_bal = prepared(spec(archive_root), tmp_path / "balanced")
    assert m_bal["splits"]["train"]["sha256"] == m_all["splits"]["train"]["sha256"]
    pool = table(s_all["val"].targets, s_all["val"].bias) + table(s_all["test"].targets, s_all["test"].bias)
    smallest = int(pool.min())
    val = table(s_bal["val"].targets, s_bal["val"].bias)
    test = table(s_bal["test"].targets, s_bal["test"].bias)
    assert (val == smallest // 2).all() and (test == smallest - smallest // 2).all() and smallest >= 4


def test_images_are_rgb_and_go_with_their_labels(archive_root: Path, tmp_path: Path) -> None:
    """Stand-in pixels encode gender (R) and White (G; greyscale files carry gender only)."""
    _, splits = prepared(spec(archive_root), tmp_path)
    greys = 0
    for split in splits.values():
        assert split.images.shape[1:] == (3, SIZE, SIZE) and split.images.dtype == np.uint8
        for image, target, bias in zip(split.images, split.targets, split.bias, strict=True):
            mean = image.reshape(3, -1).mean(axis=1)
            assert decode_flag(mean[0]) == target
            if np.ptp(mean) < 3:  # a greyscale file, decoded to three equal channels
                greys += 1
            else:
                assert decode_flag(mean[1]) == 1 - bias  # G is 'White', bias 0 is White
    assert greys > 0


def test_extracted_folder_gives_the_same_splits(archive_root: Path, tmp_path: Path) -> None:
    with tarfile.open(archive_root / "UTKFace.tar.gz") as tar:
        tar.extractall(tmp_path / "raw", filter="data")
    from_archive, _ = prepared(spec(archive_root), tmp_path / "a")
    from_folder, _ = prepared(spec(tmp_path / "raw"), tmp_path / "b")
    for name in SPLITS:
        assert from_folder["splits"][name]["sha256"] == from_archive["splits"][name]["sha256"]
    assert (
        from_folder["sources"]["sha256_of"].startswith("sorted")
        and from_folder["sources"]["n_skipped_malformed"] == 4
    )


def test_missing_data_is_one_line_naming_what_to_place_where(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailable) as err:
        list(spec(tmp_path / "nowhere").build())
    message = one_line(err)
    assert str(tmp_path / "nowhere" / "UTKFace.tar.gz") in message and "UTKFace/" in message
    assert "https://susanqq.github.io/UTKFace/" in message


def test_pinned_digest_is_verified(archive_root: Path, tmp_path: Path) -> None:
    digest = prepared(spec(archive_root), tmp_path / "first")[0]["sources"]["sha256"]
    good, _ = prepared(spec(archive_root, verify=True, sha256=digest), tmp_path / "good")
    assert good["sources"]["verified"] is True and good["verified"] is True
    with pytest.raises(DataIntegrityError) as err:
        spec(archive_root, verify=True, sha256="0" * 64).prepare(tmp_path / "bad")
    message = one_line(err)
    assert "UTKFace.tar.gz" in message and digest in message and "0" * 64 in message
    assert not (tmp_path / "bad").exists()  # nothing written


def test_evaluator_unbiased_and_conflicting_by_hand(tmp_path: Path) -> None:
    """Groups (target, bias): (0,0) aligned 3 of 4 right, (0,1) conflicting 1 of 2, (1,0) conflicting
    0 of 1, (1,1) aligned 2 of 2. Unbiased = (0.75 + 0.5 + 0 + 1) / 4, conflicting = (0.5 + 0) / 2."""
    evaluator = spec(tmp_path).evaluator()
    assert isinstance(evaluator, GroupBias)
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])
    bias = torch.tensor([0, 0, 0, 0, 1, 1, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 1, 0, 1, 0, 1, 1])
    metrics = evaluator(torch.nn.functional.one_hot(preds, 2).float(), targets, bias)
    assert metrics["unbiased_accuracy"] == pytest.approx(2.25 / 4)
    assert metrics["conflicting_accuracy"] == pytest.approx(0.25)
    assert metrics["aligned_accuracy"] == pytest.approx((0.75 + 1.0) / 2)
    assert metrics["accuracy"] == pytest.approx(6 / 9)


def test_prepare_is_deterministic_and_seeded(archive_root: Path, tmp_path: Path) -> None:
    one = prepared(spec(archive_root), tmp_path / "1")[0]
    two = prepared(spec(archive_root), tmp_path / "2")[0]
    other = prepared(spec(archive_root, seed=1), tmp_path / "3")[0]
    assert [one["splits"][s]["sha256"] for s in SPLITS] == [two["splits"][s]["sha256"] for s in SPLITS]
    assert one["splits"]["test"]["sha256"] != other["splits"]["test"]["sha256"]
    written = json.loads((tmp_path / "1" / "manifest.json").read_text())
    assert written["sources"]["files_sha256"] == one["sources"]["files_sha256"]
