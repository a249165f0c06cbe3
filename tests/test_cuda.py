"""GPU-only checks (each skips without CUDA): what the throughput issue asks to run on a GPU host.

- Every registered method's training step on CUDA equals the same step on the CPU: same weights, same
  views, loss and gradients within float32 round-off (TF32 off: it trades 10 mantissa bits for speed).
- Every ``compute:`` option on CUDA changes how a step runs, not what it computes: bf16 autocast (float32
  loss close to float32's), torch.compile (equal to eager), the fused optimiser (torch's CUDA kernel, no
  fallback warning), channels_last (equal to NCHW).
- Two processes on CUDA train like one process on the global batch *with* BatchNorm, through the
  SyncBatchNorm path the loop takes on CUDA (nccl with one GPU each; on a one-GPU host, gloo with both on
  GPU 0, since nccl refuses two processes on one GPU).
- A multi-process stage refuses ``device: cuda:N`` (one GPU named for many processes) before it starts.

The CPU suite covers the same code on the CPU (tests/test_compute_options.py, tests/test_distributed*.py);
benchmarks/gpu_session.sh runs this file first on a lent GPU machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
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
from cecl.train import loop
from tests.helpers import free_port, join_process_group, synthetic_split, tiny_params, tiny_setup, train_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CUDA)")

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
SMALL_QUEUE = {"queue_size": 64}
WORLD = 2
CASES = (("cecl", 31), ("ce", 32), ("supmoco", 32))  # 31 splits unevenly (16 + 15)


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA (torch lets cuDNN use TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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


@pytest.mark.parametrize("method", available())
def test_every_method_steps_on_cuda_as_on_the_cpu(method: str) -> None:
    with _no_tf32():
        cuda, (cuda_loss,) = _step_on(_setup(method), CUDA)
    cpu, (cpu_loss,) = _step_on(_setup(method), CPU)
    assert math.isfinite(cuda_loss) and cuda_loss == pytest.approx(cpu_loss, rel=1e-4, abs=1e-6)
    _assert_grads_close(cuda, cpu, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["cecl", "supcon", "simclr", "ce"])
def test_bf16_autocast_on_cuda_gives_a_float32_loss_close_to_float32(method: str) -> None:
    with _no_tf32():
        _, (reference,) = _step_on(_setup(method), CUDA)
        training, (loss,) = _step_on(_setup(method, autocast="bf16"), CUDA)
    assert training.autocast is torch.bfloat16
    assert math.isfinite(loss) and loss == pytest.approx(reference, rel=2e-2)
    assert loss != reference  # autocast did run


def test_compiled_step_on_cuda_equals_eager() -> None:
    with _no_tf32():
        eager, (eager_loss,) = _step_on(_setup("cecl"), CUDA)
        compiled, (compiled_loss,) = _step_on(_setup("cecl", compile=True), CUDA)
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    _assert_grads_close(compiled, eager, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_optimizer_is_torchs_cuda_kernel_and_trains_like_the_default(name: str) -> None:
    optimizer = {"name": name, "lr": 0.05}
    with _no_tf32(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no fused kernel" fallback on CUDA
        default, reference = _step_on(_setup("cecl", optimizer), CUDA, steps=3)
        fused, losses = _step_on(_setup("cecl", optimizer, fused_optimizer=True), CUDA, steps=3)
    assert fused.optimizer.defaults["fused"] is True and not default.optimizer.defaults.get("fused")
    assert losses == pytest.approx(reference, rel=1e-4)


def test_channels_last_on_cuda_equals_nchw() -> None:
    with _no_tf32():
        nhwc, (nhwc_loss,) = _step_on(_setup("cecl", channels_last=True), CUDA)
        nchw, (nchw_loss,) = _step_on(_setup("cecl", channels_last=False), CUDA)
    assert nhwc_loss == pytest.approx(nchw_loss, rel=1e-5)
    _assert_grads_close(nhwc, nchw, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- two processes, SyncBatchNorm


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
            for key, value in reference["state"].items():
                diff = float((got["state"][key].double() - value.double()).abs().max())
                assert diff <= 1e-4, f"{method} rank {r} ({backend}): {key} differs by {diff:.2e}"


def test_a_multi_process_stage_refuses_one_named_gpu() -> None:
    from stages.pretrain import launch_processes

    setup = tiny_setup("cecl", tiny_params(pretrain={"processes": 2}))
    with pytest.raises(ValueError, match=r"device 'cuda:0' names one GPU but pretrain.processes is 2"):
        launch_processes(setup, "cuda:0")
