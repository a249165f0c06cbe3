"""The floors (cecl/floors.py, stages/floor.py) against independent references.

- init: the untrained encoder of a floor at seed s holds, bit for bit, the encoder weights every method's
  pretraining starts from at seed s (``cecl.train.loop.build_training``), and differs between seeds;
- pixels: its features are the per-channel normalised, flattened images computed here by hand, and its
  selection and test accuracy are scikit-learn's on those features over the same grid;
- the stage, run as DVC runs it on a tiny prepared BiasedMNIST: metrics.json in the probe's schema
  (run.kind "floor", run.method the floor, run.seed null for pixels), curve.csv one row per strength,
  and one-line errors for floors params.yaml does not define.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from cecl import floors, runs
from cecl.eval.features import features_of
from cecl.floors import check_floor, floor_config, floor_keys, initial_encoder, pixel_encoder, probe_floor
from cecl.report.collect import REQUIRED_KEYS
from cecl.train.loop import build_training
from tests.helpers import DATASET, synthetic_split, tiny_params, tiny_setup

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
# stages/probe.py's metrics.json keys (ce's "own_head" aside): a floor is read as a probe is
PROBE_KEYS = {
    "run", "evaluator", "protocol", "selected_on", "val_description", "data_verified", "selected",
    "selected_at_edge", "val_accuracy", "val", "test", "official_protocol", "config", "machine",
}  # fmt: skip
RUN_KEYS = {
    "stage", "kind", "dataset", "family", "source", "method", "seed", "pretrain_stage",
    "pretrain_outputs_sha256",
}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 3])
def test_the_init_floor_is_the_encoder_every_method_starts_from(seed: int) -> None:
    params = tiny_params(seeds=[0, 3], pretrain={"methods": ["ce", "simclr", "supcon", "cecl"]})
    floor = initial_encoder(params, DATASET, seed).state_dict()
    for method in params.pretrain.methods:
        torch.manual_seed(12345)  # whatever the generator held before: the seed decides
        start = build_training(tiny_setup(method, params, seed=seed), CPU).method.encoder.state_dict()
        assert list(start) == list(floor)
        for name, value in floor.items():
            assert torch.equal(start[name], value), f"{method}: {name}"
    other = initial_encoder(params, DATASET, seed + 1).state_dict()
    assert any(not torch.equal(other[k], v) for k, v in floor.items() if v.is_floating_point())


def test_the_pixel_floor_is_scikit_learns_probe_of_the_normalised_pixels() -> None:
    # strengths where 300 images of 2352 pixels are not separable: every fit converges in a few steps
    params = tiny_params(probe={"l2_min": 1.0, "l2_max": 10.0, "l2_per_decade": 1, "patience": None})
    spec = params.spec(DATASET)
    splits = {
        "train": synthetic_split(300, 0),
        "val": synthetic_split(150, 1),
        "test": synthetic_split(150, 2),
    }
    # The features by hand: uint8 -> [0, 1], the entry's per-channel mean and std, flattened.
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)
    by_hand = {k: ((s.images.float() / 255 - mean) / std).flatten(1) for k, s in splits.items()}
    encoder = pixel_encoder(params, DATASET)
    assert encoder.feature_dim == 3 * 28 * 28
    for name, split in splits.items():
        torch.testing.assert_close(features_of(encoder, split), by_hand[name], rtol=0, atol=1e-6)

    key = runs.FloorKey(DATASET, "pixels")
    result = probe_floor(params, key, splits, CPU)
    # scikit-learn over the same grid on the probe's standardisation (train mean, unbiased std, 1e-6 floor)
    train = by_hand["train"].double()
    mu, sigma = train.mean(0), train.std(0).clamp_min(1e-6)
    z = {k: ((f.double() - mu) / sigma).numpy() for k, f in by_hand.items()}
    evaluator = spec.evaluator()
    best: tuple[float, float, dict] | None = None
    for l2 in params.probe.grid():  # strongest first; strictly better replaces: the strongest among ties
        model = LogisticRegression(C=1.0 / (l2 * len(train)), tol=1e-6, max_iter=5_000)
        model.fit(z["train"], splits["train"].targets.numpy())
        scores = {
            k: evaluator(torch.from_numpy(model.decision_function(z[k])), splits[k].targets, splits[k].bias)
            for k in ("val", "test")
        }
        if best is None or scores["val"][evaluator.primary] > best[1]:
            best = (l2, scores["val"][evaluator.primary], scores["test"])
    assert best is not None
    assert result.selected["l2"] == pytest.approx(best[0])
    assert result.test["accuracy"] == pytest.approx(best[2]["accuracy"], abs=1.5 / 150)  # one image at most


def test_floors_of_a_params_file_and_their_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    params = tiny_params(seeds=[0, 1])
    assert [k.stage() for k in floor_keys(params)] == [
        "floor-pixels@bm", "floor-init@bm-0", "floor-init@bm-1",
    ]  # fmt: skip
    for key, match in (
        (runs.FloorKey("nope", "pixels"), "'nope' is not in params.yaml pretrain.datasets"),
        (runs.FloorKey(DATASET, "init", 7), "seed 7 is not in params.yaml seeds"),
    ):
        with pytest.raises(ValueError, match=match):
            check_floor(params, key)
    assert floors.pixel_side(3, (28, 28)) is None and floors.pixel_side(3, (224, 224)) == 64
    monkeypatch.setattr(floors, "MAX_PIXEL_FEATURES", 2000)  # as ImageNet's 224 px is over the real bound
    encoder = floors.pixel_encoder(params, DATASET).eval()  # 3 x 28 x 28 = 2352 > 2000: pooled to 25 x 25
    spec = params.spec(DATASET)
    images = torch.rand(4, 3, 28, 28)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    expected = torch.nn.functional.adaptive_avg_pool2d((images - mean) / std, 25).flatten(1)
    assert encoder.feature_dim == 3 * 25 * 25
    assert torch.allclose(encoder(images), expected, atol=1e-5)
    assert floor_config(params, runs.FloorKey(DATASET, "pixels")) == {"features": "pixels", "pooled_to": 25}
    for kind, seed in (("pixels", 0), ("init", None), ("raw", None)):
        with pytest.raises(ValueError, match="floor"):
            runs.FloorKey(DATASET, kind, seed)


# --------------------------------------------------------------------------- the stage, as DVC runs it

TINY = {
    "device": "cpu",
    "tracking": {"experiment": "cecl-floors"},
    "seeds": [0, 1],
    "datasets": {
        "bm": {"family": "biased_mnist", "rho": 0.9, "train_size": 256, "val_size": 128, "test_size": 256}
    },
    "model": {"backbone": "small_cnn", "backbone_options": {"width": 4}, "proj_dim": 16},
    "method_options": {"ce": {}},
    "pretrain": {"datasets": ["bm"], "methods": ["ce"], "epochs": 1, "batch_size": 32},
    "probe": {"l2_min": 1e-5, "l2_max": 0.1, "l2_per_decade": 1, "patience": None},
    "sweep": {"dataset": "bm"},
}  # fmt: skip


def _stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    command = [sys.executable, "-m", "cecl.stage", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny params.yaml, its BiasedMNIST entry prepared and both floors of seed 1."""
    root = tmp_path_factory.mktemp("floors")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for args in (("prepare", "--dataset", "bm"), ("floor", "--dataset", "bm", "--kind", "pixels")):
        done = _stage(root, *args)
        assert done.returncode == 0, done.stderr[-2000:]
    done = _stage(root, "floor", "--dataset", "bm", "--kind", "init", "--seed", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.mark.parametrize("key", [runs.FloorKey("bm", "pixels"), runs.FloorKey("bm", "init", 1)])
def test_the_floor_stage_writes_the_probes_schema(lab: Path, key: runs.FloorKey) -> None:
    metrics = json.loads((lab / key.out_dir / runs.METRICS_FILE).read_text())
    assert set(metrics) == PROBE_KEYS and set(REQUIRED_KEYS) <= set(metrics)
    assert set(metrics["run"]) == RUN_KEYS
    assert metrics["run"]["stage"] == key.stage() and metrics["run"]["kind"] == "floor"
    assert (metrics["run"]["method"], metrics["run"]["seed"]) == (key.kind, key.seed)
    assert metrics["protocol"] == "linear_probe" and metrics["selected_on"] == "val"
    grid = [float(v) for v in np.logspace(-1, -5, 5)]
    assert metrics["selected"]["l2"] == pytest.approx(
        min(grid, key=lambda v: abs(v - metrics["selected"]["l2"]))
    )
    edge = {grid[0]: "strong", grid[-1]: "weak"}
    expected_edge = next((e for v, e in edge.items() if v == pytest.approx(metrics["selected"]["l2"])), None)
    assert metrics["selected_at_edge"] == expected_edge
    with (lab / key.out_dir / runs.CURVE_FILE).open() as handle:
        curve = list(csv.DictReader(handle))
    assert [float(r["l2"]) for r in curve] == pytest.approx(grid)
    chosen = next(r for r in curve if float(r["l2"]) == pytest.approx(metrics["selected"]["l2"]))
    assert float(chosen["test_accuracy"]) == metrics["test"]["accuracy"]
    assert 0.0 < metrics["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dataset", "nope", "--kind", "pixels"), "'nope' is not in params.yaml pretrain.datasets"),
        (("--dataset", "bm", "--kind", "init", "--seed", "5"), "seed 5 is not in params.yaml seeds"),
        (("--dataset", "bm", "--kind", "init"), "the init floor takes a seed"),
    ],
)
def test_a_floor_params_does_not_define_is_a_one_line_error(lab: Path, args: tuple, message: str) -> None:
    done = _stage(lab, "floor", *args)
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # argparse's usage line, then the error


@pytest.mark.parametrize("profile", ["cpu", "gpu-week-bias"])
def test_the_plan_counts_every_stage_dvc_lists(tmp_path: Path, profile: str) -> None:
    """make plan's stage count (floors included) is the number of stages DVC builds from dvc.yaml."""
    from cecl.config import load_params
    from cecl.plan.estimate import plan_params

    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy2(REPO / "profiles" / f"{profile}.yaml", tmp_path / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([dvc, "init", "-q"], cwd=tmp_path, check=True)
    listed = subprocess.run(
        [dvc, "stage", "list", "--name-only"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    params = load_params(REPO / "profiles" / f"{profile}.yaml")
    assert {k.stage() for k in floor_keys(params)} == {s for s in listed if s.startswith("floor-")}
    assert plan_params(params).stages == len(listed)
