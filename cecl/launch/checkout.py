"""Cluster mode: each Ray node works in its own checkout of one commit; outputs travel through DVC's remote.

A node clones the repository at the launched commit once (``<workdir>/<commit>-<node id>``) and points
its default DVC remote at the user's. Before a stage runs there, its upstream stages that this checkout
has not produced or restored yet are restored with ``dvc repro --pull -s`` (from the run-cache the
nodes that ran them pushed, so nothing upstream is trained twice). A per-checkout file lock serialises
those restores: DVC takes a write lock on a stage's outputs even to find that it is up to date, which
would collide with a concurrent stage reading them ("'data/bm' is busy"), so a checkout records which
stages it already holds and restores each one once.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READY = ".launch-ready"
HELD = Path(".dvc/tmp/launch-held")


@dataclass(frozen=True)
class CheckoutSpec:
    """Where every node gets the code and the data: a git URL + commit, a DVC remote, a base folder."""

    url: str
    commit: str
    workdir: str
    remote_name: str
    remote_url: str


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created); released when the block ends or the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


def prepare(spec: CheckoutSpec, node_id: str, dvc: list[str]) -> Path:
    """This node's checkout of ``spec.commit`` (cloned on first use; concurrent tasks wait for it)."""
    base = Path(spec.workdir).expanduser().resolve()
    path = base / f"{spec.commit[:12]}-{node_id[:12]}"
    with file_lock(base / f".{path.name}.lock"):
        if not (path / READY).exists():
            shutil.rmtree(path, ignore_errors=True)
            _git("clone", "-q", "--no-checkout", spec.url, str(path))
            _git("checkout", "-q", "--detach", spec.commit, cwd=path)
            remote = [*dvc, "remote", "add", "--local", "--force", "--default", spec.remote_name]
            subprocess.run([*remote, spec.remote_url], cwd=path, check=True, capture_output=True)
            (path / READY).touch()
    return path


def held(path: Path) -> set[str]:
    """Stages whose outputs this checkout holds (ran or restored by a launch task)."""
    record = path / HELD
    return set(record.read_text().split()) if record.exists() else set()


def mark_held(path: Path, stages: list[str]) -> None:
    record = path / HELD
    record.parent.mkdir(parents=True, exist_ok=True)
    with record.open("a") as handle:
        handle.write("".join(f"{stage}\n" for stage in stages))


def restore_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    return file_lock(path / ".dvc/tmp/launch-restore.lock")
