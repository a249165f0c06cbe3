"""What every stage entry point shares: one-line errors with a non-zero exit, and a timing line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from cecl.config import ConfigError
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


def rho_method_stage(stage: str, description: str, main: Callable[[float, str], None]) -> None:
    """Entry point of a per-(rho, method) stage: parse --rho/--method and run it as ``stage@rho-method``."""
    from cecl.paths import stage_name

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rho", type=float, required=True)
    parser.add_argument("--method", required=True)
    args = parser.parse_args()
    run_stage(stage_name(stage, args.rho, args.method), lambda: main(args.rho, args.method))
