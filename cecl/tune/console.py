"""What a sweep prints: the driver's ``[sweep] ...`` lines, and Ray's and Tune's own output kept out.

A user running ``dvc repro sweep`` should see one line per trial event and a final summary, in plain
text (a log file gets no ANSI colour codes). That is done with Ray's and Tune's own switches, set as
defaults (a user's environment wins) by :func:`apply_defaults` when this package is imported, because
Ray reads some of them when it is imported:

- ``RAY_DEDUP_LOGS=0`` (read at import): Ray's log deduplication appends a green ``[repeated Nx across
  cluster]`` and, once, a tip banner; without it each worker line is printed once, as is.
- ``RAY_COLOR_PREFIX=0``: worker lines forwarded to the driver keep their ``(sweep_trial pid=N)``
  prefix but uncoloured.
- ``RAY_AIR_NEW_OUTPUT=0``: Tune's legacy output engine, silent at ``verbose=0`` (the new one prints a
  configuration box, result paths and per-error blocks even then).
- ``TUNE_PRINT_ALL_TRIAL_ERRORS=0``: no traceback per failed attempt (with a colour-coded
  ``ray::ImplicitFunc.train()`` line); the ``[sweep]`` line names the error and the trial's
  ``error.txt`` under ``sweep/ray_results`` keeps the traceback.
- ``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0``: keeping 2 checkpoints per trial
  makes Tune snapshot the experiment state often; on local storage a snapshot takes milliseconds, so
  its "bottleneck" warning is noise.
- ``RAY_local_fs_capacity_threshold=1`` (read by the raylet a local sweep starts): with the disk of
  Ray's temp folder over 95% full, the raylet refuses to spill objects and forwards a
  ``(raylet) ... is over 95% full`` error line to the driver every 10 s for as long as it runs. A sweep
  puts only its small trial setup in the object store and never spills, so the guard protects nothing
  here; 1 turns it off (Ray's documented value for that). A cluster's raylets keep their own setting.

:func:`quiet_loggers` then sets Ray's logging at WARNING (``ray.init(logging_level=...)`` does the
same for the ``ray`` logger: no "Started a local Ray instance" banner) and drops two of Tune's log
records that repeat what the ``[sweep]`` lines already say.
"""

from __future__ import annotations

import logging
import os

RAY_ENV = {
    "RAY_DEDUP_LOGS": "0",
    "RAY_COLOR_PREFIX": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_local_fs_capacity_threshold": "1",
}
# Ray's "Token authentication is enabled for this Ray cluster" warning on every local start: Ray's
# default (token auth on) needs no notice in each sweep's log. Errors from this logger still show.
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
TUNE_RUN_LOGGER = "ray.tune.tune"


def apply_defaults() -> None:
    """Set :data:`RAY_ENV` where the environment does not set it already."""
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)


class _Repeats(logging.Filter):
    """Drops Tune's log records that repeat a ``[sweep]`` line: "Trials did not complete: [...]" (the
    FAILED lines and the stage's error name them) and "Tune detects GPUs, but no trials are using
    GPUs" (the sweep prints its own line on where trials train)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("Trials did not complete", "Tune detects GPUs, but no trials"))


def quiet_loggers() -> None:
    """Ray's loggers at WARNING, the token-auth notice off, Tune's repeats dropped (idempotent)."""
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint in a trial
    logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    tune_run = logging.getLogger(TUNE_RUN_LOGGER)
    if not any(isinstance(f, _Repeats) for f in tune_run.filters):
        tune_run.addFilter(_Repeats())


apply_defaults()
