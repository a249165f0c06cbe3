"""claims.md: the paper's three claims checked on what this run measured.

1. BiasedMNIST: "22.9% improvement compared to original contrastive loss functions" — CECL minus
   SupCon / SimCLR / cross-entropy in unbiased test accuracy, per BiasedMNIST entry and protocol.
2. Faster convergence — epochs to 90% / 95% of the run's own final monitor accuracy, CECL vs
   every other method measured on the same entry (fewer epochs = faster).
3. Better accuracy — CECL minus SupCon / SimCLR top-1 test accuracy per classification entry.

Every comparison is the difference of means over seeds with Welch's 95% interval and test
(stats.welch). Its direction "reproduces" when the interval lies entirely on CECL's better side of 0,
"contradicts the paper" when entirely on the other side, and is "not resolved at this n" otherwise
(including n < 2 on a side, where there is no interval). Every number comes from the collected data;
only the paper's wording and published constants below are fixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from cecl.report.collect import CLASSIFICATION, GROUP_BIAS, TOP1, UNBIASED, Collected, ordered
from cecl.report.stats import (
    CONTRADICTS,
    REPRODUCES,
    UNRESOLVED,
    Difference,
    direction,
    format_p,
    format_summary,
    p_clause,
    signed,
    welch,
)
from cecl.report.tables import CONVERGENCE_FRACTIONS, convergence_metric

PAPER_BIAS_CLAIM = "22.9% improvement compared to original contrastive loss functions"
CLAIM_VALUE = 22.9  # read both as percentage points (absolute) and as percent (relative)
PAPER_RHOS = (0.999, 0.997, 0.995, 0.99)  # BiasCon's BiasedMNIST training rhos
BIASCON_EPOCHS = 80  # BiasCon's BiasedMNIST schedule
RELEASED_CODE_EPOCHS = 1000  # the released CECL code's default
MIN_SEEDS = 3
PAPER_BASELINE_COUNT = 16
PAPER_DATASETS = "CIFAR-10, CIFAR-100, Caltech-101, Caltech-256, ImageNet, BiasedMNIST, UTKFace, CelebA"
BIASED_MNIST = "biased_mnist"  # metrics.json run.family of BiasedMNIST entries
CECL = "cecl"
NAMES = {"cecl": "CECL", "supcon": "SupCon", "simclr": "SimCLR", "ce": "cross-entropy"}
BIAS_BASELINES = ("supcon", "simclr", "ce")
CONVERGENCE_BASELINES = ("supcon", "simclr", "ce")  # named when absent; every other method is compared too
ACCURACY_BASELINES = ("supcon", "simclr")


def display(method: str) -> str:
    return NAMES.get(method, method)


@dataclass(frozen=True)
class Comparison:
    where: str  # "`bmnist_rho95` (linear_probe)"
    baseline: str
    difference: Difference
    higher_is_better: bool
    scale: float  # 100 for accuracies (points), 1 for epochs
    unit: str  # "points" / "epochs"

    @property
    def verdict(self) -> str:
        return direction(self.difference, self.higher_is_better)


def _samples(frame: pd.DataFrame, metric: str, method: str, **filters: str) -> list[float]:
    rows = frame[frame["method"] == method]
    for column, value in filters.items():
        rows = rows[rows[column] == value]
    rows = rows[rows[metric].notna()].sort_values("seed", kind="stable")
    return [float(v) for v in rows[metric]]


def _reason(comparison: Comparison) -> str:
    d, verdict = comparison.difference, comparison.verdict
    if not d.testable:
        return "fewer than 2 seeds on a side: no confidence interval and no test"
    if comparison.higher_is_better:
        return {
            REPRODUCES: "CECL higher: the CI of the difference lies entirely above 0",
            CONTRADICTS: "CECL lower: the CI of the difference lies entirely below 0",
            UNRESOLVED: "the CI of the difference contains 0",
        }[verdict]
    return {
        REPRODUCES: "CECL faster: fewer epochs, the CI of the difference lies entirely below 0",
        CONTRADICTS: "CECL slower: more epochs, the CI of the difference lies entirely above 0",
        UNRESOLVED: "the CI of the difference contains 0",
    }[verdict]


def _statistics(comparison: Comparison) -> str:
    d, scale = comparison.difference, comparison.scale
    sizes = f"n = {d.a.n} vs {d.b.n}"
    if not d.testable:
        return sizes
    spread = " (identical in every seed)" if d.se == 0 else ""
    return (
        f"95% CI {signed(scale * d.ci_low)} to {signed(scale * d.ci_high)}{spread}; "
        f"{p_clause(d.p_value)}; {sizes}"
    )


def _sentence(comparison: Comparison, what: str) -> str:
    d = comparison.difference
    return (
        f"- {comparison.where}, CECL vs {display(comparison.baseline)}: "
        f"{signed(comparison.scale * d.diff)} {comparison.unit} {what} ({_statistics(comparison)}). "
        f"Direction: {comparison.verdict} ({_reason(comparison)})."
    )


def _magnitude(comparison: Comparison) -> str:
    d = comparison.difference
    points, relative = 100 * d.diff, d.relative
    reach_abs = "reaches" if points >= CLAIM_VALUE else "does not reach"
    if math.isnan(relative):
        rel = "the relative change is undefined"
    else:
        reach_rel = "reaches" if relative >= CLAIM_VALUE else "does not reach"
        rel = f"the relative change {signed(relative, unit='%')} {reach_rel} {CLAIM_VALUE}% relative"
    return f"  Magnitude (point estimates): {signed(points)} points {reach_abs} {CLAIM_VALUE} points; {rel}."


def _table(comparisons: Sequence[Comparison], relative: bool) -> str:
    rows = []
    for c in comparisons:
        d = c.difference
        row = {
            "where": c.where,
            "baseline": display(c.baseline),
            "CECL": format_summary(d.a, c.scale),
            "baseline value": format_summary(d.b, c.scale),
            "CECL − baseline": signed(c.scale * d.diff),
            "95% CI": f"{signed(c.scale * d.ci_low)} to {signed(c.scale * d.ci_high)}"
            if d.testable
            else "n/a",
            "Welch p": format_p(d.p_value),
        }
        if relative:
            row["relative"] = signed(d.relative, unit="%")
        row["direction"] = c.verdict
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _skipped(where: str, wanted: Sequence[str], measured: Sequence[str]) -> list[str]:
    return [
        f"- {where}: {display(b)} (`{b}`) was not measured; the comparison with it is skipped."
        for b in wanted
        if b not in measured
    ]


def _where(dataset: str, protocol: str | None = None) -> str:
    return f"`{dataset}` ({protocol})" if protocol else f"`{dataset}`"


def _contexts(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return ordered(zip(frame["dataset"], frame["protocol"], strict=True)) if len(frame) else []


def _compare_block(
    frame: pd.DataFrame,
    contexts: Sequence[tuple[str, str | None]],
    metric: str,
    wanted: Sequence[str],
    what: str,
    *,
    every_other: bool = False,
    higher_is_better: bool = True,
    scale: float = 100.0,
    unit: str = "points",
    magnitude: bool = False,
) -> list[str]:
    """Table + one sentence per comparison + skipped baselines, for every (dataset, protocol) context."""
    comparisons, sentences, skipped = [], [], []
    for dataset, protocol in contexts:
        filters = {"dataset": dataset, **({"protocol": protocol} if protocol else {})}
        rows = frame
        for column, value in filters.items():
            rows = rows[rows[column] == value]
        measured = ordered(rows["method"])
        where = _where(dataset, protocol)
        if CECL not in measured:
            skipped.append(f"- {where}: CECL (`{CECL}`) was not measured; nothing to compare.")
            continue
        baselines = [m for m in (measured if every_other else wanted) if m != CECL and m in measured]
        if every_other:  # the named baselines first, in the paper's order, then the rest as run
            baselines = [b for b in wanted if b in baselines] + [b for b in baselines if b not in wanted]
        skipped += _skipped(where, wanted, measured)
        ours = _samples(rows, metric, CECL)
        for baseline in baselines:
            difference = welch(ours, _samples(rows, metric, baseline))
            comparison = Comparison(where, baseline, difference, higher_is_better, scale, unit)
            comparisons.append(comparison)
            sentences.append(_sentence(comparison, what))
            if magnitude:
                sentences.append(_magnitude(comparison))
    lines = []
    if comparisons:
        lines += [_table(comparisons, relative=magnitude), "", *sentences]
    if skipped:
        lines += ["", *skipped] if lines else skipped
    return lines


def _claim_bias(probes: pd.DataFrame) -> list[str]:
    lines = [
        "### 1. BiasedMNIST: unbiased accuracy",
        "",
        f'Paper (abstract): "{PAPER_BIAS_CLAIM}". It does not say at which rho, against which baseline, '
        f"or whether {CLAIM_VALUE} is absolute (percentage points) or relative (percent), so both readings "
        "are checked against SupCon, SimCLR and cross-entropy on every BiasedMNIST entry and protocol "
        "measured, on unbiased test accuracy (mean over seeds; difference in points with Welch's 95% CI "
        "and t-test).",
        "",
    ]
    bias = (
        probes[(probes["evaluator"] == GROUP_BIAS) & (probes["family"] == BIASED_MNIST)]
        if len(probes)
        else probes
    )
    if bias.empty:
        return [*lines, "No BiasedMNIST (group_bias) entry was measured; the claim is not checked."]
    return lines + _compare_block(
        bias, _contexts(bias), UNBIASED, BIAS_BASELINES, "unbiased accuracy", magnitude=True
    )


def _claim_convergence(epochs: pd.DataFrame) -> list[str]:
    lines = [
        "### 2. Faster convergence",
        "",
        "Paper (abstract): faster convergence than the contrastive baselines. Measured as the first "
        "pretraining epoch at which the per-epoch monitor's validation accuracy (pretrain.monitor: kNN, "
        "or a linear probe on bias benchmarks) reaches 90% / 95% of that run's own final accuracy; CECL "
        "minus each other method measured on the same entry, in epochs (negative = CECL faster).",
        "",
    ]
    if epochs.empty:
        return [*lines, "No pretraining history was collected; the claim is not checked."]
    contexts = [(d, None) for d in ordered(epochs["dataset"])]
    for fraction in CONVERGENCE_FRACTIONS:
        percent = round(100 * fraction)
        lines += [f"Epochs to {percent}% of the final accuracy:", ""]
        lines += _compare_block(
            epochs,
            contexts,
            convergence_metric(fraction),
            CONVERGENCE_BASELINES,
            f"to reach {percent}% of the final accuracy",
            every_other=True,
            higher_is_better=False,
            scale=1.0,
            unit="epochs",
        )
        lines.append("")
    return lines


def _claim_accuracy(probes: pd.DataFrame) -> list[str]:
    lines = [
        "### 3. Accuracy on classification datasets",
        "",
        "Paper (abstract): better accuracy than the contrastive baselines. CECL minus SupCon and SimCLR "
        "in top-1 test accuracy (points, Welch's 95% CI and t-test) on every classification entry.",
        "",
    ]
    rows = probes[probes["evaluator"] == CLASSIFICATION] if len(probes) else probes
    if rows.empty:
        return [*lines, "No classification entry was measured; the claim is not checked."]
    return lines + _compare_block(rows, _contexts(rows), TOP1, ACCURACY_BASELINES, "top-1 accuracy")


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}–{high}"


def caveats(collected: Collected, epochs: pd.DataFrame, notes: Mapping[str, str]) -> list[str]:
    """Facts from the data that make this run smaller than the paper's; empty when none apply."""
    facts = []
    results = pd.concat([f for f in (collected.probes, collected.transfers) if len(f)], ignore_index=True)
    if len(results):
        per_cell = results.groupby(["dataset", "source", "method"], sort=False)["seed"].nunique()
        if per_cell.min() < MIN_SEEDS:
            seeds = ", ".join(str(s) for s in sorted(set(results["seed"])))
            facts.append(
                f"as few as {int(per_cell.min())} seed(s) per (dataset, method) (seeds used: {seeds}; "
                f"fewer than {MIN_SEEDS}), so intervals are wide and n=1 cells have none"
            )
    if len(epochs):
        final = [int(e) for e in epochs["final_epoch"]]
        if min(final) < BIASCON_EPOCHS:
            facts.append(
                f"{_span(final)} pretraining epochs (BiasCon's BiasedMNIST schedule: {BIASCON_EPOCHS}; "
                f"the released CECL code: {RELEASED_CODE_EPOCHS})"
            )
    probes = collected.probes
    bmnist = ordered(probes.loc[probes["family"] == BIASED_MNIST, "dataset"]) if len(probes) else []
    rhos = ", ".join(f"{r:g}" for r in PAPER_RHOS)
    if bmnist:
        described = "; ".join(f"`{d}` ({notes.get(d) or 'no dataset note given'})" for d in bmnist)
        facts.append(
            f"BiasedMNIST entries measured: {described}; the paper's (BiasCon's) training rhos: {rhos}"
        )
    else:
        facts.append(f"no BiasedMNIST entry was measured (the paper's training rhos: {rhos})")
    if len(probes):
        bias_protocols = ordered(probes.loc[probes["evaluator"] == GROUP_BIAS, "protocol"])
        if bias_protocols:
            facts.append(
                "how the paper trained on the bias benchmarks is unknown; protocol(s) measured here: "
                + ", ".join(bias_protocols)
            )
        methods = ordered(probes["method"])
        facts.append(
            f"{len(methods)} methods measured ({', '.join(methods)}); the paper compares with "
            f"{PAPER_BASELINE_COUNT} contrastive methods"
        )
        families = ordered(f for f in probes["family"] if f)
        facts.append(f"dataset families measured: {', '.join(families) or '?'} (the paper: {PAPER_DATASETS})")
    return facts


def claims_markdown(
    collected: Collected, epochs: pd.DataFrame, notes: Mapping[str, str] | None = None
) -> str:
    """The Claims section (see the module docstring); ``epochs`` is tables.convergence_frame's frame."""
    notes = notes or {}
    lines = [
        "## Claims",
        "",
        f"Directions: '{REPRODUCES}' = the 95% CI of CECL minus the baseline lies entirely on CECL's "
        f"better side of 0; '{CONTRADICTS}' = entirely on the other side; '{UNRESOLVED}' = the CI "
        "contains 0 or does not exist (fewer than 2 seeds on a side).",
        "",
    ]
    for block in (
        _claim_bias(collected.probes),
        _claim_convergence(epochs),
        _claim_accuracy(collected.probes),
    ):
        lines += [*block, ""]
    facts = caveats(collected, epochs, notes)
    if facts:
        lines += ["### Caveats", "", "This run is smaller than the paper's: " + "; ".join(facts) + "."]
    return "\n".join(lines).rstrip("\n") + "\n"
