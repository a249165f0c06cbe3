"""``python -m cecl.repro``: run ``dvc repro`` and end with which stages ran and which were reused, and why.

Before the run, ``dvc status --json`` says why each out-of-date stage must run (changed deps, params,
outs, command; a missing output is what a fresh clone has). During the run DVC's own lines say what it
did with each stage: ``Running stage``, ``didn't change, skipping`` (up to date), or ``is cached``
(restored from the run-cache). The summary joins the two, with each stage's wall time (from its
``Running stage`` line to the next stage's line or the end: the command plus DVC's hashing and caching
of its outputs) and the total. Extra arguments go to ``dvc repro``.

The stages run in processes forked from a warm server that has torch, MLflow and the project imported
(cecl/warm.py; about 6 s saved per stage); ``CECL_WARM=0`` runs every stage cold instead.

``--profile NAME`` first composes ``profiles/NAME.yaml`` into params.yaml (the file DVC reads). It
refuses, with one line and nothing changed, when params.yaml has edits that are in no profile and
not committed, so switching profiles never loses a user's parameters.

Before anything, the DVC cache objects a run could restore are re-hashed (cecl/verify.py): a damaged
one stops the run with one line naming it. Then the cost plan (cecl/plan) prints its total and stops the
run with one line, nothing changed, when it exceeds ``--max-gpu-hours`` (default 24 H100-hours; ``none``
lifts it) or an entry's estimated peak memory does not fit the GPU; then a profile whose ``device`` names
CUDA is refused, one line and nothing changed, on a host without a usable GPU (or with fewer GPUs than
its processes). Once the gates pass (and the profile is in params.yaml), dvc.lock's entries of stages
dvc.yaml no longer defines are pruned with one line (cecl/launch/lockfile.py; DVC keeps them).
"""

from __future__ import annotations

import concurrent.futures
import filecmp
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cecl import warm
from cecl.launch.lockfile import prune_note
from cecl.launch.runlogs import new_launch_dir
from cecl.launch.single import LaunchBusy, clear_stale_rwlock, one_launch
from cecl.tracking import close_abandoned_local_runs, closed_note
from cecl.verify import cache_refusal

_ROOT = Path(__file__).resolve().parents[1]  # the checkout, for the device check's child process
RAN = re.compile(r"Running stage '([^']+)'")
SKIPPED = re.compile(r"Stage '([^']+)' didn't change, skipping")
CACHED = re.compile(r"Stage '([^']+)' is cached - skipping run")


def _reasons(entries: Sequence, most: int = 3) -> str:
    """dvc status's entries of one stage as a short phrase, e.g.
    'changed deps (data/bm: deleted; cecl/train: modified; +4 more); changed outs (...)'."""
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry)
            continue
        for kind, changes in entry.items():
            items = []
            for path, change in (changes or {}).items():
                if isinstance(change, dict):
                    change = ", ".join(f"{k} {v}" for k, v in change.items())
                items.append(f"{path}: {change}")
            shown = items[:most] + ([f"+{len(items) - most} more"] if len(items) > most else [])
            parts.append(f"{kind} ({'; '.join(shown)})" if items else kind)
    return "; ".join(parts)


