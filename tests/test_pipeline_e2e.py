"""End to end: a copy of the repository, `dvc repro` on a tiny parameter set, then the outputs.

Also: a killed pretraining stage resumes from its checkpoint and ends where an uninterrupted run
ends, a second `dvc repro` does nothing, and bad params fail with one line and a non-zero exit
before any work.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

TINY = {
    "data": {"rhos": [0.99], "val_size": 200, "train_size": 400, "test_size": 300},
    "model": {"width": 4, "proj_dim": 16},
    "pretrain": {
        "methods": ["ce", "supcon", "cecl"],
        "epochs": 3,
        "batch_size": 64,
        "online_probe": {"epochs": 2, "batch_size": 128},
    },
    "probe": {"epochs": 4, "batch_size": 128},
    "sweep": {
        "epochs": 1,
        "train_size": 200,
        "grids": {"cecl": {"temperature": [0.1], "weight": [0.5]}},
        "max_concurrent": 1,
    },
}

pytestmark = pytest.mark.slow


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    env["PYTHONPATH"] = str(root)
    return env


def _run(args: list[str], root: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=root, env=_env(root), capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _copy_repo(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(
            cmd,
            cwd=dest,
            check=True,
            capture_output=True,
            env={
                **os.environ,
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t",
            },
        )
    return dest


def _write_params(root: Path, overrides: dict) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(params.get(section), dict):
            params[section] = {**params[section], **values}
        else:
            params[section] = values
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _history_without_timing(path: Path) -> list[dict[str, str]]:
    """history.csv rows without the wall-clock column, which legitimately differs between runs."""
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> Path:
    root = _copy_repo(tmp_path_factory.mktemp("repo"))
    _write_params(root, TINY)
    _run(["dvc", "repro"], root)
    return root


def test_tables_and_metrics(repro: Path) -> None:
    table = (repro / "reports/table.md").read_text()
    for method in TINY["pretrain"]["methods"]:
        assert method in table
    with (repro / "reports/table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for method in TINY["pretrain"]["methods"]:
        metrics = json.loads((repro / f"probe/rho_0.99/{method}/metrics.json").read_text())
        assert metrics["method"] == method
        test = metrics["test"]
        assert 0.0 <= test["unbiased_accuracy"] <= 1.0
        assert test["n_groups"] == 100
        assert 1 <= metrics["selected_epoch"] <= TINY["probe"]["epochs"]
        assert metrics["official_protocol"]["test_accuracy"] >= test["accuracy"] - 1e-12
        with (repro / f"models/rho_0.99/{method}/history.csv").open() as handle:
            history = list(csv.DictReader(handle))
        assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert "22.9" in (repro / "reports/claims.md").read_text()
    assert (repro / "reports/convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_runs_are_named_tagged_and_stepped(repro: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repro / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cecl-biased-mnist")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert [r.info.run_name for r in children] == ["sweep/cecl tau=0.1 w=0.5"]
    runs = [r for r in runs if r not in children]
    stages = _run(["dvc", "stage", "list", "--name-only"], repro).stdout.split()
    assert sorted(r.info.run_name for r in runs) == sorted(stages)
    by_name = {r.info.run_name: r for r in runs}
    run = by_name["pretrain@0.99-cecl"]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["dvc_stage"] == "pretrain@0.99-cecl"
    assert (tags["dataset"], tags["method"], tags["seed"], tags["device"]) == (
        "biased_mnist",
        "cecl",
        "0",
        "cpu",
    )
    assert len(tags["git_commit"]) >= 40
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "online_probe_val_accuracy")]
    assert steps == [1, 2, 3]
    assert run.data.params["method_options.weight"] == "0.5"


def test_second_repro_does_nothing(repro: Path) -> None:
    result = _run(["dvc", "repro"], repro)
    assert "up to date" in result.stdout
    assert "Running stage" not in result.stdout


def test_killed_pretraining_resumes_to_the_same_result(repro: Path) -> None:
    out = repro / "models/rho_0.99/cecl"
    reference_history = _history_without_timing(out / "history.csv")
    ckpt = repro / "checkpoints/pretrain/rho_0.99-cecl/last.pt"
    cmd = [sys.executable, "-m", "stages.pretrain", "--rho", "0.99", "--method", "cecl"]
    proc = subprocess.Popen(cmd, cwd=repro, env=_env(repro), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the stage should have checkpointed at least one epoch before being killed"
    result = _run(cmd, repro)
    assert "resumed cecl" in result.stdout
    assert _history_without_timing(out / "history.csv") == reference_history
    assert not ckpt.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"pretrain": {"batch_size": 1}}, "pretrain.batch_size"),
        ({"pretrain": {"methods": ["cecl", "nope"]}}, "unknown method 'nope'"),
        ({"method_options": {"cecl": {"temperature": -1}}}, "method_options.cecl.temperature"),
        ({"data": {"rhos": [1.5]}}, "data.rhos"),
        ({"pretrain": {"epoch": 3}}, "pretrain.epoch: unknown key"),
        ({"pretrain": {"processes": 200}}, "too small for 200 processes"),
    ],
)
def test_bad_params_fail_fast_with_one_line(tmp_path, override: dict, expected: str) -> None:
    root = _copy_repo(tmp_path)
    _write_params(root, override)
    result = _run([sys.executable, "-m", "stages.prepare"], root, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (root / "data").exists()


def test_unreachable_tracking_server_fails_before_training(repro: Path) -> None:
    env = {**_env(repro), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "stages.pretrain", "--rho", "0.99", "--method", "ce"],
        cwd=repro,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unreachable" in result.stderr and "epoch" not in result.stdout


def test_pretrain_stage_relaunches_itself_under_torchrun(repro: Path) -> None:
    """pretrain.processes: 2 runs the stage in two gloo processes; rank 0 alone logs and writes."""
    from mlflow.tracking import MlflowClient

    original = (repro / "params.yaml").read_text()
    _write_params(repro, {"pretrain": {**TINY["pretrain"], "processes": 2}})
    try:
        result = _run([sys.executable, "-m", "stages.pretrain", "--rho", "0.99", "--method", "supcon"], repro)
    finally:
        (repro / "params.yaml").write_text(original)
    assert result.stdout.count("supcon epoch 3/3") == 1, result.stdout  # rank 0 prints, rank 1 does not
    history = _history_without_timing(repro / "models/rho_0.99/supcon/history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert all(0.0 <= float(r["online_probe_val_accuracy"]) <= 1.0 for r in history)
    client = MlflowClient(f"sqlite:///{repro / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cecl-biased-mnist")
    runs = client.search_runs([experiment.experiment_id], "tags.world_size = '2'", max_results=10)
    assert [r.info.run_name for r in runs] == ["pretrain@0.99-supcon"]
    assert runs[0].info.status == "FINISHED"
