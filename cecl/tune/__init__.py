"""Ray Tune sweeps over the loss temperature (and CECL's weight w), objective = the validation monitor.

The sweep trains on one dataset entry (``sweep.dataset``) with one training seed (``sweep.seed``)
and selects, per method, the grid point whose per-epoch monitor (pretrain.monitor) scores best on the
validation split (the entry's evaluator's primary metric: unbiased accuracy for BiasedMNIST, whose validation
split is unbiased, accuracy otherwise). The test split is never loaded.

One concern per module:

- :mod:`cecl.tune.console`: Ray's and Tune's own output kept off the console (imported first: Ray
  reads some of its settings when it is imported).
- :mod:`cecl.tune.grid`: the search space, trial labels, method-option overrides, the
  ``CECL_SWEEP_CRASH`` test hook.
- :mod:`cecl.tune.trial`: the Ray trainable (the pipeline's ``run_pretraining`` on one grid point),
  its data loading, where it trains (params.yaml ``device`` resolved against Ray's GPUs), and the
  fingerprints (a trial's checkpoint, a method's experiment).
- :mod:`cecl.tune.sink`: MLflow child runs per trial, written by the driver only, and the Tune
  callback that prints the ``[sweep] ...`` progress lines.
- :mod:`cecl.tune.runner`: Ray, ASHA, one resumable Tuner per method, outcomes and best.json.
- :mod:`cecl.tune.outputs`: the files under sweep/ (rendered by :mod:`cecl.report.sweep`).
"""

from __future__ import annotations

from cecl.tune.console import RAY_ENV, apply_defaults, quiet_loggers
from cecl.tune.grid import (
    CRASH_ENV,
    OBJECTIVE,
    CrashSpec,
    grid_size,
    overrides_of,
    parse_crash_specs,
    search_space,
    sweep_methods,
    trial_label,
)
from cecl.tune.outputs import OUTPUT_FILES, write_outputs
from cecl.tune.runner import (
    SweepFailed,
    SweepInterrupted,
    SweepSummary,
    TrialOutcome,
    best_per_method,
    check_device,
    child_tags,
    init_ray,
    prune_stale,
    run_method_sweep,
    run_sweep,
    scheduler,
    sweep_device,
    trial_resources,
    visible_gpus,
)
from cecl.tune.sink import TrialEvents, TrialRuns
from cecl.tune.trial import (
    CODE_DEPS,
    SweepDevice,
    TrialSetup,
    code_digest,
    experiment_name,
    gpu_pin,
    load_train_val,
    resolve_sweep_device,
    subsample,
    sweep_setup,
    sweep_trial,
    trial_fingerprint,
)

__all__ = [
    "CODE_DEPS",
    "CRASH_ENV",
    "OBJECTIVE",
    "OUTPUT_FILES",
    "RAY_ENV",
    "CrashSpec",
    "SweepDevice",
    "SweepFailed",
    "SweepInterrupted",
    "SweepSummary",
    "TrialEvents",
    "TrialOutcome",
    "TrialRuns",
    "TrialSetup",
    "apply_defaults",
    "best_per_method",
    "check_device",
    "child_tags",
    "code_digest",
    "experiment_name",
    "gpu_pin",
    "grid_size",
    "init_ray",
    "load_train_val",
    "overrides_of",
    "parse_crash_specs",
    "prune_stale",
    "quiet_loggers",
    "resolve_sweep_device",
    "run_method_sweep",
    "run_sweep",
    "scheduler",
    "search_space",
    "subsample",
    "sweep_device",
    "sweep_methods",
    "sweep_setup",
    "sweep_trial",
    "trial_fingerprint",
    "trial_label",
    "trial_resources",
    "visible_gpus",
    "write_outputs",
]
