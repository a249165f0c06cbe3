"""Device selection and the GPU's run-wide settings.

``resolve_device``: ``auto`` picks CUDA when it is usable, else the CPU; ``cuda`` without a usable GPU
fails before any work with one line naming the cause (no NVIDIA driver, a driver too old for this torch's
CUDA, ``CUDA_VISIBLE_DEVICES`` hiding every GPU, a container started without GPUs), so a GPU profile never
turns into a months-long CPU run. ``auto`` falls back quietly only where no NVIDIA driver is in sight (a
CPU-only host); with a driver present, or inside the image, it warns with the same cause.

``compute_mode``: cuDNN's autotuner (``cudnn.benchmark``) on, or under ``compute.deterministic`` torch's
deterministic algorithms with cuBLAS's fixed workspace; the previous settings are restored on exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from cecl.config import ComputeParams

# Set by docker/Dockerfile. Inside the image a missing GPU usually means `docker run` without `--gpus all`
# (or a host driver too old for the CUDA 13 wheels), not a CPU-only machine, so ``auto`` says so.
CONTAINER_ENV = "CECL_CONTAINER"
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")  # written by the NVIDIA kernel module

# Minimum Linux driver (major version) per CUDA major version, from NVIDIA's CUDA Compatibility guide,
# table "CUDA Toolkit 11.x, 12.x, and 13.x Minimum Required Driver Versions" (minor version compatibility:
# any driver of at least this branch runs every toolkit of that major version). The CUDA 13.0 release
# notes' driver table gives 13.0 GA >= 580.65.06, the first driver of the 580 branch.
MIN_DRIVER_MAJOR = {11: 450, 12: 525, 13: 580}

# Inductor's on-disk cache (compiled kernels, FX graphs, AOTAutograd artefacts; Triton's kernels go in its
# "triton" subfolder unless TRITON_CACHE_DIR is set). Its default is /tmp/torchinductor_<user>, lost with
# the machine's /tmp or a container, so every stage would compile from scratch; the project keeps one.
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (cecl/train/device.py -> <repo>)
INDUCTOR_CACHE = PROJECT_ROOT / ".cache" / "inductor"  # git-ignored

CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the values torch accepts as deterministic; the first is set


@dataclass(frozen=True)
class CudaFacts:
    """What decides whether CUDA can work here, probed without initialising CUDA (see ``probe_cuda``)."""

    torch_cuda: str | None  # torch.version.cuda ("13.2"); None: a CPU-only torch build
    driver: str | None  # "580.65.06" from /proc/driver/nvidia/version; None: no NVIDIA kernel driver
    nvidia_smi: bool  # nvidia-smi on PATH (a driver installation without /proc, e.g. WSL)
    visible_devices: str | None  # CUDA_VISIBLE_DEVICES; None: unset
    device_nodes: int  # /dev/nvidia0, /dev/nvidia1, ...: absent in a container started without GPUs
    in_container: bool  # our image (CECL_CONTAINER)
    torch_error: str | None = None  # the warning torch.cuda.is_available() gave, if any


def parse_driver_version(text: str) -> str | None:
    """The driver version in /proc/driver/nvidia/version's first line, e.g. "NVRM version: NVIDIA UNIX
    x86_64 Kernel Module  580.65.06  Sun Jul 27 ..." or "... Open Kernel Module for x86_64  580.65.06 ..."."""
    first = text.splitlines()[0] if text else ""
    match = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", first)
    return match.group(1) if match else None


def hides_all_gpus(visible: str | None) -> bool:
    """Whether CUDA_VISIBLE_DEVICES leaves no GPU. CUDA reads the list up to its first invalid entry, so an
    empty value, ``-1`` or a first entry that is neither an index nor a GPU-/MIG- UUID hides them all."""
    if visible is None:
        return False
    first = visible.split(",")[0].strip()
    return not (first.isdigit() or first.startswith(("GPU-", "MIG-")))


def cuda_unusable_reason(facts: CudaFacts) -> str:
    """Why CUDA cannot be used, in one line, from the probed ``facts`` (call it once CUDA is known to be
    unavailable). Pure, so every case is tested on a CPU-only machine."""
    if facts.torch_cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build; install the locked CUDA wheels"
    if hides_all_gpus(facts.visible_devices):
        return (
            f"CUDA_VISIBLE_DEVICES={facts.visible_devices!r} hides every GPU "
            "(unset it, or name a GPU; Ray sets it per task from the task's num_gpus)"
        )
    needed = MIN_DRIVER_MAJOR.get(int(facts.torch_cuda.split(".")[0]))
    if facts.driver is None and not facts.nvidia_smi:
        if facts.in_container:
            return (
                "no NVIDIA driver is visible in this container: start it with `docker run --gpus all` "
                "(or docker/compose.gpu.yaml) on a host with the NVIDIA driver and Container Toolkit"
            )
        return (
            "no NVIDIA driver on this host (/proc/driver/nvidia/version and nvidia-smi are absent); "
            f"install one (>= {needed} for CUDA {facts.torch_cuda})"
            if needed
            else "no NVIDIA driver on this host (/proc/driver/nvidia/version and nvidia-smi are absent)"
        )
    if facts.driver is not None and needed is not None and int(facts.driver.split(".")[0]) < needed:
        return (
            f"the NVIDIA driver {facts.driver} is too old for this torch's CUDA {facts.torch_cuda} "
            f"(needs driver >= {needed}): update the driver"
        )
    if facts.in_container and facts.device_nodes == 0:
        return (
            "this container has no GPU device (/dev/nvidia* absent): start it with `docker run --gpus all` "
            "(or docker/compose.gpu.yaml)"
        )
    driver = f"NVIDIA driver {facts.driver}" if facts.driver else "an NVIDIA driver (nvidia-smi)"
    cause = facts.torch_error or "torch.cuda.is_available() is False"
    return f"CUDA is not usable although {driver} is installed: {cause}"


