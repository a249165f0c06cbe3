"""Which Ray resources a stage holds while its ``dvc repro`` runs, and how many torch threads it gets.

A slot is a whole GPU on a GPU host and ``threads`` CPUs on a CPU host. A pretrain stage holds as many
slots as its dataset entry's recipe has ``pretrain.processes`` (``datasets.<entry>.overrides.pretrain.
processes``, else the global one): stages/pretrain.py runs that many torchrun processes on the GPUs it
sees, and Ray sets CUDA_VISIBLE_DEVICES of the task, which the stage's ``dvc`` and its processes inherit,
to exactly those GPUs. The ``sweep`` stage holds one slot on a CPU host and ``ceil(sweep.gpus_per_trial x
sweep.max_concurrent)`` GPUs on a GPU host, at most the launch's largest (its own Ray sees only the GPUs
the launcher's gave it, so a smaller slot would run its trials one after another; a host with fewer GPUs
runs fewer at once). Light stages (prepare, probe, transfer, aggregate)
take ``light_share`` of a slot, so several share a GPU (or the CPUs) next to the training; on a GPU host
a probe or transfer stage whose planned final-probe memory (cecl/plan ``probe_stage_gib``) exceeds
``light_share`` of the card (the plan's smallest card, ``CARD``) holds a whole GPU instead, so that two
large probes never share one. Ray enforces the counts: on one host it is started with exactly ``jobs``
slots.

On a CPU host a ``processes: k`` entry holds k CPU slots (k x ``threads`` CPUs): torchrun's k gloo
processes each keep the slot's OMP_NUM_THREADS (torchrun sets 1 only when it is unset), so the stage uses
what it holds. A stage needing more slots than one launch host has (``--jobs``, or the largest node of a
cluster, since torchrun ``--standalone`` runs on one host) is refused before anything starts
(:meth:`Slots.check`): Ray would otherwise queue it forever.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from cecl.config import Params

TRAINING_KINDS = frozenset({"pretrain", "sweep"})
GPU_SIZED_KINDS = frozenset({"sweep", "probe", "transfer"})  # their ``sizes`` hold on GPU hosts only
CARD = "h100"  # the card whose memory a probe's share is judged against (cecl/plan/throughput.yaml)


def stage_kind(stage: str) -> str:
    """``pretrain@bm-ce-0`` -> ``pretrain`` (the dvc.yaml stage a foreach/matrix item comes from)."""
    return stage.split("@", 1)[0]


def is_training(stage: str) -> bool:
    return stage_kind(stage) in TRAINING_KINDS


def sweep_gpus(gpus_per_trial: float, max_concurrent: int) -> int:
    """GPUs the sweep stage holds on a GPU host: all its concurrent trials' reservations, at least one."""
    return max(1, math.ceil(gpus_per_trial * max_concurrent - 1e-9))  # 0.1 x 10 is 1.0000000000000002


def stage_sizes(params: Params, light_share: float = 0.25, card_gib: float | None = None) -> dict[str, int]:
    """Slots of the stages that hold other than one (training) or ``light_share`` (light) slot.

    Pretrain stages: their entry's recipe ``pretrain.processes`` (one GPU per process), on any host. On a
    GPU host only (:data:`GPU_SIZED_KINDS`, see :meth:`Slots.slots`): the sweep, :func:`sweep_gpus`; a
    probe or transfer stage whose planned probe memory exceeds ``light_share`` of ``card_gib`` (default:
    :data:`CARD`'s memory), one whole GPU. Keyed by the DVC stage names :mod:`cecl.runs` derives
    (``pretrain@<entry>-<method>-<seed>``), so the dataset entry never has to be parsed back out of a
    name (entry names may contain ``-``).
    """
    from cecl.plan.estimate import probe_stage_gib
    from cecl.plan.throughput import device_memory_gib

    processes = {name: params.recipe(name).pretrain.processes for name in params.pretrain.datasets}
    sizes = {key.stage("pretrain"): processes[key.dataset] for key in params.runs()}
    if (sweep := sweep_gpus(params.sweep.gpus_per_trial, params.sweep.max_concurrent)) > 1:
        sizes["sweep"] = sweep
    card = device_memory_gib(CARD) if card_gib is None else card_gib
    assert card is not None
    sizes |= {stage: 1 for stage, gib in probe_stage_gib(params).items() if gib > light_share * card}
    return sizes


