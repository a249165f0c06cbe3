"""The checked-in profiles: cpu (what `make repro` runs; params.yaml is it) and paper (GPU hosts).

The paper profile validates here, its DVC stage list is the full dataset x method x seed matrix, and its
recipes run end to end (prepare, pretrain, probe, aggregate) for one epoch on every dataset entry it
has, on shrunken data, in this process (the DVC round trip itself is tests/test_pipeline_e2e.py's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cecl.config import load_params, parse_params
from cecl.repro import use_profile
from tests.helpers import committed

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
GPU_TIERS = ["gpu-smoke", "gpu-day", "cifar100-1000ep", "gpu-week", "gpu-week-bias"]
# pretrain stages (entries x methods x seeds) and transfer stages (sources x targets x methods x seeds)
STAGE_MATRIX = {
    "paper": (15 * 19 * 3, 3 * 2 * 19 * 3),
    "gpu-smoke": (3 * 4 * 1, 0),
    "gpu-day": (2 * 4 * 3, 0),
    "cifar100-1000ep": (1 * 2 * 1, 0),
    "gpu-week": (2 * 8 * 3, 2 * 2 * 8 * 3),
    "gpu-week-bias": (11 * 19 * 3, 0),
}


def test_params_yaml_is_the_cpu_profile() -> None:
    params, cpu = committed(REPO, "params.yaml"), committed(REPO, "profiles/cpu.yaml")
    assert yaml.safe_load(params) == yaml.safe_load(cpu)


def test_the_committed_dvc_lock_records_only_stages_dvc_yaml_defines(tmp_path: Path) -> None:
    """DVC never drops the dvc.lock entry of a stage that is renamed or removed; stale entries made the
    lock twice as long (77 of 129), and DVC re-parses and rewrites all of it after every stage (3.5 s vs
    2.0 s per stage measured). Checked on the committed dvc.yaml, params.yaml and dvc.lock."""
    for name in ("dvc.yaml", "params.yaml", "dvc.lock"):
        (tmp_path / name).write_text(committed(REPO, name))
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q", "--no-scm"], cwd=tmp_path, check=True)
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    locked = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert sorted(set(locked) - set(listed)) == [] and len(locked) == len(listed)


def test_cpu_profile_tests_debiasing_where_the_field_does_with_five_paired_seeds() -> None:
    """The CPU default's bias entry is in the field's rho range (0.99-0.999, ReBias / BiasCon) with the
    paper's colour augmentation (docs/bias-pilot.md), 5 seeds, and the paper's main comparison."""
    params = load_params(PROFILES / "cpu.yaml")
    bias = [name for name in params.pretrain.datasets if params.spec(name).family == "biased_mnist"]
    assert bias and all(0.99 <= params.datasets[name].rho <= 0.999 for name in bias)
    assert all(params.spec(name).augment.needs_colour() for name in bias)
    assert len(params.seeds) >= 5
    assert {"ce", "simclr", "supcon", "cecl"} <= set(params.pretrain.methods)


def test_paper_profile_validates_with_the_paper_recipes() -> None:
    from cecl.methods import available

    params = load_params(PROFILES / "paper.yaml")
    assert set(params.pretrain.methods) == set(available())  # all 19
    assert len(params.seeds) == 3
    rhos = sorted(params.datasets[n].rho for n in params.datasets if params.spec(n).family == "biased_mnist")
    assert rhos == [0.9, 0.95, 0.99, 0.995, 0.997, 0.999]
    recipe = params.recipe("bmnist_rho99")
    assert recipe.model.backbone == "simple_conv_net" and recipe.pretrain.epochs == 80
    assert recipe.pretrain.optimizer.milestones == [26, 53] and recipe.pretrain.optimizer.lr == 1e-3
    assert params.datasets["bmnist_rho99"].train_size is None  # all of MNIST train left after validation


@pytest.mark.parametrize("profile", sorted(STAGE_MATRIX))
def test_profile_stage_matrix(tmp_path: Path, profile: str) -> None:
    params = load_params(PROFILES / f"{profile}.yaml")
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(PROFILES / f"{profile}.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(
        [dvc, "stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = {key.stage("pretrain") for key in params.runs()} | {
        key.stage("probe") for key in params.runs()
    }
    assert expected <= set(listed)
    pretrain, transfer = STAGE_MATRIX[profile]
    assert len([s for s in listed if s.startswith("pretrain@")]) == len(params.runs()) == pretrain
    assert len([s for s in listed if s.startswith("transfer@")]) == len(params.transfers()) == transfer


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES.glob("*.yaml")))
def test_every_param_dvc_tracks_exists_in_the_profile(tmp_path: Path, profile: str) -> None:
    """DVC refuses a stage whose tracked params key is missing (or unaddressable, like a dotted name)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    raw = yaml.safe_load((PROFILES / f"{profile}.yaml").read_text())
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(str(tmp_path))
    missing = []
    with Repo(str(tmp_path)) as repo:
        for stage in repo.index.stages:
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    for key in dep.params:
                        node = raw
                        for part in key.split("."):
                            node = node.get(part) if isinstance(node, dict) else None
                        if node is None and not _declared_null(raw, key):
                            missing.append(f"{stage.addressing}: {key}")
    assert not missing, missing[:5]


