"""DVC stage sweep: Ray Tune grid over the loss temperature (and CECL's weight w) on validation accuracy.

Writes sweep/{results.csv, best.json, heatmap.csv, heatmap.png, sensitivity.md}, all moved into
place together at the end. Trial results and checkpoints persist in sweep/ray_results (not a DVC
output), so a sweep interrupted by Ctrl-C or a crash resumes where it stopped when run again.
Runs on the Ray cluster at RAY_ADDRESS when set, else on a local Ray.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cecl import paths
from cecl.cli import run_stage
from cecl.config import load_params
from cecl.tracking import stage_run
from cecl.tune import SweepInterrupted, run_sweep, write_outputs


def main() -> None:
    params = load_params()
    sweep = params.sweep
    tags = {
        "dataset": "biased_mnist",
        "rho": sweep.rho,
        "seed": params.pretrain.seed,
        "scheduler": sweep.scheduler,
        "ray_cluster": os.environ.get("RAY_ADDRESS", "local"),
    }
    logged = params.model_dump(include={"device", "model", "augment", "pretrain", "method_options", "sweep"})
    with stage_run("sweep", params.tracking.experiment, logged, tags) as run:
        try:
            summary = run_sweep(params, root=Path.cwd(), parent_run_id=run.run_id)
        except SweepInterrupted as err:
            print(f"error: sweep: {err}", file=sys.stderr)
            sys.exit(130)
        outputs = write_outputs(params, summary, paths.SWEEP_DIR)
        run.log_metrics({"trial_epochs": summary.trial_epochs, "sweep_seconds": summary.seconds})
        for method, best in summary.best["methods"].items():
            run.log_metrics({f"best_val_accuracy.{method}": best["best_val_accuracy"]})
        run.set_tags({"failed_trials": sum(o.status != "TERMINATED" for o in summary.outcomes)})
        for path in outputs:
            run.log_artifact(path)


if __name__ == "__main__":
    run_stage("sweep", main)
