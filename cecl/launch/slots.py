"""Which Ray resources a stage holds while its ``dvc repro`` runs, and how many torch threads it gets.

One slot per training stage (``pretrain``, ``sweep``): a whole GPU on a GPU host, ``threads`` CPUs on a
CPU host. Light stages (prepare, probe, transfer, aggregate) take ``light_share`` of a slot, so several
of them share a GPU (or the CPUs) next to the training. Ray enforces the counts: on one host it is
started with exactly ``jobs`` slots, so at most ``jobs`` training stages are in flight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

TRAINING_KINDS = frozenset({"pretrain", "sweep"})


def stage_kind(stage: str) -> str:
    """``pretrain@bm-ce-0`` -> ``pretrain`` (the dvc.yaml stage a foreach/matrix item comes from)."""
    return stage.split("@", 1)[0]


def is_training(stage: str) -> bool:
    return stage_kind(stage) in TRAINING_KINDS


@dataclass(frozen=True)
class Slots:
    """``device``: what a slot is; ``jobs``: slots on this host (None on a cluster: Ray's counts);
    ``threads``: OMP/MKL/torch threads of every stage process; ``light_share``: a light stage's share."""

    device: Literal["gpu", "cpu"]
    jobs: int | None
    threads: int
    light_share: float = 0.25

    def task_resources(self, stage: str) -> dict[str, float]:
        """``ray.remote(...).options`` keyword arguments for this stage's task."""
        share = 1.0 if is_training(stage) else self.light_share
        if self.device == "gpu":
            return {"num_gpus": share, "num_cpus": 0}
        return {"num_cpus": share * self.threads}

    def local_ray_init(self) -> dict[str, float]:
        """``ray.init`` resources of a one-host launch: exactly ``jobs`` slots."""
        assert self.jobs is not None
        if self.device == "gpu":
            return {"num_gpus": self.jobs, "num_cpus": os.cpu_count() or 1}
        return {"num_cpus": self.jobs * self.threads, "num_gpus": 0}

    def describe(self) -> str:
        what = "GPU" if self.device == "gpu" else f"CPU slot(s) of {self.threads} thread(s)"
        count = f"{self.jobs} {what}" if self.jobs else f"cluster {what}s"
        return (
            f"{count}; light stages take {self.light_share:g} of a slot; {self.threads} torch thread(s) each"
        )


def host_gpus() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES respected), without initialising CUDA here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    import torch

    return torch.cuda.device_count()


def local_slots(jobs: int, device_param: str, threads: int | None, light_share: float) -> Slots:
    """Slots of a one-host launch: GPUs when params.yaml's device may use CUDA and the host has them."""
    cores = os.cpu_count() or 1
    per_slot = threads or max(1, cores // jobs)
    if device_param != "cpu":
        gpus = host_gpus()
        if gpus:
            if jobs > gpus:
                raise ValueError(f"--jobs {jobs} but this host has {gpus} GPU(s) (one per training stage)")
            return Slots("gpu", jobs, per_slot, light_share)
    return Slots("cpu", jobs, per_slot, light_share)


def cluster_slots(resources: dict[str, float], device_param: str, threads: int | None, light_share: float):
    """Slots on a Ray cluster: GPUs when it has any (and params allow CUDA), else ``threads`` CPUs each."""
    if device_param != "cpu" and resources.get("GPU", 0) > 0:
        return Slots("gpu", None, threads or 1, light_share)
    return Slots("cpu", None, threads or 1, light_share)