@dataclass(frozen=True)
class Slots:
    """``device``: what a slot is; ``jobs``: slots on this host (None on a cluster: Ray's counts);
    ``threads``: OMP/MKL/torch threads per slot; ``light_share``: a light stage's share of a slot;
    ``sizes``: slots of the stages that hold other than the default (:func:`stage_sizes`); ``largest``:
    the most slots one stage can hold (``jobs``, or the largest cluster node's), ``limit``: that limit in
    words."""

    device: Literal["gpu", "cpu"]
    jobs: int | None
    threads: int
    light_share: float = 0.25
    sizes: Mapping[str, int] = field(default_factory=dict)
    largest: int | None = None
    limit: str = ""

    def slots(self, stage: str) -> float:
        """Slots ``stage`` holds: its ``sizes`` entry (pretrain on any host; sweep, probe, transfer on a GPU
        host only), else 1 (training) or ``light_share`` (light stages)."""
        default = 1 if is_training(stage) else self.light_share
        if stage_kind(stage) in GPU_SIZED_KINDS and self.device != "gpu":
            return default
        if stage_kind(stage) == "sweep" and self.largest is not None:
            # unlike torchrun's fixed process count, Ray queues the trials that do not fit: a smaller
            # host runs fewer at once instead of refusing the sweep
            return min(self.sizes.get(stage, default), max(1, self.largest))
        return self.sizes.get(stage, default)

    def task_resources(self, stage: str) -> dict[str, float]:
        """``ray.remote(...).options`` keyword arguments for this stage's task."""
        share = self.slots(stage)
        if self.device == "gpu":
            return {"num_gpus": share, "num_cpus": 0}
        return {"num_cpus": share * self.threads}

    def check(self, stages: Iterable[str]) -> None:
        """Raise ValueError (one line) for the first stage that needs more slots than one host gives."""
        if self.largest is None:
            return
        for stage in stages:
            need = self.slots(stage)
            if need > self.largest:
                unit = "GPUs" if self.device == "gpu" else "CPU slots"
                why, fix = {
                    "sweep": ("sweep.gpus_per_trial x sweep.max_concurrent", "lower sweep.max_concurrent"),
                }.get(
                    stage_kind(stage),
                    ("its dataset entry's pretrain.processes", "lower the entry's processes"),
                )
                raise ValueError(
                    f"stage '{stage}' needs {need:g} {unit} ({why}) but {self.limit}: raise --jobs on a "
                    f"larger host, or {fix}"
                )

    def local_ray_init(self) -> dict[str, float]:
        """``ray.init`` resources of a one-host launch: exactly ``jobs`` slots."""
        assert self.jobs is not None
        if self.device == "gpu":
            return {"num_gpus": self.jobs, "num_cpus": os.cpu_count() or 1}
        return {"num_cpus": self.jobs * self.threads, "num_gpus": 0}

    def describe(self) -> str:
        what = "GPU" if self.device == "gpu" else f"CPU slot(s) of {self.threads} thread(s)"
        count = f"{self.jobs} {what}" if self.jobs else f"cluster {what}s"
        multi = sorted({n for stage, n in self.sizes.items() if n > 1 and stage_kind(stage) == "pretrain"})
        held = (
            f"; pretrain stages of multi-process entries hold {'/'.join(map(str, multi))} slots"
            if multi
            else ""
        )
        if self.device == "gpu":
            if self.sizes.get("sweep", 1) > 1:
                held += f"; the sweep holds {self.slots('sweep'):g} GPU(s) (asks {self.sizes['sweep']})"
            whole = sum(1 for stage in self.sizes if stage_kind(stage) in {"probe", "transfer"})
            if whole:
                held += f"; {whole} large probe stage(s) hold a whole GPU each"
        return (
            f"{count}; light stages take {self.light_share:g} of a slot{held}; "
            f"{self.threads} torch thread(s) per slot"
        )


def host_gpus() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES respected), without initialising CUDA here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    import torch

    return torch.cuda.device_count()


def local_slots(
    jobs: int,
    device_param: str,
    threads: int | None,
    light_share: float,
    sizes: Mapping[str, int] | None = None,
) -> Slots:
    """Slots of a one-host launch: GPUs when params.yaml's device may use CUDA and the host has them."""
    cores = os.cpu_count() or 1
    per_slot = threads or max(1, cores // jobs)
    sizes = dict(sizes or {})
    if device_param != "cpu":
        gpus = host_gpus()
        if gpus:
            if jobs > gpus:
                raise ValueError(f"--jobs {jobs} but this host has {gpus} GPU(s) (one per training process)")
            limit = f"--jobs is {jobs} (this host has {gpus} GPU(s))"
            return Slots("gpu", jobs, per_slot, light_share, sizes, jobs, limit)
    return Slots("cpu", jobs, per_slot, light_share, sizes, jobs, f"--jobs is {jobs}")


def cluster_slots(
    nodes: Sequence[Mapping[str, float]],
    device_param: str,
    threads: int | None,
    light_share: float,
    sizes: Mapping[str, int] | None = None,
) -> Slots:
    """Slots on a Ray cluster (``nodes``: each live node's resources): GPUs when it has any (and params
    allow CUDA), else ``threads`` CPUs each. A stage fits on one node only (torchrun ``--standalone``)."""
    per_slot = threads or 1
    sizes = dict(sizes or {})
    if device_param != "cpu" and any(n.get("GPU", 0) > 0 for n in nodes):
        largest = max(int(n.get("GPU", 0)) for n in nodes)
        limit = f"the cluster's largest node has {largest} GPU(s)"
        return Slots("gpu", None, per_slot, light_share, sizes, largest, limit)
    largest = max((int(n.get("CPU", 0) // per_slot) for n in nodes), default=0)
    limit = f"the cluster's largest node has {largest} CPU slot(s) of {per_slot} thread(s)"
    return Slots("cpu", None, per_slot, light_share, sizes, largest, limit)
