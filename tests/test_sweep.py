"""The Ray Tune sweep end to end on a tiny CPU setup, plus fast checks of its pieces.

One tiny sweep through the real stage entry point (4 trials, 2 epochs, 128 training images of a
BiasedMNIST entry) with the crash hook on two trials: results.csv/best.json/heatmap/sensitivity
table, nested MLflow runs tagged like stage runs, a retried crash and a reported failure, and the
objective recomputed from a trial's checkpoint on the validation split (the test split is deleted
before the sweep, so it cannot have been read). A sweep in which every trial of a method fails
exits non-zero with one line. A second sweep is interrupted by a real SIGINT (Tune's Ctrl-C path)
and then resumed.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from ray import tune

from cecl.config import Params, parse_params
from cecl.datasets import TensorSplit
from cecl.pipeline import run_tags
from cecl.report import sweep as report
from cecl.report.sweep import RESULT_COLUMNS
from cecl.runs import RunKey
from cecl.train.checkpoint import load_checkpoint
from cecl.tune import (
    CRASH_ENV,
    OBJECTIVE,
    SweepDevice,
    SweepFailed,
    SweepInterrupted,
    SweepSummary,
    TrialOutcome,
    check_device,
    gpu_pin,
    init_ray,
    parse_crash_specs,
    resolve_sweep_device,
    run_sweep,
    search_space,
    subsample,
    trial_label,
    trial_resources,
    visible_gpus,
)

GRIDS = {"cecl": {"temperature": [0.1], "weight": [0.0, 1.0]}, "supcon": {"temperature": [0.1]}}
# supcon crashes once (retried from its checkpoint); cecl w=1 crashes on every attempt (ERROR), but
# cecl w=0 finishes, so the stage succeeds (test_every_trial_of_a_method_failing_fails_the_stage).
CRASHES = "supcon:0.1,cecl:0.1:1.0:always"

TINY: dict[str, Any] = {
    "device": "cpu",
    "datasets": {
        "bm": {"family": "biased_mnist", "rho": 0.99, "train_size": 128, "val_size": 64, "test_size": 64}
    },
    "pretrain": {
        "datasets": ["bm"],
        "methods": ["cecl"],
        "epochs": 1,
        "batch_size": 32,
        "monitor": {"kind": "knn", "k": 20},
    },
    "model": {"backbone_options": {"width": 4}, "proj_dim": 16},
    "method_options": {"cecl": {}},
    "sweep": {
        "dataset": "bm",
        "seed": 0,
        "epochs": 2,
        "grids": GRIDS,
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "cpus_per_trial": 1,
        "max_concurrent": 2,
        "max_failures": 1,
    },
}


def _raw(device: str = "cpu", **sweep: object) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["device"] = device
    raw["sweep"].update(sweep)
    return raw


def _sweep_params(device: str = "cpu", **sweep: object) -> Params:
    return parse_params(_raw(device, **sweep))


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
    g = torch.Generator().manual_seed(0)
    targets = torch.arange(50) % 10
    split = TensorSplit(
        torch.randint(0, 255, (50, 3, 4, 4), generator=g, dtype=torch.uint8), targets, targets
    )
    a, b = subsample(split, 20, seed=3), subsample(split, 20, seed=3)
    assert len(a) == 20 and torch.equal(a.targets, b.targets) and torch.equal(a.images, b.images)
    assert a.bias is not None and torch.equal(a.bias, a.targets)  # rows stay together
    assert not torch.equal(a.images, subsample(split, 20, seed=4).images)
    kept = [next(i for i in range(50) if torch.equal(split.images[i], img)) for img in a.images]
    assert kept == sorted(kept)  # original order
    assert subsample(split, None, 0) is split and subsample(split, 80, 0) is split


def test_sweep_device_resolves_params_device_like_a_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto|cpu|cuda|cuda:N for the trials, against the GPUs Ray has (no GPU or Ray needed here)."""
    # cpu: never a GPU, even when GPUs are reserved and Ray has some.
    cpu = resolve_sweep_device("cpu", 0.5, 2.0)
    assert (cpu.kind, cpu.name, cpu.gpus_per_trial) == ("cpu", "cpu", 0.0)
    assert trial_resources(_sweep_params("cpu", gpus_per_trial=0.5), cpu) == {"cpu": 1.0, "gpu": 0.0}
    # auto: CUDA when Ray has GPUs to reserve, else the CPU, like resolve_device in a stage.
    gpu = resolve_sweep_device("auto", 0.5, 1.0)
    assert (gpu.kind, gpu.name, gpu.note) == ("cuda", "cuda", "")
    assert trial_resources(_sweep_params("auto", gpus_per_trial=0.5), gpu) == {"cpu": 1.0, "gpu": 0.5}
    fallback = resolve_sweep_device("auto", 0.5, 0.0)  # no GPU anywhere: the CPU, not an error
    assert (fallback.kind, fallback.gpus_per_trial) == ("cpu", 0.0) and "no GPU" in fallback.note
    unused = resolve_sweep_device("auto", 0.0, 2.0)  # GPUs but none reserved: CPU, said in one line
    assert unused.kind == "cpu" and "gpus_per_trial is 0" in unused.note and "2 GPU(s)" in unused.note
    assert resolve_sweep_device("auto", 0.0, 0.0) == SweepDevice("auto", "cpu")
    # cuda / cuda:N: a GPU or a one-line error before any trial starts.
    assert resolve_sweep_device("cuda", 1.0, 2.0) == SweepDevice("cuda", "cuda", 1.0)
    for args, message in [
        (("cuda", 0.5, 0.0), "'cuda' requested but the Ray cluster has no GPU"),
        (("cuda:0", 2.0, 1.0), "gpus_per_trial is 2 but Ray has 1 GPU"),
        (("cuda", 0.0, 1.0), "gpus_per_trial is 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            resolve_sweep_device(*args)
    with pytest.raises(ValueError, match="gpus_per_trial is 0"):
        check_device(_sweep_params("cuda", gpus_per_trial=0))
    # cuda:N is GPU N on a local Ray the sweep starts pinned to it, else the GPU Ray assigns.
    pinned = resolve_sweep_device("cuda:1", 0.5, 1.0, pinned=True)
    assert (pinned.kind, pinned.name, pinned.note) == ("cuda", "cuda:1", "")
    assigned = resolve_sweep_device("cuda:1", 0.5, 4.0)
    assert assigned.name == "cuda" and "the GPU Ray assigns" in assigned.note
    assert gpu_pin("cuda:1", ["2", "3"]) == "3"  # N counts the visible GPUs, as torch does
    assert gpu_pin("cuda", ["0"]) is None and gpu_pin("auto", []) is None and gpu_pin("cpu", []) is None
    with pytest.raises(ValueError, match="'cuda:2' requested but this machine has 1 GPU"):
        gpu_pin("cuda:2", ["0"])
    with pytest.raises(ValueError, match="CUDA is not available"):
        gpu_pin("cuda:0", [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_summary_lines_name_each_methods_best_configuration() -> None:
    """The console's final summary: one line per method (its best configuration, how trials ended)."""

    def outcome(
        method: str, weight: float | None, status: str, acc: float | None, **extra: Any
    ) -> TrialOutcome:
        fields = {"best_epoch": 2 if acc else None, "epochs_run": 2, "stopped_early": False, "retries": 0}
        fields["final_val_accuracy"] = acc
        return TrialOutcome(method, 0.1, weight, acc, **{**fields, **extra}, status=status, trial_id="t")

    outcomes = [
        outcome("cecl", 0.0, "TERMINATED", 0.31, epochs_run=1, best_epoch=1, stopped_early=True),
        outcome("cecl", 1.0, "TERMINATED", 0.42),
        outcome("cecl", 0.5, "ERROR", None),
        outcome("simclr", None, "ERROR", None),
    ]
    best = {
        "cecl": {"temperature": 0.1, "weight": 1.0, "final_val_accuracy": 0.42, "epochs_run": 2, "ties": 1}
    }
    lines = SweepSummary(outcomes, _best(best), 1.0).report_lines()
    assert lines == [
        "[sweep] best cecl tau=0.1 w=1: val 0.4200 after epoch 2 (3 trials: 1 failed, 1 stopped early)",
        "[sweep] simclr: no best configuration (1 trials: 1 failed, 0 stopped early)",
    ]
    best["cecl"]["ties"] = 2
    assert "2 configurations tie" in SweepSummary(outcomes, _best(best), 1.0).report_lines()[0]


def _row(method: str, temperature: float, weight: float | None, acc: float | None, **extra: object) -> dict:
    row = {"method": method, "temperature": temperature, "weight": weight, "best_val_accuracy": acc}
    row["final_val_accuracy"] = acc
    row |= {"best_epoch": 2, "epochs_run": 2, "stopped_early": False, "status": "TERMINATED", "retries": 0}
    return row | extra


def _best(methods: dict) -> dict:
    return {
        "dataset": "bm",
        "description": "BiasedMNIST rho 0.99 (128 training images, validation rho 0.1)",
        "metric": "unbiased_accuracy",
        "seed": 0,
        "epochs": 2,
        "train_size": None,
        "scheduler": "asha",
        "methods": methods,
    }


def test_report_marks_stopped_failed_and_selected() -> None:
    rows = [
        _row("cecl", 0.1, 0.0, 0.9, epochs_run=1, best_epoch=1, stopped_early=True),
        _row("cecl", 0.1, 1.0, 0.7, best_val_accuracy=0.75, best_epoch=1),
        _row("simclr", 0.5, None, None, status="ERROR", epochs_run=0, best_epoch=None, retries=1),
    ]
    frame = report.results_frame(rows)
    chosen = {"temperature": 0.1, "weight": 1.0, "final_val_accuracy": 0.7, "epochs_run": 2}
    best = _best({"cecl": chosen})
    table = report.sensitivity_markdown(frame, best)
    # the stopped trial's 90.0 (after 1 epoch) is not shown: it is at another budget; the last-epoch 70.0
    # is, not the trial's best-over-epochs 75.0
    assert "| 0.1 | stopped (1 ep) | **70.0** |" in table and "90.0" not in table and "75.0" not in table
    assert "| 0.5 | failed |" in table
    assert "| cecl | 0.1 | 1 | 70.0 | 2 |" in table
    assert "BiasedMNIST rho 0.99" in table and "`bm`" in table and "unbiased accuracy" in table
    title = report.heatmap_title(best)
    assert "unbiased accuracy" in title and "BiasedMNIST rho 0.99" in title
    assert "budget: every cell 2 epochs" in title and "last epoch" in title
    heat = report.heatmap_frame(frame, 2)
    assert list(heat.columns) == ["temperature", "weight", "final_val_accuracy"]
    assert heat.to_dict("records") == [{"temperature": 0.1, "weight": 1.0, "final_val_accuracy": 0.7}]


def test_the_sweep_compares_every_configuration_at_one_budget_by_its_last_epoch(tmp_path: Path) -> None:
    """The issue's failure: ASHA one trial at a time gives the grid's first configuration the whole
    budget and stops the rest after epoch 1, and a best-over-epochs value favours whichever ran longest
    or peaked early. Here selection and heat map use the last-epoch value of the trials at the budget."""
    from types import SimpleNamespace

    from cecl.tune.runner import _outcome, best_per_method

    params = _sweep_params(scheduler="none", grids={"cecl": {"temperature": [0.1, 0.5], "weight": [0.0]}})

    def trial(tau: float, values: list[float]) -> TrialOutcome:
        ray_trial = SimpleNamespace(
            status="TERMINATED",
            num_failures=0,
            trial_id=f"t{tau}",
            config={"method": "cecl", "temperature": tau, "weight": 0.0},
        )
        history = [{"epoch": e + 1, OBJECTIVE: v} for e, v in enumerate(values)]
        return _outcome(params, ray_trial, history)

    peaked = trial(0.1, [0.60, 0.40])  # best over epochs 0.60 (epoch 1), last epoch 0.40
    steady = trial(0.5, [0.30, 0.50])
    assert (peaked.best_val_accuracy, peaked.final_val_accuracy, peaked.epochs_run) == (0.60, 0.40, 2)
    best = best_per_method(params, [peaked, steady])
    assert best["methods"]["cecl"]["temperature"] == 0.5  # by the last epoch, not by the peak
    assert best["methods"]["cecl"]["final_val_accuracy"] == 0.50 and "after epoch 2" in best["objective"]
    # A trial stopped at epoch 1 with the grid's highest value is not compared with the full-budget ones.
    stopped = trial(0.05, [0.90])
    assert not stopped.at_budget(2) and stopped.stopped_early
    assert best_per_method(params, [stopped, peaked, steady])["methods"]["cecl"]["temperature"] == 0.5
    frame = report.results_frame([o.row() for o in (stopped, peaked, steady)])
    heat = report.heatmap_frame(frame, 2)
    assert heat["temperature"].tolist() == [0.1, 0.5] and heat["final_val_accuracy"].tolist() == [0.4, 0.5]
    png = report.plot_heatmap(frame, tmp_path / "heat.png", report.heatmap_title(_best({})), 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_method_whose_trials_all_failed_is_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    from cecl.cli import run_stage

    def outcome(method: str, status: str, acc: float | None) -> TrialOutcome:
        return TrialOutcome(method, 0.5, None, acc, 1 if acc else None, 1, False, status, 0, "t")

    ok = SweepSummary([outcome("supcon", "TERMINATED", 0.4)], _best({"supcon": {}}), 1.0)
    ok.raise_if_failed()
    failed = SweepSummary(
        [
            outcome("supcon", "TERMINATED", 0.4),
            outcome("simclr", "ERROR", None),
            outcome("simclr", "ERROR", None),
        ],
        _best({"supcon": {}}),
        1.0,
        {"simclr": tmp_path / "simclr-0123456789ab"},
    )
    assert failed.failed_methods() == ["simclr"]
    with pytest.raises(SystemExit) as exit_info:
        run_stage("sweep", failed.raise_if_failed)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "every trial of simclr failed (2 of 2" in err
    assert "simclr-0123456789ab" in err


# ---------------------------------------------------------------- the tiny sweep


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with tiny BiasedMNIST data (entry ``bm``) whose test split has been deleted."""
    root = tmp_path_factory.mktemp("project")
    manifest = _sweep_params().spec("bm").prepare(root / "data" / "bm")
    test_file = root / "data" / "bm" / manifest["splits"]["test"]["file"]
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


def _run_stage(cwd: Path, raw: dict[str, Any], crashes: str, db: Path) -> None:
    from stages import sweep as stage

    (cwd / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mp.setenv(CRASH_ENV, crashes)
        stage.main()


@pytest.fixture(scope="module")
def swept(project: Path, ray_session) -> Path:
    """The real stage entry point, with supcon crashing once and cecl w=1 crashing on every attempt."""
    _run_stage(project, _raw(), CRASHES, project / "mlflow.db")
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
    assert sorted(rows) == ["cecl tau=0.1 w=0", "cecl tau=0.1 w=1", "supcon tau=0.1"]
    for label, row in rows.items():
        if row["status"] == "TERMINATED":
            assert 1 <= int(row["epochs_run"]) <= 2, label
            assert (row["stopped_early"] == "True") == (int(row["epochs_run"]) < 2), label
            assert 0.0 <= float(row["best_val_accuracy"]) <= 1.0
    assert rows["supcon tau=0.1"]["weight"] == ""
    best = json.loads((swept / "sweep/best.json").read_text())
    assert set(best["methods"]) == {"cecl", "supcon"}
    assert best["device"] == "cpu"  # where the trials trained (params.yaml device: cpu)
    assert (best["dataset"], best["seed"], best["metric"]) == ("bm", 0, "unbiased_accuracy")
    assert best["description"] == _sweep_params().spec("bm").describe()
    assert "rho" not in best
    # cecl w=1 failed: the selection is among the finished trials.
    assert best["methods"]["cecl"]["weight"] == 0.0
    top = rows["cecl tau=0.1 w=0"]
    assert math.isclose(best["methods"]["cecl"]["best_val_accuracy"], float(top["best_val_accuracy"]))
    with (swept / "sweep/heatmap.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 1  # only finished trials
    assert (swept / "sweep/heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (swept / "sweep/sensitivity.md").read_text()
    assert "| τ \\ w | 0 | 1 |" in table and "failed" in table and "`bm`" in table
    assert not list((swept / "sweep").glob(".staging-*"))


@pytest.mark.slow
def test_crashing_trials_are_retried_and_reported(swept: Path) -> None:
    rows = _results(swept)
    supcon, cecl = rows["supcon tau=0.1"], rows["cecl tau=0.1 w=1"]
    # Crashed once after epoch 1, retried from that epoch's checkpoint, then finished.
    assert (supcon["status"], supcon["retries"], supcon["epochs_run"]) == ("TERMINATED", "1", "2")
    # Crashed on the first attempt and on its one retry (max_failures: 1); the sweep still finished.
    assert (cecl["status"], cecl["retries"], cecl["best_val_accuracy"]) == ("ERROR", "1", "")


@pytest.mark.slow
def test_nested_mlflow_runs_tagged_like_stage_runs(swept: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        "sweep/supcon tau=0.1",
    ]
    assert len(runs) == 4  # nothing else was logged
    # The tags a pretrain stage run of the same dataset, seed and device gets, besides its method.
    params = _sweep_params()
    stage = run_tags(RunKey("bm", "cecl", 0), params.spec("bm"), torch.device("cpu"), swept / "data/bm")
    expected_tags = {k: str(v) for k, v in stage.items() if k != "method"} | {"dvc_stage": "sweep"}
    assert expected_tags["data_verified"] == "True" and expected_tags["device"] == "cpu"
    assert {k: parent.data.tags.get(k) for k in expected_tags} == expected_tags
    assert parent.data.tags["methods"] == "cecl,supcon" and parent.data.tags["git_commit"]
    rows = _results(swept)
    for name, child in children.items():
        row = rows[name.removeprefix("sweep/")]
        tags = child.data.tags
        assert {k: tags[k] for k in expected_tags} == expected_tags, name
        assert tags["method"] == row["method"] and tags["git_commit"] == parent.data.tags["git_commit"]
        assert tags["status"] == row["status"]
        assert child.info.status == ("FINISHED" if row["status"] == "TERMINATED" else "FAILED")
        assert "mlflow_run_id" not in row and "trial_id" not in row  # results.csv stays byte-reproducible
        assert tags["ray_trial_id"]  # the trial is found from its run instead
        assert child.data.params["method"] == row["method"]
        assert child.data.params["dataset"] == "bm"
        assert child.data.params["device"] == "cpu"  # params.yaml device, as a stage logs it
        assert float(child.data.params["temperature"]) == float(row["temperature"])
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        assert steps == list(range(1, int(row["epochs_run"]) + 1)), name  # once per epoch, even when retried
    assert children["sweep/cecl tau=0.1 w=0"].data.params["weight"] == "0.0"
    assert parent.info.status == "FINISHED"
    monkeypatch.chdir(swept)  # a relative artifact location (cecl.tracking) is the project root's
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "best.json", "heatmap.png", "heatmap.csv", "sensitivity.md"} <= artifacts


@pytest.mark.slow
def test_objective_is_the_validation_monitor(swept: Path) -> None:
    """Rebuild a trial's final model from its Ray checkpoint; its val-split monitor is what was reported."""
    from cecl.methods import build_method
    from cecl.train.loop import build_monitor
    from cecl.tune import load_train_val, overrides_of, sweep_setup

    params = _sweep_params()
    row = _results(swept)["cecl tau=0.1 w=0"]
    epoch = int(row["epochs_run"])
    (trial_dir,) = [
        folder
        for folder in (swept / "sweep/ray_results").glob("cecl-*/*/")
        if (folder / "params.json").is_file()
        and json.loads((folder / "params.json").read_text()).get("weight") == 0.0
        and json.loads((folder / "params.json").read_text()).get("temperature") == 0.1
    ]
    history = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    reported = next(r["val_accuracy"] for r in history if r["epoch"] == epoch)
    ckpt = sorted(trial_dir.glob("checkpoint_*/last.pt"))[-1]  # the latest one
    # the file wraps its state with a content digest (cecl/train/checkpoint.py): read it through the checker
    fingerprint = torch.load(ckpt, map_location="cpu", weights_only=True)["fingerprint"]
    state = load_checkpoint(ckpt, fingerprint)
    assert state is not None and len(state["history"]) == epoch
    config = {"method": "cecl", "temperature": float(row["temperature"]), "weight": float(row["weight"])}
    setup = sweep_setup(params, "cecl", overrides_of(config))
    train, val = load_train_val(setup.spec, torch.device("cpu"), swept / "data/bm")
    train = subsample(train, params.sweep.train_size, params.sweep.seed)
    method = build_method("cecl", setup.method_context(), setup.options)
    method.load_state_dict(state["method"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (cpus_per_trial: 1)
    try:
        recomputed = build_monitor(setup, train, val)(method.encoder)
    finally:
        torch.set_num_threads(threads)
    assert math.isclose(recomputed, reported, abs_tol=1e-6)
    assert math.isclose(float(row["best_val_accuracy"]), max(r["val_accuracy"] for r in history))


@pytest.mark.slow
def test_every_trial_of_a_method_failing_fails_the_stage(project: Path, ray_session, tmp_path: Path) -> None:
    """No silent hole in best.json: the stage raises one line naming the method and writes nothing."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "data").symlink_to(project / "data")
    raw = _raw(epochs=1, max_failures=0, grids={"simclr": {"temperature": [0.5]}})
    raw["tracking"] = {"experiment": "all-failed"}  # the module's database, its own experiment
    with pytest.raises(SweepFailed, match=r"^every trial of simclr failed \(1 of 1, errors in .*simclr-"):
        _run_stage(tmp_path, raw, "simclr:0.5:always", project / "mlflow.db")
    assert not (tmp_path / "sweep/best.json").exists()  # no outputs
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("all-failed")
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'sweep'")
    assert parent.info.status == "FAILED"
    (error_file,) = (tmp_path / "sweep/ray_results").glob("simclr-*/*/error.txt")
    assert "crashes on every attempt" in error_file.read_text()


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
    kwargs = {"data_dir": project / "data/bm", "storage": storage, "verbose": 0}
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
