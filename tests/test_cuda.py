"""The GPU checks: what the throughput issue asks to run on a GPU host, each with a CPU stand-in.

- Every registered method's training step on CUDA equals the same step on the CPU: same weights, same
  views, loss and gradients within float32 round-off (TF32 off: it trades 10 mantissa bits for speed).
- Every ``compute:`` option on CUDA changes how a step runs, not what it computes: bf16 autocast (float32
  loss close to float32's), torch.compile (equal to eager), the fused optimiser (torch's CUDA kernel, no
  fallback warning), channels_last (equal to NCHW).
- Two processes on CUDA train like one process on the global batch *with* BatchNorm, through the
  SyncBatchNorm path the loop takes on CUDA (nccl with one GPU each; on a one-GPU host, gloo with both on
  GPU 0, since nccl refuses two processes on one GPU). The data lives on the GPU, as the stage loads it.
- A multi-process stage refuses ``device: cuda:N`` (one GPU named for many processes), or more processes
  than GPUs, before it starts.

Each check that can run on a CPU also runs there (``-cpu`` ids: the same code with device cpu, so the CPU
suite exercises the logic; a CUDA-vs-CPU comparison then compares two CPU runs); the ``-cuda`` ids and
the SyncBatchNorm test skip without CUDA. benchmarks/gpu_session.py runs this file first on a lent GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from cecl import distributed as dist_utils
from cecl.data.augment import BatchAugment, make_views
from cecl.methods import available
from cecl.pipeline import RunSetup
from cecl.train import device as device_module
from cecl.train import loop
from tests.helpers import free_port, join_process_group, synthetic_split, tiny_params, tiny_setup, train_tiny

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA)")
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
DEVICES = [pytest.param(CPU, id="cpu"), pytest.param(CUDA, id="cuda", marks=needs_cuda)]
ROOT = Path(__file__).resolve().parent.parent
SMALL_QUEUE = {"queue_size": 64}
WORLD = 2
CASES = (("cecl", 31), ("ce", 32), ("supmoco", 32))  # 31 splits unevenly (16 + 15)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 (IEEE) matmuls and cuDNN convolutions on CUDA: torch lets cuDNN use TF32 by default.

    torch's fp32_precision API; the legacy ``allow_tf32`` flags must not be mixed with it."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def _setup(method: str, optimizer: dict | None = None, **compute: Any) -> RunSetup:
    """The tiny setup of ``method`` (batch 32; ``optimizer`` replaces the recipe's) with ``compute``."""
    pretrain: dict[str, Any] = {"batch_size": 32} | ({"optimizer": optimizer} if optimizer else {})
    params = tiny_params(
        pretrain=pretrain,
        method_options={"moco_v2": SMALL_QUEUE, "supmoco": SMALL_QUEUE, "nnclr": SMALL_QUEUE},
    )
    setup = tiny_setup(method, params)
    return dataclasses.replace(setup, compute=setup.compute.model_copy(update=compute))


def _step_on(setup: RunSetup, device: torch.device, steps: int = 1) -> tuple[loop.Training, list[float]]:
    """``steps`` of ``model_step`` on ``device`` on views made once on the CPU (the same for every device:
    CUDA's generator draws other numbers than the CPU's)."""
    training = loop.build_training(setup, device)  # seeded: the same initial weights on every device
    split = synthetic_split(32, 0)
    augment = BatchAugment(setup.recipe.augment) if training.method.augments else None
    views = make_views(split.images, training.method.n_views, augment, torch.Generator().manual_seed(0))
    views, labels = views.contiguous().to(device), split.targets.to(device)
    return training, [float(loop.model_step(training, views, labels)) for _ in range(steps)]


def _grads(training: loop.Training) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().cpu() for n, p in training.method.named_parameters() if p.grad is not None}


