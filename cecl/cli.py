"""What every stage entry point shares: one-line errors with a non-zero exit, and a timing line."""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections.abc import Callable

from cecl.config import ConfigError
from cecl.runs import RunKey, TransferKey
from cecl.tracking import TrackingUnavailable

# Errors that describe bad input or environment: shown as one line, no traceback. OSError covers missing,
# unreadable and unwritable files; pickle.UnpicklingError and RuntimeError come from torch loading foreign
# or truncated files where a caller did not wrap them; MLflow's errors are matched by module (importing
# mlflow here would add seconds to stages that never log).
USER_ERRORS = (ConfigError, TrackingUnavailable, OSError, ValueError, pickle.UnpicklingError)


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or type(err).__module__.split(".")[0] == "mlflow"


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def run_stage(name: str, body: Callable[[], None]) -> None:
    started = time.perf_counter()
    try:
        body()
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"error: {name}: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    print(f"[{name}] done in {time.perf_counter() - started:.1f}s", flush=True)


def run_key_stage(stage: str, description: str, main: Callable[[RunKey], None]) -> None:
    """Entry point of a per-run stage: --dataset/--method/--seed, run as ``stage@dataset-method-seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", required=True, help="a dataset entry of params.yaml")
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    key = RunKey(args.dataset, args.method, args.seed)
    run_stage(key.stage(stage), lambda: main(key))


def transfer_stage(description: str, main: Callable[[TransferKey], None]) -> None:
    parser = argparse.ArgumentParser(description=description)
    for flag in ("--source", "--target", "--method"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    key = TransferKey(args.source, args.target, args.method, args.seed)
    run_stage(key.stage(), lambda: main(key))


def dataset_stage(stage: str, description: str, main: Callable[[str], None]) -> None:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", required=True, help="a dataset entry of params.yaml")
    args = parser.parse_args()
    run_stage(f"{stage}@{args.dataset}", lambda: main(args.dataset))
