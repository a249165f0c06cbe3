"""DVC stage floor-pixels@{dataset} / floor-init@{dataset}-{seed}: a floor probed like every encoder.

Writes floors/{dataset}/pixels or floors/{dataset}/init/seed_{seed}/{metrics.json, curve.csv} in the probe
stage's schema (``run.kind`` "floor", ``run.method`` "pixels" or "init", ``run.seed`` null for pixels,
no pretraining stage): the raw pixels or the untrained encoder a seed's pretraining starts from, probed
by cecl/floors.py with the final probe's protocol. The report places every method against them.
"""

from __future__ import annotations

import argparse
import csv

from cecl import runs
from cecl.cli import run_stage
from cecl.config import Params, load_params
from cecl.floors import check_floor, floor_config, probe_floor
from cecl.io import atomic_dir, ensure_writable, write_json
from cecl.machine import machine_info
from cecl.pipeline import load_splits
from cecl.tracking import stage_run
from cecl.train.device import resolve_device
from cecl.train.loop import AUTOCAST_DTYPES, compute_threads


def evaluate(params: Params, key: runs.FloorKey) -> None:
    """Probe the floor ``key``; write its metrics.json and curve.csv to ``key.out_dir``."""
    check_floor(params, key)
    spec = params.spec(key.dataset)
    out = key.out_dir
    ensure_writable(out)
    device = resolve_device(params.device)
    name = key.stage()
    probe_params = params.recipe(key.dataset).probe
    verified = spec.data_verified(runs.data_dir(key.dataset))
    tags = {
        "dataset": key.dataset,
        "floor": key.kind,
        "seed": "" if key.seed is None else str(key.seed),
        "family": spec.family,
        "device": str(device),
        "data_verified": verified,
    }
    logged = {"probe": probe_params.model_dump(), "protocol": "linear_probe"}
    with stage_run(name, params.tracking.experiment, logged, tags) as run:
        splits = load_splits(spec, device)
        print(f"[{name}] probing the {key.kind} floor on {spec.describe()}", flush=True)
        autocast = params.compute.autocast
        result = probe_floor(
            params,
            key,
            splits,
            device,
            progress=lambda line: print(f"[{name}] {line}", flush=True),
            autocast=AUTOCAST_DTYPES[autocast] if autocast else None,
        )
        run.log_curve(result.curve, step="grid_index")
        metrics = {  # stages/probe.py's schema: the report reads floors as it reads probes
            "run": {
                "stage": name,
                "kind": "floor",
                "dataset": key.dataset,
                "family": spec.family,
                "source": None,
                "method": key.kind,
                "seed": key.seed,
                "pretrain_stage": None,
                "pretrain_outputs_sha256": None,
            },
            "evaluator": spec.evaluator().name,
            "protocol": "linear_probe",
            "selected_on": "val",
            "val_description": spec.val_description(),
            "data_verified": verified,
            "selected": result.selected,
            "selected_at_edge": result.selected_at_edge,
            "val_accuracy": result.val[spec.evaluator().primary],
            "val": result.val,
            "test": result.test,
            "official_protocol": result.official,
            "config": floor_config(params, key),
            "machine": {"pretrain": None, "probe": machine_info()},
        }
        with atomic_dir(out) as tmp:
            write_json(tmp / runs.METRICS_FILE, metrics)
            with (tmp / runs.CURVE_FILE).open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(result.curve[0]))
                writer.writeheader()
                writer.writerows(result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        run.record_outputs(out)
        run.log_artifact(out)
        print(f"[{name}] test {result.test} ({result.selected}, selected on validation)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a pretraining entry of params.yaml")
    parser.add_argument("--kind", required=True, choices=runs.FLOOR_KINDS)
    parser.add_argument("--seed", type=int, default=None, help="init floors only: the training seed")
    args = parser.parse_args()
    try:
        key = runs.FloorKey(args.dataset, args.kind, args.seed)
    except ValueError as err:
        parser.error(str(err))

    def body() -> None:
        params = load_params()
        with compute_threads(params.compute):
            evaluate(params, key)

    run_stage(key.stage(), body)


if __name__ == "__main__":
    main()
