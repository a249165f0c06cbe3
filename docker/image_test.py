"""Builds docker/Dockerfile and runs the pipeline in the image: ``make image-test`` (and ``make image``).

Where no Docker engine runs and no registry can be reached, podman (Debian's 4.3, with runc) builds the
unmodified Dockerfile on a stand-in base made locally by debootstrap (``podman build --from``, which
replaces the digest-pinned FROM). Phases, each timed, each failure one line naming its phase:

  install   podman, buildah, runc, debootstrap, ... (root + apt-get), podman-compose (PyPI) in a venv
  base      the stand-in base (Debian bookworm minbase + python3, pip, venv), cached as a tarball
  build     docker/Dockerfile with --from the stand-in base, USER_UID/USER_GID = the host user
  inspect   the default ENTRYPOINT/CMD/USER; gcc, g++, torch.compile, the imports, the launcher
  repro     a copy of the repository with the test suite's tiny profile, mounted, `python -m cecl.repro`
            (make repro) as the host user: every stage ran, outputs belong to the host user
  compose   docker/compose.yaml's mlflow service, /health polled, one stage run by the pipeline
            service against http://mlflow:5000, its run found in MLflow; /dev/shm of the service

What only the stand-in base needs stays here, never in the Dockerfile: runc (crun fails on hosts with
hybrid cgroups), lower container ulimits (a CONTAINERS_CONF file), the host's extra CA certificates,
Debian's EXTERNALLY-MANAGED marker removed, python-is-python3. Caches (the base tarball, podman-compose's
venv, logs, the workspace copy while it runs) live in CECL_IMAGE_CACHE (default /var/tmp/cecl-image);
the image stays in podman's store, so a rerun rebuilds only the layers whose inputs changed.

Exit status: 0 passed, 1 failed, and ``--skip-code`` (default 0) when podman cannot run here (the reason
is printed). docs/image-test.md has the measured times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CECL_IMAGE_CACHE", "/var/tmp/cecl-image"))
BASE_TAR = CACHE / "standin-base-bookworm.tar"
BASE_IMAGE = "localhost/cecl-standin-base:bookworm"
IMAGE = "localhost/cecl:image-test"
APT_PACKAGES = ["podman", "buildah", "runc", "debootstrap", "uidmap", "slirp4netns", "fuse-overlayfs"]
PODMAN_COMPOSE = "podman-compose>=1.6,<2"
# The stand-in base: what python:3.11-slim-bookworm gives the Dockerfile: python on PATH (python-is-python3),
# pip, venv, CA certificates, and Python's headers (python3-dev: Inductor's C++ includes Python.h).
BASE_PACKAGES = "python3,python3-pip,python3-venv,python3-dev,python-is-python3,ca-certificates"
CONTAINERS_CONF = """\
# Written by docker/image_test.py for its podman calls only (CONTAINERS_CONF).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
MLFLOW_READY_S = 300  # MLflow took 60-80 s to answer /health on a loaded 2-core machine


class Skip(Exception):
    """podman cannot run here: the test is skipped, with the reason."""


class Failed(Exception):
    """A phase failed; the message is its one line."""


def log(message: str) -> None:
    print(message, flush=True)


def run(
    args: list[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    logfile: Path | None = None,
    echo: re.Pattern[str] | None = None,
    **kwargs,
) -> subprocess.CompletedProcess[str]:
    """Runs ``args``; with ``logfile`` streams the output there (lines matching ``echo`` also to stdout)."""
    if logfile is None:
        result = subprocess.run(
            args, capture_output=capture, text=True, timeout=timeout, check=False, **kwargs
        )
    else:
        lines: list[str] = []
        with logfile.open("a") as out:
            out.write(f"$ {' '.join(args)}\n")
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line)
                if echo is not None and echo.search(line):
                    log("    " + line.rstrip()[:160])
            proc.wait(timeout=timeout)
        result = subprocess.CompletedProcess(args, proc.returncode, "".join(lines), "")
    if check and result.returncode != 0:
        output = ((result.stdout or "") + (result.stderr or "")).strip().splitlines()
        last = output[-1] if output else ""
        where = f" (log: {logfile})" if logfile else ""
        command = " ".join(" ".join(args).split())
        raise Failed(f"`{command[:160]}` exited {result.returncode}: {last[:300]}{where}")
    return result


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CACHE / "containers.conf")}


