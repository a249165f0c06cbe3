"""claims.md: the paper's three claims checked on what this run measured, and where every method stands
against the floors.

1. BiasedMNIST: "22.9% improvement compared to original contrastive loss functions": CECL minus
   SupCon and SimCLR (the contrastive baselines) in unbiased test accuracy, per BiasedMNIST entry and
   protocol. Cross-entropy is a reference (its own head, the field's "vanilla", and the probe), with
   no verdict: the paper's claim is about contrastive losses.
2. Faster convergence: CECL minus every other contrastive method, in absolute terms (tables.py): the
   area under the monitor curve (points) and the epochs to the entry's common threshold. Entries
   monitored at fewer than MIN_MONITORED_EPOCHS epochs get one line instead.
3. Better accuracy: CECL minus SupCon / SimCLR top-1 test accuracy per classification entry.
Floors: every method (and cross-entropy's own head) minus the raw-pixel floor (one number: a
one-sample comparison) and minus the untrained-encoder floor (paired by seed).

Statistics (stats.py): differences paired by seed with Student-t 95% intervals and a paired t-test;
Holm's adjustment within each claim (and within the floors); "equivalent within ±margin" when the
Holm-adjusted TOST p < 0.05 (EQUIVALENCE_MARGIN: 1 point, 1 epoch: a difference too small to matter,
even where it differs from 0); otherwise "reproduces" / "contradicts the paper" when the Holm-adjusted
paired p < 0.05, by the sign of the mean difference; otherwise "not resolved at this n". A difference
equal in every seed has no interval and is printed as such, never as a zero-width interval. Every
number comes from the collected data; only the paper's wording and published constants are fixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pandas as pd

from cecl.report.collect import CLASSIFICATION, GROUP_BIAS, OWN_HEAD, TOP1, UNBIASED, Collected, ordered
from cecl.report.sanity import EntryScale, sanity_lines
from cecl.report.stats import (
    CONTRADICTS,
    DEGENERATE,
    EQUIVALENT,
    REPRODUCES,
    UNRESOLVED,
    Paired,
    format_interval,
    format_p,
    format_summary,
    holm,
    paired,
    rank_test_note,
    signed,
    summarize,
    verdict,
)
from cecl.report.tables import (
    AREA,
    FLOOR_LABELS,
    MIN_MONITORED_EPOCHS,
    OWN_HEAD_SUFFIX,
    THRESHOLD_FRACTION,
    TO_THRESHOLD,
    ConvergenceEntry,
)

PAPER_BIAS_CLAIM = "22.9% improvement compared to original contrastive loss functions"
CLAIM_VALUE = 22.9  # read both as percentage points (absolute) and as percent (relative)
PAPER_RHOS = (0.999, 0.997, 0.995, 0.99)  # BiasCon's BiasedMNIST training rhos
BIASCON_EPOCHS = 80  # BiasCon's BiasedMNIST schedule
RELEASED_CODE_EPOCHS = 1000  # the released CECL code's default
MIN_SEEDS = 5
PAPER_BASELINE_COUNT = 16
PAPER_DATASETS = "CIFAR-10, CIFAR-100, Caltech-101, Caltech-256, ImageNet, BiasedMNIST, UTKFace, CelebA"
BIASED_MNIST = "biased_mnist"  # metrics.json run.family of BiasedMNIST entries
CECL = "cecl"
CE = "ce"
NAMES = {"cecl": "CECL", "supcon": "SupCon", "simclr": "SimCLR", "ce": "cross-entropy"}
CONTRASTIVE_BASELINES = ("supcon", "simclr")  # claims 1 and 3
NOT_CONTRASTIVE = (CE,)  # never a claim's baseline (claim 2 compares every other contrastive method)
# Equivalence margins (TOST) in the printed unit: points of accuracy, epochs.
EQUIVALENCE_MARGIN = {"points": 1.0, "epochs": 1.0}
SCALE = {"points": 100.0, "epochs": 1.0}
FLOOR_WORDS = {
    REPRODUCES: "above the floor",
    CONTRADICTS: "below the floor",
    UNRESOLVED: "not separated at this n",
}


def display(method: str) -> str:
    if method.endswith(OWN_HEAD_SUFFIX):
        return display(method.removesuffix(OWN_HEAD_SUFFIX)) + OWN_HEAD_SUFFIX
    return NAMES.get(method, method)


@dataclass(frozen=True)
class Comparison:
    """One paired comparison, with its Holm-adjusted p-values once its family is known."""

    where: str  # "`bmnist_rho95` (linear_probe)"
    dataset: str
    subject: str  # CECL, or the method compared with a floor
    baseline: str  # a method or a floor label
    result: Paired
    higher_is_better: bool
    unit: str  # "points" / "epochs"
    p_adjusted: float = math.nan
    p_equivalence_adjusted: float = math.nan

    @property
    def scale(self) -> float:
        return SCALE[self.unit]

    @property
    def verdict(self) -> str:
        return verdict(self.result, self.p_adjusted, self.p_equivalence_adjusted, self.higher_is_better)

    def words(self, floor: bool = False) -> str:
        found = self.verdict
        margin = f"±{EQUIVALENCE_MARGIN[self.unit]:g} {'point' if self.unit == 'points' else 'epoch'}"
        if found == EQUIVALENT:
            return f"level with the floor (within {margin})" if floor else f"equivalent within {margin}"
        if found == DEGENERATE:
            return "not testable: the same difference in every seed"
        if not self.result.testable:
            return "not testable: fewer than 2 paired seeds"
        return FLOOR_WORDS[found] if floor else found


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons of one family with Holm-adjusted paired-t and TOST p-values."""
    adjusted = holm([c.result.p_value for c in comparisons])
    equivalence = holm([c.result.p_equivalence for c in comparisons])
    return [
        replace(c, p_adjusted=p, p_equivalence_adjusted=q)
        for c, p, q in zip(comparisons, adjusted, equivalence, strict=True)
    ]


