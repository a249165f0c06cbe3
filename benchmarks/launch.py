"""Wall time of a profile: one serial ``make repro`` vs ``python -m cecl.launch --jobs N``, side by side,
and where each stage's time goes, so users can predict the speedup on N GPUs.

Run from the repository root: ``python benchmarks/launch.py [--profile default|tiny] [--jobs 2]``.

It copies the repository's files (``git ls-files -co --exclude-standard``: no outputs, no DVC cache, no
MLflow store) into two throwaway git repositories, reproduces one with ``python -m cecl.repro`` (what
``make repro`` runs: one serial ``dvc repro``, stages forked from the warm server, torch's default thread
count) and the other with the launcher (N slots of ``cores // N`` threads), one after the other, and
reads their output:

- each stage's own time (the ``[stage] done in`` line its command prints);
- serial: the stage's wall time in ``dvc repro`` (``cecl.repro``'s per-stage figure), so its overhead is
  DVC reading the pipeline before the command, the process start, and DVC hashing the outputs and
  rewriting dvc.lock after it;
- launcher: the stage's wall time in its Ray task (its own time from its log, logs/launch/), so its
  overhead adds the Ray task start, a ``dvc``
  process per stage reading the whole pipeline, and the wait for DVC's repository lock while other
  stages' ``dvc`` processes hold it;
- the launcher's start-up (Ray, MLflow server and warm server) and its total.

Prediction for N slots: about ``start-up + max(critical path, sum of task walls / N)``, where a task wall
is the stage's own time (which on a GPU host does not grow with N; on this CPU host each slot gets fewer
threads) plus the per-stage overhead printed here.

``--profile tiny`` uses the end-to-end test's tiny profile (tests/test_pipeline_e2e.py) instead of the
repository's params.yaml (the CPU default), for a run of a few minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_pipeline_e2e import TINY, TOY_MODULE  # noqa: E402

ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "OMP_NUM_THREADS")},
    "GIT_AUTHOR_NAME": "b",
    "GIT_AUTHOR_EMAIL": "b@b",
    "GIT_COMMITTER_NAME": "b",
    "GIT_COMMITTER_EMAIL": "b@b",
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}
IN_STAGE = re.compile(r"\[([^\]\s]+@[^\]\s]+|[a-z]+)\] done in ([\d.]+)s")
SERIAL_WALL = re.compile(r"^  ran      (\S+) \(([\d.]+) s\)", re.M)
TASK_WALL = re.compile(r"\[launch\] done   (\S+) in ([\d.]+) s")
READY = re.compile(r"\[launch\] Ray, MLflow.* ready in ([\d.]+) s")


def copy_repository(dest: Path, profile: str) -> Path:
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if profile == "tiny":
        (dest / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
        shutil.copy2(TOY_MODULE, dest / "cecl/datasets/toy_blobs.py")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *args], cwd=dest, env=ENV, check=True, capture_output=True)
    return dest


def timed(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: bench: {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}")
    return seconds, result.stdout


def in_stage_seconds(text: str) -> dict[str, float]:
    """Stage -> its own ``done in`` seconds. A stage prints its name as ``[pretrain@bm-cecl-0]`` or, for
    the single stages, ``[sweep]`` / ``[aggregate]``."""
    return {stage: float(seconds) for stage, seconds in IN_STAGE.findall(text)}


def overheads(walls: dict[str, float], inside: dict[str, float]) -> dict[str, list[float]]:
    """Per stage kind (prepare, pretrain, ...): wall minus the stage's own time, for each stage."""
    kinds: dict[str, list[float]] = defaultdict(list)
    for stage, wall in walls.items():
        if stage in inside:
            kinds[stage.split("@")[0]].append(wall - inside[stage])
    return kinds


