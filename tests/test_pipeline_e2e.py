"""End to end through DVC on a tiny profile: fresh clones, provenance, a DVC remote, faults and bad input.

A copy of the repository (every tracked and untracked-but-not-ignored file) becomes a git repository
``origin`` with a tiny params.yaml and a toy dataset family added as ONE new module (the plug-in
promise: one module plus one params entry). Then, as a lab would:
- ``first``: a clone runs ``python -m cecl.repro`` (``make repro``: one serial ``dvc repro``, stages
  forked from the warm server), commits dvc.lock and the committed outputs, pushes its cache to a
  local-directory DVC remote;
- ``launched``: a clone of ``first`` runs the launcher with two slots (``python -m cecl.launch --jobs 2``,
  cold stage processes): every stage runs again (nothing is silently reused from git), every output and
  dvc.lock come out byte-identical to the serial run's, every stage has its MLflow run, provenance.md
  links every run to a run of the clone's own tracking store, and a second launch runs nothing;
- ``pulled``: a clone of ``first`` runs ``dvc pull``: ``dvc status`` is clean, the reports are identical.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cecl.io import tree_digest
from tests.browser import check_mlflow_ui_shows_runs, requires_browser

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TOY_MODULE = Path(__file__).resolve().parent / "fixtures" / "toy_blobs.py"

TINY = {
    "device": "cpu",
    "compute": {"channels_last": True},
    "tracking": {"experiment": "cecl-e2e"},
    "seeds": [0, 1],
    "datasets": {
        "bm": {"family": "biased_mnist", "rho": 0.9, "train_size": 256, "val_size": 128, "test_size": 256},
        "toy": {"family": "toy_blobs", "n_per_class": 24},
    },
    "model": {"backbone": "small_cnn", "backbone_options": {"width": 4}, "proj_dim": 16, "proj_hidden": None},
    "method_options": {"ce": {}, "cecl": {"temperature": 0.1, "weight": 0.5}},
    "pretrain": {
        "datasets": ["bm", "toy"],
        "methods": ["ce", "cecl"],
        "epochs": 2,
        "batch_size": 32,
        "views": 2,
        "processes": 1,
        "micro_batch": None,
        "protocol": "linear_probe",
        "joint_weight": 1.0,
        "optimizer": {"name": "adam", "lr": 0.001},
        "monitor": {"kind": "auto", "every": 1, "train_size": None, "k": 200, "temperature": 0.1},
    },
    "probe": {
        "l2_min": 1e-5,
        "l2_max": 0.1,
        "l2_per_decade": 1,
        "patience": None,
        "max_iter": 1000,
        "tolerance": 1e-5,
    },
    "transfer": {"sources": ["bm"], "targets": ["toy"]},
    "sweep": {
        "dataset": "bm",
        "epochs": 1,
        "train_size": 128,
        "grids": {"cecl": {"temperature": [0.1], "weight": [0.5]}},
        "max_concurrent": 1,
    },
}

pytestmark = pytest.mark.slow
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(GIT_ENV)
    # One torch thread in every stage: CPU float reductions depend on the thread count, and the launcher's
    # run (``--threads 1``) must equal the serial one byte for byte on any machine.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["PYTHONPATH"] = str(root)
    return env


def _run(
    args: list[str], root: Path, check: bool = True, timeout: int = 1200
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def _git(root: Path, *args: str) -> str:
    return _run(["git", *args], root).stdout


def _copy_repo(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "copy")
    return dest


def _write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stages(root: Path) -> list[str]:
    return _run(["dvc", "stage", "list", "--name-only"], root).stdout.split()


def _mlflow_runs(root: Path) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(TINY["tracking"]["experiment"])
    by_name: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        by_name.setdefault(run.info.run_name, []).append(run)
    return by_name


def _tiny_outputs(root: Path, name: str) -> list[Path]:
    """The files called ``name`` under the tiny profile's run folders (the repository also commits the
    default profile's metrics.json files, which belong to no stage of the tiny profile)."""
    folders = [f"probe/{d}" for d in TINY["datasets"]] + [f"models/{d}" for d in TINY["datasets"]]
    folders += [
        f"transfer/{s}__{t}" for s in TINY["transfer"]["sources"] for t in TINY["transfer"]["targets"]
    ]
    return [path for folder in folders for path in (root / folder).glob(f"**/{name}")]


