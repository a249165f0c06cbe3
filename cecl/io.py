"""Atomic stage outputs: write into a temporary sibling folder, move into place only on success.

A stage that fails (or is killed) therefore never leaves a half-written output that DVC or the
next stage could mistake for a result, and the next write of the same output removes what a killed
one left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL = ".partial-"  # in a temporary's name: ``.<final name>.partial-<random>``


def partials_of(final: Path) -> list[Path]:
    """Temporaries of ``final`` left beside it by writers that were killed (SIGKILL runs no cleanup)."""
    final = Path(final)
    return sorted(final.parent.glob(f".{final.name}{PARTIAL}*")) if final.parent.is_dir() else []


def remove_partials(final: Path) -> None:
    for partial in partials_of(final):
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final`` to fill; on success it replaces ``final`` in one rename.

    Any temporary of ``final`` that a killed writer left (DVC tracks the parent of some outputs, e.g.
    aggregate's ``models/``, whose digest would keep the debris for good) is removed before the new one
    is made, and a failing block removes its own. One writer per output at a time (DVC's rwlock and the
    launch lock), so a sibling temporary is never another live writer's.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_partials(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL}", dir=final.parent))
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err, final.parent)
        if full is not None:
            raise OSError(full) from None
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def disk_full(err: BaseException, folder: Path) -> str | None:
    """One line naming ``folder`` and its free space when ``err`` is a full disk (ENOSPC, or torch's
    RuntimeError for a failed write, which carries no errno), else None."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        pass
    elif not (isinstance(err, RuntimeError) and "write" in str(err).lower()):
        return None
    free = shutil.disk_usage(folder).free
    if not isinstance(err, OSError) and free > 64 * 2**20:
        return None  # a failed write with room to spare is something else: keep its own message
    return f"no space left on device writing under {folder} ({free / 2**20:.1f} MiB free there)"


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary sibling renamed into place: whoever sees ``path`` reads all of
    it (pid files polled by another process), and a kill mid-write leaves the previous content."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")  # one fixed name: the next write overwrites a killed one's
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def tree_digest(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative paths and their bytes).

    What a stage tags its MLflow run with (``outputs_sha256``) and what the provenance report recomputes
    from the workspace: stage outputs are byte-deterministic, so the digest links an output to the runs
    that wrote exactly these bytes without any run id inside a DVC-tracked file.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()