def podman(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], env=podman_env(), **kwargs)


def host_ids() -> tuple[int, int]:
    """The host user the outputs must belong to. The image refuses uid 0, so root stands in for the
    owner of the repository (or uid 1000 where root owns it too)."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        info = ROOT.stat()
        uid, gid = (info.st_uid, info.st_gid) if info.st_uid else (1000, 1000)
    return uid, gid


# --- disk ------------------------------------------------------------------------------------------


class DiskPeak:
    """The most disk used on the filesystems of podman's store and the cache, above the start."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.start = self._used()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _used(self) -> int:
        devices = {}
        for path in self.paths:
            while not path.exists():
                path = path.parent
            devices[os.stat(path).st_dev] = shutil.disk_usage(path).used
        return sum(devices.values())

    def _watch(self) -> None:
        while not self._stop.wait(2.0):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())


# --- phases ----------------------------------------------------------------------------------------


class Phases:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        log(f"== {name}")
        start = time.monotonic()
        try:
            yield
        except Failed as error:
            raise Failed(f"phase {name}: {error}") from None
        except subprocess.TimeoutExpired as error:
            raise Failed(f"phase {name}: timed out after {error.timeout} s: {error.cmd}") from None
        finally:
            self.times[name] = time.monotonic() - start
        log(
            f"== {name}: ok in {self.times[name]:.0f} s"
            + (f" ({self.notes[name]})" if name in self.notes else "")
        )


def phase_install(phases: Phases) -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        if os.getuid() != 0 or shutil.which("apt-get") is None:
            raise Skip(f"{', '.join(missing)} not installed and no root + apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
        if run(install, check=False, env=env).returncode != 0:
            run(["apt-get", "update", "-q"], env=env)
            run(install, env=env)
        phases.notes["install"] = "apt-get: " + " ".join(APT_PACKAGES)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "containers.conf").write_text(CONTAINERS_CONF)
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}", check=False)
    if info.returncode != 0:
        raise Skip(f"podman cannot run here: {(info.stderr or info.stdout).strip().splitlines()[-1:]}")


def phase_compose_tool() -> Path:
    """podman-compose >= 1.6 from PyPI, in a venv of its own (Debian's 1.0.3 mangles exec-form
    healthchecks)."""
    venv = CACHE / "compose-venv"
    binary = venv / "bin" / "podman-compose"
    if not binary.exists():
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", PODMAN_COMPOSE])
    return binary


def apt_mirror() -> list[str]:
    """The host's Debian mirror (so a local mirror or proxy is used), else debootstrap's default."""
    sources = Path("/etc/apt/sources.list.d")
    texts = [p.read_text() for p in sorted(sources.glob("*.sources"))] if sources.is_dir() else []
    for text in texts:
        for block in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:.*\bbookworm\b", block, re.M)
            if uris and suites and uris.group(1).rstrip("/").endswith("/debian"):
                return [uris.group(1)]
    listed = Path("/etc/apt/sources.list")
    if listed.exists():
        found = re.search(r"^deb\s+(\S+/debian)/?\s+bookworm\s", listed.read_text(), re.M)
        if found:
            return [found.group(1)]
    return []


def _pems(bundle: Path) -> set[str]:
    text = bundle.read_text(errors="replace") if bundle.exists() else ""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    return {"\n".join(line.strip() for line in b.splitlines()) for b in blocks}


