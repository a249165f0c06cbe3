"""The Ray Tune sweep end to end on a tiny CPU setup, plus fast checks of its pieces.

One tiny sweep through the real stage entry point (4 trials, 2 epochs, 128 training images) with
the crash hook on two trials: results.csv/best.json/heatmap/sensitivity table, nested MLflow runs,
a retried crash and a reported failure, and the objective recomputed from a trial's checkpoint on
the validation split (the test split is deleted before the sweep, so it cannot have been read).
A second sweep is interrupted by a real SIGINT (Tune's Ctrl-C path) and then resumed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from ray import tune

from cecl.config import Params
from cecl.report import sweep as report
from cecl.report.sweep import RESULT_COLUMNS
from cecl.tune import (
    CRASH_ENV,
    SweepInterrupted,
    init_ray,
    parse_crash_specs,
    run_sweep,
    search_space,
    subsample,
    trial_label,
)
from tests.helpers import synthetic_split, tiny_params

GRIDS = {
    "cecl": {"temperature": [0.1], "weight": [0.0, 1.0]},
    "supcon": {"temperature": [0.1]},
    "simclr": {"temperature": [0.5]},
}


def _sweep_params(**sweep: object) -> Params:
    base = {
        "rho": 0.99,
        "epochs": 2,
        "grids": GRIDS,
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "cpus_per_trial": 1,
        "max_concurrent": 2,
        "max_failures": 1,
    }
    return tiny_params(sweep={**base, **sweep})


# ---------------------------------------------------------------- fast checks (no Ray)


def test_grid_labels_and_crash_specs() -> None:
    params = _sweep_params()
    space = search_space(params, "cecl")
    assert space["method"] == "cecl"
    assert space["temperature"] == tune.grid_search([0.1])
    assert space["weight"] == tune.grid_search([0.0, 1.0])
    assert "weight" not in search_space(params, "supcon")
    assert trial_label({"method": "cecl", "temperature": 0.1, "weight": 0.5}) == "cecl tau=0.1 w=0.5"
    assert trial_label({"method": "simclr", "temperature": 0.5}) == "simclr tau=0.5"
    once, always = parse_crash_specs("cecl:0.1:0.5, simclr:0.5:always")
    assert once.matches({"method": "cecl", "temperature": 0.1, "weight": 0.5}) and not once.always
    assert not once.matches({"method": "cecl", "temperature": 0.1, "weight": 1.0})
    assert always.always and always.matches({"method": "simclr", "temperature": 0.5})
    with pytest.raises(ValueError, match=CRASH_ENV):
        parse_crash_specs("cecl")


def test_subsample_is_seeded_and_ordered() -> None:
    split = synthetic_split(50, seed=0)
    a, b = subsample(split, 20, seed=3), subsample(split, 20, seed=3)
    assert len(a) == 20 and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
    assert subsample(split, None, 0) is split and subsample(split, 80, 0) is split


def _row(method: str, temperature: float, weight: float | None, acc: float | None, **extra: object) -> dict:
    row = {"method": method, "temperature": temperature, "weight": weight, "best_val_accuracy": acc}
    row |= {"best_epoch": 2, "epochs_run": 2, "stopped_early": False, "status": "TERMINATED", "retries": 0}
    return row | extra


def test_report_marks_stopped_failed_and_selected() -> None:
    rows = [
        _row("cecl", 0.1, 0.0, 0.5, epochs_run=1, best_epoch=1, stopped_early=True),
        _row("cecl", 0.1, 1.0, 0.7),
        _row("simclr", 0.5, None, None, status="ERROR", epochs_run=0, best_epoch=None, retries=1),
    ]
    frame = report.results_frame(rows)
    chosen = {"temperature": 0.1, "weight": 1.0, "best_val_accuracy": 0.7, "best_epoch": 2, "epochs_run": 2}
    best = {"rho": 0.99, "epochs": 2, "train_size": None, "scheduler": "asha", "methods": {"cecl": chosen}}
    table = report.sensitivity_markdown(frame, best)
    assert "| 0.1 | 50.0 (1 ep) | **70.0** |" in table
    assert "| 0.5 | failed |" in table
    assert "| cecl | 0.1 | 1 | 70.0 | 2 | 2 |" in table
    assert list(report.heatmap_frame(frame).columns) == ["temperature", "weight", "best_val_accuracy"]


# ---------------------------------------------------------------- the tiny sweep


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with tiny BiasedMNIST data whose test split has been deleted."""
    from cecl.data.biased_mnist import prepare_biased_mnist, split_path

    root = tmp_path_factory.mktemp("project")
    params = _sweep_params()
    prepare_biased_mnist(params.data, root / "data/biased_mnist")
    test_file = split_path(root / "data/biased_mnist", 0.99, "test")
    assert test_file.exists()
    test_file.unlink()  # the sweep must never need it
    return root


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (run_sweep leaves a Ray it did not start running)."""
    import ray

    init_ray(_sweep_params())
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def swept(project: Path, ray_session) -> Path:
    """The real stage entry point, with supcon crashing once and simclr crashing on every attempt."""
    from stages import sweep as stage

    raw = _sweep_params().model_dump(mode="json")
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        mp.setenv(CRASH_ENV, "supcon:0.1,simclr:0.5:always")
        stage.main()
    return project


def _results(root: Path) -> dict[str, dict[str, str]]:
    with (root / "sweep/results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(RESULT_COLUMNS)
    return {trial_label({k: v for k, v in row.items() if v != "" and k in ("method", "temperature", "weight")}
                        | {"temperature": float(row["temperature"])}): row for row in rows}  # fmt: skip


@pytest.mark.slow
def test_sweep_outputs(swept: Path) -> None:
    rows = _results(swept)
    assert sorted(rows) == ["cecl tau=0.1 w=0", "cecl tau=0.1 w=1", "simclr tau=0.5", "supcon tau=0.1"]
    for label, row in rows.items():
        if row["status"] == "TERMINATED":
            assert 1 <= int(row["epochs_run"]) <= 2, label
            assert (row["stopped_early"] == "True") == (int(row["epochs_run"]) < 2), label
            assert 0.0 <= float(row["best_val_accuracy"]) <= 1.0
    assert rows["supcon tau=0.1"]["weight"] == ""
    best = json.loads((swept / "sweep/best.json").read_text())
    assert set(best["methods"]) == {"cecl", "supcon"}  # simclr failed: no best configuration
    cecl = [r for r in rows.values() if r["method"] == "cecl"]
    top = max(cecl, key=lambda r: float(r["best_val_accuracy"]))
    assert math.isclose(best["methods"]["cecl"]["best_val_accuracy"], float(top["best_val_accuracy"]))
    assert best["methods"]["cecl"]["weight"] == float(top["weight"])
    with (swept / "sweep/heatmap.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (swept / "sweep/heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (swept / "sweep/sensitivity.md").read_text()
    assert "| τ \\ w | 0 | 1 |" in table and "failed" in table
    assert not list((swept / "sweep").glob(".staging-*"))


@pytest.mark.slow
def test_crashing_trials_are_retried_and_reported(swept: Path) -> None:
    rows = _results(swept)
    supcon, simclr = rows["supcon tau=0.1"], rows["simclr tau=0.5"]
    # Crashed once after epoch 1, retried from that epoch's checkpoint, then finished.
    assert (supcon["status"], supcon["retries"], supcon["epochs_run"]) == ("TERMINATED", "1", "2")
    # Crashed on the first attempt and on its one retry (max_failures: 1); the sweep still finished.
    assert (simclr["status"], simclr["retries"], simclr["best_val_accuracy"]) == ("ERROR", "1", "")


@pytest.mark.slow
def test_nested_mlflow_runs(swept: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{swept / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(_sweep_params().tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "sweep"]
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert sorted(children) == [
        "sweep/cecl tau=0.1 w=0",
        "sweep/cecl tau=0.1 w=1",
        "sweep/simclr tau=0.5",
        "sweep/supcon tau=0.1",
    ]
    assert len(runs) == 5  # nothing else was logged
    rows = _results(swept)
    for name, child in children.items():
        row = rows[name.removeprefix("sweep/")]
        assert child.data.tags["status"] == row["status"]
        assert child.info.status == ("FINISHED" if row["status"] == "TERMINATED" else "FAILED")
        assert child.info.run_id == row["mlflow_run_id"]
        assert child.data.params["method"] == row["method"]
        assert float(child.data.params["temperature"]) == float(row["temperature"])
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        assert steps == list(range(1, int(row["epochs_run"]) + 1)), name  # once per epoch, even when retried
    assert children["sweep/cecl tau=0.1 w=1"].data.params["weight"] == "1.0"
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "best.json", "heatmap.png", "heatmap.csv", "sensitivity.md"} <= artifacts


@pytest.mark.slow
def test_objective_is_the_validation_probe(swept: Path) -> None:
    """Rebuild a trial's final model from its Ray checkpoint; its val-split probe is what was reported."""
    from cecl.methods import build_method
    from cecl.train.loop import online_probe_accuracy
    from cecl.tune import load_train_val, overrides_of

    params = _sweep_params()
    row = _results(swept)["cecl tau=0.1 w=1"]
    epoch = int(row["epochs_run"])
    (trial_dir,) = (swept / "sweep/ray_results").glob(f"cecl-*/*{row['trial_id']}*")
    history = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    reported = next(r["val_accuracy"] for r in history if r["epoch"] == epoch)
    ckpt = sorted(trial_dir.glob("checkpoint_*/last.pt"))[-1]  # the latest one
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert len(state["history"]) == epoch
    config = {"method": "cecl", "temperature": float(row["temperature"]), "weight": float(row["weight"])}
    train, val = load_train_val(0.99, torch.device("cpu"), swept / "data/biased_mnist")
    train = subsample(train, params.sweep.train_size, params.pretrain.seed)
    method = build_method(params, "cecl", 10, overrides_of(config))
    method.load_state_dict(state["method"])
    recomputed = online_probe_accuracy(method, train, val, params, params.pretrain.seed + epoch - 1)
    assert abs(recomputed - reported) <= 1.0 / len(val) + 1e-9
    assert math.isclose(float(row["best_val_accuracy"]), max(r["val_accuracy"] for r in history))