def _per_seed(frame: pd.DataFrame, metric: str, method: str, **filters: str) -> dict[int, float]:
    rows = frame[frame["method"] == method]
    for column, value in filters.items():
        rows = rows[rows[column] == value]
    if metric not in rows.columns:
        return {}
    rows = rows[rows[metric].notna()]
    return {int(s): float(v) for s, v in zip(rows["seed"], rows[metric], strict=True)}


def _interval(comparison: Comparison) -> str:
    r = comparison.result
    if r.degenerate:
        return "n/a (no spread)"
    if not r.testable:
        return "n/a"
    try:
        return format_interval(r.ci_low, r.ci_high, comparison.scale)
    except ValueError:  # a spread below 4 decimals: print no interval rather than a zero-width one
        return f"{signed(comparison.scale * r.diff, 4)} (spread below 0.0001 {comparison.unit})"


def _cell(values: Sequence[float], scale: float) -> str:
    return format_summary(summarize(values), scale)


def _statistics(c: Comparison) -> str:
    r = c.result
    pairs = f"n = {r.n} paired seed(s)"
    if r.degenerate:
        return f"{pairs}; the same difference in every seed: no interval, no test"
    if not r.testable:
        return pairs
    return (
        f"95% CI {_interval(c)}; paired t p {format_p(r.p_value)}, Holm p {format_p(c.p_adjusted)}; "
        f"TOST ±{EQUIVALENCE_MARGIN[c.unit]:g} Holm p {format_p(c.p_equivalence_adjusted)}; {pairs}"
    )


def _sentence(c: Comparison, what: str) -> str:
    return (
        f"- {c.where}, {display(c.subject)} vs {display(c.baseline)}: {signed(c.scale * c.result.diff)} "
        f"{c.unit} {what} ({_statistics(c)}). Direction: {c.words()}."
    )