def phase_base(phases: Phases) -> None:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        phases.notes["base"] = f"{BASE_IMAGE} cached"
        return
    if not BASE_TAR.exists():
        rootfs = CACHE / "rootfs.tmp"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                "bookworm",
                str(rootfs),
                *apt_mirror(),
            ],
            logfile=CACHE / "debootstrap.log",
            echo=re.compile(r"^I: (Retrieving Release|Installing core|Base system installed)"),
            timeout=1800,
        )
        # Stand-in only: outbound TLS may be intercepted by a proxy whose CA the host trusts; the base
        # trusts the same extra certificates, so pip and apt inside the build work as on the host.
        extra = sorted(
            _pems(Path("/etc/ssl/certs/ca-certificates.crt"))
            - _pems(rootfs / "etc/ssl/certs/ca-certificates.crt")
        )
        target = rootfs / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for i, pem in enumerate(extra):
            (target / f"cecl-host-{i}.crt").write_text(pem + "\n")
        if extra:
            run(["chroot", str(rootfs), "update-ca-certificates"])
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        for leftover in [*rootfs.glob("var/lib/apt/lists/*"), *rootfs.glob("var/cache/apt/*.bin")]:
            if leftover.is_file():
                leftover.unlink()
        partial = BASE_TAR.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        partial.rename(BASE_TAR)
        shutil.rmtree(rootfs)
        phases.notes["base"] = (
            f"debootstrap, {len(extra)} extra CA certificate(s), {BASE_TAR.stat().st_size / 1e6:.0f} MB"
        )
    else:
        phases.notes["base"] = f"imported the cached {BASE_TAR}"
    podman(
        "import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        "--change", 'CMD ["/bin/bash"]',
        str(BASE_TAR),
        BASE_IMAGE,
    )  # fmt: skip


def check_containers_start() -> None:
    probe = podman("run", "--rm", "--network", "none", BASE_IMAGE, "true", check=False, timeout=300)
    if probe.returncode != 0:
        raise Skip(f"podman cannot start a container here: {probe.stderr.strip().splitlines()[-1:]}")


def phase_build(phases: Phases) -> None:
    """The unmodified Dockerfile; --from replaces its pinned FROM with the stand-in base."""
    uid, gid = host_ids()
    podman(
        "build", "--format", "docker", "--from", BASE_IMAGE, "-f", "docker/Dockerfile",
        "--build-arg", f"USER_UID={uid}", "--build-arg", f"USER_GID={gid}", "-t", IMAGE, ".",
        cwd=ROOT,
        logfile=CACHE / "build.log",
        echo=re.compile(r"^(STEP \d+/\d+|Successfully tagged)"),
        timeout=3600,
    )  # fmt: skip
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    phases.notes["build"] = f"{IMAGE}, {size / 1e9:.2f} GB"
    phases.notes["image_size"] = str(size)


INSPECT = r"""
set -euo pipefail
echo "user $(id -u):$(id -g) in $(pwd)"
gcc --version | head -1
g++ --version | head -1
python - <<'PY'
import time
import dvc, mlflow, ray, torch
print("torch", torch.__version__, "mlflow", mlflow.__version__, "ray", ray.__version__)
start = time.monotonic()
f = torch.compile(lambda x: (x.sin() + 1).sum())
print("torch.compile (inductor, C++ on the CPU):", float(f(torch.ones(8))),
      f"{time.monotonic() - start:.0f} s")
PY
cecl-launch --help >/dev/null
"""