def status_reasons() -> dict[str, str]:
    result = subprocess.run(["dvc", "status", "--json"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return {}
    try:
        return {stage: _reasons(entries) for stage, entries in json.loads(result.stdout or "{}").items()}
    except (json.JSONDecodeError, AttributeError):
        return {}


def stage_seconds(lines: Sequence[tuple[float, str]], end: float) -> dict[str, float]:
    """Wall seconds of each stage that ran: from its ``Running stage`` line to the next stage line
    (ran, skipped or cached) or ``end``. ``lines`` are (monotonic time, DVC output line)."""
    marks = [
        (at, match.group(1), bool(RAN.search(line)))
        for at, line in lines
        if (match := RAN.search(line) or SKIPPED.search(line) or CACHED.search(line))
    ]
    seconds = {}
    for i, (at, stage, ran) in enumerate(marks):
        if ran:
            seconds[stage] = (marks[i + 1][0] if i + 1 < len(marks) else end) - at
    return seconds


def summary(
    output: str, reasons: dict[str, str], seconds: dict[str, float] | None = None, total: float | None = None
) -> list[str]:
    ran, skipped, cached = RAN.findall(output), SKIPPED.findall(output), CACHED.findall(output)
    seconds = seconds or {}
    took = f" in {total:.0f} s" if total is not None else ""
    lines = [
        f"[repro] {len(ran)} stage(s) ran, {len(skipped)} reused (up to date), "
        f"{len(cached)} restored from the run-cache{took}"
    ]
    lines += [
        f"  ran      {stage}{f' ({seconds[stage]:.1f} s)' if stage in seconds else ''}: "
        f"{reasons.get(stage) or 'an upstream stage changed its outputs'}"
        for stage in ran
    ]
    lines += [f"  reused   {stage}: up to date (deps, params and outs match dvc.lock)" for stage in skipped]
    lines += [f"  restored {stage}: the run-cache holds a run with these deps and params" for stage in cached]
    return lines


def use_profile(name: str, params: Path = Path("params.yaml"), profiles: Path = Path("profiles")) -> None:
    """Copy profiles/<name>.yaml to params.yaml, unless that would drop uncommitted, unsaved edits."""
    source = profiles / f"{name}.yaml"
    if not source.is_file():
        known = ", ".join(sorted(p.stem for p in profiles.glob("*.yaml")))
        raise SystemExit(f"error: repro: no profile {source} (profiles: {known})")
    if params.is_file() and not filecmp.cmp(params, source, shallow=False):
        saved = any(filecmp.cmp(params, other, shallow=False) for other in profiles.glob("*.yaml"))
        clean = (
            subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(params)], check=False).returncode == 0
        )
        if not (saved or clean):
            raise SystemExit(
                f"error: repro: {params} has uncommitted edits that are in no profile; commit them or save "
                f"them as profiles/<name>.yaml before switching to {name}"
            )
    params.write_bytes(source.read_bytes())
    print(f"[repro] params.yaml <- {source}", flush=True)


def _run_dvc(
    argv: Sequence[str], variables: dict[str, str], log: TextIO
) -> tuple[int, list[tuple[float, str]]]:
    """``dvc repro argv`` with ``variables`` added to its environment, echoing its lines (to ``log`` too)
    and time-stamping them."""
    if not variables:
        print("[repro] stages run cold (no warm stage server)", flush=True)
    process = subprocess.Popen(
        ["dvc", "repro", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, **variables},
    )
    captured: list[tuple[float, str]] = []
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        log.write(line)
        captured.append((time.monotonic(), line))
    return process.wait(), captured