def _magnitude(c: Comparison) -> str:
    r = c.result
    points = 100 * r.diff
    reach_abs = "reaches" if points >= CLAIM_VALUE else "does not reach"
    baseline = sum(r.b) / len(r.b) if r.b else math.nan
    relative = 100 * r.diff / baseline if baseline else math.nan
    if math.isnan(relative):
        rel = "the relative change is undefined"
    else:
        reach_rel = "reaches" if relative >= CLAIM_VALUE else "does not reach"
        rel = f"the relative change {signed(relative, unit='%')} {reach_rel} {CLAIM_VALUE}% relative"
    return f"  Magnitude (point estimates): {signed(points)} points {reach_abs} {CLAIM_VALUE} points; {rel}."


def _table(comparisons: Sequence[Comparison], relative: bool = False) -> str:
    rows = []
    for c in comparisons:
        r = c.result
        row = {
            "where": c.where,
            "baseline": display(c.baseline),
            "CECL": _cell(r.a, c.scale),
            "baseline value": _cell(r.b, c.scale),
            "CECL − baseline": signed(c.scale * r.diff),
            "95% CI": _interval(c),
            "Holm p": format_p(c.p_adjusted),
        }
        if relative:
            base = sum(r.b) / len(r.b) if r.b else math.nan
            row["relative"] = signed(100 * r.diff / base if base else math.nan, unit="%")
        row["direction"] = c.words()
        rows.append(row)
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def _where(dataset: str, protocol: str | None = None) -> str:
    return f"`{dataset}` ({protocol})" if protocol else f"`{dataset}`"


