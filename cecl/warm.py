"""Warm stage processes: a fork server with torch, MLflow and the stages imported once per ``make repro``.

Why: DVC starts every stage as a new process, and a cold ``python -m stages.pretrain`` spends about 6 s
importing torch, torch._dynamo, MLflow, pandas and the project before it does any work: a third of the
CPU default's wall time (52 stages). ``python -m cecl.repro`` therefore starts this server, and the stage
commands in dvc.yaml (``python -m cecl.stage <name> ...``) ask it for a process instead of importing
everything themselves. DVC still runs, orders, hashes and records every stage exactly as before; only
the start-up is shared. Nothing in the standard library or our dependencies does this (``multiprocessing``'s
forkserver cannot hand a child another process's stdin/stdout/stderr, working directory and
environment), hence this small module.

Protocol, over a Unix socket whose path is in ``CECL_WARM_SOCKET``:
1. the client sends one JSON request ``{"module", "argv", "cwd", "env"}`` with its stdin, stdout and
   stderr attached (SCM_RIGHTS);
2. the server forks; the child answers ``{"pid": ...}``, becomes a session leader (so the client can
   signal its whole process group), takes the client's descriptors, directory, environment and argv,
   and runs the stage module as ``__main__``;
3. the child answers ``{"exit": status}`` and exits with it. If the client goes away (DVC interrupted or
   killed), the child's process group is terminated, so no stage outlives the command that ran it.

The server never runs any torch operation itself, so no thread pool exists when it forks (forking a
process with running OpenMP threads is unsafe), and CUDA is first initialised in the child: a process
forked after CUDA's initialisation (even ``torch.cuda.is_available()``, which loads the driver) cannot use
the GPU. The server checks this after its preload (``cuda_touched``) and, should an import ever touch
CUDA, exits so that stages run cold instead. The child takes the request's environment before the stage
runs, so the GPUs it sees are the stage's own (Ray's per-task CUDA_VISIBLE_DEVICES, read by CUDA at its
initialisation in the child), never the server's. Thread counts that torch reads from the environment at
import time (OMP_NUM_THREADS) are re-applied in the child from the stage's own environment.
tests/test_warm.py checks that a warm stage's outputs equal a cold one's byte for byte.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import json
import os
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cecl.io import write_text_atomic

SOCKET_ENV = "CECL_WARM_SOCKET"
ROOT_ENV = "CECL_WARM_ROOT"  # the checkout whose code the server imported: it serves stages run there only
MAX_REQUEST = 1 << 20
# Imported before the first fork (what a cold stage spends its first seconds on); importing a stage module
# runs only its definitions (each runs its work under ``if __name__ == "__main__"``).
PRELOAD = (
    "torch",
    "torch._dynamo",  # imported by the first optimiser step otherwise (1.8 s)
    "torch.distributed.run",
    "mlflow",
    "mlflow.tracking",
    "pandas",
    "stages.prepare",
    "stages.pretrain",
    "stages.probe",
    "stages.transfer",
    "stages.floor",
    "stages.aggregate",
)


def preload(modules: Sequence[str] = PRELOAD) -> None:
    import importlib

    for name in modules:
        importlib.import_module(name)


def cuda_touched() -> str | None:
    """Why children forked from this process could not use CUDA (torch or the driver library initialised
    here), or None. Reads state only: it initialises nothing."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "torch initialised CUDA"
    with contextlib.suppress(OSError):
        # libcuda (the driver's library) is loaded by the first CUDA runtime call (cuInit), not by `import
        # torch` (libtorch_cuda needs only libcudart), so its presence means the driver was initialised.
        if "/libcuda.so" in Path("/proc/self/maps").read_text():
            return "the CUDA driver library (libcuda) was loaded"
    return None


def _send(conn: socket.socket, payload: dict) -> None:
    conn.sendall(json.dumps(payload).encode() + b"\n")


def _lines(conn: socket.socket) -> Iterator[dict]:
    """JSON messages from ``conn`` until it closes."""
    buffer = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def _rebind_standard_streams() -> None:
    """sys.stdin/stdout/stderr on the (new) descriptors 0/1/2, buffered as a fresh interpreter would."""
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=os.isatty(1)
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )


def _watch_client(conn: socket.socket) -> None:
    """Terminate this stage's process group when the client disconnects before the stage ends."""
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGTERM)
        time.sleep(5)
        os.killpg(0, signal.SIGKILL)


def _child(conn: socket.socket) -> None:
    """Run one stage in this forked process (never returns)."""
    status = 1
    try:
        message, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
        request = json.loads(message)
        os.setsid()
        _send(conn, {"pid": os.getpid()})
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(name, signal.default_int_handler if name == signal.SIGINT else signal.SIG_DFL)
        _rebind_standard_streams()
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            import torch

            torch.set_num_threads(int(threads))  # libgomp read the server's environment at import
        sys.argv = [request["module"], *request["argv"]]
        sys.path[0] = request["cwd"]
        threading.Thread(target=_watch_client, args=(conn,), daemon=True).start()
        status = _run_module(request["module"])
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            _send(conn, {"exit": status})
        os._exit(status)


