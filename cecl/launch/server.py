"""The MLflow server parallel stages log to, when MLFLOW_TRACKING_URI is not set.

Many processes writing one sqlite file is fragile (locking errors under load), so the stages talk HTTP
to one ``mlflow server`` bound to 127.0.0.1 on a free port, which alone writes the project's
``mlflow.db`` (the same database a serial run writes; one worker, so one writer). Experiments the
pipeline creates carry a ``file://<repo>/mlartifacts`` artifact location (``cecl.tracking``), so the
stage processes still write artifacts to that folder directly; on one host that is the same place a
serial run uses.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from cecl.launch import children


class ServerError(RuntimeError):
    """The MLflow server did not come up; one line naming its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(uri: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_starting(
    root: Path, log: Path, pidfile: Path, start_timeout_s: float = 120.0
) -> Iterator[Callable[[], str]]:
    """Start ``mlflow server`` on ``root``'s mlflow.db for the block; yields ``ready()``, which waits until
    /health answers (about 10 s) and returns the URI, so the caller can start other things meanwhile;
    ``ready.check_alive()`` raises :class:`ServerError` once the server has died.

    It runs in its own process group (uvicorn workers included), recorded in ``pidfile`` so a later
    launch stops a server a SIGKILLed launcher left behind.
    """
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root.resolve() / 'mlflow.db'}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    children.record(pidfile, process.pid)

    def ready() -> str:
        deadline = time.monotonic() + start_timeout_s
        while not healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServerError(f"the MLflow server on port {port} did not come up; see {log}")
            time.sleep(0.25)
        return uri

    def check_alive() -> None:
        """Raise ServerError (one line) once the server has exited: stages could no longer log."""
        if process.poll() is not None:
            raise ServerError(
                f"the launcher's MLflow server (pid {process.pid}) exited with status {process.returncode}; "
                f"stopping, as its stages cannot log; see {log}"
            )

    ready.check_alive = check_alive  # type: ignore[attr-defined]
    try:
        yield ready
    finally:
        children.stop(process)
        pidfile.unlink(missing_ok=True)


def ensure_experiment(uri: str, name: str, root: Path) -> str:
    """Create the experiment before parallel stages race to create it (one would fail), exactly as a
    serial run's first stage does (``cecl.tracking._experiment_id``: tags, artifact location)."""
    import mlflow

    from cecl.tracking import _experiment_id

    mlflow.set_tracking_uri(uri)
    return _experiment_id(name, root, uri)