def _take_option(argv: list[str], flag: str, example: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return VALUE (None when absent)."""
    if flag not in argv:
        return None
    at = argv.index(flag)
    if at + 1 >= len(argv):
        raise SystemExit(f"error: repro: {flag} needs a value (e.g. {flag} {example})")
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


def cost_gate(params_path: Path, max_gpu_hours: str | None) -> None:
    """Print the plan's total, or stop with one line (nothing changed yet) when it is over the budget
    (``--max-gpu-hours``, default cecl.plan.DEFAULT_MAX_GPU_HOURS) or an entry cannot fit a GPU."""
    from cecl.config import ConfigError
    from cecl.plan import DEFAULT_MAX_GPU_HOURS, OverBudget, OverMemory, gate_file, parse_max_gpu_hours

    try:
        limit = DEFAULT_MAX_GPU_HOURS if max_gpu_hours is None else parse_max_gpu_hours(max_gpu_hours)
        print(f"[repro] {gate_file(params_path, limit)}", flush=True)
    except (ConfigError, OverBudget, OverMemory, ValueError) as err:
        raise SystemExit(f"error: repro: {err}") from None


# Run in a child process: initialising CUDA here (torch.cuda.is_available() does) would leave the warm
# stage server, forked from this process's children, unable to use the GPU (cecl/warm.py).
_DEVICE_CHECK = """
import sys
from cecl.train.device import resolve_device
try:
    device = resolve_device(sys.argv[1])
except ValueError as err:
    sys.exit(str(err))
import torch
count = torch.cuda.device_count()
if count < int(sys.argv[2]):
    sys.exit(f"the profile trains with {sys.argv[2]} processes (one GPU each) but {count} GPU(s) are visible")
"""


def device_problem(params_path: Path) -> str | None:
    """Why the params' ``device`` cannot run on this host (one line), or None. Only CUDA devices are
    checked (``auto`` and ``cpu`` always run); the check imports torch in a child process (about 3 s)."""
    from cecl.config import ConfigError, load_params

    try:
        params = load_params(params_path)
    except ConfigError as err:
        return f"{params_path}: {err}"
    if not params.device.startswith("cuda"):
        return None
    processes = max(params.recipe(name).pretrain.processes for name in params.pretrain.datasets)
    check = subprocess.run(
        [sys.executable, "-c", _DEVICE_CHECK, params.device, str(processes)],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    if check.returncode == 0:
        return None
    lines = (check.stderr or check.stdout).strip().splitlines() or [f"exit status {check.returncode}"]
    return f"{params_path} needs device {params.device!r}: {lines[-1]}"


def main(argv: Sequence[str]) -> int:
    """Under the workspace's launch lock (cecl/launch/single.py): a second launch refuses in one line."""
    try:
        with one_launch(Path.cwd(), "python -m cecl.repro"):
            note = clear_stale_rwlock(Path.cwd())
            if note is not None:
                print(f"[repro] {note}", flush=True)
            return _main(argv)
    except LaunchBusy as err:
        print(f"error: repro: {err}", file=sys.stderr, flush=True)
        return 2


def _main(argv: Sequence[str]) -> int:
    argv = list(argv)
    refusal = cache_refusal(Path.cwd())  # before DVC can restore a damaged object as a result
    if refusal is not None:
        print(f"error: repro: {refusal}", file=sys.stderr, flush=True)
        return 1
    profile = _take_option(argv, "--profile", "paper")
    max_gpu_hours = _take_option(argv, "--max-gpu-hours", "100")
    # The gate reads the profile itself, before use_profile writes params.yaml: a refused run changes nothing.
    source = Path("profiles") / f"{profile}.yaml" if profile else Path("params.yaml")
    if profile and not source.is_file():
        use_profile(profile)  # one line naming the known profiles
    cost_gate(source, max_gpu_hours)
    if problem := device_problem(source):
        raise SystemExit(f"error: repro: {problem}")
    if profile:
        use_profile(profile)
    if note := prune_note(Path.cwd()):  # after the profile: its foreach items decide what is stale
        print(f"[repro] {note}", flush=True)
    log_path = new_launch_dir(Path.cwd(), "repro") / "repro.log"  # this launch's: never another's
    print(f"[repro] log: {log_path}", flush=True)
    started = time.monotonic()
    # dvc status (seconds of DVC reading the pipeline) runs while the warm server imports torch and MLflow.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(status_reasons)
        with warm.server() as variables:
            reasons = pending.result()
            with log_path.open("w") as log:
                status, captured = _run_dvc(argv, variables, log)
    end = time.monotonic()
    closed = close_abandoned_local_runs(
        Path.cwd()
    )  # e.g. a killed stage DVC then restored from its run-cache
    if closed:
        print(f"[repro] {closed_note(closed)}", flush=True)
    text = "".join(line for _, line in captured)
    seconds = stage_seconds(captured, end)
    lines = summary(text, reasons, seconds, end - started)
    if status != 0:
        errors = [line.strip() for _, line in captured if line.startswith("ERROR")]
        lines.append(" ".join([f"[repro] dvc repro failed with exit status {status}", *errors[:1]]))
    lines.append(f"[repro] log: {log_path}")
    print("\n".join(lines), flush=True)
    with log_path.open("a") as log:
        log.write("\n".join(lines) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
