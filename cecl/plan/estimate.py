"""The cost plan of a params file: per dataset entry and in total, before anything runs.

Compute is counted in encoder-forward units (one image through the encoder once; its MACs from
``footprint``): a trained image costs 1 + 2 (backward), +1 under gradient caching; a momentum target or key
encoder pass costs 1 (``method_passes``, counted on the real methods); the per-epoch monitor re-extracts
features of its training subset and the validation split on each epoch it evaluates (1 each), the probe
and transfer stages once per split. Seconds = units / (3 x trained images per second) from the throughput
table, plus the linear-probe fits (probe units x seconds per unit: one linear forward + backward over
PROBE_ROWS feature rows; the final probe's L-BFGS grid costs strengths x LBFGS_ITERATIONS_PER_STRENGTH x
rows / PROBE_ROWS, the monitor's one-strength fit MONITOR_LBFGS_ITERATIONS x rows / PROBE_ROWS).
GPU-hours add up over the processes of a run, so they do not depend on how many GPUs share the work.

Peak memory per process = saved activations per image x images in one forward x ACTIVATION_OVERHEAD
+ parameters, gradients and optimiser state (+ momentum copies) + the batch's float views + RESERVED_GIB
(CUDA context, cuDNN workspace). The overhead factor and the reserve are assumptions until a GPU run
measures them (benchmarks/gpu_session.py); they are printed with every plan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from cecl import runs
from cecl.config import MonitorParams, Params, ProbeParams
from cecl.datasets.store import MANIFEST
from cecl.eval.monitor import MONITOR_PROBE, resolved_kind
from cecl.plan.footprint import Footprint, feature_dim, footprint
from cecl.plan.method_passes import MethodPasses, method_passes
from cecl.plan.throughput import (
    Throughput,
    Workload,
    device_memory_gib,
    lookup,
    min_step_seconds,
    stage_overhead_seconds,
)

GIB = 2**30
ACTIVATION_OVERHEAD = 1.3  # transient backward buffers and allocator fragmentation over the saved tensors
RESERVED_GIB = 1.5  # CUDA context and cuDNN workspace, outside the tensors
# ASSUMED until a GPU measures them (benchmarks/gpu_session.py): a full-batch L-BFGS evaluation on a GPU is
# launch-bound (about 40 small kernels and the line search's host reads) plus its rows' float64 products
# (256 rows x 2048 features x 1000 classes x 6 FLOP at about 50 TFLOP/s: ImageNet's worst case).
GPU_PROBE_EVAL_S = 0.003
GPU_PROBE_UNIT_S = 0.00005


@dataclass(frozen=True)
class Costs:
    """Compute of one part of the work: encoder-forward units, probe units (PROBE_ROWS rows through the
    probe once) and probe function evaluations (full-batch L-BFGS steps)."""

    units: float = 0.0
    probe_steps: float = 0.0
    probe_evals: float = 0.0

    def __add__(self, other: Costs) -> Costs:
        return Costs(
            self.units + other.units,
            self.probe_steps + other.probe_steps,
            self.probe_evals + other.probe_evals,
        )

    def __mul__(self, k: float) -> Costs:
        return Costs(self.units * k, self.probe_steps * k, self.probe_evals * k)

    def probe_seconds(self, unit_s: float | None) -> float:
        """Seconds of the probe fits: ``unit_s`` per unit where measured (a calibrated CPU, whose cost
        grows with the rows), else the GPU's assumed per-evaluation and per-unit costs."""
        if unit_s is not None:
            return self.probe_steps * unit_s
        return self.probe_evals * GPU_PROBE_EVAL_S + self.probe_steps * GPU_PROBE_UNIT_S


