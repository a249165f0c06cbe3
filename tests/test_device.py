"""Device selection and the run-wide GPU settings (cecl/train/device.py).

``device: cuda`` without a usable GPU fails with one line naming the cause; every cause is checked here
on the CPU by injecting the probed facts into the pure ``cuda_unusable_reason``, and once for real on
this machine. ``auto`` falls back to the CPU quietly only where no NVIDIA driver is in sight.
``compute.deterministic`` turns torch's deterministic mode on for a run, restores it after, and leaves
a CPU run's bytes unchanged. Under torchrun the process group has a timeout and is bound to the rank's
GPU, and only rank 0 sets a corrupt checkpoint aside.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest
import torch

from cecl.train import device as device_module
from cecl.train.device import (
    CONTAINER_ENV,
    CUBLAS_WORKSPACE_ENV,
    CudaFacts,
    compute_mode,
    cuda_unusable_reason,
    hides_all_gpus,
    parse_driver_version,
    probe_cuda,
    resolve_device,
)
from tests.helpers import train_tiny

CPU = torch.device("cpu")
# A bare-metal host with a working install of this torch's CUDA major version, but no usable GPU.
HOST = CudaFacts(
    torch_cuda="13.2",
    driver="580.65.06",
    nvidia_smi=True,
    visible_devices=None,
    device_nodes=1,
    in_container=False,
)
NO_DRIVER = dataclasses.replace(HOST, driver=None, nvidia_smi=False, device_nodes=0)


def _facts(monkeypatch: pytest.MonkeyPatch, facts: CudaFacts, available: bool = False) -> None:
    """Make resolve_device see ``facts`` and torch.cuda.is_available() == ``available``."""
    monkeypatch.setattr(device_module, "_cuda_available", lambda: (available, facts.torch_error))
    monkeypatch.setattr(device_module, "probe_cuda", lambda error=None: facts)


# --------------------------------------------------------------------------- the facts


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
            "535.104.05",
        ),
        (
            "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
            "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\n",
            "580.65.06",
        ),
        ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  570.86  Thu Jan 1\n", "570.86"),
        ("", None),
        ("something else entirely\n", None),
    ],
)
def test_the_driver_version_is_read_from_proc(text: str, version: str | None) -> None:
    assert parse_driver_version(text) == version


@pytest.mark.parametrize(
    ("visible", "hidden"),
    [
        *[(None, False), ("0", False), ("1,0", False), ("GPU-5c2e", False), ("MIG-9a1b", False)],
        *[("", True), (" ", True), ("-1", True), ("NoDevFiles", True), ("-1,0", True)],
    ],
)
def test_cuda_visible_devices_hiding_every_gpu(visible: str | None, hidden: bool) -> None:
    assert hides_all_gpus(visible) is hidden


# --------------------------------------------------------------------------- the cause, one line each

CAUSES = [
    (NO_DRIVER, "no NVIDIA driver on this host (/proc/driver/nvidia/version and nvidia-smi are absent)"),
    (
        dataclasses.replace(HOST, driver="535.104.05"),
        "the NVIDIA driver 535.104.05 is too old for this torch's CUDA 13.2 (needs driver >= 580)",
    ),
    (dataclasses.replace(HOST, torch_cuda="12.8", driver="520.61.05"), "needs driver >= 525"),
    (dataclasses.replace(HOST, visible_devices=""), "CUDA_VISIBLE_DEVICES='' hides every GPU"),
    (dataclasses.replace(HOST, visible_devices="-1"), "CUDA_VISIBLE_DEVICES='-1' hides every GPU"),
    (dataclasses.replace(NO_DRIVER, in_container=True), "no NVIDIA driver is visible in this container"),
    (
        dataclasses.replace(HOST, in_container=True, device_nodes=0),
        "this container has no GPU device (/dev/nvidia* absent)",
    ),
    (dataclasses.replace(HOST, torch_cuda=None), "is a CPU-only build"),
    (
        dataclasses.replace(HOST, torch_error="CUDA initialization: CUDA unknown error"),
        "CUDA is not usable although NVIDIA driver 580.65.06 is installed: CUDA initialization: CUDA unknown",
    ),
    (
        dataclasses.replace(HOST, driver=None),
        "although an NVIDIA driver (nvidia-smi) is installed: torch.cuda.is_available() is False",
    ),
]


@pytest.mark.parametrize(("facts", "expected"), CAUSES)
def test_each_cause_is_named(facts: CudaFacts, expected: str) -> None:
    reason = cuda_unusable_reason(facts)
    assert expected in reason and "\n" not in reason


def test_a_recent_enough_driver_is_not_called_too_old() -> None:
    for driver in ("580.65.06", "580.82.07", "590.44.01"):
        assert "too old" not in cuda_unusable_reason(dataclasses.replace(HOST, driver=driver))


@pytest.mark.parametrize(("facts", "expected"), CAUSES)
def test_cuda_without_a_usable_gpu_fails_at_start_with_one_line(monkeypatch, facts, expected) -> None:
    _facts(monkeypatch, facts)
    with pytest.raises(ValueError) as caught:
        resolve_device("cuda")
    message = str(caught.value)
    assert message.startswith("device 'cuda' requested but CUDA is not usable here: ")
    assert expected in message and "\n" not in message


def test_the_real_probe_on_this_machine(capsys) -> None:
    """No mocks: what this machine's probe finds, and the one line ``cuda`` gives when CUDA is not usable."""
    facts = probe_cuda()
    assert facts.torch_cuda == torch.version.cuda
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda")
        return
    with pytest.raises(ValueError) as caught:
        resolve_device("cuda")
    assert str(caught.value).endswith(cuda_unusable_reason(facts))
    assert "\n" not in str(caught.value)
    assert capsys.readouterr().err == ""  # torch's own warning is folded into the line, not printed


