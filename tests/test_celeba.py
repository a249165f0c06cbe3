"""CelebA family: the annotation parsers (against torchvision's), BiasCon's construction, the md5
checks and the real prepare on stand-in files in the published formats.

The stand-ins (tests/fixtures/standins_faces.py) are a real ``img_align_celeba.zip`` of tiny JPEGs
and the two annotation files in their exact whitespace layout. Expected counts are computed here by
plain loops over the fixture's own labels, never with the module's code.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cecl.datasets.celeba as celeba_module
from cecl.datasets import DataIntegrityError, DataUnavailable, families, spec_for
from cecl.datasets.celeba import (
    ATTRIBUTE_NAMES,
    GDRIVE_IDS,
    Annotations,
    CelebA,
    CelebAOptions,
    parse_attributes,
    parse_partitions,
    select_splits,
)
from cecl.datasets.store import load_split
from cecl.eval import GroupBias
from tests.fixtures.standins_faces import (
    CelebAStandin,
    attribute_text,
    celeba_annotations,
    decode_flag,
    write_celeba,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*not verified:UserWarning")
SPLITS = ("train", "val", "test")
SIZE = 16
FILES = ("img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt")


@pytest.fixture(scope="module")
def data() -> CelebAStandin:
    return celeba_annotations()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data: CelebAStandin) -> Path:
    return write_celeba(tmp_path_factory.mktemp("celeba"), data)


def spec(root: Path, **options) -> CelebA:
    """A spec on the stand-ins: verify off unless asked (they cannot have the published md5s)."""
    defaults = {"root": str(root), "image_size": SIZE, "verify": False}
    made = spec_for("celeba", CelebAOptions(**{**defaults, **options}))
    assert isinstance(made, CelebA)
    return made


def prepared(spec_: CelebA, out: Path) -> tuple[dict, dict]:
    manifest = spec_.prepare(out)
    return manifest, {name: load_split(out / f"{name}.npz") for name in SPLITS}


def table(targets, bias) -> np.ndarray:
    """[target, bias] counts by a plain loop."""
    out = np.zeros((2, 2), dtype=np.int64)
    for t, b in zip(list(targets), list(bias), strict=True):
        out[int(t), int(b)] += 1
    return out


def partition_table(data: CelebAStandin, target: str, partition: int) -> np.ndarray:
    keep = data.partition == partition
    return table(data.column(target)[keep], data.column("Male")[keep])


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- the spec


def test_registered_with_biascon_defaults() -> None:
    assert families()["celeba"] is CelebA
    s = spec_for("c", CelebAOptions())
    o = s.options
    assert (o.root, o.target, o.bias, o.image_size, o.test_partition) == (
        "data/raw/celeba",
        "Blond_Hair",
        "Male",
        64,
        "valid",
    )
    assert o.download is False and o.verify is True
    assert s.shape() == (3, 64, 64) and spec(Path("x"), image_size=128).shape() == (3, 128, 128)
    assert s.contract()["bias"] == {"name": "Male", "n_values": 2} and s.n_classes == 2
    assert s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225)
    a = s.augment
    assert a.crop_scale == (0.2, 1.0) and a.hflip_p == 0.5 and a.grayscale_p == 0.2 and a.color_jitter == 1.0
    # (not blond, male) and (blond, female) are aligned: [target, bias] anti-diagonal
    np.testing.assert_array_equal(s.bias_attribute().aligned, [[False, True], [True, False]])


PUBLISHED_NAMES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]  # CelebA's header line


def test_attribute_names_are_the_published_order() -> None:
    assert tuple(PUBLISHED_NAMES) == ATTRIBUTE_NAMES and len(ATTRIBUTE_NAMES) == 40
    assert (ATTRIBUTE_NAMES[9], ATTRIBUTE_NAMES[18], ATTRIBUTE_NAMES[20]) == (
        "Blond_Hair",
        "Heavy_Makeup",
        "Male",
    )


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_parse_equals_torchvision(data: CelebAStandin, tmp_path: Path, line_end: str, monkeypatch) -> None:
    """Our parse of the stand-in files equals torchvision.datasets.CelebA's (integrity check patched:
    the stand-ins cannot have the published md5s)."""
    from torchvision.datasets import CelebA as TorchvisionCelebA

    write_celeba(tmp_path / "celeba", data, torchvision_extras=True, line_end=line_end)
    monkeypatch.setattr(TorchvisionCelebA, "_check_integrity", lambda self: True)
    reference = TorchvisionCelebA(str(tmp_path), split="all", target_type="attr")
    names, attributes, attribute_names = parse_attributes((tmp_path / "celeba" / FILES[1]).read_text())
    assert names == list(reference.filename)
    np.testing.assert_array_equal(attributes, reference.attr.numpy())
    assert list(attribute_names) == [n for n in reference.attr_names if n]  # the header ends in a space
    for split, code in (("train", 0), ("valid", 1), ("test", 2)):
        part = TorchvisionCelebA(str(tmp_path), split=split, target_type="attr")
        _, partition = parse_partitions((tmp_path / "celeba" / FILES[2]).read_text())
        assert [names[i] for i in np.flatnonzero(partition == code)] == list(part.filename)


def test_parse_rejects_damaged_files(data: CelebAStandin) -> None:
    text = attribute_text(data)
    lines = text.splitlines()
    with pytest.raises(DataIntegrityError, match="count line says"):
        parse_attributes("\n".join(["999", *lines[1:]]))
    with pytest.raises(DataIntegrityError, match="attribute names"):
        parse_attributes("\n".join([lines[0], lines[1].replace("Male", "Female"), *lines[2:]]))
    with pytest.raises(DataIntegrityError, match="-1 or 1"):
        parse_attributes("\n".join([*lines[:2], lines[2].replace("-1", " 0", 1), *lines[3:]]))
    with pytest.raises(DataIntegrityError, match="0\\|1\\|2"):
        parse_partitions("000001.jpg 3\n")


# ----------------------------------------------------------------------------- construction


def synthetic(n_train: int, seed: int = 0) -> Annotations:
    """Annotations only (no images): a train partition of ``n_train`` mostly non-blond women."""
    rng = np.random.default_rng(seed)
    n = n_train + 50
    attributes = (rng.random((n, 40)) < 0.5).astype(np.int8)
    attributes[:, 20] = rng.random(n) < 0.3  # Male
    attributes[:, 9] = rng.random(n) < 0.1  # Blond_Hair
    partition = np.repeat([0, 1, 2], [n_train, 25, 25])
    return Annotations([f"{i + 1:06d}.jpg" for i in range(n)], attributes, partition, ATTRIBUTE_NAMES)


def test_blond_task_keeps_2000_female_not_blond_training_images() -> None:
    ann = synthetic(3500)
    splits = select_splits(ann, CelebAOptions(target="Blond_Hair"))
    blond, male = ann.column("Blond_Hair"), ann.column("Male")
    pool = np.concatenate([splits["train"], splits["val"]])
    assert len(set(pool.tolist())) == len(pool) and (ann.partition[pool] == 0).all()
    got = table(blond[pool], male[pool])
    full = table(blond[:3500], male[:3500])
    assert full[0, 0] > 2000 and got[0, 0] == 2000  # (not blond, female) capped at BiasCon's 2 000
    assert (
        got[1, 0] == full[1, 0] and got[0, 1] == full[0, 1] and got[1, 1] == full[1, 1]
    )  # the rest all kept
    assert len(splits["train"]) == int(0.8 * len(pool))
    # the makeup task keeps the whole train partition
    makeup = select_splits(ann, CelebAOptions(target="Heavy_Makeup"))
    assert sorted(np.concatenate([makeup["train"], makeup["val"]]).tolist()) == list(range(3500))


def test_caps_subsample_each_split() -> None:
    ann = synthetic(500)
    full = select_splits(ann, CelebAOptions(target="Heavy_Makeup"))
    small = select_splits(ann, CelebAOptions(target="Heavy_Makeup", train_size=50, val_size=20, test_size=10))
    assert [len(small[s]) for s in SPLITS] == [50, 20, 10]
    for s in SPLITS:
        assert set(small[s].tolist()) <= set(full[s].tolist())
    other = select_splits(ann, CelebAOptions(target="Heavy_Makeup", train_size=50, seed=1))
    assert other["train"].tolist() != small["train"].tolist()  # seeded by the data seed


# ----------------------------------------------------------------------------- the real prepare


@pytest.mark.parametrize("target", ["Blond_Hair", "Heavy_Makeup"])
def test_official_partitions_honoured(root: Path, data: CelebAStandin, tmp_path: Path, target: str) -> None:
    """test = the official valid partition (BiasCon) or, on request, the test partition; train + val =
    the train partition (the makeup task keeps it whole), split 80 / 20."""
    manifest, splits = prepared(spec(root, target=target), tmp_path / "valid")
    test_table = table(splits["test"].targets, splits["test"].bias)
    np.testing.assert_array_equal(test_table, partition_table(data, target, 1))
    _, other = prepared(spec(root, target=target, test_partition="test"), tmp_path / "test")
    np.testing.assert_array_equal(
        table(other["test"].targets, other["test"].bias), partition_table(data, target, 2)
    )
    pool = table(splits["train"].targets, splits["train"].bias) + table(
        splits["val"].targets, splits["val"].bias
    )
    n_pool = int(pool.sum())
    assert len(splits["train"]) == int(0.8 * n_pool)
    if target == "Heavy_Makeup":
        np.testing.assert_array_equal(pool, partition_table(data, target, 0))
    assert manifest["sources"]["majority_matches_aligned"] is True
    assert manifest["verified"] is False and manifest["sources"]["verified"] is False


def test_blond_cap_in_the_real_prepare(root: Path, data: CelebAStandin, tmp_path: Path, monkeypatch) -> None:
    """The stand-in is tiny, so the 2 000 cap is lowered to 5: (female, not blond) keeps exactly 5, the
    other groups of the train partition are all kept."""
    monkeypatch.setattr(celeba_module, "BLOND_FEMALE_NOT_BLOND_KEPT", 5)
    _, splits = prepared(spec(root), tmp_path)
    pool = table(splits["train"].targets, splits["train"].bias) + table(
        splits["val"].targets, splits["val"].bias
    )
    full = partition_table(data, "Blond_Hair", 0)
    assert full[0, 0] > 5 and pool[0, 0] == 5
    assert (pool[1, 0], pool[0, 1], pool[1, 1]) == (full[1, 0], full[0, 1], full[1, 1])


def test_images_go_with_their_labels(root: Path, tmp_path: Path) -> None:
    """Stand-in pixels encode Blond_Hair (R) and Male (G); squash and centre crop both keep them."""
    for resize in ("squash", "center_crop"):
        _, splits = prepared(spec(root, resize=resize), tmp_path / resize)
        for split in splits.values():
            assert split.images.shape[1:] == (3, SIZE, SIZE)
            for image, target, bias in zip(split.images, split.targets, split.bias, strict=True):
                mean = image.reshape(3, -1).mean(axis=1)
                assert (decode_flag(mean[0]), decode_flag(mean[1])) == (target, bias)


def test_md5_mismatch_is_one_line_and_writes_nothing(root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataIntegrityError) as err:
        spec(root, verify=True).prepare(tmp_path / "out")
    message = one_line(err)
    got = hashlib.md5((root / FILES[0]).read_bytes()).hexdigest()
    assert FILES[0] in message and got in message and "00d2c5bc6d35e252742224ab0c1e8fcb" in message
    assert not (tmp_path / "out").exists()


def test_matching_md5s_are_verified_and_recorded(root: Path, tmp_path: Path, monkeypatch) -> None:
    """With the stand-ins' own md5s as the published ones, verify passes and the manifest says so."""
    digests = {name: hashlib.md5((root / name).read_bytes()).hexdigest() for name in FILES}
    monkeypatch.setattr(celeba_module, "CELEBA_MD5", digests)
    manifest, _ = prepared(spec(root, verify=True, target="Heavy_Makeup"), tmp_path)
    assert manifest["verified"] is True and manifest["sources"]["verified"] is True