def _contexts(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return ordered(zip(frame["dataset"], frame["protocol"], strict=True)) if len(frame) else []


def _filters(dataset: str, protocol: str | None) -> dict[str, str]:
    return {"dataset": dataset, **({"protocol": protocol} if protocol else {})}


def _rank_note(comparisons: Sequence[Comparison]) -> list[str]:
    sizes = [c.result.n for c in comparisons if c.result.n]
    note = rank_test_note(max(sizes)) if sizes else ""
    return ["", note] if note else []


def _compare(
    frame: pd.DataFrame,
    contexts: Sequence[tuple[str, str | None]],
    metrics: Sequence[tuple[str, str, bool]],
    baselines_of: str,
) -> tuple[list[Comparison], list[str]]:
    """CECL vs each baseline per context and (metric, unit, higher_is_better); also the skip lines.

    ``baselines_of``: "contrastive" (SupCon, SimCLR, named when absent) or "every" (every measured
    method that is not cross-entropy).
    """
    comparisons, skipped = [], []
    for dataset, protocol in contexts:
        rows = frame
        for column, value in _filters(dataset, protocol).items():
            rows = rows[rows[column] == value]
        measured = ordered(rows["method"])
        where = _where(dataset, protocol)
        if CECL not in measured:
            skipped.append(f"- {where}: CECL (`{CECL}`) was not measured; nothing to compare.")
            continue
        skipped += [
            f"- {where}: {display(b)} (`{b}`) was not measured; the comparison with it is skipped."
            for b in CONTRASTIVE_BASELINES
            if b not in measured
        ]
        baselines = [b for b in CONTRASTIVE_BASELINES if b in measured]
        if baselines_of == "every":
            baselines += [m for m in measured if m not in (CECL, *NOT_CONTRASTIVE, *baselines)]
        for metric, unit, higher in metrics:
            ours = _per_seed(rows, metric, CECL)
            for baseline in baselines:
                result = paired(
                    ours, _per_seed(rows, metric, baseline), EQUIVALENCE_MARGIN[unit] / SCALE[unit]
                )
                comparisons.append(Comparison(where, dataset, CECL, baseline, result, higher, unit))
    return comparisons, skipped


def _block(
    comparisons: Sequence[Comparison], skipped: Sequence[str], what: str, magnitude: bool
) -> list[str]:
    lines: list[str] = []
    if comparisons:
        lines += [_table(comparisons, relative=magnitude), ""]
        for c in comparisons:
            lines.append(_sentence(c, what))
            if magnitude:
                lines.append(_magnitude(c))
    if skipped:
        lines += ["", *skipped] if lines else list(skipped)
    return lines


def _reference(frame: pd.DataFrame, contexts: Sequence[tuple[str, str]], metric: str) -> list[str]:
    """Cross-entropy as a reference: its own head and the probe, no verdict."""
    lines = []
    for dataset, protocol in contexts:
        rows = frame
        for column, value in _filters(dataset, protocol).items():
            rows = rows[rows[column] == value]
        probe = list(_per_seed(rows, metric, CE).values())
        if not probe:
            continue
        head = list(_per_seed(rows, OWN_HEAD + metric, CE).values())
        head_text = f"own head (the field's vanilla) {_cell(head, 100)}, " if head else ""
        lines.append(
            f"- {_where(dataset, protocol)}: cross-entropy (reference, no verdict): {head_text}"
            f"probe {_cell(probe, 100)}."
        )
    return lines


def _bias_rows(probes: pd.DataFrame) -> pd.DataFrame:
    if not len(probes):
        return probes
    return probes[(probes["evaluator"] == GROUP_BIAS) & (probes["family"] == BIASED_MNIST)]


def _claim_bias(probes: pd.DataFrame) -> list[str]:
    lines = [
        "### 1. BiasedMNIST: unbiased accuracy",
        "",
        f'Paper (abstract): "{PAPER_BIAS_CLAIM}". It does not say at which rho, against which baseline, '
        f"or whether {CLAIM_VALUE} is absolute (percentage points) or relative (percent), so both readings "
        "are checked against the contrastive baselines SupCon and SimCLR on every BiasedMNIST entry and "
        "protocol measured, on unbiased test accuracy (CECL minus the baseline, paired by seed; Holm "
        "within this claim). Cross-entropy is a reference, not a contrastive baseline: no verdict.",
        "",
    ]
    bias = _bias_rows(probes)
    if bias.empty:
        return [*lines, "No BiasedMNIST (group_bias) entry was measured; the claim is not checked."]
    contexts = _contexts(bias)
    comparisons, skipped = _compare(bias, contexts, [(UNBIASED, "points", True)], "contrastive")
    comparisons = with_holm(comparisons)
    reference = _reference(bias, contexts, UNBIASED)
    block = _block(comparisons, skipped, "unbiased accuracy", magnitude=True)
    return lines + block + (["", *reference] if reference else []) + _rank_note(comparisons)


def _claim_convergence(epochs: pd.DataFrame, entries: Mapping[str, ConvergenceEntry]) -> list[str]:
    lines = [
        "### 2. Faster convergence",
        "",
        "Paper (abstract): faster convergence than the contrastive baselines. Measured in absolute terms "
        "on the per-epoch monitor's validation accuracy (pretrain.monitor): the area under the curve over "
        "the monitored epochs divided by their span (points; higher = earlier) and the first epoch at "
        f"which a run reaches the entry's common threshold ({THRESHOLD_FRACTION:g} x the lowest final "
        "accuracy among its contrastive runs; negative = CECL faster); CECL minus every other contrastive "
        "method, "
        f"paired by seed, Holm within this claim. Entries monitored at fewer than {MIN_MONITORED_EPOCHS} "
        "epochs are not compared.",
        "",
    ]
    if not entries:
        return [*lines, "No pretraining history was collected; the claim is not checked."]
    short = [entry.short_note() for entry in entries.values() if not entry.enough]
    long = [(d, None) for d, entry in entries.items() if entry.enough]
    comparisons, skipped = _compare(
        epochs, long, [(AREA, "points", True), (TO_THRESHOLD, "epochs", False)], "every"
    )
    comparisons = with_holm(comparisons)
    by_metric = {
        AREA: "Area under the monitor curve (time-averaged accuracy)",
        TO_THRESHOLD: "Epochs to the common threshold",
    }
    for metric, label in by_metric.items():
        chosen = [c for c in comparisons if (c.unit == "points") == (metric == AREA)]
        if chosen:
            what = "area under the monitor curve" if metric == AREA else "to reach the common threshold"
            lines += [f"{label}:", "", *_block(chosen, [], what, magnitude=False), ""]
    lines += [*skipped, *(["", *short] if short else [])]
    return lines + _rank_note(comparisons)


def _claim_accuracy(probes: pd.DataFrame) -> list[str]:
    lines = [
        "### 3. Accuracy on classification datasets",
        "",
        "Paper (abstract): better accuracy than the contrastive baselines. CECL minus SupCon and SimCLR "
        "in top-1 test accuracy (points, paired by seed, Holm within this claim) on every classification "
        "entry; cross-entropy is a reference without a verdict.",
        "",
    ]
    rows = probes[probes["evaluator"] == CLASSIFICATION] if len(probes) else probes
    if rows.empty:
        return [*lines, "No classification entry was measured; the claim is not checked."]
    contexts = _contexts(rows)
    comparisons, skipped = _compare(rows, contexts, [(TOP1, "points", True)], "contrastive")
    comparisons = with_holm(comparisons)
    reference = _reference(rows, contexts, TOP1)
    block = _block(comparisons, skipped, "top-1 accuracy", magnitude=False)
    return lines + block + (["", *reference] if reference else []) + _rank_note(comparisons)


def floor_comparisons(probes: pd.DataFrame, floors: pd.DataFrame) -> list[Comparison]:
    """Every method (and cross-entropy's own head) minus each floor, on each entry's headline metric
    (unbiased accuracy on bias benchmarks, top-1 otherwise), Holm-adjusted as one family."""
    comparisons = []
    if not len(probes) or not len(floors):
        return comparisons
    for dataset, protocol in _contexts(probes):
        rows = probes[(probes["dataset"] == dataset) & (probes["protocol"] == protocol)]
        metric = UNBIASED if rows["evaluator"].iloc[0] == GROUP_BIAS else TOP1
        subjects = [(m, metric) for m in ordered(rows["method"])]
        subjects += [(m + OWN_HEAD_SUFFIX, OWN_HEAD + metric) for m in ordered(rows["method"])]
        entry_floors = floors[floors["dataset"] == dataset]
        references: list[tuple[str, dict[int, float] | float]] = []
        for kind, label in FLOOR_LABELS.items():
            floor_rows = entry_floors[entry_floors["method"] == kind]
            if floor_rows.empty or metric not in floor_rows.columns:
                continue
            if kind == "pixels":  # one deterministic fit: a constant
                references.append((label, float(floor_rows[metric].iloc[0])))
            else:
                seeds = zip(floor_rows["seed"], floor_rows[metric], strict=True)
                references.append((label, {int(s): float(v) for s, v in seeds}))
        for subject, column in subjects:
            values = _per_seed(rows, column, subject.removesuffix(OWN_HEAD_SUFFIX))
            for label, floor in references if values else ():
                result = paired(values, floor, EQUIVALENCE_MARGIN["points"] / SCALE["points"])
                where = _where(dataset, protocol)
                comparisons.append(Comparison(where, dataset, subject, label, result, True, "points"))
    return with_holm(comparisons)


def _floor_cell(c: Comparison) -> str:
    values = c.result.b
    if c.baseline == FLOOR_LABELS["pixels"]:
        return f"{100 * values[0]:.1f} (one fit, no seed)" if values else "n/a"
    return _cell(values, 100)


def _claim_floors(comparisons: Sequence[Comparison]) -> list[str]:
    lines = [
        "### Floors: where each method stands",
        "",
        "Each method's headline test accuracy (unbiased on bias benchmarks, top-1 otherwise) minus the "
        "floors probed with the same protocol: the raw pixels (one deterministic fit per entry, so a "
        "one-sample comparison) and the untrained encoder each seed's pretraining starts from (paired by "
        "seed). Holm within this block; 'level with the floor' = TOST at ±1 point.",
        "",
    ]
    if not comparisons:
        return [*lines, "No floors were measured (floor stages): no comparison with them."]
    rows = [
        {
            "where": c.where,
            "method": display(c.subject),
            "floor": c.baseline,
            "method value": _cell(c.result.a, 100),
            "floor value": _floor_cell(c),
            "method − floor": signed(100 * c.result.diff),
            "95% CI": _interval(c),
            "Holm p": format_p(c.p_adjusted),
            "standing": c.words(floor=True),
        }
        for c in comparisons
    ]
    lines.append(pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True))
    return lines + _rank_note(comparisons)