def test_a_gpu_index_beyond_the_visible_ones_fails(monkeypatch) -> None:
    _facts(monkeypatch, HOST, available=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"device 'cuda:1' requested but only 1 GPU\(s\) are visible"):
        resolve_device("cuda:1")


# --------------------------------------------------------------------------- auto


def test_auto_without_a_driver_is_the_cpu_quietly_on_a_host(monkeypatch, capsys) -> None:
    _facts(monkeypatch, NO_DRIVER)
    assert resolve_device("auto") == CPU
    assert capsys.readouterr().err == ""


def test_auto_without_a_gpu_in_the_container_says_so(monkeypatch, capsys) -> None:
    _facts(monkeypatch, dataclasses.replace(NO_DRIVER, in_container=True))
    assert resolve_device("auto") == CPU
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NVIDIA driver is visible in this container" in err[0]
    assert "--gpus all" in err[0]


@pytest.mark.parametrize(
    "facts",
    [dataclasses.replace(HOST, driver="535.104.05"), HOST, dataclasses.replace(HOST, driver=None)],
    ids=["old-driver", "unusable", "nvidia-smi-only"],
)
def test_auto_with_a_driver_but_no_usable_cuda_warns_on_a_bare_metal_host(monkeypatch, capsys, facts) -> None:
    """Not only in the container: a GPU host whose driver is too old must not start a CPU run silently."""
    _facts(monkeypatch, facts)
    assert resolve_device("auto") == CPU
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: device auto: running on the CPU: ")
    assert cuda_unusable_reason(facts) in err[0]


def test_auto_with_every_gpu_hidden_on_purpose_is_quiet(monkeypatch, capsys) -> None:
    """CUDA_VISIBLE_DEVICES='' is a choice (a CPU slot on a GPU host), not a fault."""
    _facts(monkeypatch, dataclasses.replace(HOST, visible_devices=""))
    assert resolve_device("auto") == CPU
    assert capsys.readouterr().err == ""


