"""The plan as text: one table row per dataset entry, the totals, and what the profile can show."""

from __future__ import annotations

from cecl.config import Params
from cecl.eval.linear_probe import BLOCK_ROWS
from cecl.plan.estimate import ACTIVATION_OVERHEAD, RESERVED_GIB, Plan

PAPER_EPOCHS = 1000  # the released recipe's pretraining epochs (CIFAR, ImageNet32, ImageNet; paper.md)


def si(value: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "


def format_plan(plan: Plan, params: Params) -> str:
    """The printed plan (``python -m cecl.plan``)."""
    device = plan.device
    head = (
        f"{'entry':<16} {'backbone':<22} {'px':>4} {'prec':>4} {'runs':>4} {'ep':>5} {'batch':>5} "
        f"{'proc':>4} {'micro':>5} {'images':>9} {'FLOPs':>8} {'peak GiB':>9} {'hours':>9}"
    )
    lines = [f"Cost plan on {device} ({plan.stages} stages)", head, "-" * len(head)]
    for e in plan.entries:
        backbone = e.work.backbone + ("/cifar" if dict(e.work.options).get("cifar_stem") else "")
        memory = f"{e.peak_gib:.1f}" + ("" if e.fits else "!")
        lines.append(
            f"{e.entry:<16} {backbone:<22} {e.work.size:>4} {e.work.precision:>4} {e.runs:>4} {e.epochs:>5} "
            f"{e.batch:>5} {e.processes:>4} {e.micro_batch or '-':>5} {si(e.images_trained):>9} "
            f"{si(e.flops):>8} {memory:>9} {e.seconds / 3600:>9.3g}"
        )
    for name, seconds in plan.extra_seconds.items():
        if seconds:
            lines.append(
                f"{name:<16} {'':<22} {'':>4} {'':>4} {'':>4} {'':>5} {'':>5} {'':>4} {'':>5} "
                f"{'':>9} {'':>8} {'':>9} {seconds / 3600:>9.3g}"
            )
    lines.append("-" * len(head))
    lines.append(
        f"total: {plan.gpu_hours:.4g} {device}-hours ({plan.gpu_hours / 24:.3g} device-days; "
        f"{plan.gpu_hours / 8 / 24:.3g} days on 8), {si(plan.flops)}FLOPs of pretraining"
    )
    lines += ["", "Throughput figures:"]
    seen = set()
    for e in plan.entries:
        key = (e.work, e.throughput.source)
        if key in seen:
            continue
        seen.add(key)
        lines.append(
            f"  {e.work.backbone} {e.work.size}px {e.work.precision}: "
            f"{e.throughput.images_per_s:.4g} img/s ({e.throughput.source})"
        )
    over = plan.over_memory()
    lines += [
        "",
        f"Memory: saved activations x {ACTIVATION_OVERHEAD} (an UNMEASURED overhead factor: `make "
        f"gpu-session` measures the real one) + weights/optimiser + views + {RESERVED_GIB} GiB (assumed); "
        "'!' marks an entry that does not fit:",
        *(f"  {e.memory_advice()}" for e in over),
    ]
    if not over:
        lines[-1] = lines[-1].replace("; '!' marks an entry that does not fit:", ": every entry fits.")
    probes = [e for e in plan.entries if e.probe_gib > 0]
    if probes:
        top = max(probes, key=lambda e: e.probe_gib)
        over_probe = plan.over_probe_memory()
        lines.append(
            f"Probe memory (final linear probe: float32 features of train/val/test + its float64 fit, in "
            f"row blocks above {BLOCK_ROWS} rows): at most {top.probe_gib:.1f} GiB ({top.entry})"
            + (
                "; over the device's memory: " + ", ".join(f"{e.entry} {e.probe_gib:.1f}" for e in over_probe)
                if over_probe
                else "; every probe fits."
            )
        )
    upper = [e.entry for e in plan.entries if e.sizes_from == "upper bound"]
    if upper:
        lines.append(f"Upper bounds (split sizes depend on the data): {', '.join(upper)}")
    unknown = [e.entry for e in plan.entries if e.sizes_from == "unknown"]
    if unknown:
        lines.append(
            f"Not counted (their dataset family declares no expected_sizes and they are not prepared yet; "
            f"run prepare first): {', '.join(unknown)}"
        )
    lines += ["", *what_it_shows(plan, params)]
    return "\n".join(lines)


def what_it_shows(plan: Plan, params: Params) -> list[str]:
    """Plain statements of what a run of this profile can and cannot support."""
    seeds = len(params.seeds)
    methods = params.pretrain.methods
    shows = [
        f"Shows: {len(methods)} method(s) ({', '.join(methods)}) on {len(plan.entries)} entr(y/ies) "
        f"x {seeds} seed(s)"
        + (
            ": mean with a 95% CI per cell, and paired comparisons."
            if seeds >= 3
            else ": no confidence intervals (fewer than 3 seeds): first signs, not claims."
        )
    ]
    short = [
        e.entry for e in plan.entries if e.work.backbone.startswith("resnet50") and e.epochs < PAPER_EPOCHS
    ]
    if short:
        shows.append(
            f"Does not show: paper-scale accuracy on {', '.join(short)} (fewer than the recipe's "
            f"{PAPER_EPOCHS} epochs); compare with published numbers only at the same schedule."
        )
    if "cecl" not in methods:
        shows.append("Does not show: anything about CECL (not in pretrain.methods).")
    return shows
