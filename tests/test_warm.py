"""The warm stage server (cecl/warm.py): a child runs like a cold ``python -m`` of the module would.

Each test talks to a real server (started the way ``python -m cecl.repro`` starts it) from a real client
process. The whole pipeline through it, byte for byte against cold stages, is checked by
tests/test_pipeline_e2e.py (the first clone runs warm, the launched clone cold, and their dvc.lock match).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cecl import warm

REPO = Path(__file__).resolve().parent.parent
CHILD = "tests.fixtures.warm_child"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    previous = Path.cwd()
    os.chdir(REPO)
    try:
        with warm.server() as variables:
            assert variables, "the warm server did not start"
            yield variables
    finally:
        os.chdir(previous)


def _client(variables: dict[str, str], *argv: str, env: dict | None = None) -> subprocess.Popen[str]:
    code = (
        "import os, sys; from cecl import warm; "
        f"sys.exit(warm.request(os.environ[{warm.SOCKET_ENV!r}], {CHILD!r}, sys.argv[1:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env={**os.environ, **variables, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(stdout: str) -> dict:
    return json.loads(stdout.splitlines()[0])


def test_the_child_gets_the_clients_streams_argv_directory_and_environment(server) -> None:
    client = _client(server, "ok", "--flag", env={"WARM_MARKER": "from-the-client"})
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    report = _report(out)
    assert report["argv"] == ["ok", "--flag"]
    assert report["cwd"] == str(REPO) and report["marker"] == "from-the-client"
    assert report["pid"] != client.pid and not report["stdout_isatty"]
    assert "to stderr" in err


def test_a_cold_run_of_the_module_reports_the_same(server) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WARM_MARKER": "m"}
    cold = subprocess.run(
        [sys.executable, "-m", CHILD, "ok"], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    client = _client(server, "ok", env={"WARM_MARKER": "m"})
    out, _ = client.communicate(timeout=60)
    ours, theirs = _report(out), _report(cold.stdout)
    for report in (ours, theirs):
        del report["pid"]
    assert ours == theirs


@pytest.mark.parametrize(("action", "status"), [("exit3", 3), ("raise", 1)])
def test_exit_status_and_tracebacks_reach_the_client(server, action: str, status: int) -> None:
    client = _client(server, action)
    _, err = client.communicate(timeout=60)
    assert client.returncode == status
    if action == "raise":
        assert "RuntimeError: boom in the child" in err


def test_torch_threads_follow_the_stages_environment(server) -> None:
    client = _client(server, "ok", env={"OMP_NUM_THREADS": "1"})
    out, _ = client.communicate(timeout=60)
    assert _report(out)["threads"] == 1


def _wait_gone(pid: int, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def _started_child(server, tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    pid_file = tmp_path / "child.pid"
    client = _client(server, "sleep", str(pid_file))
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return client, int(pid_file.read_text())


def test_a_killed_client_takes_its_stage_with_it(server, tmp_path: Path) -> None:
    """DVC killed mid-stage (SIGKILL: no handler runs): the stage does not go on writing outputs."""
    client, child = _started_child(server, tmp_path)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=10)
    assert _wait_gone(child), "the stage outlived its client"


def test_an_interrupted_client_interrupts_its_stage(server, tmp_path: Path) -> None:
    client, child = _started_child(server, tmp_path)
    client.send_signal(signal.SIGINT)
    client.wait(timeout=30)
    assert client.returncode == 130  # the child's KeyboardInterrupt, as a cold Ctrl-C would end
    assert _wait_gone(child)


def test_the_server_serves_its_own_checkout_only_and_bad_names_are_one_line(tmp_path: Path, server) -> None:
    """A stage in another checkout must not run the server's (other) code: it runs cold."""
    elsewhere = {**server, warm.ROOT_ENV: str(tmp_path)}
    assert warm.usable(elsewhere) is None
    result = subprocess.run(
        [sys.executable, "-m", "cecl.stage", "nope"],
        cwd=REPO,
        env={**os.environ, **server, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: cecl.stage: expected a stage name "
        "(prepare, pretrain, probe, transfer, floor, sweep, aggregate), got 'nope'"
    )


def test_a_preloaded_stage_runs_as_main_without_warnings(server) -> None:
    """stages.prepare is imported by the server; run as __main__ in the child it behaves as a cold run
    would: here a one-line error for an unknown entry, and nothing else on stderr (no runpy warning)."""
    result = subprocess.run(
        [sys.executable, "-m", "cecl.stage", "prepare", "--dataset", "no_such_entry"],
        cwd=REPO,
        env={**os.environ, **server, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    cold = subprocess.run(
        [sys.executable, "-m", "stages.prepare", "--dataset", "no_such_entry"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == cold.returncode == 2
    assert result.stderr == cold.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_server_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed ``make repro`` (or launcher) cannot stop its server: the server notices its parent is
    gone, removes its socket and exits by itself."""
    code = (
        "import os, sys, time; from cecl import warm\n"
        "with warm.server() as v:\n"
        "    print(v[warm.SOCKET_ENV], flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    socket_path = Path(parent.stdout.readline().strip())
    assert socket_path.exists()
    pid = int((socket_path.parent / "warm.ready").read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stat = Path(f"/proc/{pid}/stat")
    gone = not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")  # exited (maybe unreaped)
    assert gone, "the server outlived its parent"
    assert not socket_path.exists() and not socket_path.parent.exists()


# --------------------------------------------------------------------------- CUDA and the fork

PRELOAD_PROBE = """
import json, sys, torch
calls = []
def recorder(name, real):
    def record(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)
    return record
for name in ("_cuda_getDeviceCount", "_cuda_init"):  # what is_available(), device_count() and init call
    setattr(torch._C, name, recorder(name, getattr(torch._C, name)))
from cecl import warm
warm.preload()
report = {"calls": calls, "initialized": torch.cuda.is_initialized(), "touched": warm.cuda_touched()}
print(json.dumps(report))
"""


def test_the_preload_does_not_touch_cuda() -> None:
    """A process forked after CUDA's initialisation (even after is_available(), which loads the driver)
    cannot use the GPU: importing torch, MLflow and the stages must not ask CUDA anything."""
    result = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"calls": [], "initialized": False, "touched": None}


CHILD_PROBE = """
import ctypes, json, os, torch
from cecl import warm
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
seen = getenv(b"CUDA_VISIBLE_DEVICES")
print(json.dumps({
    "environ": os.environ.get("CUDA_VISIBLE_DEVICES"),
    "libc": seen.decode() if seen else None,
    "initialized": torch.cuda.is_initialized(),
    "bad_fork": torch.cuda._is_in_bad_fork(),
    "touched": warm.cuda_touched(),
}))
"""


def test_a_warm_stage_sees_its_own_cuda_visible_devices_and_a_fresh_cuda(server, tmp_path: Path) -> None:
    """Ray sets CUDA_VISIBLE_DEVICES per task; the server was started without it. CUDA reads it (C getenv)
    when the stage first uses the GPU, so the child must carry the request's value, not the server's, and
    inherit no CUDA state from the server."""
    (tmp_path / "cuda_probe.py").write_text(CHILD_PROBE)
    code = (
        "import os, sys; from cecl import warm; "
        f"sys.exit(warm.request(os.environ[{warm.SOCKET_ENV!r}], 'cuda_probe', []))"
    )
    assert os.environ.get("CUDA_VISIBLE_DEVICES") != "7,3"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # the child runs in the request's directory: the probe module is found there
        env={**os.environ, **server, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "7,3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = _report(result.stdout)
    assert report == {
        "environ": "7,3",
        "libc": "7,3",
        "initialized": False,
        "bad_fork": False,
        "touched": None,
    }


def test_a_server_that_touched_cuda_hands_out_nothing(tmp_path: Path) -> None:
    """Should an import ever initialise CUDA, the server exits before it is ready: stages then run cold."""
    code = (
        "import sys; from pathlib import Path; from cecl import warm\n"
        "warm.preload = lambda: None\n"
        "warm.cuda_touched = lambda: 'torch initialised CUDA'\n"
        "warm.serve(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    sock, ready = tmp_path / "warm.sock", tmp_path / "warm.ready"
    result = subprocess.run(
        [sys.executable, "-c", code, str(sock), str(ready)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and not ready.exists() and not sock.exists()
    assert result.stderr.strip() == (
        "warning: warm stage server: torch initialised CUDA while importing the stages, so a forked stage "
        "could not use the GPU; stages run cold"
    )
