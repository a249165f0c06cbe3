"""One launch per workspace at a time, and DVC's stale rwlock cleared only while no launch runs.

``python -m cecl.repro`` and ``python -m cecl.launch`` both stop leftovers of an interrupted launch
(stage process groups, the launcher's MLflow server) before they start. A second launch beside a
running one would take the first's live processes for leftovers and stop them; so both take an
exclusive ``fcntl.flock`` on ``.dvc/tmp/cecl-launch.lock`` first, and a second launch refuses in one
line naming the first's pid, touching nothing. The kernel drops the lock when its holder dies however
it dies (SIGKILL included), so a dead launch never blocks the next one, unlike a pid file. Standard
library only: ``cecl.repro`` imports it before anything heavy.

DVC's own ``.dvc/tmp/rwlock`` is left empty by a process killed while writing it, and every later
``dvc repro`` then fails with "JSON structure is corrupted" (a DVC bug; plain DVC shows it). Under the
launch lock no DVC process of ours runs, so an empty or unparsable rwlock is stale: it is removed with
one line saying so (a valid one is DVC's to handle: it drops the entries of dead processes itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = Path(".dvc/tmp/cecl-launch.lock")
RWLOCK_FILE = Path(".dvc/tmp/rwlock")
_held: set[Path] = set()  # lock files this process holds (the launcher's cluster mode calls cecl.repro)


class LaunchBusy(RuntimeError):
    """Another launch holds the workspace; one line naming its pid."""


@contextlib.contextmanager
def one_launch(root: Path, command: str) -> Iterator[None]:
    """Hold the workspace's launch lock for the block, or raise :class:`LaunchBusy` at once."""
    path = (root / LOCK_FILE).resolve()
    if path in _held or not (root / ".dvc").is_dir():  # re-entered; or no DVC workspace: nothing to guard,
        yield  # and no .dvc/ is created where DVC itself will refuse to run
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid not yet written"
            raise LaunchBusy(
                f"another launch is running in {root.resolve()} ({holder}); wait for it to finish or stop "
                "it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode(), 0)
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def clear_stale_rwlock(root: Path) -> str | None:
    """Remove an empty or unparsable ``.dvc/tmp/rwlock``; a line saying what was done, or None.

    Call only while holding :func:`one_launch`: then no DVC process of ours can be writing it.
    """
    path = root / RWLOCK_FILE
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        if isinstance(json.loads(text), dict):
            return None
        why = "not a JSON object"
    except json.JSONDecodeError:
        why = "empty" if not text.strip() else "unparsable JSON"
    path.unlink(missing_ok=True)
    return (
        f"removed a stale {RWLOCK_FILE} ({why}: left by a DVC process killed while writing it; no launch "
        "was running)"
    )
