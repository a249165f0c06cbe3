"""The cost plan: what a params file will cost (stages, images, FLOPs, peak memory, device-hours) before
anything runs, and the gate that stops a launch over a GPU-hour budget (``make plan``, ``cecl.launch``).

``python -m cecl.plan --profile gpu-day --device h100`` prints it; :func:`gate` is what ``make repro`` and
the launcher call first. The arithmetic is in ``estimate``, throughput figures in ``throughput.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path

from cecl.config import Params, load_params
from cecl.plan.estimate import EntryPlan, Plan, plan_params
from cecl.plan.report import format_plan, si

DEFAULT_MAX_GPU_HOURS = 24.0
GATE_DEVICE = "h100"


class OverBudget(ValueError):
    """The plan's GPU-hours exceed the limit the launch was given."""


class OverMemory(ValueError):
    """An entry's estimated peak memory exceeds the device's."""


def gate(
    params: Params, max_gpu_hours: float | None = DEFAULT_MAX_GPU_HOURS, device: str = GATE_DEVICE
) -> str:
    """One line with the plan's total; raises OverBudget / OverMemory (one line) before anything runs.

    ``max_gpu_hours`` None: no budget (the memory check still holds on a GPU plan).
    """
    plan = plan_params(params, device)
    over = plan.over_memory()
    if over:
        raise OverMemory(over[0].memory_advice())
    line = (
        f"plan: {plan.stages} stages, {si(plan.flops)}FLOPs of pretraining, about "
        f"{plan.gpu_hours:.3g} {device.upper()}-hours (python -m cecl.plan for the breakdown)"
    )
    if trains_on_cpu(params):  # H100-hours say nothing about a CPU run: point at the calibrated estimate
        line += "; it trains on this CPU: `make plan DEVICE=cpu CALIBRATE=1` estimates its time here (8 s)"
    if max_gpu_hours is not None and plan.gpu_hours > max_gpu_hours:
        raise OverBudget(
            f"{line}: over the {max_gpu_hours:g} GPU-hour limit; pass --max-gpu-hours "
            f"{math.ceil(plan.gpu_hours)} (make: MAX_GPU_HOURS={math.ceil(plan.gpu_hours)}) to run it anyway"
        )
    return line


def trains_on_cpu(params: Params) -> bool:
    """Whether ``params.device`` resolves to the CPU here (``cpu``, or ``auto`` without a CUDA device)."""
    import torch

    return params.device == "cpu" or (params.device == "auto" and not torch.cuda.is_available())


def parse_max_gpu_hours(text: str) -> float | None:
    """``--max-gpu-hours`` value: a number of hours, or ``none`` (no budget)."""
    if text.lower() in ("none", "inf", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--max-gpu-hours must be a number of hours or none, got {text!r}") from None
    if not value >= 0:
        raise ValueError(f"--max-gpu-hours must be 0 or more hours, or none (got {text})")
    return value


def gate_file(path: Path, max_gpu_hours: float | None) -> str:
    """:func:`gate` of the params file ``path``; raises ConfigError / OverBudget / OverMemory (one line)."""
    return gate(load_params(path), max_gpu_hours)


__all__ = [
    "DEFAULT_MAX_GPU_HOURS",
    "EntryPlan",
    "OverBudget",
    "OverMemory",
    "Plan",
    "format_plan",
    "gate",
    "gate_file",
    "parse_max_gpu_hours",
    "plan_params",
    "trains_on_cpu",
]
