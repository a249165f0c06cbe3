"""Atomic per-epoch checkpoints keyed by a fingerprint of everything that determines the run.

A checkpoint whose fingerprint differs from the current run (params, data or code inputs changed)
is ignored and replaced, so a stale file can never leak into a new result. One that cannot be read
(truncated, corrupt, foreign) is set aside as ``<name>.corrupt`` with a one-line warning and training
starts from scratch: never a traceback on every rerun, never a hint to load it unsafely. Under torchrun
every process reads the checkpoint but only rank 0 (the one that writes it) sets a bad one aside; the
others start from scratch too, silently (one rename, one warning, and no rank fails because another
moved the file first).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from cecl.distributed import is_main_process


def fingerprint(payload: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable description of the run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-write leaves the previous checkpoint intact


def load_checkpoint(path: Path | None, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it exists and belongs to this run, else None."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"holds a {type(state).__name__}")
    except Exception as err:  # torch raises many types for a truncated or foreign file
        if not is_main_process():
            return None  # rank 0 reads the same bytes, sets them aside and starts over, as this rank does
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        print(
            f"warning: checkpoint {path} is unreadable ({type(err).__name__}); moved to {aside.name}, "
            "training starts from scratch",
            file=sys.stderr,
            flush=True,
        )
        return None
    if state.get("fingerprint") != expected_fingerprint:
        return None
    return state
