"""Device selection: ``auto`` picks CUDA when present, else CPU; the same code runs on both."""

from __future__ import annotations

import os
import sys

import torch

# Set by docker/Dockerfile. Inside the image a missing GPU usually means `docker run` without `--gpus all`
# (or a host driver too old for the CUDA 13 wheels), not a CPU-only machine, so ``auto`` says so.
CONTAINER_ENV = "CECL_CONTAINER"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get(CONTAINER_ENV):
            print(
                "warning: device auto: no GPU is visible in this container, running on the CPU "
                "(start it with `docker run --gpus all` / docker/compose.gpu.yaml; the host's NVIDIA "
                "driver must support CUDA 13, see README Container)",
                file=sys.stderr,
                flush=True,
            )
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return device
