"""Benchmark: memory and time of gradient caching (``pretrain.micro_batch``) against the plain step.

Why: gradient caching (cecl/train/grad_cache.py) bounds activation memory by one chunk of m source images
instead of the whole batch B, for a second forward pass; this measures both sides of that trade on one
model: CIFAR-shaped synthetic data (32x32 RGB), ResNet-18 with the CIFAR stem, CECL, 2 views, SGD as the
paper profile's ResNet recipe (``benchmarks/throughput.py``'s CIFAR workload), batch B (``--batch``;
256 on CPU, 1024 on CUDA), m in {B, B/2, B/8} (``--micro-batches``). m = B is the plain step (one chunk).

Every setting builds the loop's training objects (``cecl.train.loop.build_training``), makes the views
once on the device and steps them with the loop's ``model_step`` (forward, backward, optimiser step,
``after_step``; with m < B, gradient caching's two passes), after ``--warmup`` untimed steps:

- peak memory: each setting in its own Python process (a fresh allocator and peak), growth over its
  warm-up and one step, measured from after the build (weights and views resident): CUDA
  ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the start; CPU the process's peak
  resident set (VmHWM after a ``clear_refs`` reset and ``malloc_trim``) minus the resident set at the
  start (``throughput.PeakMemory``). It includes gradients and optimiser state (the same in every
  setting) and activations (what m bounds).
- seconds per step: all settings in one more process, stepped in turn (``--steps`` rounds, the order
  rotated each round), so a busy machine slows every setting alike; the median per setting of the wall
  clock (CUDA: synchronised around each step) and, on CPU, of the process's CPU time (all threads),
  which a shared machine disturbs less. On a shared CPU pass ``--threads 1``: with several threads the
  OpenMP workers spin while one of them is descheduled, which inflates both clocks, most for many small
  chunks (each chunk is a few more parallel regions).

The table prints both next to their ratios to m = B, and the machine (CPU model, torch's CPU capability,
torch version; GPU name, driver and CUDA version on CUDA).

    python benchmarks/micro_batch.py [--device auto] [--batch 256] [--micro-batches 256 128 32]
        [--steps 3] [--warmup 1] [--threads N] [--autocast bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import throughput
from cecl.config import ComputeParams
from cecl.train import grad_cache, loop
from cecl.train.device import resolve_device

ARCH = "resnet18"


def with_micro_batch(setup: Any, micro_batch: int) -> Any:
    """``setup`` with ``pretrain.micro_batch`` set (the rest of the recipe kept)."""
    pretrain = setup.recipe.pretrain.model_copy(update={"micro_batch": micro_batch})
    return dataclasses.replace(setup, recipe=dataclasses.replace(setup.recipe, pretrain=pretrain))


def raw_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--params`` with the flags' ``compute:`` keys (autocast, threads) applied."""
    raw = yaml.safe_load(Path(args.params).read_text()) or {}
    compute = dict(raw.get("compute") or {})
    if args.autocast is not None:
        compute["autocast"] = None if args.autocast == "none" else args.autocast
    if args.threads > 0:
        compute["threads"] = args.threads
    return {**raw, "compute": compute}


def build(args: argparse.Namespace, micro_batch: int) -> tuple[Callable[[], None], dict[str, Any]]:
    """The step of one setting (throughput's model-only row with ``micro_batch``) and its description."""
    device = resolve_device(args.device)
    workload = throughput.cifar_workload(
        raw_params(args), ARCH, args.batch, max(args.batch, 16), 10, args.seed
    )
    setup = with_micro_batch(workload.setups["cecl"], micro_batch)
    step, batch, training = throughput.bound_step(setup, workload.train, throughput.Settings(device=device))
    parameters = sum(p.numel() * p.element_size() for p in training.method.parameters())
    return step, {
        "micro_batch": micro_batch,
        "chunks": grad_cache.chunk_count(batch, micro_batch, device),
        "batch": batch,
        "parameters_mib": parameters / 2**20,
        "compute": setup.compute.model_dump(),
    }


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    """One setting (``--child m``): peak memory growth over warm-up and one step after the build."""
    device = resolve_device(args.device)
    compute = ComputeParams.model_validate(raw_params(args)["compute"])
    with loop.compute_threads(compute):
        step, row = build(args, args.child)
        memory = throughput.PeakMemory(device)
        memory.start()
        for _ in range(args.warmup + 1):
            step()
        row.update(peak_mib=memory.stop(), memory=memory.method, torch_threads=torch.get_num_threads())
    return row


def measure_time(args: argparse.Namespace, micro_batches: list[int]) -> dict[str, Any]:
    """All settings (``--timing``), stepped in turn: median wall and CPU seconds per step of each."""
    device = resolve_device(args.device)
    compute = ComputeParams.model_validate(raw_params(args)["compute"])
    with loop.compute_threads(compute):
        steps = {m: build(args, m)[0] for m in micro_batches}
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        wall: dict[int, list[float]] = {m: [] for m in micro_batches}
        cpu: dict[int, list[float]] = {m: [] for m in micro_batches}
        for round_ in range(args.steps):
            order = (
                micro_batches[round_ % len(micro_batches) :] + micro_batches[: round_ % len(micro_batches)]
            )
            for m in order:
                throughput.sync(device)
                start, start_cpu = time.perf_counter(), time.process_time()
                steps[m]()
                throughput.sync(device)
                wall[m].append(time.perf_counter() - start)
                cpu[m].append(time.process_time() - start_cpu)
    return {str(m): {"wall": wall[m], "cpu": cpu[m]} for m in micro_batches}