def _provenance_links(root: Path) -> dict[str, str]:
    """Stage -> the MLflow run id reports/provenance.md links it to (rows without a run are left out)."""
    links = {}
    for line in (root / "reports/provenance.md").read_text().splitlines():
        found = re.search(r"\| `([^`]+)` \|.*/runs/([0-9a-f]{32})\)", line)
        if found:
            links[found.group(1)] = found.group(2)
    return links


def _tracked_files(root: Path) -> dict[str, bytes]:
    """Every file DVC tracks (stage outputs and metrics, directories expanded) by path, with its bytes."""
    files: dict[str, bytes] = {}
    for entry in yaml.safe_load((root / "dvc.lock").read_text())["stages"].values():
        for out in entry.get("outs", []):
            path = root / out["path"]
            for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                files[file.relative_to(root).as_posix()] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("lab")
    origin = _copy_repo(base / "origin")
    shutil.copy2(TOY_MODULE, origin / "cecl/datasets/toy_blobs.py")
    _write_params(origin, TINY)
    changed = sorted(_git(origin, "status", "--porcelain").splitlines())
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "tiny profile + a toy dataset family")

    first = base / "first"
    _run(["git", "clone", "-q", str(origin), str(first)], base)
    repro = _run([sys.executable, "-m", "cecl.repro"], first)
    remote = base / "remote"
    _run(["dvc", "remote", "add", "-d", "lab", str(remote)], first)
    _run(["dvc", "push", "-q"], first)
    _git(first, "add", "-A")
    _git(first, "commit", "-qm", "results")
    return {"base": base, "origin": origin, "first": first, "changed": changed, "repro_stdout": repro.stdout}


def test_adding_a_dataset_is_one_module_and_one_params_entry(lab: dict) -> None:
    assert lab["changed"] == ["?? cecl/datasets/toy_blobs.py", " M params.yaml"] or sorted(
        lab["changed"]
    ) == sorted([" M params.yaml", "?? cecl/datasets/toy_blobs.py"])
    first = lab["first"]
    metrics = json.loads((first / "probe/toy/cecl/seed_1/metrics.json").read_text())
    assert metrics["run"]["family"] == "toy_blobs" and metrics["evaluator"] == "classification"
    assert {"accuracy", "mean_per_class_accuracy"} <= set(metrics["test"]) and "top5_accuracy" not in metrics[
        "test"
    ]
    assert "toy" in (first / "reports/tables/table_classification.md").read_text()


def test_every_stage_ran_and_logged_its_run(lab: dict) -> None:
    first = lab["first"]
    stages = _stages(first)
    assert "pretrain@bm-cecl-1" in stages and "transfer@bm-toy-cecl-0" in stages and "prepare@toy" in stages
    runs = _mlflow_runs(first)
    assert set(stages) <= set(runs), sorted(set(stages) - set(runs))
    run = runs["pretrain@bm-cecl-1"][0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["dataset"], tags["family"], tags["method"], tags["seed"], tags["device"]) == (
        "bm", "biased_mnist", "cecl", "1", "cpu",
    )  # fmt: skip
    assert len(tags["git_commit"]) >= 40
    summary = lab["repro_stdout"]
    assert f"[repro] {len(stages)} stage(s) ran, 0 reused" in summary
    assert "stages run cold" not in summary  # they ran in processes forked from the warm server
    # the probe prints its progress like pretrain does (features, then one line per L2 strength)
    assert re.search(r"\[probe@bm-cecl-0\] features of train 256, val 128, test 256 images in", summary)
    lines = [
        re.search(rf"\[probe@bm-cecl-0\] l2 {l2}: val_unbiased_accuracy [01]\.\d{{4}} \(\d+ steps", summary)
        for l2 in ("1.0e-01", "1.0e-02", "1.0e-03", "1.0e-04", "1.0e-05")
    ]
    assert all(lines) and [m.start() for m in lines] == sorted(m.start() for m in lines)  # strongest first
    assert re.search(r"ran      prepare@bm \([0-9.]+ s\): ", summary), summary[-2000:]  # with its wall time


@requires_browser
def test_mlflow_ui_shows_every_stage_run(lab: dict) -> None:
    """`mlflow ui` on the run's own database, in headless Chromium: the runs view lists every stage."""
    first = lab["first"]
    check_mlflow_ui_shows_runs(first / "mlflow.db", _stages(first), TINY["tracking"]["experiment"])


