"""Device selection: auto falls back to the CPU, loudly inside the container; cuda without a GPU fails."""

from __future__ import annotations

import pytest
import torch

from cecl.train.device import CONTAINER_ENV, resolve_device


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_without_a_gpu_is_the_cpu_quietly_on_a_host(no_gpu, monkeypatch, capsys) -> None:
    monkeypatch.delenv(CONTAINER_ENV, raising=False)
    assert resolve_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""


def test_auto_without_a_gpu_in_the_container_says_so(no_gpu, monkeypatch, capsys) -> None:
    monkeypatch.setenv(CONTAINER_ENV, "1")
    assert resolve_device("auto") == torch.device("cpu")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU is visible in this container" in err[0] and "--gpus all" in err[0]


def test_cuda_without_a_gpu_fails_at_start_with_one_line(no_gpu) -> None:
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
