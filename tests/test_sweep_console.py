"""The sweep stage as a user runs it: `python -m stages.sweep` (as `dvc repro sweep` does), in a subprocess.

A tiny sweep (2 configurations, 1 epoch, 128 training images, the full grid) checks what reaches the
console: plain ``[sweep]`` lines, one per trial result and stop, then the final summary; no ANSI
escape codes and none of Ray's or Tune's banners. It runs with ``device: auto`` and
``sweep.gpus_per_trial: 0.5``, which on a machine without a GPU trains on the CPU, as a stage would,
and its MLflow runs are read back from the database to check the tags (like a stage run's) and the
device recorded. A second sweep in which every trial crashes exits 2 with one line on stderr naming
the method, no traceback, and no sweep outputs. A Ray started as the sweep starts it, with its temp
folder on a nearly full disk, forwards none of the raylet's disk errors (CI's /tmp was 96% full once).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from cecl.config import parse_params
from cecl.pipeline import run_tags
from cecl.runs import RunKey
from cecl.tune import CRASH_ENV, OUTPUT_FILES, RAY_ENV
from tests.test_sweep import TINY

REPO = Path(__file__).resolve().parents[1]
GRID = {"cecl": {"temperature": [0.1], "weight": [0.0, 1.0]}}
LABELS = ("cecl tau=0.1 w=0", "cecl tau=0.1 w=1")
ANSI = "\x1b["
# Lines Ray or Tune print on their own: startup banners, the dashboard, the token-auth notice, log
# deduplication tips, Tune's status tables and configuration boxes, error tracebacks.
BANNERS = re.compile(
    r"Started a local Ray instance|View the dashboard|Token authentication|Ray deduplicates logs"
    r"|repeated \d+x|Trial status|Configuration for experiment|Current time:|Logical resource usage"
    r"|Result\(|tensorboard --logdir|Traceback|ray::|Trials did not complete|Tune detects GPUs|[╭╰│]"
)


def _raw(**sweep: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY)
    raw["device"] = "auto"
    raw["sweep"].update(
        epochs=1, scheduler="none", grids=GRID, gpus_per_trial=0.5, max_concurrent=2, max_failures=0
    )
    raw["sweep"].update(sweep)
    return raw


def _stage(cwd: Path, raw: dict[str, Any], db: Path, crashes: str = "") -> subprocess.CompletedProcess:
    """``python -m stages.sweep`` in ``cwd``, as DVC runs it (output captured, not a terminal)."""
    (cwd / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        CRASH_ENV: crashes,
    }
    for name in RAY_ENV:
        env.pop(name, None)  # the stage's own defaults, not the test runner's
    command = [sys.executable, "-m", "stages.sweep"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder with tiny BiasedMNIST data (entry ``bm``)."""
    root = tmp_path_factory.mktemp("console")
    parse_params(_raw()).spec("bm").prepare(root / "data" / "bm")
    return root


@pytest.fixture(scope="module")
def swept(project: Path) -> subprocess.CompletedProcess:
    return _stage(project, _raw(), project / "mlflow.db")


@pytest.mark.slow
def test_console_shows_plain_sweep_lines_only(swept: subprocess.CompletedProcess) -> None:
    assert swept.returncode == 0, swept.stderr[-3000:]
    combined = swept.stdout + swept.stderr
    assert ANSI not in combined
    assert not BANNERS.search(combined), BANNERS.search(combined)
    lines = [line for line in swept.stdout.splitlines() if line.strip()]
    assert all(line.startswith("[sweep] ") for line in lines), lines
    for label in LABELS:  # one line per trial result and per stop
        assert sum(line.startswith(f"[sweep] {label}: epoch 1/1 val ") for line in lines) == 1, lines
        assert f"[sweep] {label}: finished after 1 epochs" in lines
    summary = [line for line in lines if line.startswith("[sweep] best cecl tau=0.1 w=")]
    assert len(summary) == 1 and "(2 trials: 0 failed, 0 stopped early)" in summary[0]
    assert lines[-2] == "[sweep] wrote " + ", ".join(f"sweep/{name}" for name in OUTPUT_FILES)
    assert re.fullmatch(r"\[sweep\] done in \d+\.\ds", lines[-1])
    # stderr holds no Ray or Tune output (MLflow creating its new database is cecl.tracking's business).
    others = [line for line in swept.stderr.splitlines() if "mlflow.store.db.utils" not in line]
    assert others == [], others


