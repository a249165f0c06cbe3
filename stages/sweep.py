"""DVC stage sweep: Ray Tune grid over the loss temperature (and CECL's weight w) on the validation monitor.

Trains on the dataset entry ``sweep.dataset`` with the training seed ``sweep.seed``. Writes
sweep/{results.csv, best.json, heatmap.csv, heatmap.png, sensitivity.md}, all moved into place
together at the end. Trial results and checkpoints persist in sweep/ray_results (not a DVC output),
so a sweep interrupted by Ctrl-C or a crash resumes where it stopped when run again (exit status
130). When every trial of some method failed, the stage writes no outputs and exits non-zero with
one line naming the method (running it again retries the failed trials).
Runs on the Ray cluster at RAY_ADDRESS when set, else on a local Ray, on params.yaml ``device``
(resolved against Ray's GPUs, recorded in the runs' ``device`` tag and best.json).

Console: one ``[sweep]`` line per trial result, stop, retry and failure, then per method its best
configuration and the files written; Ray's and Tune's own output is kept out (cecl/tune/console.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cecl import runs
from cecl.cli import run_stage
from cecl.config import load_params
from cecl.tracking import stage_run
from cecl.tune import SweepInterrupted, child_tags, run_sweep, sweep_methods, write_outputs


def main() -> None:
    params = load_params()
    sweep = params.sweep
    recipe = params.recipe(sweep.dataset)
    tags = {
        **child_tags(params),  # the device tag follows once Ray runs (run_sweep)
        "methods": ",".join(sweep_methods(params)),
        "scheduler": sweep.scheduler,
        "ray_cluster": os.environ.get("RAY_ADDRESS", "local"),
    }
    logged = {
        "device": params.device,
        "dataset": params.datasets[sweep.dataset].model_dump(mode="json"),
        "model": recipe.model.model_dump(),
        "augment": recipe.augment.model_dump(),
        "pretrain": recipe.pretrain.model_dump(exclude={"methods", "datasets", "epochs"}),
        "method_options": {m: params.method_options[m].model_dump() for m in sweep_methods(params)},
        "sweep": sweep.model_dump(),
    }
    with stage_run("sweep", params.tracking.experiment, logged, tags) as run:
        try:
            summary = run_sweep(params, root=Path.cwd(), parent_run_id=run.run_id)
        except SweepInterrupted as err:
            print(f"error: sweep: {err}", file=sys.stderr)
            sys.exit(130)
        run.log_metrics({"trial_epochs": summary.trial_epochs, "sweep_seconds": summary.seconds})
        run.set_tags({"failed_trials": sum(o.status != "TERMINATED" for o in summary.outcomes)})
        summary.raise_if_failed()  # SweepFailed: one line, non-zero exit, the run marked FAILED
        outputs = write_outputs(summary, runs.SWEEP_DIR)
        for line in summary.report_lines():
            print(line, flush=True)
        print(f"[sweep] wrote {', '.join(str(path) for path in outputs)}", flush=True)
        for method, best in summary.best["methods"].items():
            run.log_metrics({f"best_val_accuracy.{method}": best["best_val_accuracy"]})
        for path in outputs:
            run.log_artifact(path)


if __name__ == "__main__":
    run_stage("sweep", main)