@dataclass
class EntryPlan:
    """One dataset entry's pretraining (all methods x seeds) with its probes."""

    entry: str
    describe: str
    work: Workload
    footprint: Footprint
    runs: int
    epochs: int
    batch: int
    processes: int
    micro_batch: int | None
    train_images: int
    sizes_from: str  # prepared | expected | upper bound | unknown (not counted)
    costs: Costs
    throughput: Throughput
    peak_gib: float
    memory_gib: float | None
    fitting_micro_batch: int | None  # the largest micro_batch that fits, when the entry does not
    seconds: float = 0.0
    probe_gib: float = 0.0  # the final linear probe's peak (probe_memory_bytes); 0: no probe (joint)

    @property
    def probe_fits(self) -> bool:
        return self.memory_gib is None or self.probe_gib <= self.memory_gib

    @property
    def flops(self) -> float:
        return 2.0 * self.costs.units * self.footprint.macs

    @property
    def images_trained(self) -> int:
        """Source images drawn for training over all runs and epochs."""
        return self.runs * self.epochs * (self.train_images // self.batch) * self.batch

    @property
    def fits(self) -> bool:
        return self.memory_gib is None or self.peak_gib <= self.memory_gib

    def memory_advice(self) -> str:
        """One line: why the entry does not fit and what makes it fit."""
        assert self.memory_gib is not None
        return memory_advice(
            self.entry,
            self.peak_gib,
            self.memory_gib,
            self.fitting_micro_batch,
            self.work.precision,
            self.processes,
        )


def memory_advice(
    entry: str, peak: float, memory: float, fitting: int | None, precision: str, processes: int
) -> str:
    """One line: the entry's estimated peak over the device's memory, and the settings that fix it."""
    fixes = []
    if fitting is not None:
        fixes.append(f"pretrain.micro_batch: {fitting}")
    if precision == "fp32":
        fixes.append("compute.autocast: bf16")
    fixes.append(f"pretrain.processes: {processes * 2} or more")
    return (
        f"{entry}: estimated peak {peak:.1f} GiB per GPU exceeds {memory:.1f} GiB; "
        f"set {' or '.join(fixes)} (datasets.{entry}.overrides)"
    )


def check_fits(params: Params, entry: str, memory_gib: float) -> None:
    """Raise ValueError (one line with the fix) when ``entry``'s estimated peak exceeds ``memory_gib``:
    what a pretrain stage on a GPU checks before it loads any data."""
    _, fp = workload(params, entry)
    pre = params.recipe(entry).pretrain
    peak = _peak_gib(params, entry, fp, pre.micro_batch)
    if peak > memory_gib:
        fitting = _fitting_micro_batch(params, entry, fp, memory_gib)
        precision = "bf16" if params.compute.autocast == "bf16" else "fp32"
        raise ValueError(memory_advice(entry, peak, memory_gib, fitting, precision, pre.processes))


@dataclass
class Plan:
    device: str
    entries: list[EntryPlan]
    extra_seconds: dict[str, float] = field(default_factory=dict)  # sweep, transfer, stage overhead
    stages: int = 0

    @property
    def gpu_hours(self) -> float:
        return self.seconds / 3600

    @property
    def seconds(self) -> float:
        """Device-seconds of everything: entries, sweep, transfer, the stages' fixed overhead."""
        return sum(e.seconds for e in self.entries) + sum(self.extra_seconds.values())

    @property
    def flops(self) -> float:
        return sum(e.flops for e in self.entries)

    def over_memory(self) -> list[EntryPlan]:
        return [e for e in self.entries if not e.fits]

    def over_probe_memory(self) -> list[EntryPlan]:
        return [e for e in self.entries if not e.probe_fits]


def split_sizes(params: Params, entry: str) -> tuple[dict[str, int] | None, str]:
    """Images per split of ``entry`` and where the counts come from: the prepared data's manifest when
    it was prepared with these options ("prepared"), else the family's ``expected_sizes`` ("expected" or
    "upper bound"), else (None, "unknown") for a plug-in that does not declare them."""
    spec = params.spec(entry)
    manifest = runs.data_dir(entry) / MANIFEST
    if manifest.is_file():
        try:
            prepared = json.loads(manifest.read_text())
            if prepared.get("options") == spec.options.model_dump(mode="json"):
                return {name: int(split["count"]) for name, split in prepared["splits"].items()}, "prepared"
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or another version: fall back to what the options say
    try:
        sizes = spec.expected_sizes()
    except NotImplementedError:
        return None, "unknown"
    return sizes, "upper bound" if spec.sizes_are_upper_bounds() else "expected"


# Probe cost unit: one forward + backward of a linear layer over PROBE_ROWS feature rows. An L-BFGS
# function evaluation over n rows costs n / PROBE_ROWS units.
PROBE_ROWS = 256
# L-BFGS iterations per strength of the final probe's grid, the strengths that patience skips included:
# measured on the CPU default's 24 probes (commit 23f0ae7: 2 001 iterations per probe on average over its
# 13 strengths; 10.4 strengths fitted, 192 iterations each). ASSUMED for other features: the count grows as
# the problem gets harder to separate (Fashion-MNIST's ce took 3 587).
LBFGS_ITERATIONS_PER_STRENGTH = 154
# The per-epoch monitor's one fit (MONITOR_PROBE: l2 1e-4, tolerance 1e-4, from zero): 83 iterations on
# average on the CPU default's 12 BiasedMNIST encoders (same commit, the 3 000-image subset).
MONITOR_LBFGS_ITERATIONS = 85


def _probe_fit(
    n: int, probe: ProbeParams, iterations_per_strength: int = LBFGS_ITERATIONS_PER_STRENGTH
) -> Costs:
    """The converged linear probe's whole L2 grid on ``n`` training rows: its evaluations and units."""
    evals = len(probe.grid()) * iterations_per_strength
    return Costs(probe_steps=evals * n / PROBE_ROWS, probe_evals=evals)


def _monitor_costs(monitor: MonitorParams, evaluator: str, train: int, val: int, epochs: int) -> Costs:
    """The per-epoch monitor over a run of ``epochs``: features of its training subset and of validation
    on each evaluated epoch (every ``every``, and the last), plus the probe's fit for kind probe (the kNN's
    [val x subset] product is negligible next to the extraction)."""
    evaluated = epochs // monitor.every + (1 if epochs % monitor.every else 0)
    subset = min(train, monitor.train_size or train)
    fit = (
        _probe_fit(subset, MONITOR_PROBE, MONITOR_LBFGS_ITERATIONS)
        if resolved_kind(monitor, evaluator) == "probe"
        else Costs()
    )
    return (Costs(subset + val) + fit) * evaluated


def workload(params: Params, entry: str) -> tuple[Workload, Footprint]:
    recipe = params.recipe(entry)
    spec = params.spec(entry)
    options = recipe.model.options().model_dump()
    bf16 = params.compute.autocast == "bf16"
    fp = footprint(recipe.model.backbone, options, spec.shape(), bf16)
    work = Workload(
        recipe.model.backbone,
        tuple(sorted(options.items())),
        spec.image_size[0],
        "bf16" if bf16 else "fp32",
        fp.macs,
    )
    return work, fp


def passes_of(params: Params, entry: str, method: str) -> MethodPasses:
    """``method``'s encoder passes under ``entry``'s recipe (``method_passes``, cached on its arguments)."""
    recipe = params.recipe(entry)
    return method_passes(
        method,
        params.method_options[method].model_dump_json(),
        recipe.pretrain.views,
        recipe.pretrain.protocol == "joint",
        params.spec(entry).n_classes,
    )


def _peak_gib(params: Params, entry: str, fp: Footprint, micro_batch: int | None) -> float:
    pre = params.recipe(entry).pretrain
    shard = pre.batch_size // pre.processes
    return _constant_gib(params, entry, fp) + _per_image_gib(params, entry, fp) * min(
        micro_batch or shard, shard
    )


def _per_image_gib(params: Params, entry: str, fp: Footprint) -> float:
    """Activation memory per source image in one forward (all its trained encoder passes)."""
    trained_per_image = max(passes_of(params, entry, m).trained for m in params.pretrain.methods)
    return fp.activation_bytes * trained_per_image * ACTIVATION_OVERHEAD / GIB


def _constant_gib(params: Params, entry: str, fp: Footprint) -> float:
    """Weights, gradients, optimiser state, momentum copies, the shard's float views, the reserve."""
    pre = params.recipe(entry).pretrain
    shard = pre.batch_size // pre.processes
    copies = max(passes_of(params, entry, m).encoders for m in params.pretrain.methods)
    optimizer_states = 2 if pre.optimizer.name == "adam" else 1
    # weights + gradients + optimiser state, the momentum copies' weights; float32 master weights
    weights = fp.parameters * 4 * (2 + optimizer_states + (copies - 1))
    views = shard * pre.views * math.prod(params.spec(entry).shape()) * 4
    return (weights + views) / GIB + RESERVED_GIB


def _fitting_micro_batch(params: Params, entry: str, fp: Footprint, memory: float) -> int | None:
    """The largest power-of-two micro_batch (>= 2, <= the shard) whose estimate fits ``memory``."""
    shard = params.recipe(entry).pretrain.batch_size // params.recipe(entry).pretrain.processes
    room = memory - _constant_gib(params, entry, fp)
    largest = int(room / _per_image_gib(params, entry, fp)) if room > 0 else 0
    largest = min(largest, shard)
    if largest < 2:
        return None
    return 2 ** int(math.log2(largest))


def plan_entry(
    params: Params,
    entry: str,
    device: str,
    measured: dict[Workload, Throughput] | None,
    probe_step_s: float | None,
) -> EntryPlan:
    recipe = params.recipe(entry)
    spec = params.spec(entry)
    pre = recipe.pretrain
    sizes, sizes_from = split_sizes(params, entry)
    if sizes is None:  # a plug-in that does not declare its sizes: memory only, no compute counted
        sizes = {"train": 0, "val": 0, "test": 0}
    train, val, test = sizes["train"], sizes["val"], sizes["test"]
    work, fp = workload(params, entry)
    shard = pre.batch_size // pre.processes
    grad_cache = pre.micro_batch is not None and pre.micro_batch < shard
    batch = max(1, min(pre.batch_size, train))
    per_epoch_images = (train // batch) * batch
    costs = Costs()
    steps = 0  # optimiser steps of all runs (each at least the device's min_step_s)
    for method in params.pretrain.methods:
        steps += pre.epochs * (train // batch) * len(params.seeds)
        passes = passes_of(params, entry, method)
        per_run = Costs(units=pre.epochs * per_epoch_images * passes.forward_units(grad_cache))
        if pre.protocol == "joint":
            per_run += Costs(units=pre.epochs * val)  # the joint classifier scored on validation
        else:
            per_run += _monitor_costs(
                pre.monitor, params.spec(entry).evaluator().name, train, val, pre.epochs
            )
            per_run += Costs(train + val + test) + _probe_fit(train, params.recipe(entry).probe)
        costs += per_run * len(params.seeds)
    throughput = lookup(device, work, measured)
    memory = device_memory_gib(device)
    peak = _peak_gib(params, entry, fp, pre.micro_batch)
    plan = EntryPlan(
        entry=entry,
        describe=spec.describe(),
        work=work,
        footprint=fp,
        runs=len(params.pretrain.methods) * len(params.seeds),
        epochs=pre.epochs,
        batch=batch,
        processes=pre.processes,
        micro_batch=pre.micro_batch,
        train_images=train,
        sizes_from=sizes_from,
        costs=costs,
        throughput=throughput,
        peak_gib=peak,
        memory_gib=memory,
        fitting_micro_batch=(
            _fitting_micro_batch(params, entry, fp, memory) if memory is not None and peak > memory else None
        ),
    )
    if pre.protocol != "joint":
        plan.probe_gib = probe_gib(params, entry, sizes)
    compute_s = costs.units / (3 * throughput.images_per_s)
    plan.seconds = max(compute_s, steps * min_step_seconds(device)) + costs.probe_seconds(probe_step_s)
    return plan


def probe_gib(params: Params, entry: str, sizes: dict[str, int], encoder_entry: str | None = None) -> float:
    """The final linear probe's peak GiB on ``entry``'s splits: its float32 features of train, val and
    test, and one fit on train (cecl/eval/linear_probe.py ``probe_memory_bytes``, in row blocks above
    ``BLOCK_ROWS``). ``encoder_entry``: the entry whose encoder makes the features (a transfer's source;
    default ``entry``). The launcher gives a probe a whole GPU when this exceeds a light stage's share
    of the card (cecl/launch/slots.py ``stage_sizes``)."""
    from cecl.eval.linear_probe import probe_memory_bytes

    model, spec = params.recipe(encoder_entry or entry).model, params.spec(entry)
    channels = params.spec(encoder_entry or entry).shape()[0]
    dim = feature_dim(model.backbone, model.options().model_dump(), channels)
    held = sizes["val"] + sizes["test"]
    return probe_memory_bytes(sizes["train"], dim, spec.n_classes, held) / GIB


def probe_stage_gib(params: Params) -> dict[str, float]:
    """Planned peak GiB of every probe and transfer stage's final probe, by DVC stage name (entries of a
    plug-in that declares no split sizes are left out: nothing to plan)."""
    sizes = {entry: split_sizes(params, entry)[0] for entry in params.pretrain.datasets}
    for key in params.transfers():
        sizes.setdefault(key.target, split_sizes(params, key.target)[0])
    memo: dict[tuple[str, str], float] = {}

    def gib(target: str, source: str) -> float | None:
        if sizes[target] is None:
            return None
        if (target, source) not in memo:
            memo[target, source] = probe_gib(params, target, sizes[target], source)  # type: ignore[arg-type]
        return memo[target, source]

    planned = {key.stage("probe"): gib(key.dataset, key.dataset) for key in params.runs()}
    planned |= {key.stage(): gib(key.target, key.source) for key in params.transfers()}
    return {stage: value for stage, value in planned.items() if value is not None}


def trial_epochs(trials: int, epochs: int, scheduler: str, grace: int, factor: float) -> float:
    """Epochs all ``trials`` of a sweep train: every one to ``epochs`` without a scheduler; under ASHA the
    successive-halving count (all trials to the first rung ``grace``, a 1/``factor`` share of them on to
    each next rung ``grace * factor^k``, the last share to ``epochs``). Asynchronous promotion can run a
    few more: an estimate, not a bound."""
    if scheduler != "asha":
        return float(trials * epochs)
    total, done, alive, rung = 0.0, 0.0, float(trials), float(grace)
    while rung < epochs:
        total += alive * (rung - done)
        done, alive, rung = rung, max(1.0, alive / factor), rung * factor
    return total + alive * (epochs - done)


def _sweep_seconds(
    params: Params, device: str, measured: dict[Workload, Throughput] | None, step_s: float | None
) -> float:
    sweep = params.sweep
    sizes = split_sizes(params, sweep.dataset)[0]
    if sizes is None:
        return 0.0
    recipe = params.recipe(sweep.dataset)
    work, _ = workload(params, sweep.dataset)
    train = min(sizes["train"], sweep.train_size or sizes["train"])
    batch = max(1, min(recipe.pretrain.batch_size, train))
    units, probes = 0.0, Costs()
    for method, axes in sweep.grids.items():
        trials = math.prod(len(values) for values in axes.values())
        epochs = trial_epochs(
            trials, sweep.epochs, sweep.scheduler, sweep.asha.grace_period, sweep.asha.reduction_factor
        )
        passes = passes_of(params, sweep.dataset, method)
        units += epochs * (train // batch) * batch * passes.forward_units(False)
        evaluator = params.spec(sweep.dataset).evaluator().name
        monitor = _monitor_costs(recipe.pretrain.monitor, evaluator, train, sizes["val"], 1) * epochs
        units += monitor.units
        probes += monitor
    return units / (3 * lookup(device, work, measured).images_per_s) + probes.probe_seconds(step_s)


def _floor_seconds(
    params: Params, device: str, measured: dict[Workload, Throughput] | None, step_s: float | None
) -> float:
    """The floors (cecl/floors.py): per entry one pixel probe and, per seed, the untrained encoder's
    features of every split and its probe; each a final-probe fit on the training split (the pixel floor's
    wider features are counted as an encoder's)."""
    seconds = 0.0
    for entry in params.pretrain.datasets:
        sizes = split_sizes(params, entry)[0]
        if sizes is None:
            continue
        fit = _probe_fit(sizes["train"], params.recipe(entry).probe)
        init = (Costs(sum(sizes.values())) + fit) * len(params.seeds)
        work, _ = workload(params, entry)
        seconds += init.units / (3 * lookup(device, work, measured).images_per_s)
        seconds += (init + fit).probe_seconds(step_s)
    return seconds


def plan_params(
    params: Params,
    device: str = "h100",
    measured: dict[Workload, Throughput] | None = None,
    probe_step_s: float | None = None,
) -> Plan:
    """The plan of every pretraining entry, the sweep's upper bound (its full grid) and the transfers."""
    step_s = probe_step_s  # None: the GPU's assumed costs (Costs.probe_seconds)
    entries = [plan_entry(params, e, device, measured, step_s) for e in params.pretrain.datasets]
    plan = Plan(device=device, entries=entries)
    # Sweep: every trial of every grid, for the epochs its scheduler lets it train (trial_epochs).
    plan.extra_seconds["sweep"] = _sweep_seconds(params, device, measured, step_s)
    # Transfer: each frozen source encoder's features of each target's splits, then a probe fit.
    seconds = 0.0
    for source, target in params.transfer_pairs():
        sizes = split_sizes(params, target)[0]
        if sizes is None:
            continue
        final = params.recipe(target).probe
        part = Costs(sum(sizes.values())) + _probe_fit(sizes["train"], final)
        part = part * (len(params.pretrain.methods) * len(params.seeds))
        source_work, _ = workload(params, source)
        seconds += part.units / (3 * lookup(device, source_work, measured).images_per_s)
        seconds += part.probe_seconds(step_s)
    plan.extra_seconds["transfer"] = seconds
    plan.extra_seconds["floors"] = _floor_seconds(params, device, measured, step_s)
    n_runs = len(params.runs())
    n_floors = len(params.pretrain.datasets) * (1 + len(params.seeds))  # pixels + init per seed
    plan.stages = (
        len(params.datasets) + 2 * n_runs + len(params.transfers()) + n_floors + 2
    )  # + sweep, aggregate
    plan.extra_seconds["stage overhead"] = plan.stages * stage_overhead_seconds(device)
    return plan