@pytest.mark.slow
def test_device_and_tags_recorded_like_stage_runs(project: Path, swept: subprocess.CompletedProcess) -> None:
    """device auto + gpus_per_trial 0.5: CUDA where Ray has a GPU, else the CPU; the tags say which."""
    from mlflow.tracking import MlflowClient

    assert swept.returncode == 0, swept.stderr[-3000:]
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    if expected_device == "cpu":
        assert "[sweep] device auto: Ray has no GPU, so trials train on the CPU" in swept.stdout
    assert (
        f"[sweep] cecl: 2 configurations on bm, up to 1 epoch(s) each, on {expected_device}" in swept.stdout
    )
    best = json.loads((project / "sweep/best.json").read_text())
    assert best["device"] == expected_device

    params = parse_params(_raw())
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == [f"sweep/{label}" for label in LABELS]
    # A pretrain stage run's tags for this dataset, seed and device (cecl.pipeline.run_tags).
    stage = run_tags(
        RunKey("bm", "cecl", 0), params.spec("bm"), torch.device(expected_device), project / "data/bm"
    )
    expected = {k: str(v) for k, v in stage.items()} | {"dvc_stage": "sweep"}
    assert set(expected) >= {"dataset", "method", "seed", "family", "device", "data_verified"}
    for run in children:
        tags = run.data.tags
        assert {k: tags.get(k) for k in expected} == expected, run.info.run_name
        assert tags["git_commit"] == parent.data.tags["git_commit"] != ""
        assert run.data.params["device"] == "auto"  # params.yaml's request, as a stage logs it
    parent_expected = {k: v for k, v in expected.items() if k != "method"}
    assert {k: parent.data.tags.get(k) for k in parent_expected} == parent_expected
    assert parent.data.tags["methods"] == "cecl" and parent.data.params["device"] == "auto"


@pytest.mark.slow
def test_every_trial_failing_is_one_line_and_writes_nothing(
    project: Path, swept: subprocess.CompletedProcess, tmp_path: Path
) -> None:
    """All of cecl's trials crash: exit 2, one stderr line naming cecl, no traceback, no outputs."""
    (tmp_path / "data").symlink_to(project / "data")
    raw = _raw()
    raw["tracking"] = {"experiment": "all-failed"}  # the module's database (already created), own experiment
    failed = _stage(tmp_path, raw, project / "mlflow.db", crashes="cecl:0.1:0.0:always,cecl:0.1:1.0:always")
    assert failed.returncode == 2, failed.stderr[-3000:]
    (line,) = failed.stderr.splitlines()
    assert line.startswith("error: sweep: every trial of cecl failed (2 of 2, errors in "), line
    combined = failed.stdout + failed.stderr
    assert ANSI not in combined and not BANNERS.search(combined), BANNERS.search(combined)
    for label in LABELS:
        assert f"[sweep] {label}: FAILED after 1 attempt(s): RuntimeError: {CRASH_ENV} test hook" in combined
    assert "[sweep] best" not in combined and "[sweep] wrote" not in combined
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["ray_results"]  # no output files


# Starts Ray as the sweep stage does (cecl.tune.runner.init_ray), keeps it up long enough for the
# raylet's disk monitor (every 10 s) to report twice and Ray's log monitor to forward it, then stops.
_RAY_UP = """
import sys, time, yaml, ray
from cecl.config import parse_params
from cecl.tune.runner import init_ray
init_ray(parse_params(yaml.safe_load(open(sys.argv[1]))))
time.sleep(22)
ray.shutdown()
"""


@pytest.fixture
def nearly_full_disk():
    """A 64 MiB tmpfs filled to 97%; skips where this process may not mount one (needs root). Its path
    is short: Ray's socket paths under it must fit in 107 characters."""
    mount = Path(tempfile.mkdtemp(prefix="cecl-disk-"))
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip() or made.returncode}")
    try:
        (mount / "filler").write_bytes(bytes(62 * 2**20))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


@pytest.mark.slow
def test_a_nearly_full_disk_adds_no_ray_lines(nearly_full_disk: Path, tmp_path: Path) -> None:
    """The raylet's "over 95% full" error every 10 s stays out of a sweep's log; a user who sets Ray's
    threshold (the control, run side by side) gets it back, so the disk really looked full to Ray."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_raw()))
    base = {k: v for k, v in os.environ.items() if k not in RAY_ENV} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", _RAY_UP, str(tmp_path / "params.yaml")]
    runs = {}
    for name, extra in (("sweep", {}), ("control", {"RAY_local_fs_capacity_threshold": "0.95"})):
        env = base | extra | {"RAY_TMPDIR": str(nearly_full_disk / name)}
        (nearly_full_disk / name).mkdir()
        runs[name] = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    output = {name: run.communicate(timeout=120)[0] for name, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), output
    assert "is over 95% full" in output["control"], output["control"]
    assert "raylet" not in output["sweep"] and "full" not in output["sweep"], output["sweep"]
