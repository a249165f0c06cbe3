"""The Ray task of one stage: DVC's own command in a process group, with a log, a timeout and a clean stop.

One host: ``dvc --wait-for-lock repro --single-item <stage>`` in the workspace. ``--single-item`` keeps
DVC off the upstream stages' outputs (their rwlocks would collide with stages reading them), which is why
the launcher submits a stage only after its upstream stages succeeded; ``--wait-for-lock`` (DVC >= 3.61)
queues parallel processes for the repository lock DVC holds while it reads the index and writes dvc.lock.
Cluster: the node's checkout restores the missing upstream stages from the run-cache, runs
``dvc repro --pull -s <stage>`` and pushes the outputs and the run-cache (:mod:`cecl.launch.checkout`).

A failure raises :class:`StageFailed`, which carries the epochs the stage's checkpoint held before and
after the attempt; the launcher decides whether to submit it again (:mod:`cecl.launch.progress`) and the
log keeps every attempt. A training stage has no timeout unless the launcher sets one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cecl.launch import checkout, children
from cecl.launch.progress import checkpoint_epochs

ATTEMPT = "[launch] attempt "
LOG_TAIL_BYTES = 1 << 20  # what a cluster task sends back to the driver's log file


@dataclass(frozen=True)
class StageJob:
    """Everything a task needs; ``root`` is the workspace (one host) and unused with ``checkout``."""

    stage: str
    root: str
    log: str  # relative to the workspace / the node's checkout
    timeout_s: float | None  # None: no limit (training stages by default)
    env: dict[str, str]  # set in the stage process (MLflow URI, thread counts, ...)
    drop_env: tuple[str, ...] = ()  # removed from the worker's environment first (Ray's per-worker vars)
    checkout: checkout.CheckoutSpec | None = None
    upstream: tuple[str, ...] = field(default=())  # cluster: all upstream stages, serial order
    checkpoint: str | None = None  # a pretrain stage's checkpoint (relative): its progress across retries


class StageFailed(Exception):
    """A stage's command failed (or timed out); one line, plus the tail of its log.

    ``epochs_before`` / ``epochs_after``: epochs in the stage's checkpoint when the attempt started and
    when it failed (None: the stage has no checkpoint), for the launcher's retry rule.
    """

    def __init__(
        self,
        stage: str,
        returncode: int,
        timed_out: bool,
        log: str,
        tail: str,
        log_text: str = "",
        epochs_before: int | None = None,
        epochs_after: int | None = None,
    ):
        # Every argument in ``args``: Ray pickles the exception back to the driver through them.
        super().__init__(stage, returncode, timed_out, log, tail, log_text, epochs_before, epochs_after)
        self.stage, self.returncode, self.timed_out = stage, returncode, timed_out
        self.log, self.tail, self.log_text = log, tail, log_text
        self.epochs_before, self.epochs_after = epochs_before, epochs_after

    def __str__(self) -> str:
        return f"stage '{self.stage}' failed ({self.why()}); log: {self.log}"

    def why(self) -> str:
        """``timed out``, ``killed by SIGKILL`` (the command or, per DVC's log line, the stage under it)
        or ``exit status N``: a killed stage is reported as killed, never blamed on anything else."""
        if self.timed_out:
            return "timed out"
        found = re.search(r"exited with (-\d+)|killed by (SIG[A-Z]+)", self.tail or "")
        if self.returncode < -1 or found:
            number = self.returncode if self.returncode < -1 else found.group(1)
            name = found.group(2) if found and found.group(2) else _signal_name(-int(number))
            return f"killed by {name}"
        return f"exit status {self.returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def dvc_command() -> list[str]:
    """DVC from the Python running this task (the project's environment), not whatever is on PATH."""
    return [sys.executable, "-m", "dvc"]


def stage_env(job: StageJob) -> dict[str, str]:
    """The stage process's environment: this worker's, with CUDA_VISIBLE_DEVICES as Ray set it for the
    task (exactly the GPUs it holds; the stage's torchrun processes inherit it) in ascending order."""
    env = {k: v for k, v in os.environ.items() if k not in job.drop_env}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(job.env)
    if "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = sorted_devices(env["CUDA_VISIBLE_DEVICES"])
    return env


def sorted_devices(visible: str) -> str:
    """``"3,0,2"`` -> ``"0,2,3"``: Ray lists a task's GPU ids in no particular order; sorted, torchrun's
    rank r trains on the r-th lowest. Left as it is unless every id is a number (UUIDs, ``-1``)."""
    ids = [d.strip() for d in visible.split(",")]
    return ",".join(sorted(ids, key=int)) if all(d.isdigit() for d in ids) else visible


def _attempt(log: Path) -> int:
    if not log.exists():
        return 1
    with log.open("rb") as handle:
        return handle.read().count(ATTEMPT.encode()) + 1


def _tail(log: Path, lines: int = 15, size: int = LOG_TAIL_BYTES) -> str:
    if not log.exists():
        return ""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - size))
        text = handle.read().decode(errors="replace")
    return text if lines <= 0 else "\n".join(text.splitlines()[-lines:])