def standings(comparisons: Sequence[Comparison]) -> dict[str, str]:
    """entry -> one sentence: per method, its standing against each floor."""
    out: dict[str, list[str]] = {}
    for dataset in ordered(c.dataset for c in comparisons):
        parts = []
        mine = [c for c in comparisons if c.dataset == dataset]
        for subject in ordered(c.subject for c in mine):
            against = "; ".join(
                f"{c.baseline.removeprefix('floor: ')} {c.words(floor=True)}"
                for c in mine
                if c.subject == subject
            )
            parts.append(f"{display(subject)}: {against}")
        out[dataset] = "Against the floors: " + " | ".join(parts) + "."
    return {d: text for d, text in out.items()}


def _sanity(
    probes: pd.DataFrame, comparisons: Sequence[Comparison], scales: Mapping[str, EntryScale] | None
) -> list[str]:
    lines = [
        "### Paper-scale sanity",
        "",
        "Vanilla cross-entropy's own head against the published band at its rho (cecl/report/sanity.py), "
        "only for BiasedMNIST entries at a published rho; entries below paper scale are not compared.",
        "",
    ]
    bias = _bias_rows(probes)
    entries = ordered(bias["dataset"]) if len(bias) else []
    own = {}
    for entry in entries:
        head = list(_per_seed(bias[bias["dataset"] == entry], OWN_HEAD + UNBIASED, CE).values())
        if head:
            own[entry] = (100 * sum(head) / len(head), _cell(head, 100))
    return lines + sanity_lines(entries, scales, own, standings(comparisons))


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
    if len(epochs) and "final_epoch" in epochs.columns:
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
    collected: Collected,
    epochs: pd.DataFrame,
    notes: Mapping[str, str] | None = None,
    entries: Mapping[str, ConvergenceEntry] | None = None,
    scales: Mapping[str, EntryScale] | None = None,
) -> str:
    """The Claims section (see the module docstring).

    ``epochs`` is tables.convergence_frame's frame and ``entries`` tables.convergence_entries'; ``scales``
    (entry -> EntryScale) enables the paper-scale sanity rows.
    """
    notes = notes or {}
    margin = EQUIVALENCE_MARGIN
    lines = [
        "## Claims",
        "",
        "Every comparison is a difference paired by seed (at each seed all methods start from the same "
        "initial weights and see the same batch order) with its Student-t 95% interval (unadjusted) and a "
        "paired t-test, Holm-adjusted within each claim. Directions: 'equivalent within "
        f"±{margin['points']:g} point' (±{margin['epochs']:g} epoch for epoch counts) = the Holm-adjusted "
        "two one-sided tests (TOST) at that margin give p < 0.05, so the difference is too small to "
        f"matter; otherwise '{REPRODUCES}' / '{CONTRADICTS}' = Holm-adjusted paired p < 0.05 with the "
        f"mean difference on CECL's better / worse side; '{UNRESOLVED}' = neither; 'not testable' = "
        "fewer than 2 paired seeds, or the same difference in every seed (no interval).",
        "",
    ]
    floors = floor_comparisons(collected.probes, collected.floors)
    for block in (
        _claim_bias(collected.probes),
        _claim_convergence(epochs, entries or {}),
        _claim_accuracy(collected.probes),
        _claim_floors(floors),
        _sanity(collected.probes, floors, scales),
    ):
        lines += [*block, ""]
    facts = caveats(collected, epochs, notes)
    if facts:
        lines += ["### Caveats", "", "This run is smaller than the paper's: " + "; ".join(facts) + "."]
    return "\n".join(lines).rstrip("\n") + "\n"