def probe_cuda(torch_error: str | None = None) -> CudaFacts:
    """The facts ``cuda_unusable_reason`` reads, from this process and host (files and environment only)."""
    try:
        driver = parse_driver_version(DRIVER_VERSION_FILE.read_text(errors="replace"))
    except OSError:
        driver = None
    nodes = [p for p in Path("/dev").glob("nvidia*") if p.name[len("nvidia") :].isdigit()]
    return CudaFacts(
        torch_cuda=torch.version.cuda,
        driver=driver,
        nvidia_smi=shutil.which("nvidia-smi") is not None,
        visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        device_nodes=len(nodes),
        in_container=bool(os.environ.get(CONTAINER_ENV)),
        torch_error=torch_error,
    )


def _cuda_available() -> tuple[bool, str | None]:
    """torch.cuda.is_available(), and the warning it gave (its reason) instead of printing it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    texts = [" ".join(str(w.message).split()) for w in caught]
    return available, (texts[0] if texts else None)


def resolve_device(name: str = "auto") -> torch.device:
    """The training device for params.yaml's ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises ValueError (one line, naming the cause) for CUDA that cannot be used.
    """
    if name == "auto":
        available, error = _cuda_available()
        if available:
            return torch.device("cuda")
        facts = probe_cuda(error)
        deliberate = facts.torch_cuda is not None and hides_all_gpus(facts.visible_devices)
        driver_in_sight = facts.driver is not None or facts.nvidia_smi
        if not deliberate and (driver_in_sight or facts.in_container):
            print(
                f"warning: device auto: running on the CPU: {cuda_unusable_reason(facts)}",
                file=sys.stderr,
                flush=True,
            )
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        available, error = _cuda_available()
        if not available:
            reason = cuda_unusable_reason(probe_cuda(error))
            raise ValueError(f"device {name!r} requested but CUDA is not usable here: {reason}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {name!r} requested but only {count} GPU(s) are visible")
    return device


@contextlib.contextmanager
def compute_mode(deterministic: bool) -> Iterator[None]:
    """The run's GPU settings for the block (``compute.deterministic``); the previous ones on exit.

    Off: ``cudnn.benchmark`` (cuDNN times its convolution algorithms once per input shape and keeps the
    fastest: the batch shape is fixed, so it pays off), at the price of round-off differences between
    reruns. On: ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic CUDA kernel
    raises instead of silently varying), cuDNN's deterministic algorithms without the autotuner, and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's fixed workspace; it is read when CUDA first creates a
    cuBLAS handle, so it must be set before the first CUDA matmul of the process: a warning says when it
    comes too late). A CPU run computes the same bytes either way.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    saved_env = os.environ.get(CUBLAS_WORKSPACE_ENV)
    try:
        if deterministic:
            if saved_env not in CUBLAS_DETERMINISTIC:
                if torch.cuda.is_initialized():
                    print(
                        f"warning: compute.deterministic: CUDA was initialised before {CUBLAS_WORKSPACE_ENV} "
                        f"was set; cuBLAS may keep its default workspace (set {CUBLAS_WORKSPACE_ENV}="
                        f"{CUBLAS_DETERMINISTIC[0]} in the environment)",
                        file=sys.stderr,
                        flush=True,
                    )
                os.environ[CUBLAS_WORKSPACE_ENV] = CUBLAS_DETERMINISTIC[0]
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if saved_env is None:
            os.environ.pop(CUBLAS_WORKSPACE_ENV, None)
        else:
            os.environ[CUBLAS_WORKSPACE_ENV] = saved_env


def persist_inductor_cache(folder: Path = INDUCTOR_CACHE) -> Path:
    """Keep Inductor's cache in ``folder`` (default ``<repo>/.cache/inductor``) unless the user chose one.

    Call before ``torch.compile`` first compiles (``compute.compile``): Inductor reads
    ``TORCHINDUCTOR_CACHE_DIR`` from the environment when it first needs its cache, and so do the worker
    processes it spawns and torchrun's other processes started after. A value already in the environment
    is respected as it is (the user's choice, or an earlier call's); returns the folder in use.
    """
    chosen = os.environ.get(INDUCTOR_CACHE_ENV)
    if chosen:
        return Path(chosen)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[INDUCTOR_CACHE_ENV] = str(folder)
    return folder


AUTOCAST_DTYPES = {"bf16": torch.bfloat16}  # compute.autocast -> the dtype torch.autocast runs in


@contextlib.contextmanager
def compute_threads(compute: ComputeParams) -> Iterator[None]:
    """The run-wide ``compute:`` settings inside the block, the previous ones restored on exit.

    torch's intra-op CPU threads set to ``compute.threads`` (unchanged when null): intra-op parallel
    reductions split their work by the thread count, so a fixed count makes CPU results independent of the
    machine's cores. ``compute.deterministic`` (``cecl.train.device.compute_mode``): cuDNN's autotuner when
    off; torch's deterministic algorithms and cuBLAS's fixed workspace when on.
    """
    with compute_mode(compute.deterministic):
        if compute.threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(compute.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
