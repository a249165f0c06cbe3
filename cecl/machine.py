"""What machine computed a number: recorded with every MLflow run and in every probe's metrics.json.

CPU float reductions differ between vector ISAs (AVX-512 vs AVX2 kernels) and thread counts, so two
machines train slightly different encoders from the same data; these fields let `make compare` and a
reader trace a difference to its machine. Byte-identical outputs are promised only for the same CPU
model, ISA, thread count and torch build.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's ``model name``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    """CPU model, its vector ISA as torch uses it, torch threads, torch / CUDA versions and the GPU model."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info = {
        "cpu_model": cpu_model(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "gpu": gpu,
    }
    # plain str: torch.__version__ is a str subclass that torch.load(weights_only=True) refuses
    return {key: str(value) for key, value in info.items()}