def test_auto_with_cuda_is_cuda(monkeypatch) -> None:
    _facts(monkeypatch, HOST, available=True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == CPU


def test_the_image_marker_is_the_container_flag(monkeypatch) -> None:
    monkeypatch.setenv(CONTAINER_ENV, "1")
    assert probe_cuda().in_container
    monkeypatch.delenv(CONTAINER_ENV)
    assert not probe_cuda().in_container


# --------------------------------------------------------------------------- compute.deterministic


def _settings() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get(CUBLAS_WORKSPACE_ENV),
    )


def test_compute_mode_sets_and_restores(monkeypatch) -> None:
    monkeypatch.delenv(CUBLAS_WORKSPACE_ENV, raising=False)
    before = _settings()
    assert before[0] is False
    with compute_mode(deterministic=True):
        assert _settings() == (True, False, True, ":4096:8")
    assert _settings() == before
    with compute_mode(deterministic=False):
        assert _settings() == (False, True, False, None)  # the autotuner: the GPU's speed default
    assert _settings() == before
    with pytest.raises(RuntimeError, match="boom"), compute_mode(deterministic=True):
        raise RuntimeError("boom")
    assert _settings() == before


def test_a_deterministic_workspace_set_by_the_user_is_kept(monkeypatch) -> None:
    monkeypatch.setenv(CUBLAS_WORKSPACE_ENV, ":16:8")
    with compute_mode(deterministic=True):
        assert os.environ[CUBLAS_WORKSPACE_ENV] == ":16:8"
    assert os.environ[CUBLAS_WORKSPACE_ENV] == ":16:8"


def _payload_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("method", ["cecl", "supmoco"])  # group buckets (index_add_); a queue (index_put_)
def test_deterministic_is_on_inside_a_run_and_a_cpu_run_keeps_its_bytes(method: str, tmp_path: Path) -> None:
    seen: list[bool] = []

    def record(_epoch: object) -> None:
        seen.append(torch.are_deterministic_algorithms_enabled())

    plain = train_tiny(method, 32, tmp_path / "plain.ckpt", CPU, on_epoch=record)
    strict = train_tiny(method, 32, tmp_path / "strict.ckpt", CPU, {"deterministic": True}, record)
    assert seen == [False, False, True, True]  # on in every epoch of the deterministic run only
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    assert strict["losses"] == plain["losses"] and strict["accuracies"] == plain["accuracies"]
    assert _payload_bytes(strict["state"]) == _payload_bytes(plain["state"])


# --------------------------------------------------------------------------- torchrun: group and checkpoint


@pytest.mark.parametrize(("device", "backend"), [("cpu", "gloo"), ("cuda", "nccl")])
def test_the_process_group_has_a_timeout_and_is_bound_to_this_ranks_gpu(monkeypatch, device, backend) -> None:
    from cecl import distributed

    calls: list[dict] = []
    bound: list[torch.device] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.init_from_env(torch.device(device))
    (call,) = calls
    assert call["backend"] == backend and call["timeout"] == distributed.PROCESS_GROUP_TIMEOUT
    gpu = torch.device("cuda", 1) if backend == "nccl" else None
    assert call["device_id"] == gpu and bound == ([gpu] if gpu else [])


def test_only_rank_0_sets_a_corrupt_checkpoint_aside(monkeypatch, tmp_path: Path, capsys) -> None:
    """Every rank reads the checkpoint; rank 0 alone renames a bad one (no rank fails on a file another
    rank has just moved) and warns; every rank starts from scratch."""
    from cecl.train import checkpoint

    path = tmp_path / "run.ckpt"
    path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(checkpoint, "is_main_process", lambda: False)
    assert checkpoint.load_checkpoint(path, "fp") is None
    assert path.exists() and not path.with_name("run.ckpt.corrupt").exists()
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(checkpoint, "is_main_process", lambda: True)
    assert checkpoint.load_checkpoint(path, "fp") is None
    assert not path.exists() and path.with_name("run.ckpt.corrupt").exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    monkeypatch.setattr(checkpoint, "is_main_process", lambda: False)
    assert checkpoint.load_checkpoint(path, "fp") is None  # a rank late to read: the file has gone