def _run_module(module: str) -> int:
    """Run ``module`` as ``__main__`` like ``python -m`` would, then the exit handlers; its exit status."""
    status = 0
    # Preloaded as a library module; runpy runs a fresh copy as __main__ either way, but warns when the
    # module is already imported ("found in sys.modules ... unpredictable behaviour"): drop it first.
    sys.modules.pop(module, None)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        code = done.code
        if code is None:
            status = 0
        elif isinstance(code, int):
            status = code
        else:
            print(code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        status = 130
    except BaseException:
        traceback.print_exc()
        status = 1
    atexit._run_exitfuncs()  # os._exit skips them; stages' libraries (MLflow, Ray) register some
    return status


def serve(path: Path, ready: Path | None = None, parent: int | None = None) -> None:
    """Preload, listen on ``path`` and fork one child per request until terminated, or until ``parent``
    (the ``make repro`` or launcher process that started it) is gone: a SIGKILLed parent cannot stop
    it, so the server checks once a second and then removes its socket and exits."""
    preload()
    touched = cuda_touched()
    if touched is not None:
        print(
            f"warning: warm stage server: {touched} while importing the stages, so a forked stage could not "
            "use the GPU; stages run cold",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(1)  # before the ready file: ``starting`` then hands out no server
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; they report themselves
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener.bind(str(path))
    listener.listen(16)
    if ready is not None:
        write_text_atomic(ready, str(os.getpid()))  # the starter polls for it and reads the pid
    listener.settimeout(1.0)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if parent is not None and os.getppid() != parent:
                for leftover in (path, ready):
                    if leftover is not None:
                        leftover.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
                os._exit(0)
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            listener.close()
            _child(conn)
        conn.close()


def request(path: str, module: str, argv: Sequence[str]) -> int:
    """Run ``module`` with ``argv`` in a warm child of the server at ``path``; its exit status.

    Raises OSError when the server cannot be reached (the caller then runs the stage cold).
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    payload = {"module": module, "argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(conn, [json.dumps(payload).encode()], [0, 1, 2])
    child: int | None = None

    def forward(signum: int, _frame: object) -> None:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signum)

    for name in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(name, forward)
    for message in _lines(conn):
        if "pid" in message:
            child = int(message["pid"])
        elif "exit" in message:
            return int(message["exit"])
    return _lost(path, module, child)


def _lost(path: str, module: str, child: int | None) -> int:
    """The answer when the stage's connection closed without an exit status: a killed stage (the server
    still answers) is reported as killed, with the status a shell gives a SIGKILLed process (137); only
    a server that no longer answers is blamed."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        server_alive = True
    except OSError:
        server_alive = False
    finally:
        probe.close()
    if server_alive and child is not None:
        print(
            f"error: {module}: the stage process (pid {child}) was killed before it could report an exit "
            "status (SIGKILL: the OOM killer, a timeout or a user); the warm stage server is fine",
            file=sys.stderr,
        )
        return 128 + signal.SIGKILL
    print(f"error: {module}: the warm stage server ended before the stage did", file=sys.stderr)
    return 1


def usable(environ: dict[str, str] | os._Environ = os.environ) -> str | None:
    """The server's socket when this process may use it (set, and we run in the server's checkout)."""
    path, root = environ.get(SOCKET_ENV), environ.get(ROOT_ENV)
    if not path or not root or Path(root).resolve() != Path.cwd().resolve():
        return None
    return path


@contextlib.contextmanager
def starting(timeout_s: float = 120.0) -> Iterator[Callable[[], dict[str, str]]]:
    """Start a warm server (code of the current directory) for the block without waiting for it; yields
    ``ready()``, which waits until it listens and returns the variables to set.

    Start-up failures are not errors: ``ready()`` then returns no variables and stages run cold. The
    server imports the code once, at its start: editing the code during the run is not seen by later
    stages. ``CECL_WARM=0`` starts nothing (``ready()`` returns ``{}``).
    """
    if os.environ.get("CECL_WARM") == "0":
        yield dict
        return
    import shutil
    import subprocess
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="cecl-warm-"))  # short: Unix socket paths have ~100 bytes
    path, ready_file = folder / "warm.sock", folder / "warm.ready"
    command = [sys.executable, "-m", "cecl.warm", "--socket", str(path), "--ready", str(ready_file)]
    process = subprocess.Popen(
        [*command, "--parent", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    cwd = os.getcwd()

    def ready() -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while not ready_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return {SOCKET_ENV: str(path), ROOT_ENV: cwd} if ready_file.exists() else {}

    try:
        yield ready
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def server(timeout_s: float = 120.0) -> Iterator[dict[str, str]]:
    """:func:`starting`, waited for: yields the variables to set (``{}``: stages run cold)."""
    with starting(timeout_s) as ready:
        yield ready()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description="warm stage server (started by python -m cecl.repro)")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--ready", type=Path, help="written with the server's pid once it listens")
    parser.add_argument("--parent", type=int, help="exit once this process (the server's parent) is gone")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.socket, args.ready, args.parent)


if __name__ == "__main__":
    main(sys.argv[1:])
