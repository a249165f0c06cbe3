"""Atomic stage outputs: write into a temporary sibling folder, move into place only on success.

A stage that fails (or is killed) therefore never leaves a half-written output that DVC or the
next stage could mistake for a result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def ensure_writable(*folders: Path) -> None:
    """Fail before any work (one line, PermissionError) when an output folder cannot be written.

    Creates each folder's parents as the stage would, then creates and removes a probe file in the
    parent, where :func:`atomic_dir` puts its temporary sibling.
    """
    for folder in folders:
        parent = Path(folder).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=".write-probe.", dir=parent):
                pass
        except OSError as err:
            raise PermissionError(f"cannot write outputs under {parent}: {err.strerror or err}") from None


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