class _InterruptOnce(tune.Callback):
    """Sends this process a real SIGINT (Tune's Ctrl-C path) at a chosen result, once; logs every result.

    Ray pickles callbacks into the experiment and restores them with it, so the log keeps growing
    after the resume and the 'fired' marker file keeps the restored copy from interrupting again.
    """

    def __init__(self, log: Path, at: tuple[float, int]) -> None:
        self.log, self.at = log, at

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        entry = {
            "tau": trial.config["temperature"],
            "epoch": result["epoch"],
            "from": result["resumed_from_epoch"],
        }
        with self.log.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
        fired = self.log.with_suffix(".fired")
        if (entry["tau"], entry["epoch"]) == self.at and not fired.exists():
            fired.touch()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_interrupted_sweep_resumes(project: Path, ray_session, tmp_path: Path) -> None:
    params = _sweep_params(
        epochs=3,
        scheduler="none",
        max_concurrent=1,  # one trial at a time: the interruption point is deterministic
        grids={"cecl": {"temperature": [0.1, 0.5], "weight": [0.5]}},
    )
    log = tmp_path / "results.jsonl"
    storage = tmp_path / "ray_results"
    interrupt = _InterruptOnce(log, at=(0.5, 2))  # the second trial's second epoch
    kwargs = {"data_dir": project / "data/biased_mnist", "storage": storage, "verbose": 0}
    with pytest.raises(SweepInterrupted, match="run it again to resume"):
        run_sweep(params, root=tmp_path, callbacks=[interrupt], **kwargs)
    first = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["tau"], r["epoch"]) for r in first] == [(0.1, 1), (0.1, 2), (0.1, 3), (0.5, 1), (0.5, 2)]

    summary = run_sweep(params, root=tmp_path, **kwargs)  # same params: Tuner.restore
    second = [json.loads(line) for line in log.read_text().splitlines()][len(first) :]
    assert all(r["tau"] == 0.5 for r in second)  # the finished trial did not run again
    assert second[0]["from"] >= 1 and second[-1]["epoch"] == 3  # continued from its checkpoint
    assert [(o.temperature, o.status, o.epochs_run) for o in summary.outcomes] == [
        (0.1, "TERMINATED", 3),
        (0.5, "TERMINATED", 3),
    ]
    assert len(list(storage.iterdir())) == 1  # one experiment folder, restored rather than recreated

    again = run_sweep(params, root=tmp_path, **kwargs)  # a finished sweep is restored: nothing reruns
    assert len(log.read_text().splitlines()) == len(first) + len(second)
    assert [o.row() for o in again.outcomes] == [o.row() for o in summary.outcomes]