def phase_inspect(phases: Phases) -> None:
    """The image's contract, checked in the built image: default command, user, compiler, imports."""
    uid, gid = host_ids()
    config = json.loads(podman("image", "inspect", IMAGE, "--format", "{{json .Config}}").stdout)
    expected = {
        "Entrypoint": ["/usr/local/bin/cecl-entrypoint"],
        "Cmd": ["cecl-launch"],
        "User": f"{uid}:{gid}",
        "WorkingDir": "/workspace",
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise Failed(f"image config {key} is {config.get(key)!r}, expected {value!r}")
    # No bind mount: the entrypoint makes the baked-in copy a git repository, as the image's user.
    name = container("inspect")
    result = podman("run", "--rm", "--name", name, "-e", "JOBS=", IMAGE, "bash", "-c", INSPECT, timeout=900)
    out = result.stdout + result.stderr
    for line in out.splitlines():
        log("    " + line[:160])
    if f"user {uid}:{gid} in /workspace" not in out:
        raise Failed(f"not run as {uid}:{gid} in /workspace")
    if not re.search(r"^gcc .* 12\.", out, re.M) or not re.search(r"^g\+\+ .* 12\.", out, re.M):
        raise Failed("gcc/g++ missing")
    if "cecl-launch: python -m cecl.launch --jobs 1 --help" not in out:
        raise Failed("the default command did not run the launcher with --jobs 1 (no GPU)")
    phases.notes["inspect"] = "CMD cecl-launch, gcc/g++ 12, torch.compile ok"


def container(role: str) -> str:
    return f"cecl-image-test-{os.getpid()}-{role}"


def _git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return run(["git", *args], cwd=root, env=env).stdout


def workspace() -> Path:
    """A copy of the repository (tracked and untracked-but-not-ignored files; CECL_IMAGE_TEST_TREE=<commit>:
    that commit's files) as a git repository of its own, with the test suite's tiny profile
    (tests/test_pipeline_e2e.py: TINY and its toy dataset module) as params.yaml, owned by the host user."""
    import yaml

    ws = CACHE / f"ws-{os.getpid()}"
    if ws.exists():
        shutil.rmtree(ws)
    tree = os.environ.get("CECL_IMAGE_TEST_TREE", "worktree")
    if tree == "worktree":
        files = run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).stdout.split()
        for name in files:
            src = ROOT / name
            if src.is_file():
                (ws / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, ws / name)
    else:  # a commit (e.g. HEAD): the image tested against committed sources, not a tree being edited
        ws.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", tree], cwd=ROOT, capture_output=True, check=False)
        if archive.returncode != 0:
            raise Failed(f"git archive {tree}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(ws)], input=archive.stdout, check=True)
    # The tiny profile of the copied tree itself (its schema and its profile belong together).
    tiny = run(
        [
            sys.executable,
            "-c",
            "import json; from tests.test_pipeline_e2e import TINY; print(json.dumps(TINY))",
        ],
        cwd=ws,
        env={**os.environ, "PYTHONPATH": str(ws)},
    ).stdout
    shutil.copy2(ws / "tests/fixtures/toy_blobs.py", ws / "cecl/datasets/toy_blobs.py")
    (ws / "params.yaml").write_text(yaml.safe_dump(json.loads(tiny), sort_keys=False))
    _git(ws, "init", "-q")
    _git(ws, "add", "-A")
    _git(ws, "commit", "-qm", "image test: tiny profile")
    uid, gid = host_ids()
    run(["chown", "-R", f"{uid}:{gid}", str(ws)]) if os.getuid() == 0 else None
    return ws


def foreign_files(ws: Path, uid: int) -> list[str]:
    return [str(p.relative_to(ws)) for p in [ws, *ws.rglob("*")] if p.lstat().st_uid != uid]


def phase_repro(phases: Phases, ws: Path) -> None:
    """`make repro`'s command in the image, the workspace mounted, as the host user."""

    uid, gid = host_ids()
    userns = [] if os.getuid() == 0 else ["--userns=keep-id"]
    result = podman(
        "run", "--rm", "--name", container("repro"), *userns, "--user", f"{uid}:{gid}",
        "-v", f"{ws}:/workspace", "-e", "OMP_NUM_THREADS=1", "-e", "MKL_NUM_THREADS=1",
        IMAGE, "python", "-m", "cecl.repro",
        logfile=CACHE / "repro.log", echo=re.compile(r"^\[repro\]|Running stage"), timeout=3600,
    )  # fmt: skip
    # Every stage of the tiny profile ran (the plan's count; dvc.lock also keeps the committed profile's).
    planned = re.search(r"\[repro\] plan: (\d+) stages", result.stdout)
    summary = re.search(r"\[repro\] (\d+) stage\(s\) ran, (\d+) reused", result.stdout)
    stages = int(planned.group(1)) if planned else -1
    if not summary or (int(summary.group(1)), int(summary.group(2))) != (stages, 0):
        raise Failed(f"expected all {stages} planned stages to run: {summary and summary.group(0)}")
    if not (ws / "mlflow.db").exists() or not (ws / "reports").is_dir():
        raise Failed("no mlflow.db or reports/ in the workspace")
    foreign = foreign_files(ws, uid)
    if foreign:
        raise Failed(f"{len(foreign)} file(s) not owned by uid {uid}, e.g. {foreign[:5]}")
    phases.notes["repro"] = f"{stages} stages ran, every file owned by uid {uid}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_api(port: int, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


COMPOSE_STAGE = "pretrain@bm-ce-0"


def phase_compose(phases: Phases, ws: Path, compose: Path) -> None:
    """docker/compose.yaml (the workspace copy's, so it mounts the workspace): the MLflow service, then
    one stage run by the pipeline service against it by service name."""
    uid, gid = host_ids()
    port = free_port()
    override = ws / "docker" / "compose.image-test.yaml"
    override.write_text(f"services:\n  mlflow:\n    image: {IMAGE}\n  pipeline:\n    image: {IMAGE}\n")
    if os.getuid() == 0:
        os.chown(override, uid, gid)  # the workspace belongs to the host user, this file too
    env = {**podman_env(), "HOST_UID": str(uid), "HOST_GID": str(gid), "MLFLOW_PORT": str(port), "JOBS": ""}
    base = [str(compose), "-p", project(), "-f", str(ws / "docker/compose.yaml"), "-f", str(override)]
    logfile = CACHE / "compose.log"
    run([*base, "up", "-d", "--no-build", "mlflow"], env=env, cwd=ws, logfile=logfile, timeout=600)
    # podman-compose does not honour `depends_on: condition: service_healthy` on podman 4.3: poll /health.
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() - start > MLFLOW_READY_S:
            logs = podman("logs", "--tail", "5", f"{project()}_mlflow_1", check=False)
            raise Failed(
                f"MLflow /health not OK after {MLFLOW_READY_S} s: {(logs.stdout + logs.stderr)[-300:]}"
            )
        time.sleep(2)
    ready = time.monotonic() - start
    log(f"    MLflow answered /health after {ready:.0f} s")
    experiment = mlflow_api(port, "experiments/get-by-name?experiment_name=cecl-e2e")["experiment"]
    search = {
        "experiment_ids": [experiment["experiment_id"]],
        "filter": f"attributes.run_name = '{COMPOSE_STAGE}'",
    }
    before = {r["info"]["run_id"] for r in mlflow_api(port, "runs/search", search).get("runs", [])}
    # --no-deps: mlflow is up and answered /health (what depends_on: service_healthy would wait for).
    result = run(
        [*base, "run", "--rm", "--no-deps", "pipeline", "bash", "-c",
         f'df -k /dev/shm | tail -1; echo "tracking $MLFLOW_TRACKING_URI"; dvc repro -f -s {COMPOSE_STAGE}'],
        env=env, cwd=ws, logfile=logfile, timeout=1800,
        echo=re.compile(r"^(shm|tracking|Running stage)|/dev/shm"),
    )  # fmt: skip
    shm = re.search(r"^shm\s+(\d+)\s", result.stdout, re.M) or re.search(
        r"^\S+\s+(\d+)\s.*/dev/shm$", result.stdout, re.M
    )
    if not shm or int(shm.group(1)) < 30 * 1024 * 1024:
        raise Failed(f"/dev/shm of the pipeline service is not >= 30 GiB: {shm and shm.group(0)}")
    runs = mlflow_api(port, "runs/search", search).get("runs", [])
    new = [r for r in runs if r["info"]["run_id"] not in before]
    if len(new) != 1 or new[0]["info"]["status"] != "FINISHED":
        raise Failed(
            f"expected one new FINISHED run {COMPOSE_STAGE} in MLflow, found {[r['info'] for r in new]}"
        )
    foreign = foreign_files(ws, uid)
    if foreign:
        raise Failed(f"{len(foreign)} file(s) not owned by uid {uid} after compose, e.g. {foreign[:5]}")
    phases.notes["compose"] = (
        f"/health after {ready:.0f} s, run {new[0]['info']['run_id'][:8]} of {COMPOSE_STAGE}"
    )


def project() -> str:
    return f"cecl-image-test-{os.getpid()}"


def cleanup(ws: Path | None, compose: Path | None) -> None:
    """Every container this run started, its compose project's network, the workspace copy."""
    if compose is not None and ws is not None and (ws / "docker/compose.image-test.yaml").exists():
        base = [str(compose), "-p", project(), "-f", str(ws / "docker/compose.yaml"),
                "-f", str(ws / "docker/compose.image-test.yaml")]  # fmt: skip
        run([*base, "down", "-t", "5"], env=podman_env(), cwd=ws, check=False, timeout=300)
    if shutil.which("podman"):
        label = f"label=io.podman.compose.project={project()}"
        left = podman("ps", "-aq", "--filter", label, check=False).stdout.split()
        left += podman("ps", "-aq", "--filter", f"name={project()}", check=False).stdout.split()
        if left:
            podman("rm", "-f", "-t", "5", *sorted(set(left)), check=False, timeout=300)
    if ws is not None and ws.exists() and not os.environ.get("CECL_IMAGE_KEEP_WORKSPACE"):
        shutil.rmtree(ws, ignore_errors=True)


def build_image(args: argparse.Namespace) -> int:
    """`make image`: docker build where a Docker engine runs, else podman; BASE_IMAGE=standin builds on
    the stand-in base (no registry needed), any other BASE_IMAGE replaces the pinned one."""
    uid, gid = host_ids()
    base = os.environ.get("BASE_IMAGE", "")
    tag = os.environ.get("IMAGE", "cecl:latest")
    ids = ["--build-arg", f"USER_UID={uid}", "--build-arg", f"USER_GID={gid}"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0 and base != "standin":
        extra = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
        return subprocess.run(
            [docker, "build", "-f", "docker/Dockerfile", *ids, *extra, "-t", tag, "."], cwd=ROOT
        ).returncode
    phases = Phases()
    try:
        with phases("install"):
            phase_install(phases)
        if base == "standin":
            with phases("base"):
                phase_base(phases)
            base = BASE_IMAGE
    except (Skip, Failed) as error:
        log(f"make image: {error}")
        return 1
    extra = ["--from", base] if base else []
    command = [
        "podman",
        "build",
        "--format",
        "docker",
        *extra,
        "-f",
        "docker/Dockerfile",
        *ids,
        "-t",
        tag,
        ".",
    ]
    log("$ " + " ".join(command))
    return subprocess.run(command, cwd=ROOT, env=podman_env()).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="test", choices=["test", "image"])
    parser.add_argument("--skip-code", type=int, default=0, help="exit status when podman cannot run here")
    args = parser.parse_args(argv)
    if args.what == "image":
        return build_image(args)
    phases = Phases()
    start = time.monotonic()
    ws = compose = None
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        with DiskPeak([CACHE, Path("/var/lib/containers"), Path("/var/tmp")]) as disk:
            try:
                with phases("install"):
                    phase_install(phases)
                    compose = phase_compose_tool()
                with phases("base"):
                    phase_base(phases)
                    check_containers_start()
                with phases("build"):
                    phase_build(phases)
                with phases("inspect"):
                    phase_inspect(phases)
                with phases("repro"):
                    ws = workspace()
                    phase_repro(phases, ws)
                with phases("compose"):
                    phase_compose(phases, ws, compose)
            finally:
                with phases("cleanup"):
                    cleanup(ws, compose)
    except Skip as reason:
        log(f"image-test SKIPPED: {reason}")
        return args.skip_code
    except Failed as error:
        log(f"image-test FAILED: {error}")
        return 1
    total = time.monotonic() - start
    size = int(phases.notes.pop("image_size", "0"))
    summary = {
        "phases_s": {name: round(seconds) for name, seconds in phases.times.items()},
        "total_s": round(total),
        "image_bytes": size,
        "disk_peak_bytes": disk.peak - disk.start,
        "notes": phases.notes,
    }
    (CACHE / "last-run.json").write_text(json.dumps(summary, indent=2) + "\n")
    times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases.times.items())
    log(f"image-test PASSED in {total:.0f} s ({times}); image {size / 1e9:.2f} GB; "
        f"disk peak +{summary['disk_peak_bytes'] / 1e9:.1f} GB; {CACHE / 'last-run.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
