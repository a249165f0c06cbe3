"""Errors that name their cause (issue 35): a killed stage is reported as killed, a full disk names the
folder and its free space, an abandoned MLflow run is closed (FAILED, tagged killed; also when DVC
restores its stage from the run-cache), and the launcher stops when its own MLflow
server dies instead of starting stages that cannot log.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cecl import warm
from cecl.io import atomic_dir
from cecl.launch.tasks import StageFailed
from cecl.tracking import close_abandoned_local_runs

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- a killed stage


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, str]]:
    previous = Path.cwd()
    os.chdir(REPO)
    try:
        with warm.server() as variables:
            assert variables, "the warm server did not start"
            yield variables
    finally:
        os.chdir(previous)


@pytest.mark.slow
def test_a_sigkilled_warm_stage_is_reported_as_killed_not_blamed_on_the_server(server, tmp_path) -> None:
    pidfile = tmp_path / "child.pid"
    code = (
        "import os, sys; from cecl import warm; "
        f"sys.exit(warm.request(os.environ[{warm.SOCKET_ENV!r}], 'tests.fixtures.warm_child', sys.argv[1:]))"
    )
    client = subprocess.Popen(
        [sys.executable, "-c", code, "sleep", str(pidfile)],
        cwd=REPO,
        env={**os.environ, **server, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # the OOM killer's way
    _, err = client.communicate(timeout=60)
    assert client.returncode == 137
    line = err.strip().splitlines()[-1]
    assert "was killed" in line and "SIGKILL" in line and "server ended" not in line


def test_a_failed_stage_says_killed_when_its_command_was() -> None:
    """DVC's own status is 255; its log line says the stage's command exited with -9."""
    tail = "ERROR: failed to reproduce 'pretrain@x': failed to run: python -m cecl.stage, exited with -9"
    assert StageFailed("s", 255, False, "l.log", tail).why() == "killed by SIGKILL"
    assert StageFailed("s", -15, False, "l.log", "").why() == "killed by SIGTERM"
    assert StageFailed("s", 255, False, "l.log", "exited with 2").why() == "exit status 255"
    assert StageFailed("s", -1, True, "l.log", "").why() == "timed out"


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_inside_an_output_write_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    final = tmp_path / "models/bm/simclr/seed_0"
    with pytest.raises(OSError) as caught, atomic_dir(final) as tmp:
        (tmp / "encoder.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")  # what the kernel answers a write
    message = str(caught.value)
    assert "\n" not in message and "no space left" in message and str(final.parent) in message
    assert "MiB free" in message
    assert list(final.parent.iterdir()) == []  # no partial output


def test_another_failure_inside_an_output_write_keeps_its_own_message(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="Permission denied"), atomic_dir(tmp_path / "out"):
        raise OSError(errno.EACCES, "Permission denied")


# --------------------------------------------------------------------------- MLflow runs


@pytest.mark.slow
def test_runs_left_running_are_closed_and_finished_ones_kept(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "a").as_uri())
    abandoned = client.create_run(experiment, tags={"dvc_stage": "pretrain@bm-simclr-0"}).info.run_id
    finished = client.create_run(experiment).info.run_id
    client.set_terminated(finished, status="FINISHED")
    assert close_abandoned_local_runs(tmp_path) == 1
    assert client.get_run(abandoned).info.status == "FAILED"  # FINISHED or FAILED only, never KILLED
    assert client.get_run(abandoned).data.tags["cecl.end_reason"] == "killed"
    assert client.get_run(finished).info.status == "FINISHED"
    assert "cecl.end_reason" not in client.get_run(finished).data.tags
    assert close_abandoned_local_runs(tmp_path) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # a shared server: never touched
    assert close_abandoned_local_runs(tmp_path) == 0


# A stage that opens its MLflow run as every stage does (cecl.tracking.stage_run), then SIGKILLs itself
# when .kill exists (as a killed `make repro` takes its stage with it), else writes its output.
KILLABLE = """
import os, pathlib, signal
from cecl.tracking import stage_run
with stage_run("s", "toy"):
    if pathlib.Path(".kill").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    pathlib.Path("out.txt").write_text(pathlib.Path("v.txt").read_text())
"""


@pytest.mark.slow
def test_a_killed_stages_run_is_closed_failed_when_dvc_restores_the_stage(tmp_path: Path) -> None:
    """The fault: a stage killed mid-run, then restored by DVC from its run-cache (its deps are back to an
    earlier run's), never starts again, so its MLflow run stayed RUNNING for good. Now ``make repro``
    closes it FAILED with ``cecl.end_reason=killed``; the earlier, finished run keeps FINISHED."""
    from mlflow.tracking import MlflowClient

    from tests.test_launcher import _toy_repo
    from tests.test_pipeline_e2e import _env

    stage = {"cmd": "python stage.py", "deps": ["stage.py", "v.txt"], "outs": ["out.txt"]}
    root = _toy_repo(tmp_path / "toy", {"s": stage})
    (root / "stage.py").write_text(KILLABLE)
    env = {**_env(root), "PYTHONPATH": str(REPO), "CECL_WARM": "0"}

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)

    (root / "v.txt").write_text("1\n")
    first = run(sys.executable, "-m", "cecl.repro")
    assert first.returncode == 0, first.stdout + first.stderr
    (root / "v.txt").write_text("2\n")
    (root / ".kill").touch()
    killed = run(sys.executable, "-m", "dvc", "repro")  # the launch dies with it: nothing closes the run
    assert killed.returncode != 0, killed.stdout + killed.stderr
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("toy").experiment_id
    by_status = {r.info.status: r for r in client.search_runs([experiment])}
    assert set(by_status) == {"FINISHED", "RUNNING"}
    (root / "v.txt").write_text("1\n")
    (root / ".kill").unlink()
    restored = run(sys.executable, "-m", "cecl.repro")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "1 restored from the run-cache" in restored.stdout and (root / "out.txt").read_text() == "1\n"
    assert "[repro] closed 1 MLflow run(s) left RUNNING by killed stages" in restored.stdout
    abandoned = client.get_run(by_status["RUNNING"].info.run_id)
    assert abandoned.info.status == "FAILED" and abandoned.data.tags["cecl.end_reason"] == "killed"
    finished = client.get_run(by_status["FINISHED"].info.run_id)
    assert finished.info.status == "FINISHED" and "cecl.end_reason" not in finished.data.tags
    assert [r.info.status for r in client.search_runs([experiment])].count("RUNNING") == 0


# --------------------------------------------------------------------------- the launcher's server dies


@pytest.mark.slow
def test_the_launcher_stops_when_its_mlflow_server_dies(tmp_path: Path) -> None:
    from tests.test_launcher import _toy_repo
    from tests.test_pipeline_e2e import _env

    kill = (
        "python -c \"import os, signal; pid = int(open('logs/launch/mlflow-server.pid').read().split()[0]); "
        'os.killpg(pid, signal.SIGKILL)" && echo a > a.txt'
    )
    stages = {
        "first": {"cmd": kill, "outs": ["a.txt"]},
        "second": {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
    }
    root = _toy_repo(tmp_path / "toy", stages)
    result = subprocess.run(
        [sys.executable, "-m", "cecl.launch", "--jobs", "1"],
        cwd=root,
        env={**_env(root), "PYTHONPATH": str(REPO), "CECL_WARM": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "MLflow server" in errors[0] and "exited" in errors[0], result.stderr
    assert not (root / "b.txt").exists() and "stage(s) ran" not in result.stdout