def machine(device: torch.device) -> dict[str, Any]:
    """throughput's machine description plus torch's CPU capability and, on CUDA, driver and CUDA."""
    info = throughput.machine_info(device)
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, check=True)
            info["driver"] = smi.stdout.split()[0]
    return info


def child_command(args: argparse.Namespace, child: list[str]) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), *child]
    command += ["--device", args.device, "--batch", str(args.batch), "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed)]
    command += ["--params", args.params] + (["--autocast", args.autocast] if args.autocast else [])
    return command


def child(args: argparse.Namespace, what: list[str]) -> Any:
    """Run this script with ``what`` in a fresh Python process; its last stdout line, parsed."""
    print(" ".join(what), "...", file=sys.stderr, flush=True)
    done = subprocess.run(child_command(args, what), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(what)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Memory of each setting in its own process, then the interleaved timing; ratios to m = B."""
    device = resolve_device(args.device)
    micro_batches = args.micro_batches or [args.batch, args.batch // 2, max(2, args.batch // 8)]
    rows = [child(args, ["--child", str(m)]) for m in micro_batches]
    times = child(args, ["--timing", *map(str, micro_batches)])
    for row in rows:
        row["step_seconds"] = times[str(row["micro_batch"])]["wall"]
        row["step_cpu_seconds"] = times[str(row["micro_batch"])]["cpu"]
        row["seconds_per_step"] = statistics.median(row["step_seconds"])
        row["cpu_seconds_per_step"] = statistics.median(row["step_cpu_seconds"])
    base = next((r for r in rows if r["chunks"] == 1), rows[0])
    for row in rows:
        row["time_ratio"] = row["seconds_per_step"] / base["seconds_per_step"]
        row["cpu_time_ratio"] = row["cpu_seconds_per_step"] / base["cpu_seconds_per_step"]
        row["memory_ratio"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else float("nan")
    return {"machine": machine(device), "batch": args.batch, "arch": ARCH, "rows": rows}


def format_report(results: dict[str, Any]) -> str:
    """The printed table, from the results dict alone (so the printout and --json agree)."""
    m, rows = results["machine"], results["rows"]
    first = rows[0]
    lines = [
        f"machine: {m['cpu']} (torch CPU capability {m['cpu_capability']}), {m['cores']} cores "
        f"({m['cores_usable']} usable), torch {m['torch']}, threads {first['torch_threads']}"
        + (f"; GPU {m['gpu']}, driver {m.get('driver', '?')}, CUDA {m.get('cuda')}" if "gpu" in m else "")
        + f"; load average (1 min) {m['load_average_1_5_15'][0]:.2f} at the end",
        f"{results['arch']} cifar_stem, 32x32x3, cecl, 2 views, batch {results['batch']} on {m['device']}; "
        f"compute {first['compute']}; parameters {first['parameters_mib']:.0f} MiB",
        f"memory: {first['memory']}, over warm-up + 1 step (grads and optimiser state included)",
        f"time: median of {len(first['step_seconds'])} interleaved steps per setting "
        "(wall; CPU: the process's CPU time)",
        "",
        f"{'micro_batch':>11} {'chunks':>6} {'peak MiB':>9} {'x memory':>8} {'wall s':>7} {'x wall':>6} "
        f"{'CPU s':>7} {'x CPU':>6}  wall s of each step",
    ]
    for r in rows:
        lines.append(
            f"{r['micro_batch']:>11} {r['chunks']:>6} {r['peak_mib']:>9.0f} {r['memory_ratio']:>8.2f} "
            f"{r['seconds_per_step']:>7.2f} {r['time_ratio']:>6.2f} {r['cpu_seconds_per_step']:>7.2f} "
            f"{r['cpu_time_ratio']:>6.2f}  " + " ".join(f"{s:.2f}" for s in r["step_seconds"])
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--batch", type=int, default=0, help="source images per step (0: 256 CPU, 1024 CUDA)")
    parser.add_argument("--micro-batches", type=int, nargs="+", help="default: B, B/2, B/8")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="compute.threads (0: --params' value)")
    parser.add_argument("--autocast", choices=["none", "bf16"], help="compute.autocast (none = null)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # memory of one setting
    parser.add_argument("--timing", type=int, nargs="+", help=argparse.SUPPRESS)  # times of these settings
    args = parser.parse_args(argv)
    if args.batch <= 0:
        args.batch = 1024 if resolve_device(args.device).type == "cuda" else 256
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_memory(args)), flush=True)
        return None
    if args.timing is not None:
        print(json.dumps(measure_time(args, args.timing)), flush=True)
        return None
    results = run(args)
    print(format_report(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