def _assert_grads_close(got: loop.Training, expected: loop.Training, rtol: float, atol: float) -> None:
    a, b = _grads(got), _grads(expected)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def test_no_tf32_uses_the_fp32_precision_api_and_restores_it() -> None:
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation of the legacy flags, no mixing error
        with _no_tf32():
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", available())
def test_every_method_steps_on_the_device_as_on_the_cpu(method: str, device: torch.device) -> None:
    with _no_tf32():
        got, (loss,) = _step_on(_setup(method), device)
    cpu, (cpu_loss,) = _step_on(_setup(method), CPU)
    assert math.isfinite(loss) and loss == pytest.approx(cpu_loss, rel=1e-4, abs=1e-6)
    _assert_grads_close(got, cpu, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["cecl", "supcon", "simclr", "ce"])
def test_bf16_autocast_gives_a_float32_loss_close_to_float32(method: str, device: torch.device) -> None:
    with _no_tf32():
        _, (reference,) = _step_on(_setup(method), device)
        training, (loss,) = _step_on(_setup(method, autocast="bf16"), device)
    assert training.autocast is torch.bfloat16
    assert math.isfinite(loss) and loss == pytest.approx(reference, rel=2e-2)
    assert loss != reference  # autocast did run


@pytest.mark.parametrize(
    "device",
    [pytest.param(CPU, id="cpu", marks=pytest.mark.slow), pytest.param(CUDA, id="cuda", marks=needs_cuda)],
)
def test_compiled_step_equals_eager(device: torch.device) -> None:
    with _no_tf32():
        eager, (eager_loss,) = _step_on(_setup("cecl"), device)
        compiled, (compiled_loss,) = _step_on(_setup("cecl", compile=True), device)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    _assert_grads_close(compiled, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizer_is_torchs_kernel_and_trains_like_the_default(
    name: str, device: torch.device
) -> None:
    optimizer = {"name": name, "lr": 0.05}
    with _no_tf32(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no fused kernel" fallback (torch has CPU and CUDA kernels)
        default, reference = _step_on(_setup("cecl", optimizer), device, steps=3)
        fused, losses = _step_on(_setup("cecl", optimizer, fused_optimizer=True), device, steps=3)
    assert fused.optimizer.defaults["fused"] is True and not default.optimizer.defaults.get("fused")
    assert losses == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_equals_nchw(device: torch.device) -> None:
    with _no_tf32():
        nhwc, (nhwc_loss,) = _step_on(_setup("cecl", channels_last=True), device)
        nchw, (nchw_loss,) = _step_on(_setup("cecl", channels_last=False), device)
    assert nhwc_loss == pytest.approx(nchw_loss, rel=1e-5)
    _assert_grads_close(nhwc, nchw, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- compute.deterministic
# In a fresh process each: cuBLAS reads CUBLAS_WORKSPACE_CONFIG when the process first uses it, and
# compute_mode sets it at the start of the run, as in a stage (the suite's process used CUDA long before).

DETERMINISTIC_RUN = """
import hashlib, io, json, sys
from pathlib import Path
import torch
from cecl.config import ModelParams
from cecl.train import loop
from cecl.train.device import compute_mode
from tests.helpers import synthetic_split, split_on, tiny_params, tiny_setup, train_tiny

cuda, out, folder = torch.device("cuda", 0), {}, Path(sys.argv[1])
for method in ("cecl", "supmoco", "ce"):  # group buckets (index_add_), a queue (index_put_), nll_loss
    run = train_tiny(method, 32, folder / f"{method}.ckpt", cuda, {"deterministic": True})
    buffer = io.BytesIO()
    torch.save(run["state"], buffer)
    out[method] = [run["losses"], hashlib.sha256(buffer.getvalue()).hexdigest()]
# torchvision's ResNet (AdaptiveAvgPool2d, strided convs): no op without a deterministic CUDA kernel.
model = ModelParams(backbone="resnet18", backbone_options={"cifar_stem": True}, proj_dim=16)
setup = tiny_setup("cecl", tiny_params().model_copy(update={"model": model}))
with compute_mode(True):
    training = loop.build_training(setup, cuda)
    epoch = loop.start_epoch(training, split_on(synthetic_split(64, 0), cuda), 0, 1)
    out["resnet18"] = [float(loop.train_step(training, epoch, s)) for s in range(2)]
print(json.dumps(out))
"""


@needs_cuda
@pytest.mark.slow
def test_deterministic_cuda_runs_are_byte_identical(tmp_path: Path) -> None:
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
        result = subprocess.run(
            [sys.executable, "-c", DETERMINISTIC_RUN, str(tmp_path / name)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "compute.deterministic" not in result.stderr  # the workspace was set in time
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0] == runs[1]
    assert all(math.isfinite(x) for x in runs[0]["resnet18"])


# --------------------------------------------------------------------------- two processes, SyncBatchNorm
# GPU only: SyncBatchNorm needs CUDA. The CPU counterpart (gloo, BatchNorm-free encoder, the same
# train_tiny) is tests/test_distributed_training.py.


def _worker(process: int, out_dir: str, port: int, backend: str) -> None:
    if backend == "nccl":  # the pipeline's own path: one GPU per process
        join_process_group(process, WORLD, port, device="cuda")
        device = dist_utils.device_for_rank(CUDA)
    else:  # one GPU: both processes on GPU 0 over gloo (nccl refuses two processes on one GPU)
        join_process_group(process, WORLD, port, backend="gloo")
        device = CUDA
    out = Path(out_dir)
    try:
        with _no_tf32():
            results = {m: train_tiny(m, size, out / f"{m}-rank{process}.ckpt", device) for m, size in CASES}
    finally:
        dist_utils.cleanup()
    torch.save(results, out / f"rank{process}.pt")


@needs_cuda
@pytest.mark.slow
def test_two_processes_on_cuda_train_like_one_with_sync_batchnorm(tmp_path: Path) -> None:
    backend = "nccl" if torch.cuda.device_count() >= WORLD else "gloo"
    mp.spawn(_worker, args=(str(tmp_path), free_port(), backend), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for method, size in CASES:
        with _no_tf32():
            reference = train_tiny(method, size, tmp_path / f"{method}-single.ckpt", CUDA)
        assert "BatchNorm2d" in reference["modules"]  # the tiny recipe's encoder has BatchNorm
        for r, got in enumerate(ranks):
            got = got[method]
            assert "SyncBatchNorm" in got["modules"], (method, r, got["modules"])
            assert got["state"].keys() == reference["state"].keys(), (method, r)
            assert got["losses"] == pytest.approx(reference["losses"], rel=1e-4), (method, r)
            # Every rank's buffers too (queues, SyncBatchNorm statistics): DDP does not broadcast them.
            for key, value in reference["state"].items():
                diff = float((got["state"][key].double() - value.double()).abs().max())
                assert diff <= 1e-4, f"{method} rank {r} ({backend}): {key} differs by {diff:.2e}"


# --------------------------------------------------------------------------- multi-process stage


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """``gpus(n)``: the real GPUs where there are some, else ``n`` pretended ones (resolve_device and
    torch.cuda.device_count agree), so the checks before the launch run on a CPU too."""

    def pretend(n: int) -> int:
        if torch.cuda.is_available():
            return torch.cuda.device_count()
        monkeypatch.setattr(device_module, "_cuda_available", lambda: (True, None))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        return n

    return pretend


def test_a_multi_process_stage_refuses_one_named_gpu(gpus) -> None:
    from stages.pretrain import launch_processes

    gpus(2)
    setup = tiny_setup("cecl", tiny_params(pretrain={"processes": 2}))
    with pytest.raises(ValueError, match=r"device 'cuda:0' names one GPU but pretrain.processes is 2"):
        launch_processes(setup, "cuda:0")


def test_a_multi_process_stage_refuses_more_processes_than_gpus(gpus) -> None:
    from stages.pretrain import launch_processes

    count = gpus(1)
    processes = count + 1
    setup = tiny_setup("cecl", tiny_params(pretrain={"processes": processes, "batch_size": 4 * processes}))
    with pytest.raises(ValueError, match=rf"pretrain.processes is {processes} but this host has {count} GPU"):
        launch_processes(setup, "cuda")