def _run(
    command: list[str], cwd: Path, env: dict[str, str], log: Path, deadline: float | None, pidfile: Path
) -> int:
    """Run ``command`` in its own session with output appended to ``log``; -1 on timeout.

    Killed with its whole process group on timeout, and on any exception here, including the
    KeyboardInterrupt Ray raises in a task it cancels.
    """
    with log.open("ab") as out:
        out.write(f"[launch] $ {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    children.record(pidfile, process.pid)
    try:
        return process.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        children.stop(process)
        return -1
    finally:
        if process.poll() is None:
            children.stop(process)
        pidfile.unlink(missing_ok=True)


def run_stage(job: StageJob) -> dict:
    """Run one stage (one attempt); returns timings, raises :class:`StageFailed` on failure."""
    started = time.monotonic()
    dvc = dvc_command()
    if job.checkout is None:
        root = Path(job.root)
    else:
        import ray

        root = checkout.prepare(job.checkout, ray.get_runtime_context().get_node_id(), dvc)
    log = root / job.log
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile = log.with_suffix(".pid")
    attempt = _attempt(log)
    with log.open("a") as out:
        out.write(f"{ATTEMPT}{attempt} of {job.stage} on {socket.gethostname()} in {root}\n")
    env = stage_env(job)
    deadline = None if job.timeout_s is None else started + job.timeout_s
    checkpoint = None if job.checkpoint is None else root / job.checkpoint
    before = checkpoint_epochs(checkpoint)
    wait = [*dvc, "--wait-for-lock"]
    timings: dict[str, float] = {}

    def step(name: str, command: list[str]) -> None:
        began = time.monotonic()
        status = _run(command, root, env, log, deadline, pidfile)
        timings[name] = time.monotonic() - began
        if status != 0:
            text = _tail(log, lines=0) if job.checkout is not None else ""
            after = checkpoint_epochs(checkpoint)
            raise StageFailed(job.stage, status, status == -1, job.log, _tail(log), text, before, after)

    if job.checkout is None:
        step("repro", [*wait, "repro", "--single-item", job.stage])
    else:
        with checkout.restore_lock(root):
            missing = [s for s in job.upstream if s not in checkout.held(root)]
            if missing:
                step("restore", [*wait, "repro", "--pull", "--single-item", *missing])
                checkout.mark_held(root, missing)
        step("repro", [*wait, "repro", "--pull", "--single-item", job.stage])
        step("push", [*wait, "push", "--run-cache", job.stage])
        with checkout.restore_lock(root):
            checkout.mark_held(root, [job.stage])
    return {
        "stage": job.stage,
        "attempt": attempt,
        "seconds": time.monotonic() - started,
        "timings": timings,
        "node": socket.gethostname(),
        "log_text": _tail(log, lines=0) if job.checkout is not None else "",
    }