def _declared_null(raw: dict, key: str) -> bool:
    """A key present with the value null (e.g. model.proj_hidden) is fine for DVC."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return isinstance(node, dict) and last in node


# Per family: the options that shrink an entry to its stand-in, and the stand-in writer (real on-disk
# formats, tests/fixtures/standins_*.py) that puts the raw files where the entry reads them.
SHRINK: dict[str, dict] = {
    "biased_mnist": {"train_size": 16, "val_size": 16, "test_size": 16},
    "fashion_mnist": {"train_size": 16, "val_size": 16, "test_size": 16},
    "cifar10": {"val_size": 10, "download": False, "verify": False},
    "cifar100": {"val_size": 10, "download": False, "verify": False},
    "imagenet32": {"val_size": 10, "verify": False},
    "caltech101": {"train_per_class": 4, "val_per_class": 2, "download": False, "verify": False},
    "caltech256": {"train_per_class": 4, "val_per_class": 2, "download": False, "verify": False},
    "utkface": {"image_size": 32},
    "celeba": {"image_size": 32, "verify": False},
    "imagenet": {"n_classes": 3, "image_size": 32, "val_per_class": 2, "verify": False, "workers": 0},
}


def _write_standin(family: str, raw_root: Path) -> dict:
    """Write ``family``'s stand-in under ``raw_root``; returns the entry options that point at it."""
    from tests.fixtures import standins_caltech, standins_cifar, standins_faces, standins_imagenet_folder

    folder = raw_root / family
    if family in ("cifar10", "cifar100"):
        standins_cifar.write_cifar_archive(folder, 10 if family == "cifar10" else 100, per_batch=6, n_test=10)
    elif family == "imagenet32":
        standins_cifar.write_imagenet32(folder, per_batch=3, n_val=5)
    elif family == "caltech101":
        standins_caltech.write_caltech101_zip(folder / "caltech101")
    elif family == "caltech256":
        standins_caltech.write_caltech256_tar(folder / "caltech256")
    elif family == "utkface":
        standins_faces.write_utkface_archive(folder, standins_faces.utkface_files())
    elif family == "celeba":
        standins_faces.write_celeba(folder, standins_faces.celeba_annotations())
    elif family == "imagenet":
        standins_imagenet_folder.write_imagenet_folder(folder)
    else:
        return {}
    return {"root": str(folder)}


def _shrunk_profile(root: Path, profile: str = "paper") -> dict:
    raw = yaml.safe_load((PROFILES / f"{profile}.yaml").read_text())
    written: dict[str, dict] = {}
    for entry in raw["datasets"].values():
        family = entry["family"]
        if family not in written:
            written[family] = _write_standin(family, root / "raw")
        entry.update(SHRINK[family], **written[family])
        pretrain = entry.setdefault("overrides", {}).setdefault("pretrain", {})
        pretrain.update(epochs=1, batch_size=8, processes=1)  # one process here: torchrun is tested apart
        if pretrain.get("micro_batch"):
            pretrain["micro_batch"] = 2  # still chunked (gradient caching), on the shrunk batch
    raw["seeds"] = [0]
    raw["pretrain"].update(epochs=1, batch_size=8)
    raw["probe"].update(l2_per_decade=1, max_iter=50)
    raw["device"] = "cpu"
    if raw["transfer"]["targets"]:
        raw["transfer"] = {"sources": [raw["transfer"]["sources"][0]], "targets": raw["transfer"]["targets"]}
    return raw


