"""Stage processes as process groups that can always be stopped, even after the launcher was SIGKILLed.

Every stage command starts in its own session (``start_new_session``): ``dvc`` and the stage's Python
below it form one process group, killed together on a timeout, a Ray cancel or Ctrl-C. Ray's own
worker clean-up only reaches a worker's direct children, and not at all when the launcher is SIGKILLed,
so each group is also recorded in a pid file (pid + start time, so a recycled pid is never killed);
the next launch in the same workspace stops leftovers before it starts, and DVC's rwlock drops the
entries of dead processes by itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from cecl.io import write_text_atomic


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the group ``pgid``. The leader (``dvc``) can be gone while the stage
    it started lives on: Ray's clean-up of a dead worker kills the worker's direct children only. Linux
    never hands out a pid that is still some group's id, so a live group with this id is that group."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def record(pidfile: Path, pid: int) -> None:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(pidfile, f"{pid} {_start_time(pid) or ''}\n")  # read by the next launch


def kill_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        # Reap the leader if it is our child, so the group can disappear.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    kill_group(process.pid, grace_s)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)


def kill_recorded(folder: Path, grace_s: float = 10.0) -> list[str]:
    """Stop every still-running group recorded under ``folder`` (``*.pid``, subfolders included: a stage's
    pid file sits beside its log, in its launch's folder); returns their names."""
    stopped = []
    for pidfile in sorted(folder.rglob("*.pid")):
        try:
            pid_text, _, started = pidfile.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pidfile.unlink(missing_ok=True)
            continue
        current = _start_time(pid)
        if started and (current == started or (current is None and _group_alive(pid))):
            kill_group(pid, grace_s)
            stopped.append(pidfile.stem)
        pidfile.unlink(missing_ok=True)
    return stopped