def test_tables_show_mean_and_ci_over_seeds(lab: dict) -> None:
    first = lab["first"]
    bias = (first / "reports/tables/table_bias.md").read_text()
    assert "(n=2)" in bias and "±" in bias
    values = [
        json.loads((first / f"probe/bm/cecl/seed_{s}/metrics.json").read_text())["test"] for s in (0, 1)
    ]
    for test in values:
        assert 0.0 <= test["unbiased_accuracy"] <= 1.0 and 0.0 <= test["conflicting_accuracy"] <= 1.0
    mean = 100 * sum(v["unbiased_accuracy"] for v in values) / 2
    assert f"{mean:.1f} ±" in bias
    history = list(csv.DictReader((first / "models/bm/cecl/seed_0/history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2] and "seconds" not in history[0]
    assert "22.9" in (first / "reports/claims.md").read_text()


def test_second_repro_does_nothing(lab: dict) -> None:
    result = _run(["dvc", "repro"], lab["first"])
    assert "Running stage" not in result.stdout and "up to date" in result.stdout


def _launch(
    root: Path, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``python -m cecl.launch args`` in ``root`` (tests/test_launcher.py uses it too)."""
    result = subprocess.run(
        [sys.executable, "-m", "cecl.launch", *args],
        cwd=root,
        env=env or _env(root),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def launched(lab: dict) -> dict:
    """A fresh clone of ``first`` reproduced by the launcher with two slots, every stage a cold process
    (``CECL_WARM=0``), while ``first`` ran serially through ``python -m cecl.repro`` (warm stages)."""
    fresh = lab["base"] / "launched"
    _run(["git", "clone", "-q", str(lab["first"]), str(fresh)], lab["base"])
    result = _launch(fresh, "--jobs", "2", "--threads", "1", env={**_env(fresh), "CECL_WARM": "0"})
    return {"root": fresh, "stdout": result.stdout}


def test_fresh_clone_launched_in_parallel_regenerates_every_stage_byte_for_byte(
    lab: dict, launched: dict
) -> None:
    """A from-scratch run on the same machine rewrites every output and dvc.lock byte for byte: two stages
    in flight (``python -m cecl.launch --jobs 2``) against one at a time, cold stage processes against warm
    ones; provenance.md links each run to a run of the clone's own tracking store."""
    fresh, first = launched["root"], lab["first"]
    stages = _stages(fresh)
    assert f"[launch] {len(stages)} of {len(stages)} stage(s) to run" in launched["stdout"]  # nothing reused
    assert "stages run cold" in launched["stdout"] and "2 CPU slot(s) of 1 thread(s)" in launched["stdout"]
    assert sorted(re.findall(r"done   (\S+) in", launched["stdout"])) == sorted(stages)
    assert (fresh / "dvc.lock").read_text() == (first / "dvc.lock").read_text()  # entries in serial order too
    assert _git(fresh, "status", "--porcelain") == ""  # the committed metrics and reports are unchanged
    expected, produced = _tracked_files(first), _tracked_files(fresh)
    assert list(expected) == list(produced) and len(expected) > 20
    assert [p for p in expected if expected[p] != produced[p]] == []
    links, first_links = _provenance_links(fresh), _provenance_links(first)
    per_run = {s for s in stages if s.startswith(("pretrain@", "probe@", "transfer@"))}
    assert set(links) == per_run == set(first_links)
    ids = {run.info.run_id for group in _mlflow_runs(fresh).values() for run in group}
    assert set(links.values()) <= ids
    assert not set(links.values()) & set(first_links.values()), "provenance names another store's run"
    assert "Running stage" not in _run(["dvc", "repro"], fresh).stdout  # DVC agrees: nothing to do


def test_launched_stages_each_log_one_run_through_the_launchers_server(launched: dict) -> None:
    fresh = launched["root"]
    stages = _stages(fresh)
    runs = _mlflow_runs(fresh)
    assert set(stages) <= set(runs), sorted(set(stages) - set(runs))
    assert all(len(runs[s]) == 1 and runs[s][0].info.status == "FINISHED" for s in stages)
    assert runs["pretrain@bm-cecl-0"][0].data.tags["outputs_sha256"] == tree_digest(
        fresh / "models/bm/cecl/seed_0"
    )
    assert "MLflow server http://127.0.0.1:" in launched["stdout"]
    (log,) = (fresh / "logs/launch").glob("*/pretrain@bm-cecl-0.log")  # the launch's own folder
    assert log.read_text().count("[launch] attempt ") == 1
    assert "logs/" in _git(fresh, "check-ignore", "logs/launch/sweep.log")


def test_a_second_launch_runs_nothing(launched: dict) -> None:
    result = _launch(launched["root"], "--jobs", "2")
    stages = _stages(launched["root"])
    assert f"0 of {len(stages)} stage(s) to run" in result.stdout and "0 stage(s) ran" in result.stdout


def test_dvc_remote_round_trip(lab: dict) -> None:
    pulled = lab["base"] / "pulled"
    _run(["git", "clone", "-q", str(lab["first"]), str(pulled)], lab["base"])
    _run(["dvc", "pull", "-q"], pulled)
    status = _run(["dvc", "status"], pulled).stdout
    assert "up to date" in status, status
    for name in ("reports/report.md", "reports/tables/table_bias.csv", "reports/convergence.png"):
        assert (pulled / name).read_bytes() == (lab["first"] / name).read_bytes(), name
    assert not (pulled / "reports/provenance.md").exists()  # it describes an MLflow store, not a DVC output
    result = _run(["dvc", "repro"], pulled)
    assert "Running stage" not in result.stdout


def test_killed_pretraining_resumes_to_the_same_result(lab: dict) -> None:
    root = lab["first"]
    out = root / "models/bm/cecl/seed_0"
    reference = (out / "history.csv").read_bytes()
    ckpt = root / "checkpoints/pretrain/bm-cecl-0/last.pt"
    cmd = [sys.executable, "-m", "stages.pretrain", "--dataset", "bm", "--method", "cecl", "--seed", "0"]
    proc = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the stage should have checkpointed at least one epoch before being killed"
    result = _run(cmd, root)
    assert "resumed cecl" in result.stdout
    assert (out / "history.csv").read_bytes() == reference
    assert not ckpt.exists()


def test_pretrain_stage_relaunches_itself_under_torchrun(lab: dict) -> None:
    """pretrain.processes: 2 runs the stage in two gloo processes; rank 0 alone logs and writes."""
    root = lab["first"]
    original = (root / "params.yaml").read_text()
    _write_params(root, {**TINY, "pretrain": {**TINY["pretrain"], "processes": 2}})
    try:
        cmd = [sys.executable, "-m", "stages.pretrain", "--dataset", "bm", "--method", "cecl", "--seed", "1"]
        result = _run(cmd, root)
    finally:
        (root / "params.yaml").write_text(original)
    assert result.stdout.count("cecl epoch 2/2") == 1, result.stdout  # rank 0 prints, rank 1 does not
    runs = [r for r in _mlflow_runs(root)["pretrain@bm-cecl-1"] if r.data.tags.get("world_size") == "2"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_unreachable_tracking_server_fails_before_training(lab: dict) -> None:
    root = lab["first"]
    env = {**_env(root), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    cmd = [sys.executable, "-m", "stages.pretrain", "--dataset", "bm", "--method", "ce", "--seed", "0"]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "epoch" not in result.stdout


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"pretrain": {**TINY["pretrain"], "batch_size": 1}}, "pretrain.batch_size"),
        ({"pretrain": {**TINY["pretrain"], "methods": ["cecl", "nope"]}}, "unknown method 'nope'"),
        ({"method_options": {"ce": {}, "cecl": {"temperature": -1}}}, "method_options.cecl.temperature"),
        ({"datasets": {**TINY["datasets"], "bm": {**TINY["datasets"]["bm"], "rho": 1.5}}}, "datasets.bm.rho"),
        ({"datasets": {**TINY["datasets"], "bm": {"family": "nope"}}}, "unknown dataset family 'nope'"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"transfer": {"sources": ["toy"], "targets": ["nope"]}}, "transfer.targets"),
        ({"pretrain": {**TINY["pretrain"], "epoch": 3}}, "pretrain.epoch: unknown key"),
    ],
)
def test_bad_params_fail_fast_with_one_line(lab: dict, tmp_path: Path, override: dict, expected: str) -> None:
    root = tmp_path / "repo"
    shutil.copytree(lab["origin"], root, ignore=shutil.ignore_patterns(".git"))
    _write_params(root, {**TINY, **override})
    result = _run([sys.executable, "-m", "stages.prepare", "--dataset", "bm"], root, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (root / "data").exists()
