"""``python -m cecl.plan [--profile NAME | --params FILE] [--device h100|a100|h200|cpu] [--calibrate]``.

Prints the cost plan of a profile (default: params.yaml). ``--calibrate`` (with ``--device cpu``)
measures this CPU's throughput for each backbone in the profile and its linear-probe step time first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from cecl.config import ConfigError, Params, load_params
from cecl.pipeline import run_setup
from cecl.plan.estimate import PROBE_ROWS, passes_of, plan_params, workload
from cecl.plan.report import format_plan
from cecl.plan.throughput import Throughput, UnknownDevice, Workload, calibrate, devices
from cecl.runs import RunKey


def probe_step_seconds(feature_dim: int) -> float:
    """Seconds per probe unit (PROBE_ROWS rows, one evaluation) of the real L-BFGS fit on this machine."""
    import torch

    from cecl.eval.linear_probe import fit_logistic

    n = PROBE_ROWS * 20
    features = torch.randn(n, feature_dim, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(n) % 10
    fit_logistic(features, labels, n_classes=10, l2=1e-3, max_iter=5)  # warm-up (first-call allocations)
    per_unit = []
    for _ in range(3):  # the median of three fits (one alone moved with the machine's background load)
        started = time.perf_counter()
        fit = fit_logistic(features, labels, n_classes=10, l2=1e-3, max_iter=50, tolerance=1e-12)
        per_unit.append((time.perf_counter() - started) / (20 * max(1, fit.iterations)))
    return statistics.median(per_unit)


def calibrate_params(params: Params) -> tuple[dict[Workload, Throughput], float]:
    """This CPU's throughput for every (backbone, input, precision) the profile trains (the real training
    step of its method with the most trained passes) and the linear probe's seconds per step."""
    measured: dict[Workload, Throughput] = {}
    for entry in params.pretrain.datasets:
        work = workload(params, entry)[0]
        if work not in measured:
            # the profile's most common kind of method: the first that trains every view
            method = max(params.pretrain.methods, key=lambda m: passes_of(params, entry, m).trained)
            units = passes_of(params, entry, method).forward_units(grad_cache=False)
            measured[work] = calibrate(params, entry, method, units)
    first = RunKey(params.pretrain.datasets[0], params.pretrain.methods[0], params.seeds[0])
    feature_dim = run_setup(params, first).make_encoder().feature_dim
    return measured, probe_step_seconds(feature_dim)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cecl.plan", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--profile", help="profiles/<NAME>.yaml")
    source.add_argument("--params", default="params.yaml", help="a params file (default params.yaml)")
    parser.add_argument("--device", default="h100", help=f"one of {', '.join(devices())}")
    parser.add_argument("--calibrate", action="store_true", help="measure this CPU first (--device cpu)")
    args = parser.parse_args(argv)
    path = Path("profiles") / f"{args.profile}.yaml" if args.profile else Path(args.params)
    try:
        params = load_params(path)
        if args.device not in devices():
            raise UnknownDevice(f"unknown plan device {args.device!r}; known: {', '.join(devices())}")
        if args.calibrate and args.device != "cpu":
            raise UnknownDevice("--calibrate measures this machine's CPU: use it with --device cpu")
        measured, step_s = calibrate_params(params) if args.calibrate else (None, None)
        plan = plan_params(params, args.device, measured, step_s)
    except (ConfigError, UnknownDevice, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan, params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
