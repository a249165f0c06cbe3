"""What every stage entry point shares: one-line errors with a non-zero exit, and a timing line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from cecl.config import ConfigError
from cecl.runs import RunKey, TransferKey
from cecl.tracking import TrackingUnavailable

# Errors that describe bad input or environment: shown as one line, no traceback.
USER_ERRORS = (ConfigError, TrackingUnavailable, FileNotFoundError, ValueError)


def run_stage(name: str, body: Callable[[], None]) -> None:
    started = time.perf_counter()
    try:
        body()
    except USER_ERRORS as err:
        print(f"error: {name}: {err}", file=sys.stderr)
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
