"""One launch per workspace (cecl/launch/single.py), with two real launches on a toy DVC pipeline.

The fault of issue 35: a second ``make repro JOBS=2`` took the running launch's MLflow server for a
leftover and stopped it. Now the second launch (``python -m cecl.launch`` or ``python -m cecl.repro``)
refuses in one line naming the first's pid, and the first finishes untouched with its server alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cecl.launch.single import LaunchBusy, clear_stale_rwlock, one_launch
from tests.test_launcher import _alive, _toy_repo
from tests.test_pipeline_e2e import REPO, _env

# Writes its pid, then waits for the test's go-ahead: the first launch is in flight for as long as needed.
WAITING = textwrap.dedent(
    """
    import os, pathlib, time
    pathlib.Path("wait.pid.partial").write_text(str(os.getpid()))
    pathlib.Path("wait.pid.partial").replace("wait.pid")
    for _ in range(3000):
        if pathlib.Path(".go").exists():
            break
        time.sleep(0.1)
    pathlib.Path("wait.txt").write_text("waited\\n")
    """
)


def _start(root: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=root,
        env={**_env(root), "PYTHONPATH": str(REPO), "CECL_WARM": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_a_second_launch_refuses_while_the_first_finishes_untouched(tmp_path: Path) -> None:
    stages = {"wait": {"cmd": "python wait.py", "deps": ["wait.py"], "outs": ["wait.txt"]}}
    root = _toy_repo(tmp_path / "toy", stages)
    (root / "wait.py").write_text(WAITING)
    first = _start(root, "cecl.launch", "--jobs", "1")
    try:
        deadline = time.monotonic() + 240
        while not (root / "wait.pid").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (root / "wait.pid").exists(), first.communicate(timeout=60)
        server = int((root / "logs/launch/mlflow-server.pid").read_text().split()[0])
        stage = int((root / "wait.pid").read_text())
        for command in (("cecl.launch", "--jobs", "2"), ("cecl.repro",)):
            second = _start(root, *command)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, out + err
            lines = err.strip().splitlines()
            assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "another launch" in lines[0], err
            assert _alive(server) and _alive(stage)  # the first launch's server and stage live on
        (root / ".go").touch()
        out, err = first.communicate(timeout=240)
        assert first.returncode == 0, out + err
        assert "1 of 1 stage(s) finished" in out and (root / "wait.txt").read_text() == "waited\n"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, 9)
            first.wait()


def test_the_lock_is_freed_when_its_holder_dies(tmp_path: Path) -> None:
    """A SIGKILLed holder never blocks the next launch: the kernel drops a flock with its process."""
    (tmp_path / ".dvc").mkdir()
    code = (
        "import sys, time; from pathlib import Path; from cecl.launch.single import one_launch\n"
        "with one_launch(Path(sys.argv[1]), 'holder'):\n    print('held', flush=True); time.sleep(300)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LaunchBusy, match=f"pid {holder.pid}: holder"), one_launch(tmp_path, "second"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with one_launch(tmp_path, "second"), one_launch(tmp_path, "nested in the same process"):
        assert f"pid {os.getpid()}: second" in (tmp_path / ".dvc/tmp/cecl-launch.lock").read_text()


STALE = [("", "empty"), ('{"read": {', "unparsable JSON"), ("[]", "not a JSON object")]


@pytest.mark.parametrize(("content", "why"), STALE)
def test_a_stale_rwlock_is_removed_with_one_line(tmp_path: Path, content: str, why: str) -> None:
    rwlock = tmp_path / ".dvc/tmp/rwlock"
    rwlock.parent.mkdir(parents=True)
    rwlock.write_text(content)
    note = clear_stale_rwlock(tmp_path)
    assert note is not None and why in note and "\n" not in note and not rwlock.exists()
    rwlock.write_text('{"read": {}, "write": {}}')  # a valid one is DVC's own business
    assert clear_stale_rwlock(tmp_path) is None and rwlock.exists()


@pytest.mark.slow
def test_an_empty_rwlock_no_longer_blocks_repro(tmp_path: Path) -> None:
    """Plain ``dvc repro`` fails on an empty rwlock ("JSON structure is corrupted"); cecl.repro clears it."""
    stages = {"make": {"cmd": "echo made > made.txt", "outs": ["made.txt"]}}
    root = _toy_repo(tmp_path / "toy", stages)
    rwlock = root / ".dvc/tmp/rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text("")
    plain = subprocess.run(["dvc", "repro"], cwd=root, env=_env(root), capture_output=True, text=True)
    assert plain.returncode != 0 and "corrupted" in (plain.stdout + plain.stderr).lower()
    result = _start(root, "cecl.repro", "--max-gpu-hours", "none")
    out, err = result.communicate(timeout=300)
    assert result.returncode == 0, out + err
    assert "removed a stale .dvc/tmp/rwlock (empty" in out and (root / "made.txt").read_text() == "made\n"