@pytest.mark.parametrize("profile", ["paper", *GPU_TIERS])
def test_every_profile_family_has_a_standin_and_a_shrink(profile: str) -> None:
    params = load_params(PROFILES / f"{profile}.yaml")
    assert {params.spec(name).family for name in params.datasets} <= set(SHRINK)


def test_every_gpu_tier_is_tested_end_to_end_and_its_matrix_counted() -> None:
    tiers = sorted(p.stem for p in PROFILES.glob("*.yaml") if p.stem not in ("cpu", "paper"))
    assert sorted(GPU_TIERS) == tiers and set(STAGE_MATRIX) == {"paper", *tiers}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["paper", *GPU_TIERS])
def test_profile_recipes_run_end_to_end_on_every_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    """One epoch of every recipe of the profile on every one of its datasets' stand-ins, with CECL, on
    the CPU with the profile's compute settings (bf16 autocast, fused optimiser in the GPU tiers): prepare
    (the real reading code on files in each dataset's real format, verify off), pretrain, probe, transfer
    to the Caltechs, aggregate. Every method runs through the same loop in tests/test_training.py."""
    from cecl.floors import evaluate_floor
    from cecl.runs import RunKey, TransferKey
    from stages import aggregate, prepare, pretrain, probe, transfer

    raw = _shrunk_profile(tmp_path, profile)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sensitivity.md").write_text("(sweep not run in this test)\n")
    # aggregate embeds the sweep's heatmap in report.html: a stand-in PNG (the sweep is tested elsewhere)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "sweep" / "heatmap.png", [[0.0, 1.0], [1.0, 0.0]])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = parse_params(raw)
    for name in params.datasets:
        prepare.main(name)
    for key in [RunKey(d, "cecl", 0) for d in params.pretrain.datasets]:
        pretrain.main(key)
        probe.main(key)
    # aggregate reads both floors of every entry (ImageNet's 224 px pixels pooled to 64 x 64)
    for floor_key in params.floors():
        evaluate_floor(params, floor_key)
    transfers = [
        TransferKey(s, t, "cecl", 0) for s in params.transfer.sources for t in params.transfer.targets
    ]
    for key in transfers:
        transfer.main(key)
    # aggregate reads every run params.yaml defines: restrict the profile to the ones run here
    raw["pretrain"]["methods"] = ["cecl"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    aggregate.main()
    report = (tmp_path / "reports" / "report.md").read_text()
    for name in params.pretrain.datasets:
        assert name in report
    for key in transfers:
        assert key.target in report
        metrics = json.loads((key.out_dir / "metrics.json").read_text())
        assert "mean_per_class_accuracy" in metrics["test"]
    for name in {"utkface_race", "celeba_blond"} & set(params.pretrain.datasets):
        metrics = json.loads((RunKey(name, "cecl", 0).probe_dir / "metrics.json").read_text())
        assert metrics["protocol"] == "joint" and "conflicting_accuracy" in metrics["test"]
    for name in params.pretrain.datasets:
        assert (tmp_path / f"models/{name}/cecl/seed_0/encoder.pt").is_file()


def test_switching_profile_never_loses_uncommitted_edits(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("cpu", "paper"):
        shutil.copy2(PROFILES / f"{name}.yaml", profiles / f"{name}.yaml")
    params = tmp_path / "params.yaml"
    shutil.copy2(PROFILES / "cpu.yaml", params)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        use_profile("paper", params, profiles)  # params.yaml was a saved profile: switching is safe
        assert params.read_bytes() == (profiles / "paper.yaml").read_bytes()
        params.write_text(params.read_text() + "\n# my edit\n")
        with pytest.raises(SystemExit, match="uncommitted edits"):
            use_profile("cpu", params, profiles)
        assert params.read_text().endswith("# my edit\n")  # nothing lost
        with pytest.raises(SystemExit, match="no profile"):
            use_profile("nope", params, profiles)
    finally:
        os.chdir(cwd)
