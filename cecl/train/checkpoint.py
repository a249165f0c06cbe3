"""Atomic checkpoints, valid only for the code, params, data and bytes that made them; saved after every
epoch by default, ``pretrain.checkpoint`` sets a cadence in epochs or minutes (:func:`checkpoint_due`).

Two digests guard a resume. The *fingerprint* (``RunSetup.fingerprint``) covers the run's params, its
data (manifest digests) and its code: :func:`code_digest` hashes the files of the stage's code
dependencies, read from the stage's ``deps`` in dvc.yaml (the set DVC re-runs the stage for), so a code
fix that makes DVC re-run a stage also retires its checkpoint. The *content digest* is a SHA-256 of the
serialised state stored in the same file and checked on load: ``torch.load`` does not check the zip's
CRC, so without it a flipped byte in the weights loads silently.

A checkpoint that cannot be trusted is set aside, with one line on stderr saying why, and training
starts from scratch: ``<name>.stale`` when it belongs to other inputs, ``<name>.corrupt`` when it is
unreadable, fails its content digest or holds a non-finite weight. Never a traceback on every rerun,
never a hint to load it unsafely. Under torchrun every process reads the checkpoint but only rank 0
(the one that writes it) sets a bad one aside; the others start from scratch too, silently.

File layout (one file, so one atomic rename): ``{"format", "fingerprint", "history", "sha256",
"payload"}``, where ``payload`` is the ``torch.save`` bytes of the full state as a uint8 tensor (so
:func:`cecl.launch.progress.checkpoint_epochs` memory-maps it and reads only ``history``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from cecl.distributed import is_main_process

FORMAT = 2
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only); one line naming the path."""


def fingerprint(payload: Any) -> str:
    """Stable SHA-256 of a JSON-serialisable description of the run."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def stage_code_deps(stage: str, root: Path) -> list[str]:
    """The code paths among ``stage``'s deps in ``root``/dvc.yaml: deps with no ``${...}`` template and
    not under any stage's output (data/, models/ ...), i.e. the project files DVC hashes for it."""
    stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise ValueError(f"{root / 'dvc.yaml'} has no stage '{stage}'")
    outs = [str(out).split("${")[0] for entry in stages.values() for out in entry.get("outs", [])]
    outs = [prefix for prefix in outs if prefix]
    deps = [str(dep) for dep in stages[stage].get("deps", [])]
    return [dep for dep in deps if "${" not in dep and not any(dep.startswith(p) for p in outs)]


def code_digest(stage: str = "pretrain", root: Path | None = None) -> str:
    """SHA-256 over the files (relative paths and bytes) of ``stage``'s code deps in dvc.yaml.

    ``root`` defaults to the working directory when it holds dvc.yaml (DVC runs stages from the
    repository root), else the checkout this package was imported from. Byte-compiled files are left
    out: they are derived from the sources and rewritten by every interpreter.
    """
    if root is None:
        root = Path.cwd() if (Path.cwd() / "dvc.yaml").is_file() else PACKAGE_ROOT
    digest = hashlib.sha256()
    for dep in stage_code_deps(stage, root):
        path = root / dep
        if not path.exists():
            raise FileNotFoundError(f"{stage}'s dependency {dep} (dvc.yaml) is missing under {root}")
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def checkpoint_due(
    epoch: int, total_epochs: int, every_epochs: int, every_minutes: float | None, since_save: float
) -> bool:
    """Whether to save after ``epoch`` (1-based) of ``total_epochs``: the last epoch always, else every
    ``every_epochs``-th, or when ``since_save`` seconds (since the last save, or the run's start) reach
    ``every_minutes``. Pure, so the cadence is tested without a clock; a skipped save costs only the
    epochs redone after a kill (a resume is exact from any saved epoch), never a different result.
    """
    if epoch >= total_epochs or epoch % every_epochs == 0:
        return True
    return every_minutes is not None and since_save >= 60.0 * every_minutes


def _cleanup_partials(path: Path) -> None:
    """Remove temporaries a killed writer left beside ``path`` (``<name>.tmp*``)."""
    for partial in path.parent.glob(f"{path.name}.tmp*"):
        partial.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` with its content digest through a temporary sibling renamed into place.

    A kill mid-write leaves the previous checkpoint intact (and the next save removes the temporary);
    a failed write (disk full) removes its temporary and raises one line naming the path and free space.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _cleanup_partials(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    raw = buffer.getbuffer()
    wrapped = {
        "format": FORMAT,
        "fingerprint": state.get("fingerprint"),
        "history": state.get("history", []),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "payload": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        torch.save(wrapped, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch wraps a failed write (disk full) in RuntimeError
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < len(raw)
        if not (full or isinstance(err, OSError) or "write" in str(err).lower()):
            raise
        cause = "no space left on device" if full else str(err).splitlines()[0]
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {cause} ({len(raw) / 2**20:.1f} MiB needed, "
            f"{free / 2**20:.1f} MiB free there)",
        ) from None


def _set_aside(path: Path, suffix: str, why: str) -> None:
    aside = path.with_name(path.name + suffix)
    os.replace(path, aside)
    print(
        f"warning: checkpoint {path} {why}; moved to {aside.name}, training starts from scratch",
        file=sys.stderr,
        flush=True,
    )


def _non_finite(state: Any, where: str = "") -> str | None:
    """The first floating tensor in ``state`` (nested dicts/lists) holding a NaN or an infinity."""
    if isinstance(state, torch.Tensor):
        return where if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _read(path: Path) -> dict[str, Any]:
    """The verified state in ``path``; raises ValueError naming what is wrong."""
    try:
        wrapped = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ValueError(f"is unreadable ({type(err).__name__})") from None
    if not isinstance(wrapped, dict):
        raise ValueError(f"is unreadable (holds a {type(wrapped).__name__})")
    if wrapped.get("format") != FORMAT or not isinstance(wrapped.get("payload"), torch.Tensor):
        raise ValueError("is unreadable (no content digest: an older or foreign file)")
    raw = wrapped["payload"].numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != wrapped.get("sha256"):
        raise ValueError("fails its content digest (sha256 of the stored state differs)")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"is unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"is unreadable (holds a {type(state).__name__})")
    return state


def load_checkpoint(path: Path | None, expected_fingerprint: str) -> dict[str, Any] | None:
    """The saved state if it exists, is intact, finite and belongs to this run; else None (set aside)."""
    if path is None:
        return None
    if is_main_process():
        _cleanup_partials(path)  # a killed writer's temporary: removed before anything else is written
    if not path.exists():
        return None
    try:
        state = _read(path)
    except ValueError as err:
        if is_main_process():  # the other ranks read the same bytes and start over too, silently
            _set_aside(path, ".corrupt", str(err))
        return None
    if state.get("fingerprint") != expected_fingerprint:
        if is_main_process():
            _set_aside(path, ".stale", "belongs to other code, params or data (fingerprint differs)")
        return None
    bad = _non_finite({"method": state.get("method"), "optimizer": state.get("optimizer")})
    if bad is not None:
        if is_main_process():
            _set_aside(path, ".corrupt", f"holds a non-finite value ({bad})")
        return None
    return state