def test_missing_files_are_listed_in_one_line(root: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(root / FILES[1], partial / FILES[1])
    with pytest.raises(DataUnavailable) as err:
        list(spec(partial).build())
    message = one_line(err)
    assert f"missing in {partial}: {FILES[0]}, {FILES[2]};" in message
    assert GDRIVE_IDS[FILES[0]] in message and "mmlab.ie.cuhk.edu.hk" in message
    assert FILES[1] not in message.split(";")[0]


def test_download_uses_torchvisions_drive_ids(root: Path, tmp_path: Path, monkeypatch) -> None:
    """download: true fetches only the missing files, by torchvision's Drive ids; no gdown -> one line."""
    import torchvision.datasets.utils as tv_utils

    target = tmp_path / "dl"
    target.mkdir()
    shutil.copy(root / FILES[1], target / FILES[1])
    calls = []

    def fake(file_id, where, filename, md5):
        calls.append((file_id, filename, md5))
        shutil.copy(root / filename, Path(where) / filename)

    monkeypatch.setattr(tv_utils, "download_file_from_google_drive", fake)
    manifest, _ = prepared(spec(target, download=True, target="Heavy_Makeup", verify=False), tmp_path / "out")
    assert [(c[0], c[1]) for c in calls] == [
        (GDRIVE_IDS[FILES[0]], FILES[0]),
        (GDRIVE_IDS[FILES[2]], FILES[2]),
    ]
    assert manifest["splits"]["test"]["count"] > 0
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "gdown", None)  # never reach the network: gdown "not installed"
    (target / FILES[0]).unlink()
    with pytest.raises(DataUnavailable) as err:
        list(spec(target, download=True).build())
    assert "gdown" in one_line(err) and FILES[0] in str(err.value)


def test_evaluator_unbiased_and_conflicting_by_hand(root: Path) -> None:
    """Groups [target, bias]: (0, F) conflicting 1/2 right, (0, M) aligned 2/2, (1, F) aligned 3/4,
    (1, M) conflicting 0/1. Unbiased = (0.5 + 1 + 0.75 + 0) / 4, conflicting = (0.5 + 0) / 2."""
    evaluator = spec(root).evaluator()
    assert isinstance(evaluator, GroupBias)
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    bias = torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 1])
    preds = torch.tensor([0, 1, 0, 0, 1, 1, 1, 0, 0])
    metrics = evaluator(torch.nn.functional.one_hot(preds, 2).float(), targets, bias)
    assert metrics["unbiased_accuracy"] == pytest.approx(2.25 / 4)
    assert metrics["conflicting_accuracy"] == pytest.approx(0.25)
    assert metrics["aligned_accuracy"] == pytest.approx(0.875)
    assert metrics["accuracy"] == pytest.approx(6 / 9)
