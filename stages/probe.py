"""DVC stage probe@{dataset}-{method}-{seed}: linear evaluation of a frozen encoder on its dataset's test set.

Writes probe/{dataset}/{method}/seed_{seed}/metrics.json (validation-selected test metrics from the
dataset's evaluator, plus the official protocol's test-selected number, labelled as such) and
curve.csv (per probe epoch). The transfer stage runs the same evaluation on another dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cecl import runs
from cecl.cli import run_key_stage
from cecl.config import Params, load_params
from cecl.io import atomic_dir, write_json
from cecl.pipeline import linear_probe, load_encoder, load_splits, read_run_file, run_tags
from cecl.tracking import stage_run
from cecl.train.device import resolve_device


def evaluate_encoder(
    params: Params, key: runs.RunKey | runs.TransferKey, pretrained: runs.RunKey, target: str, out: Path
) -> None:
    """Probe the encoder of ``pretrained`` on dataset entry ``target``; write metrics.json and curve.csv."""
    spec = params.spec(target)
    device = resolve_device(params.device)
    encoder = load_encoder(pretrained.model_dir / runs.ENCODER_FILE, device)
    splits = load_splits(spec, device)
    probe_params = params.recipe(target).probe
    kind = "transfer" if isinstance(key, runs.TransferKey) else "probe"
    name = key.stage(kind)
    with stage_run(
        name, params.tracking.experiment, {"probe": probe_params.model_dump()}, run_tags(key, spec, device)
    ) as run:
        print(f"[{name}] probing {pretrained.stage('pretrain')}'s encoder on {spec.describe()}", flush=True)
        result = linear_probe(encoder, splits, spec.evaluator(), probe_params, seed=key.seed)
        for row in result.curve:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        pretrain_run = read_run_file(pretrained.model_dir)
        metrics = {
            "run": {
                "stage": name,
                "kind": kind,
                "dataset": target,
                "family": spec.family,
                "source": key.source if isinstance(key, runs.TransferKey) else None,
                "method": key.method,
                "seed": key.seed,
                "mlflow_run_id": run.run_id,
                "mlflow_experiment_id": run.experiment_id,
                "pretrain_stage": pretrained.stage("pretrain"),
                "pretrain_mlflow_run_id": pretrain_run.get("mlflow_run_id", ""),
            },
            "evaluator": spec.evaluator().name,
            "protocol": "linear_probe",
            "selected_on": "val",
            "val_description": spec.val_description(),
            "data_verified": spec.options.verify,
            "selected_epoch": result.selected_epoch,
            "val_accuracy": result.val[spec.evaluator().primary],
            "val": result.val,
            "test": result.test,
            "official_protocol": {
                "test_accuracy": result.official_test_accuracy,
                "epoch": result.official_epoch,
            },
            "config": params.method_options[key.method].model_dump(),
        }
        with atomic_dir(out) as tmp:
            write_json(tmp / runs.METRICS_FILE, metrics)
            with (tmp / runs.CURVE_FILE).open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(result.curve[0]))
                writer.writeheader()
                writer.writerows(result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        run.log_artifact(out)
        print(
            f"[{name}] test {result.test} (epoch {result.selected_epoch}, selected on validation)", flush=True
        )


def main(key: runs.RunKey) -> None:
    params = load_params()
    params.check_run(key)
    evaluate_encoder(params, key, key, key.dataset, key.probe_dir)


if __name__ == "__main__":
    run_key_stage("probe", __doc__.splitlines()[0], main)
