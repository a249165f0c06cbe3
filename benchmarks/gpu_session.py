"""The GPU check: every figure a lent GPU host can give in about five minutes, one JSON line each.

Why one script: the first GPU this project gets is a shared host with minutes to spare (one H100 or H200,
Python 3.12, torch 2.11 CUDA 13, torchvision 0.26, numpy, scipy, scikit-learn, pyyaml, pytest, pillow; no
DVC, MLflow or Ray, no network). ``make gpu-wheels`` carries the project's light pure-Python packages in
as wheels (.whl/, installed here with ``pip --target`` when missing). The run must fit a 6-minute slot:

* each phase runs in its own process under its own cap (CAPS: they add up to well under 6 minutes), so
  one slow phase cannot eat the others' time;
* every result is appended to ``$OUT/gpu_session.jsonl`` as one JSON line the moment it is measured
  (flushed and fsynced), so a capped phase keeps what it measured, and printed as one line;
* in real mode it exits at once (well under 5 s, before importing the project) with one line when CUDA is
  unusable: benchmarking the CPU and skipping the CUDA tests would otherwise "pass".

Phases: ``env`` (GPU, driver, torch / CUDA / cuDNN / NCCL / torchvision versions with a warning when
they differ from requirements/base.lock; whether nvJPEG's hardware decoder can be used), ``tests`` (the
CUDA tests: tests/test_cuda.py, the CUDA cases of tests/test_no_sync.py, the nvJPEG decode and
batched-crop / prefetch tests; one line per test), ``train:<config>`` for each of CONFIGS (images/s,
ms/step, host syncs per step, peak allocated and reserved GiB next to ``make plan``'s estimate from
cecl/plan), ``decode`` (JPEG decode images/s on the device, the ImageNet path's ``decode_on``; host and
total ms of its per-view and batched crops), ``eval`` (the kNN monitor and one probe evaluation at real
sizes), ``checkpoint`` (seconds to save a ResNet-50 training state), then a closing block to paste into
cecl/plan/throughput.yaml.

    python benchmarks/gpu_session.py            # real mode: needs CUDA
    DRY=1 python benchmarks/gpu_session.py      # every phase on the CPU at tiny sizes (a test runs it)
    make gpu-session [DRY=1]                    # the same; on the device: run(command="make gpu-session",
                                                #   carry=[".whl"], timeout_s=420)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
JSONL = "gpu_session.jsonl"

# Seconds per phase in real mode (sum 290 s: with interpreter starts and the closing block, about 5 min).
# A training config: build (cuDNN autotuning on the first steps), 3 warm-up and 5 timed steps, 2 counted.
CAPS: dict[str, int] = {
    "env": 15,
    "tests": 80,
    "train": 26,  # each of the 5 configs
    "decode": 15,
    "eval": 30,
    "checkpoint": 20,
}
DRY_CAP_S = 120  # per phase in dry mode (a loaded 2-core CPU)


# A training config: (name, arch, batch, precision, micro_batch). "small_cnn" is params.yaml's first
# pretrain dataset (BiasedMNIST, small CNN); the others are CIFAR-shaped (32 px, CIFAR stem) as the
# gpu-day, gpu-week, cifar100-1000ep and paper profiles run them.
CONFIGS: list[tuple[str, str, int, str, int | None]] = [
    ("rn50-cifar-bf16-b1024", "resnet50", 1024, "bf16", None),
    ("rn50-cifar-fp32-b1024", "resnet50", 1024, "fp32", None),
    ("rn50-cifar-bf16-b1024-mb256", "resnet50", 1024, "bf16", 256),
    ("rn18-cifar-bf16-b512", "resnet18", 512, "bf16", None),
    ("small_cnn-b128", "small_cnn", 128, "fp32", None),
]
DRY_BATCH = {"resnet50": 4, "resnet18": 4, "small_cnn": 8}
DRY_MICRO = 2
PHASES = ["env", "tests", *(f"train:{c[0]}" for c in CONFIGS), "decode", "eval", "checkpoint"]

# The tests phase's selection (real mode: the CUDA cases; dry mode: the same files, where they skip or run
# their CPU stand-ins). The CPU compile case is left out (minutes of inductor on a CPU, no CUDA content).
TESTS = [
    "tests/test_cuda.py",
    "tests/test_no_sync.py::test_cuda_steady_state_steps_do_not_synchronise",
    "tests/test_gpu_decode.py::test_nvjpeg_decodes_like_the_cpu_and_views_stay_on_the_gpu",
    "tests/test_gpu_decode.py::test_on_the_gpu_the_batched_crop_matches_the_loop_and_prefetch_changes_nothing",
]
TEST_DESELECT = ["tests/test_cuda.py::test_compiled_step_equals_eager[cpu]"]


# --------------------------------------------------------------------------- output


class Lines:
    """Appends one JSON line per result to ``path`` (flushed and fsynced at once) and prints it briefly."""

    def __init__(self, path: Path, phase: str) -> None:
        self.path, self.phase = path, phase

    def __call__(self, result: str, quiet: bool = False, **fields: Any) -> None:
        record = {"phase": self.phase, "result": result, "t": round(time.time(), 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if quiet:
            return
        brief = ", ".join(f"{k} {_short(v)}" for k, v in fields.items())
        print(f"[gpu_session] {self.phase} {result}: {brief}", flush=True)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of ``path`` (a line cut by a kill mid-write is skipped)."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# --------------------------------------------------------------------------- the CUDA gate and wheels


def cuda_problem() -> str | None:
    """Why CUDA is unusable here (None: usable): no NVIDIA device node (answered in milliseconds, before
    torch's import), no device torch can use, or a first kernel that fails."""
    import glob

    if not glob.glob("/dev/nvidia[0-9]*"):
        return "no NVIDIA device (/dev/nvidia0 missing)"
    import torch

    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no usable CUDA device"
    try:
        x = torch.ones(4, device="cuda")
        torch.cuda.synchronize()
        if float((x * 2).sum()) != 8.0:
            return "a first CUDA kernel returned a wrong value"
    except RuntimeError as err:
        return f"a first CUDA kernel failed: {' '.join(str(err).split())[:200]}"
    return None


def carried_wheels(env: dict[str, str]) -> str | None:
    """Install .whl/ with ``pip --target`` where the interpreter lacks what the wheels hold; sets PYTHONPATH.

    Returns a one-line problem, or None."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    probe = [sys.executable, "-c", "import pydantic, pytorch_metric_learning, tqdm"]
    if not wheels or subprocess.run(probe, capture_output=True, env=env).returncode == 0:
        return None
    target = Path(os.environ.get("GPU_SESSION_SITE", "/tmp/gpu_session_site"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    done = subprocess.run(
        [*pip, "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, wheels)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"installing .whl/ failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH", "")]))
    return None


# --------------------------------------------------------------------------- the orchestrator


def run_phase(name: str, cap: float, out: Path, dry: bool, env: dict[str, str]) -> tuple[int, float, bool]:
    """Run one phase in its own process group under ``cap`` seconds; (exit code, seconds, capped)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--out", str(out)]
    command += ["--dry"] if dry else []
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        rc = child.wait(timeout=cap)
        capped = False
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the phase's own group: its pytest or loader children too
        rc = child.wait()
        capped = True
    return rc, time.perf_counter() - started, capped


def cap_of(phase: str, dry: bool) -> float:
    if dry:
        return DRY_CAP_S
    return float(CAPS[phase.split(":")[0]])


def orchestrate(out: Path, dry: bool, only: list[str] | None) -> int:
    """The whole session; returns the exit code (0: every phase finished; 1: some failed or were capped)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSONL
    session = Lines(path, "session")
    started = time.perf_counter()
    if not dry:
        problem = cuda_problem()
        if problem is not None:
            session("cuda_unusable", quiet=True, reason=problem)
            print(f"gpu_session: CUDA unusable ({problem}); nothing measured (DRY=1 runs the CPU dry mode)")
            return 3
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if dry:  # one CPU thread per phase: on a shared, loaded CPU, spinning OpenMP threads were 10-20x slower
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    problem = carried_wheels(env)
    if problem is not None:
        session("wheels_failed", quiet=True, reason=problem)
        print(f"gpu_session: {problem}")
        return 2
    phases = [p for p in PHASES if only is None or p in only or p.split(":")[0] in only]
    session("start", dry=dry, phases=phases, caps_s={p: cap_of(p, dry) for p in phases})
    failed = 0
    for phase in phases:
        rc, seconds, capped = run_phase(phase, cap_of(phase, dry), out, dry, env)
        session("phase_end", name=phase, rc=rc, seconds=round(seconds, 2), capped=capped)
        failed += rc != 0 or capped
    block = closing_block(read_lines(path), dry)
    print(block)
    session(
        "closing_block", yaml=block, failed_phases=failed, seconds=round(time.perf_counter() - started, 1)
    )
    return 1 if failed else 0


def closing_block(records: list[dict[str, Any]], dry: bool) -> str:
    """throughput.yaml rows (bf16/fp32 at 32 px, the CIFAR stem) from the measured training lines."""
    env = next((r for r in records if r["phase"] == "env" and r["result"] == "versions"), {})
    device = env.get("plan_device") or "h100"
    where, torch = env.get("gpu", "?"), env.get("torch", "?")
    lines = [
        "# paste under rows: in cecl/plan/throughput.yaml"
        + (" (DRY RUN on the CPU: not GPU figures, do not paste)" if dry else ""),
    ]
    for r in records:
        if r["phase"].startswith("train:") and r["result"] == "step" and r.get("micro_batch") is None:
            if r["arch"] == "small_cnn":
                continue  # the small CNN's plan row is the CPU calibration's; kept in the JSON only
            lines.append(
                f"  - {{device: {device}, backbone: {r['arch']}, options: {{cifar_stem: true}}, size: 32, "
                f"precision: {r['precision']}, images_per_s: {r['images_per_s']:.0f},\n"
                f'     source: "measured: benchmarks/gpu_session.py on {where}, torch {torch}, '
                f'batch {r["batch"]}, {r["timed_steps"]} steps"}}'
            )
    overhead = [
        r["peak_allocated_gib"] / r["plan_saved_gib"]
        for r in records
        if r["result"] == "step"
        and r.get("plan_saved_gib")
        and r.get("peak_allocated_gib") is not None
        and r.get("micro_batch") is None
    ]
    if overhead:
        lines.append(
            "# measured peak allocated / the plan's tensors (its ACTIVATION_OVERHEAD 1.3 is unmeasured): "
            + ", ".join(f"{x:.2f}" for x in overhead)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- phases (one process each)


def phase_env(emit: Lines, dry: bool) -> None:
    import platform

    import torch
    import torchvision

    lock = locked_versions()
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": _nccl_version(),
        "lock_torch": lock.get("torch"),
        "lock_torchvision": lock.get("torchvision"),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        versions |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "devices": torch.cuda.device_count(),
            "driver": _driver_version(),
            "plan_device": "h200" if "H200" in props.name else "h100" if "H100" in props.name else None,
        }
    else:
        versions |= {"gpu": "none (dry run on the CPU)" if dry else "none"}
    emit("versions", **versions)
    for name in ("torch", "torchvision"):
        have, want = versions[name].split("+")[0], lock.get(name)
        if want is not None and have != want:
            emit("version_warning", package=name, installed=versions[name], lock=want)
    emit("nvjpeg", **nvjpeg_hardware())


def locked_versions() -> dict[str, str]:
    """torch and torchvision as requirements/base.lock pins them."""
    found = {}
    for line in (ROOT / "requirements" / "base.lock").read_text().splitlines():
        for name in ("torch", "torchvision"):
            if line.startswith(f"{name}=="):
                found[name] = line.split("==")[1].split()[0]
    return found


def _nccl_version() -> str | None:
    import torch

    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _driver_version() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def nvjpeg_hardware() -> dict[str, Any]:
    """Whether torchvision's GPU JPEG decode uses nvJPEG's hardware engines here.

    torchvision's batched CUDA decoder (decode_jpegs_cuda.cpp) first asks for
    ``nvjpegCreateEx(NVJPEG_BACKEND_HARDWARE)`` and falls back to the CUDA-core backend when that fails;
    baseline JPEGs then go to the engines. This makes the same call on the libnvjpeg torchvision ships
    and reads ``nvjpegGetHardwareDecoderInfo``. In a container the engines also need the driver's
    ``video`` capability (NVIDIA_DRIVER_CAPABILITIES; docker/compose.gpu.yaml asks for it).
    """
    import ctypes
    import glob

    import torchvision

    caps = os.environ.get("NVIDIA_DRIVER_CAPABILITIES")
    where = Path(torchvision.__file__).parent
    libraries = sorted(glob.glob(str(where.parent / "torchvision.libs" / "libnvjpeg*.so*")))
    libraries += ["libnvjpeg.so"]
    found: dict[str, Any] = {"driver_capabilities": caps}
    for name in libraries:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        handle = ctypes.c_void_p()
        backend_hardware = 3  # nvjpegBackend_t NVJPEG_BACKEND_HARDWARE
        status = lib.nvjpegCreateEx(backend_hardware, None, None, 0, ctypes.byref(handle))
        found |= {"library": Path(name).name, "create_hardware_status": int(status)}
        if status == 0:
            engines, cores = ctypes.c_uint(), ctypes.c_uint()
            info = lib.nvjpegGetHardwareDecoderInfo(handle, ctypes.byref(engines), ctypes.byref(cores))
            found |= {"engines": engines.value, "cores_per_engine": cores.value, "info_status": int(info)}
            lib.nvjpegDestroy(handle)
        found["hardware_used"] = status == 0 and found.get("engines", 0) > 0
        return found
    return found | {"library": None, "hardware_used": False}


class _TestLines:
    """A pytest plugin: one JSON line per test outcome, as each finishes."""

    def __init__(self, emit: Lines) -> None:
        self.emit = emit

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            reason = ""
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = str(report.longrepr[2])
            elif report.failed:
                reason = str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else ""
            self.emit(
                "test",
                id=report.nodeid,
                outcome=report.outcome,
                seconds=round(report.duration, 2),
                why=reason,
            )


def phase_tests(emit: Lines, dry: bool) -> None:
    import pytest

    args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-o", "addopts=", *TESTS]
    for test in TEST_DESELECT:
        args += ["--deselect", test]
    if dry:  # the CPU stand-ins of test_cuda.py take minutes on 2 cores; the CUDA cases skip anyway
        args += ["-k", "cuda and not cpu"]
    # Only pytest's own plugins, as on the lent host's plain pytest (this venv's xdist, randomly, anyio,
    # hydra plugins would load, and be counted as imports the host lacks).
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    rc = pytest.main(args, plugins=[_TestLines(emit)])
    emit("tests_done", exit_code=int(rc))
    if int(rc) not in (0, 5):  # 5: nothing collected (a dry -k that selects nothing is not a failure)
        raise SystemExit(1)


def _device(dry: bool) -> Any:
    import torch

    return torch.device("cpu" if dry else "cuda")


def training_setup(name: str, dry: bool) -> tuple[Any, Any, Any, int | None, str, str, int]:
    """(Params, RunSetup, training split, micro_batch, precision, arch, batch) of config ``name``."""
    import yaml

    from benchmarks import throughput as tp
    from cecl.config import parse_params
    from cecl.pipeline import run_setup
    from cecl.runs import RunKey

    _, arch, batch, precision, micro = next(c for c in CONFIGS if c[0] == name)
    if dry:
        batch, micro = DRY_BATCH[arch], (DRY_MICRO if micro is not None else None)
    steps = 3 if dry else 12
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    compute = dict(raw.get("compute") or {})
    compute["autocast"] = "bf16" if precision == "bf16" else None
    compute["fused_optimizer"] = True
    compute["compile"] = False
    raw["compute"] = compute
    if arch == "small_cnn":
        entry = raw["pretrain"]["datasets"][0]
        dataset = raw["datasets"][entry]
        overrides = dataset.setdefault("overrides", {}).setdefault("pretrain", {})
        overrides["batch_size"] = batch
        if micro is not None:
            overrides["micro_batch"] = micro
        params = parse_params(raw, "params.yaml + gpu_session")
        setup = run_setup(params, RunKey(entry, "cecl", 0))
        spec = setup.spec
        train = tp.synthetic_split(batch * steps, spec.shape(), spec.n_classes, 0, bias=True)
        return params, setup, train, micro, precision, arch, batch
    workload = tp.cifar_workload(raw, arch, batch, batch * steps, 16, 0)
    setup = workload.setups["cecl"]
    if micro is not None:
        pretrain = setup.recipe.pretrain.model_copy(update={"micro_batch": micro})
        setup = tp.dataclasses.replace(setup, recipe=tp.dataclasses.replace(setup.recipe, pretrain=pretrain))
    # The plan's Params for the same entry: the benchmark's raw mapping with the cifar32 entry added.
    raw_plan = json.loads(json.dumps(raw))
    raw_plan["datasets"][tp.CIFAR_ENTRY] = {
        "family": "cifar10",
        "download": False,
        "train_size": 49_000,
        "val_size": 1000,
        "overrides": {"pretrain": {"batch_size": batch, **({"micro_batch": micro} if micro else {})}},
    }
    raw_plan["model"] = {**raw.get("model", {}), "backbone": arch, "backbone_options": {"cifar_stem": True}}
    raw_plan["pretrain"] = {**raw_plan["pretrain"], "datasets": [tp.CIFAR_ENTRY], "methods": ["cecl"]}
    params = parse_params(raw_plan, "params.yaml + gpu_session cifar32")
    return params, setup, workload.train, micro, precision, arch, batch


def plan_estimate(params: Any, entry: str, micro: int | None) -> tuple[float, float]:
    """``make plan``'s peak GiB for ``entry`` and the same without its assumed overhead factor and reserve
    (the saved tensors, weights, optimiser state and views it counts)."""
    from cecl.plan import estimate

    work, fp = estimate.workload(params, entry)
    del work
    peak = estimate._peak_gib(params, entry, fp, micro)
    activations = estimate._per_image_gib(params, entry, fp) * min(
        micro or params.recipe(entry).pretrain.batch_size, params.recipe(entry).pretrain.batch_size
    )
    saved = peak - estimate.RESERVED_GIB - activations * (1 - 1 / estimate.ACTIVATION_OVERHEAD)
    return peak, saved


def phase_train(emit: Lines, dry: bool, name: str) -> None:
    import torch

    from benchmarks import throughput as tp

    device = _device(dry)
    params, setup, train, micro, precision, arch, batch = training_setup(name, dry)
    entry = setup.key.dataset
    peak_plan, saved_plan = plan_estimate(params, entry, micro)
    emit("plan", arch=arch, batch=batch, precision=precision, micro_batch=micro, plan_peak_gib=peak_plan)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    replica = tp.LoopReplica(setup, train, tp.Settings(device=device))
    warmup, timed = (1, 1) if dry else (3, 5)
    for _ in range(warmup):
        replica()
    tp.sync(device)
    started = time.perf_counter()
    for _ in range(timed):
        replica()
    tp.sync(device)
    seconds = (time.perf_counter() - started) / timed
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    reserved = torch.cuda.max_memory_reserved() / 2**30 if cuda else None
    emit(
        "step",
        arch=arch,
        batch=batch,
        precision=precision,
        micro_batch=micro,
        images_per_s=replica.batch_size / seconds,
        ms_per_step=1000 * seconds,
        timed_steps=timed,
        peak_allocated_gib=peak,
        peak_reserved_gib=reserved,
        plan_peak_gib=peak_plan,
        plan_saved_gib=saved_plan,
    )
    syncs = tp.syncs_per_step(replica, device, steps=2)
    emit("syncs", arch=arch, batch=batch, precision=precision, micro_batch=micro, syncs_per_step=syncs)


def phase_decode(emit: Lines, dry: bool) -> None:
    """JPEG decode images/s with the ImageNet path's ``decode_on`` (nvJPEG on CUDA), ImageNet-like sizes."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from cecl.data.streaming import decode_on

    device = _device(dry)
    n, (h, w) = (8, (64, 80)) if dry else (128, (375, 500))  # ImageNet's median image is about 500 x 375
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n):
        smooth = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(smooth).resize((w, h), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
    names = [f"synthetic{i}.JPEG" for i in range(n)]
    decode_on(blobs, names, device)  # warm-up (nvJPEG handle, pinned buffers)
    repeats = 2 if dry else 10
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        decode_on(blobs, names, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    emit("decode", device=str(device), batch=n, size=f"{w}x{h}", images_per_s=n * repeats / seconds)
    _crops(emit, decode_on(blobs, names, device), 16 if dry else 224, repeats)


def _crops(emit: Lines, images: list, size: int, repeats: int) -> None:
    """Host and total ms per batch of the device path's crops (2 views per image, the SupContrast boxes):
    the per-view loop against the batched crop (cecl/data/resized_crops.py), and their largest difference
    in grey levels (at most 1 expected: rounding)."""
    import torch

    from cecl.data.augment import SUPCON_RECIPE, BatchAugment, Uniforms
    from cecl.data.resized_crops import batched_resized_crops
    from cecl.data.streaming import crop_boxes, per_view_crops

    device = images[0].device
    uniforms = torch.rand(len(images), 2, Uniforms.COLUMNS, generator=torch.Generator().manual_seed(0))
    boxes, _ = crop_boxes(images, uniforms, BatchAugment(SUPCON_RECIPE))
    outputs = {}
    for name, crop in (("per_view", per_view_crops), ("batched", batched_resized_crops)):
        outputs[name] = crop(images, boxes, size)  # warm-up
        _sync(device)
        host = total = 0.0
        for _ in range(repeats):
            started = time.perf_counter()
            crop(images, boxes, size)
            host += time.perf_counter() - started  # queued: what the host pays
            _sync(device)
            total += time.perf_counter() - started
        emit("crop", path=name, device=str(device), views=len(boxes), size=size,
             host_ms=1000 * host / repeats, total_ms=1000 * total / repeats)  # fmt: skip
    difference = (outputs["per_view"].int() - outputs["batched"].int()).abs().max()
    emit("crop_check", device=str(device), max_grey_levels=int(difference))


def phase_eval(emit: Lines, dry: bool) -> None:
    """The kNN monitor (ResNet-50 feature extraction + kNN) and probe evaluations at the paper's sizes."""
    import torch

    from cecl.eval.features import features_of
    from cecl.eval.linear_probe import fit_logistic
    from cecl.eval.monitor import knn_scores
    from cecl.models import build_backbone

    device = _device(dry)
    bank_n, val_n, classes = (32, 16, 10) if dry else (10_000, 10_000, 100)  # paper: monitor.train_size 10k
    encoder = build_backbone("resnet50", 3, (0.5,) * 3, (0.5,) * 3, {"cifar_stem": True}).to(device).eval()
    from cecl.datasets import TensorSplit

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (bank_n + val_n, 3, 32, 32), generator=g, dtype=torch.uint8)
    split = TensorSplit(
        images.to(device), torch.randint(0, classes, (bank_n + val_n,), generator=g).to(device)
    )
    autocast = None if dry else torch.bfloat16
    features_of(encoder, TensorSplit(split.images[:8], split.targets[:8]), autocast=autocast)  # warm-up
    _sync(device)
    started = time.perf_counter()
    features = features_of(encoder, split, autocast=autocast)
    _sync(device)
    extract = time.perf_counter() - started
    bank, queries = features[:bank_n], features[bank_n:]
    started = time.perf_counter()
    knn_scores(bank, split.targets[:bank_n], queries, classes, 200 if not dry else 5, 0.1)
    _sync(device)
    knn = time.perf_counter() - started
    emit(
        "knn_monitor",
        bank=bank_n,
        queries=val_n,
        dim=features.shape[1],
        extract_s=extract,
        knn_s=knn,
        monitor_s=extract + knn,
    )
    # One probe fit of a few L-BFGS iterations on CIFAR-100-sized features (50 000 x 2048, 100 classes):
    # seconds per iteration, the unit the plan's GPU_PROBE_EVAL_S / GPU_PROBE_UNIT_S assume.
    rows, dim = (64, 16) if dry else (50_000, 2048)
    x = torch.randn(rows, dim, generator=g).to(device)
    y = torch.randint(0, classes, (rows,), generator=g).to(device)
    fit_logistic(x[:256], y[:256], classes, 1e-4, max_iter=2)  # warm-up
    _sync(device)
    started = time.perf_counter()
    fit = fit_logistic(x, y, classes, 1e-4, max_iter=10)
    _sync(device)
    seconds = time.perf_counter() - started
    emit(
        "probe_eval",
        rows=rows,
        dim=dim,
        classes=classes,
        iterations=fit.iterations,
        seconds=seconds,
        s_per_iteration=seconds / max(1, fit.iterations),
    )


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def phase_checkpoint(emit: Lines, dry: bool) -> None:
    """Seconds to save a ResNet-50 (CIFAR stem) CECL training state as the loop does (save_checkpoint)."""
    import tempfile

    from benchmarks import throughput as tp
    from cecl.train.checkpoint import save_checkpoint

    device = _device(dry)
    _, setup, train, *_ = training_setup("rn50-cifar-bf16-b1024", dry)
    # One step fills the optimiser's momentum buffers (a checkpoint after an epoch holds them).
    replica = tp.LoopReplica(setup, train, tp.Settings(device))
    replica()
    training = replica.training
    state = {"method": training.method.state_dict(), "optimizer": training.optimizer.state_dict()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        times = []
        for _ in range(2 if dry else 3):
            started = time.perf_counter()
            save_checkpoint(path, state)
            times.append(time.perf_counter() - started)
        size = path.stat().st_size
    emit("checkpoint", mib=size / 2**20, seconds=min(times), seconds_each=times)


RUNNERS: dict[str, Callable[[Lines, bool], None]] = {
    "env": phase_env,
    "tests": phase_tests,
    "decode": phase_decode,
    "eval": phase_eval,
    "checkpoint": phase_checkpoint,
}


def run_one(phase: str, out: Path, dry: bool) -> None:
    emit = Lines(out / JSONL, phase)
    if phase.startswith("train:"):
        phase_train(emit, dry, phase.split(":", 1)[1])
    else:
        RUNNERS[phase](emit, dry)
    emit("imports", modules=sorted(third_party_modules()))


def third_party_modules() -> set[str]:
    """Top-level modules loaded now that are neither the standard library's nor this project's."""
    own = {"cecl", "benchmarks", "stages", "tests", "conftest", "__main__", "__mp_main__"}
    names = {name.split(".")[0] for name in list(sys.modules)}
    return {n for n in names if n not in sys.stdlib_module_names and n not in own and not n.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="every phase on the CPU at tiny sizes (or DRY=1)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-session"))
    parser.add_argument("--only", nargs="+", help="these phases (names or kinds: env, tests, train, ...)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = parser.parse_args(argv)
    dry = args.dry or os.environ.get("DRY", "0") not in ("", "0")
    if args.phase is not None:
        sys.path.insert(0, str(ROOT))
        run_one(args.phase, args.out, dry)
        return 0
    return orchestrate(args.out, dry, args.only)


if __name__ == "__main__":
    raise SystemExit(main())