def noop_dvc_seconds(root: Path, done: list[tuple[str, str]]) -> list[float]:
    """Wall of ``dvc repro --single-item <stage>`` on stages already up to date, one per stage kind: what
    a launched stage's own ``dvc`` process costs before and after its command (start-up, reading the
    whole pipeline, the status check) without any lock wait, since nothing else runs."""
    kinds: dict[str, str] = {}
    for stage, _ in done:
        kinds.setdefault(stage.split("@")[0], stage)
    return [timed(["dvc", "repro", "--single-item", stage], root)[0] for stage in kinds.values()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--profile", choices=["default", "tiny"], default="default")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        serial = copy_repository(Path(tmp) / "serial", args.profile)
        parallel = copy_repository(Path(tmp) / "parallel", args.profile)
        t_serial, out_serial = timed([sys.executable, "-m", "cecl.repro"], serial)
        launcher = [sys.executable, "-m", "cecl.launch", "--jobs", str(args.jobs)]
        t_launch, out_launch = timed(launcher, parallel)
        same_lock = (serial / "dvc.lock").read_text() == (parallel / "dvc.lock").read_text()
        noop = noop_dvc_seconds(parallel, list(TASK_WALL.findall(out_launch)))
        logs = "".join(log.read_text(errors="replace") for log in (parallel / "logs/launch").glob("*.log"))
    serial_walls = {s: float(v) for s, v in SERIAL_WALL.findall(out_serial)}
    task_walls = {s: float(v) for s, v in TASK_WALL.findall(out_launch)}
    inside_serial, inside_launch = in_stage_seconds(out_serial), in_stage_seconds(logs)
    ready = READY.search(out_launch)
    print(f"machine: {cores} cores, {os.uname().machine}; profile: {args.profile}; {len(task_walls)} stages")
    print(f"serial  python -m cecl.repro (torch default threads): {t_serial:8.1f} s")
    threads = max(1, cores // args.jobs)
    print(
        f"launch  python -m cecl.launch --jobs {args.jobs} ({threads} thread(s) per slot): "
        f"{t_launch:8.1f} s   serial / launch = {t_serial / t_launch:.2f}"
    )
    print(f"launcher start-up (Ray, MLflow server, warm server): {ready.group(1) if ready else '?'} s")
    print(
        f"sum of the stages' own seconds: serial {sum(inside_serial.values()):.1f}, "
        f"launch {sum(inside_launch.values()):.1f}"
    )
    print(f"dvc.lock equal: {same_lock} (expected only at equal thread counts: CPU float reductions)")
    print(f"{'stage kind':<10} {'n':>3} {'own s serial':>13} {'own s launch':>13} {'overhead serial':>16} "
          f"{'overhead launch':>16}")  # fmt: skip
    serial_over, launch_over = overheads(serial_walls, inside_serial), overheads(task_walls, inside_launch)
    for kind in sorted(launch_over, key=lambda k: -len(launch_over[k])):
        own_serial = [inside_serial[s] for s in inside_serial if s.split("@")[0] == kind] or [0.0]
        own_launch = [inside_launch[s] for s in inside_launch if s.split("@")[0] == kind] or [0.0]
        mean = statistics.mean
        print(
            f"{kind:<10} {len(launch_over[kind]):>3} {mean(own_serial):>13.1f} {mean(own_launch):>13.1f} "
            f"{mean(serial_over.get(kind) or [0.0]):>16.1f} {mean(launch_over[kind]):>16.1f}"
        )
    every = [v for values in launch_over.values() for v in values]
    every_serial = [v for values in serial_over.values() for v in values]
    if every and every_serial:
        print(
            f"mean per-stage overhead: serial {statistics.mean(every_serial):.1f} s, "
            f"launch {statistics.mean(every):.1f} s (Ray task, dvc process and index read, lock wait, "
            "output hashing and dvc.lock)"
        )
    if noop and every and every_serial:
        extra = statistics.mean(every) - statistics.mean(every_serial)
        print(
            f"of the launch's extra {extra:.1f} s per stage, about: its own dvc process (start, pipeline "
            f"read, status; a no-op repro of one stage per kind, median of {len(noop)}) "
            f"{statistics.median(noop):.1f} s; the rest (Ray task, waits for DVC's lock) "
            f"{extra - statistics.median(noop):.1f} s"
        )


if __name__ == "__main__":
    main()
