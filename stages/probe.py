"""DVC stage probe@{rho}-{method}: linear evaluation of a frozen encoder on the unbiased test set.

Writes probe/rho_{rho}/{method}/metrics.json (validation-selected test metrics, plus the official
protocol's test-selected number, labelled as such) and curve.csv (per probe epoch).
"""

from __future__ import annotations

import csv

from cecl import paths
from cecl.cli import rho_method_stage
from cecl.config import load_params
from cecl.io import atomic_dir, write_json
from cecl.pipeline import check_rho_method, linear_probe, load_encoder, load_splits, run_tags
from cecl.tracking import stage_run
from cecl.train.device import resolve_device


def main(rho: float, method: str) -> None:
    params = load_params()
    check_rho_method(params, rho, method)
    device = resolve_device(params.device)
    encoder = load_encoder(paths.model_dir(rho, method) / "encoder.pt", device)
    splits = load_splits(rho, device)
    name = paths.stage_name("probe", rho, method)
    tags = run_tags(params, rho, method, device)
    with stage_run(name, params.tracking.experiment, {"probe": params.probe.model_dump()}, tags) as run:
        result = linear_probe(encoder, splits, params, seed=params.pretrain.seed)
        for row in result.curve:
            run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        metrics = {
            "method": method,
            "rho": rho,
            "seed": params.pretrain.seed,
            "selected_epoch": result.selected_epoch,
            "val_accuracy": result.val_accuracy,
            "test": result.test,
            "official_protocol": {
                "test_accuracy": result.official_test_accuracy,
                "epoch": result.official_epoch,
            },
            "config": getattr(params.method_options, method).model_dump(),
        }
        out = paths.probe_dir(rho, method)
        with atomic_dir(out) as tmp:
            write_json(tmp / "metrics.json", metrics)
            with (tmp / "curve.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(result.curve[0]))
                writer.writeheader()
                writer.writerows(result.curve)
        run.log_metrics({f"selected_test_{k}": v for k, v in result.test.items()})
        run.log_artifact(out)


if __name__ == "__main__":
    rho_method_stage("probe", __doc__.splitlines()[0], main)
