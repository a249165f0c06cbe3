"""Paper-style tables over many datasets and seeds: Markdown, tidy CSV and booktabs LaTeX.

Tables (rows = methods in the order the runs were given):

- ``classification``: per classification dataset entry (probe runs), top-1 test accuracy;
- ``bias``: per group_bias entry, unbiased and bias-conflicting test accuracy;
- ``transfer``: per source → target, top-1 and mean per-class test accuracy;
- ``official``: per entry (and transfer pair), validation-selected test accuracy next to the
  official protocol's test-selected (optimistic) one;
- ``convergence``: per entry monitored for at least MIN_MONITORED_EPOCHS epochs, in absolute terms: the
  area under the per-epoch monitor curve (a time-averaged accuracy), the accuracy at fixed epochs, and
  the epochs to one threshold common to every run of the entry.

The bias and classification tables end with reference rows: cross-entropy scored by its own head
(``ce (own head)``, the field's "vanilla" number) when its metrics.json has ``own_head``, and the two
floors, ``floor: raw pixels`` and ``floor: untrained encoder``, probed with the same protocol
(cecl/runs.py FloorKey). A cell whose probe selected its L2 strength at an edge of the grid in at least
one seed (metrics.json ``selected_at_edge``) carries a footnote mark (EDGE_MARKS) explained in the caption.

Every cell is mean ± 95% Student-t half-width over seeds with n (stats.py), e.g. ``91.2 ± 0.4 (n=3)``.
The tidy CSV has one row per (table, dataset, source, protocol, method, metric) with mean, ci95, std,
n, and the per-seed values (``seeds`` and ``values``, ``;``-separated, same order); accuracies stay
fractions in [0, 1] at full precision. When a dataset entry was measured with more than one
protocol, each protocol gets its own column group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cecl.report.collect import (
    CLASSIFICATION,
    CONFLICTING,
    EDGE,
    GROUP_BIAS,
    MEAN_PER_CLASS,
    OFFICIAL,
    OWN_HEAD,
    TOP1,
    UNBIASED,
    ordered,
)
from cecl.report.stats import Summary, format_summary, format_value, summarize

OFFICIAL_LABEL = "official protocol (test-selected, optimistic)"
HONEST_LABEL = "validation-selected"
PROVENANCE_FILE = "provenance.md"
TABLES_DIR = "tables"  # build_report writes the table files into out_dir/TABLES_DIR
# Convergence (absolute terms): no convergence row for an entry monitored at fewer epochs than this.
MIN_MONITORED_EPOCHS = 5
# The common threshold of an entry: this fraction of the lowest final monitor accuracy among its
# contrastive runs, so one absolute number that every one of them reaches by its last epoch. Cross-entropy
# is left out of it: it is a reference the convergence claim does not compare, and its low colour-bound
# curve would set a threshold every contrastive run passes at its first epoch (measured on bmnist_rho90).
THRESHOLD_FRACTION = 0.9
THRESHOLD_EXCLUDES = ("ce",)
AREA = "monitor_area"  # area under the monitor curve / its length in epochs: a time-averaged accuracy
TO_THRESHOLD = "epochs_to_threshold"
# A curve "reaches" the threshold when acc >= threshold - TOLERANCE (0.9 * 0.8 != 0.72 in floats).
TOLERANCE = 1e-9
# Reference rows (no verdict against them in the tables) and their labels.
OWN_HEAD_SUFFIX = " (own head)"
FLOOR_LABELS = {"pixels": "floor: raw pixels", "init": "floor: untrained encoder"}
EDGE_MARKS = {"weak": "†", "strong": "‡"}
TIDY_COLUMNS = (
    "table",
    "dataset",
    "source",
    "protocol",
    "method",
    "metric",
    "mean",
    "ci95",
    "std",
    "n",
    "seeds",
    "values",
)


@dataclass(frozen=True)
class Column:
    """One table column: a header group (dataset entry / pair), a sub-label, a metric and a row filter."""

    group: str
    label: str
    metric: str
    dataset: str
    source: str = ""
    protocol: str = ""
    scale: float | None = None  # None: the table's scale


@dataclass
class Table:
    """A built table: its cells (Summary per (method, column index)) and how to print them."""

    name: str
    title: str
    caption: str
    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, int], Summary]
    scale: float = 100.0  # fractions -> percent; 1 for epochs
    decimals: int = 1
    formats: tuple[str, ...] = ("md", "csv", "tex")
    tidy: pd.DataFrame = field(default_factory=pd.DataFrame)
    marks: dict[tuple[str, int], str] = field(default_factory=dict)  # footnote marks (EDGE_MARKS)
    # the DVC stages (= MLflow run names) whose metrics.json a cell summarises, in seed order
    stages: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)

    @property
    def has_single_seed_cells(self) -> bool:
        """A cell of one seed (the raw-pixel floor is one fit by design, and says so)."""
        pixels = FLOOR_LABELS["pixels"]
        return any(summary.n == 1 for (row, _), summary in self.cells.items() if row != pixels)


def _rows(frame: pd.DataFrame, column: Column, method: str) -> pd.DataFrame:
    rows = frame[(frame["method"] == method) & (frame["dataset"] == column.dataset)]
    if "source" in rows.columns:  # probe rows have source "", so a probe column never takes a transfer
        rows = rows[rows["source"] == column.source]
    if column.protocol:
        rows = rows[rows["protocol"] == column.protocol]
    if column.metric not in rows.columns:
        return rows.iloc[:0]
    return rows[rows[column.metric].notna()].sort_values("seed", kind="stable")


def _seed(value: object) -> str:
    """A seed for the tidy CSV; '' for a floor without one (raw pixels)."""
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(int(value))


def _mark(rows: pd.DataFrame) -> str:
    """EDGE_MARKS of the grid edges any of these rows' probes selected at ('†‡' for both)."""
    edges = set(rows[EDGE]) if EDGE in rows.columns else set()
    return "".join(mark for edge, mark in EDGE_MARKS.items() if edge in edges)


def _build(
    name: str,
    title: str,
    caption: str,
    frame: pd.DataFrame,
    methods: Sequence[str],
    columns: Sequence[Column],
    *,
    mark_edges: bool = True,
    **options,
) -> Table:
    """Summaries of every (method, column) cell and the tidy rows; the caption gets the cell legend.

    ``mark_edges``: footnote-mark the cells of probes selected at a grid edge (EDGE_MARKS)."""
    cells, tidy, marks, stages = {}, [], {}, {}
    for index, column in enumerate(columns):
        for method in methods:
            rows = _rows(frame, column, method)
            seeds = [_seed(s) for s in rows["seed"]]
            values = [float(v) for v in rows[column.metric]] if len(rows) else []
            summary = summarize(values)
            cells[(method, index)] = summary
            if len(rows) and "stage" in rows.columns:
                stages[(method, index)] = tuple(str(s) for s in rows["stage"])
            if mark_edges and _mark(rows):
                marks[(method, index)] = _mark(rows)
            if summary.n:
                tidy.append(
                    {
                        "table": name,
                        "dataset": column.dataset,
                        "source": column.source,
                        "protocol": column.protocol,
                        "method": method,
                        "metric": column.metric.removeprefix("test."),
                        "mean": summary.mean,
                        "ci95": summary.ci95,
                        "std": summary.std,
                        "n": summary.n,
                        "seeds": ";".join(seeds),
                        "values": ";".join(format_value(v) for v in values),
                    }
                )
    table = Table(
        name, title, caption, list(methods), list(columns), cells, marks=marks, stages=stages, **options
    )
    table.tidy = pd.DataFrame(tidy, columns=list(TIDY_COLUMNS))
    table.caption = caption + " " + cell_legend(table)
    return table


def cell_legend(table: Table) -> str:
    """How to read a cell (and, when present, that n=1 cells have no interval)."""
    text = (
        "Cells: mean ± 95% confidence half-width over seeds (Student t, t_{0.975,n−1}·s/√n), "
        "n = number of seeds."
    )
    if table.has_single_seed_cells:
        text += " n=1 cells have no interval (one seed gives no spread)."
    if any(method in FLOOR_LABELS.values() for method in table.methods):
        text += (
            " Floors, probed with the same protocol: the raw pixels (one fit per entry, no seed) and the "
            "untrained encoder each seed's pretraining starts from."
        )
    if any(method.endswith(OWN_HEAD_SUFFIX) for method in table.methods):
        text += (
            " 'ce (own head)': cross-entropy scored by its own classifier head, the field's vanilla number."
        )
    for edge, mark in EDGE_MARKS.items():
        if any(mark in marks for marks in table.marks.values()):
            strength = "smallest" if edge == "weak" else "largest"
            text += (
                f" {mark} in at least one seed the probe selected its L2 strength at the {edge} edge of "
                f"its grid (the {strength} L2): the grid may not reach the best strength."
            )
    return text


def _notes(datasets: Sequence[str], notes: Mapping[str, str]) -> str:
    described = [f"`{d}`: {notes[d]}" for d in datasets if notes.get(d)]
    return (" Datasets: " + "; ".join(described) + ".") if described else ""


def _protocol_columns(
    frame: pd.DataFrame, evaluator: str, metrics: Mapping[str, str]
) -> tuple[list[Column], list[str]]:
    """Columns per (dataset entry, protocol) of ``evaluator`` probe runs; the protocols seen."""
    rows = frame[frame["evaluator"] == evaluator] if "evaluator" in frame.columns else frame.iloc[:0]
    columns, protocols = [], ordered(rows["protocol"]) if len(rows) else []
    for dataset in ordered(rows["dataset"]):
        present = ordered(rows.loc[rows["dataset"] == dataset, "protocol"])
        for protocol in present:
            group = dataset if len(present) == 1 else f"{dataset} ({protocol})"
            columns += [Column(group, label, key, dataset, "", protocol) for label, key in metrics.items()]
    return columns, protocols


def _protocol_text(frame: pd.DataFrame, protocols: Sequence[str]) -> str:
    selected = ", ".join(f"`{s}`" for s in ordered(frame["selected_on"])) if len(frame) else "?"
    names = ", ".join(f"`{p}`" for p in protocols)
    return (
        f"Protocol {names}; the probe's L2 strength selected on the {selected} split (see report.md). A "
        "cell's runs report it in MLflow as `selected_test_<metric>` (tag `reported_metric`; metrics.json "
        "`test`), not `test_<metric>`, the probe's curve over the L2 grid."
    )


def with_references(
    probes: pd.DataFrame, methods: Sequence[str], floors: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """The probe rows plus the reference rows (module doc), and the row labels in table order.

    Own-head rows copy a probe row with its ``own_head.test.*`` values as ``test.*``; floor rows take
    the label of their kind and are repeated for every protocol their entry was measured with (a floor
    is always a linear probe: it is the same reference whichever protocol trained the encoders).
    """
    frames, rows = [probes], list(methods)
    own = [c for c in probes.columns if c.startswith(OWN_HEAD + "test.")] if len(probes) else []
    if own:
        heads = probes[probes[own].notna().any(axis=1)]
        for method in ordered(heads["method"]):
            copy = heads[heads["method"] == method].copy()
            for name in [c for c in copy.columns if c.startswith("test.")]:
                copy[name] = copy.get(OWN_HEAD + name, np.nan)
            copy["method"] = method + OWN_HEAD_SUFFIX
            copy[EDGE] = ""  # the head is not a probe: no grid
            frames.append(copy)
            rows.append(method + OWN_HEAD_SUFFIX)
    if floors is not None and len(floors) and len(probes):
        for kind, label in FLOOR_LABELS.items():
            kind_rows = floors[floors["method"] == kind]
            for dataset in ordered(kind_rows["dataset"]):
                for protocol in ordered(probes.loc[probes["dataset"] == dataset, "protocol"]):
                    copy = kind_rows[kind_rows["dataset"] == dataset].copy()
                    copy["method"], copy["protocol"], copy["source"] = label, protocol, ""
                    frames.append(copy)
            if len(kind_rows):
                rows.append(label)
    frame = pd.concat([f for f in frames if len(f)], ignore_index=True) if len(frames) > 1 else probes
    return frame, rows


def classification_table(
    probes: pd.DataFrame,
    methods: Sequence[str],
    notes: Mapping[str, str],
    floors: pd.DataFrame | None = None,
) -> Table:
    """Top-1 test accuracy (%) per classification dataset entry (probe runs), then the reference rows."""
    columns, protocols = _protocol_columns(probes, CLASSIFICATION, {"top-1": TOP1})
    datasets = ordered(c.dataset for c in columns)
    caption = (
        "Top-1 test accuracy (%) on the classification datasets. "
        + _protocol_text(probes, protocols)
        + _notes(datasets, notes)
    )
    frame, rows = with_references(probes, methods, floors)
    return _build("classification", "Classification", caption, frame, rows, columns)


def bias_table(
    probes: pd.DataFrame,
    methods: Sequence[str],
    notes: Mapping[str, str],
    floors: pd.DataFrame | None = None,
) -> Table:
    """Unbiased and bias-conflicting test accuracy (%) per group_bias entry (probe runs), then references."""
    metrics = {"unbiased": UNBIASED, "conflicting": CONFLICTING}
    columns, protocols = _protocol_columns(probes, GROUP_BIAS, metrics)
    datasets = ordered(c.dataset for c in columns)
    caption = (
        "Unbiased / bias-conflicting test accuracy (%) on the bias benchmarks (unbiased = mean over the "
        "(target, bias) groups of the group accuracy; conflicting = the same over the groups whose bias "
        "attribute disagrees with the target). " + _protocol_text(probes, protocols) + _notes(datasets, notes)
    )
    frame, rows = with_references(probes, methods, floors)
    return _build("bias", "Bias benchmarks", caption, frame, rows, columns)


def _pairs(transfers: pd.DataFrame) -> list[tuple[str, str]]:
    if transfers.empty:
        return []
    return ordered(zip(transfers["source"], transfers["dataset"], strict=True))


def pair_label(source: str, target: str) -> str:
    return f"{source}→{target}"


def transfer_table(transfers: pd.DataFrame, methods: Sequence[str], notes: Mapping[str, str]) -> Table:
    """Top-1 and mean per-class test accuracy (%) of a linear probe on ``target``, ``source`` encoder."""
    columns = [
        Column(pair_label(source, target), label, key, target, source)
        for source, target in _pairs(transfers)
        for label, key in {"top-1": TOP1, "mean per-class": MEAN_PER_CLASS}.items()
    ]
    datasets = ordered([name for pair in _pairs(transfers) for name in pair])
    protocols = ordered(transfers["protocol"]) if len(transfers) else []
    caption = (
        "Transfer: encoder pretrained on the source (same method and seed), linear probe on the "
        "target; top-1 and mean per-class test accuracy (%). "
        + _protocol_text(transfers, protocols)
        + _notes(datasets, notes)
    )
    return _build("transfer", "Transfer", caption, transfers, methods, columns)


def official_table(
    probes: pd.DataFrame, transfers: pd.DataFrame, methods: Sequence[str], notes: Mapping[str, str]
) -> Table:
    """Test accuracy (%): validation-selected L2 strength vs the best test accuracy over the L2 grid."""
    metrics = {HONEST_LABEL: TOP1, OFFICIAL_LABEL: OFFICIAL}
    columns = []
    for dataset in ordered(probes["dataset"]) if len(probes) else []:
        present = ordered(probes.loc[probes["dataset"] == dataset, "protocol"])
        for protocol in present:
            group = dataset if len(present) == 1 else f"{dataset} ({protocol})"
            columns += [Column(group, label, key, dataset, "", protocol) for label, key in metrics.items()]
    for source, target in _pairs(transfers):
        columns += [
            Column(pair_label(source, target), label, key, target, source) for label, key in metrics.items()
        ]
    frame = pd.concat([f for f in (probes, transfers) if len(f)], ignore_index=True)
    caption = (
        f"Test accuracy (%): the probe's L2 strength selected on validation vs the {OFFICIAL_LABEL}, i.e. "
        "the best test accuracy over the L2 grid, the counterpart of the released code's best over probe "
        "epochs (it selects on the test set)." + _notes(ordered(c.dataset for c in columns), notes)
    )
    return _build(
        "official",
        "Evaluation protocol",
        caption,
        frame,
        methods,
        columns,
        formats=("md", "tex"),
        mark_edges=False,
    )


def monitor_area(epochs: Sequence[int], accuracy: Sequence[float]) -> float:
    """Area under the monitor curve (trapezoids over the monitored epochs) divided by its length in
    epochs: a time-averaged accuracy, higher for a curve that rises earlier. One epoch: its value."""
    pairs = sorted(zip(epochs, accuracy, strict=True))
    x = np.asarray([e for e, _ in pairs], dtype=float)
    y = np.asarray([a for _, a in pairs], dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def epochs_to_threshold(epochs: Sequence[int], accuracy: Sequence[float], threshold: float) -> float:
    """First epoch whose accuracy reaches ``threshold`` (an absolute accuracy); NaN when none does."""
    for epoch, value in sorted(zip(epochs, accuracy, strict=True)):
        if value >= threshold - TOLERANCE:
            return float(epoch)
    return float("nan")


def accuracy_metric(epoch: int) -> str:
    return f"accuracy_at_epoch_{epoch}"


@dataclass(frozen=True)
class ConvergenceEntry:
    """One entry's convergence settings, common to all its runs."""

    dataset: str
    monitored: int  # the fewest monitored epochs of any of its runs
    last_epoch: int
    fixed_epochs: tuple[int, ...]  # epochs every run monitored, reported as accuracy at that epoch
    threshold: float  # THRESHOLD_FRACTION x the lowest final accuracy among its contrastive runs

    @property
    def enough(self) -> bool:
        return self.monitored >= MIN_MONITORED_EPOCHS

    def short_note(self) -> str:
        """The one line printed instead of a convergence row for an entry monitored too briefly."""
        return (
            f"`{self.dataset}`: {self.monitored} epoch(s) monitored, fewer than {MIN_MONITORED_EPOCHS}: "
            "no convergence comparison (a curve this short shows where it ends, not how fast it gets there)."
        )


def _curves(histories: pd.DataFrame) -> dict[tuple[str, str, int], tuple[list[int], list[float]]]:
    curves = {}
    for (dataset, method, seed), run in histories.groupby(["dataset", "method", "seed"], sort=False):
        run = run.dropna(subset=["monitor_val_accuracy"]).sort_values("epoch")
        if len(run):
            curves[(dataset, method, int(seed))] = (
                [int(e) for e in run["epoch"]],
                [float(a) for a in run["monitor_val_accuracy"]],
            )
    return curves


def convergence_entries(histories: pd.DataFrame) -> dict[str, ConvergenceEntry]:
    """Per dataset entry: how many epochs were monitored, the fixed epochs and the common threshold."""
    curves = _curves(histories) if len(histories) else {}
    entries = {}
    for dataset in ordered(d for d, _, _ in curves):
        runs = [curve for (d, _, _), curve in curves.items() if d == dataset]
        common = sorted(set.intersection(*(set(epochs) for epochs, _ in runs)))
        last = max(epochs[-1] for epochs, _ in runs)
        middle = min(common, key=lambda e: (abs(e - last / 2), e)) if common else None
        fixed = tuple(dict.fromkeys(e for e in ([*common[:1], middle]) if e is not None))
        counted = [c for (d, m, _), c in curves.items() if d == dataset and m not in THRESHOLD_EXCLUDES]
        lowest_final = min(accuracy[-1] for _, accuracy in counted or runs)
        entries[dataset] = ConvergenceEntry(
            dataset, min(len(epochs) for epochs, _ in runs), last, fixed, THRESHOLD_FRACTION * lowest_final
        )
    return entries


def convergence_frame(histories: pd.DataFrame) -> pd.DataFrame:
    """One row per pretraining run of an entry monitored at >= MIN_MONITORED_EPOCHS epochs: dataset,
    method, seed, final_epoch, final_accuracy, AREA, accuracy_at_epoch_<k> and TO_THRESHOLD."""
    entries = convergence_entries(histories)
    rows = []
    for (dataset, method, seed), (epochs, accuracy) in _curves(histories).items() if len(histories) else ():
        entry = entries[dataset]
        if not entry.enough:
            continue
        row = {
            "dataset": dataset,
            "method": method,
            "seed": seed,
            "final_epoch": epochs[-1],
            "final_accuracy": accuracy[-1],
            AREA: monitor_area(epochs, accuracy),
        }
        for epoch in entry.fixed_epochs:
            row[accuracy_metric(epoch)] = accuracy[epochs.index(epoch)]
        row[TO_THRESHOLD] = epochs_to_threshold(epochs, accuracy, entry.threshold)
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["dataset", "method", "seed", "final_epoch"])


def convergence_table(
    epochs: pd.DataFrame,
    methods: Sequence[str],
    notes: Mapping[str, str],
    entries: Mapping[str, ConvergenceEntry] | None = None,
) -> Table:
    """Per entry (monitored >= MIN_MONITORED_EPOCHS epochs) and method: the monitor curve's area, the
    accuracy at the fixed epochs and the epochs to the entry's common threshold (module doc)."""
    entries = entries or {}
    datasets = ordered(epochs["dataset"]) if len(epochs) else []
    columns = []
    for dataset in datasets:
        entry = entries.get(dataset)
        columns.append(Column(dataset, "area (mean %)", AREA, dataset))
        for epoch in entry.fixed_epochs if entry else ():
            columns.append(Column(dataset, f"% at epoch {epoch}", accuracy_metric(epoch), dataset))
        if entry:
            label = f"epochs to {100 * entry.threshold:.1f}%"
            columns.append(Column(dataset, label, TO_THRESHOLD, dataset, scale=1.0))
    caption = (
        "Convergence in absolute terms, from the per-epoch monitor's validation accuracy (pretrain.monitor: "
        "kNN, or a linear probe on bias benchmarks): the area under the curve over the monitored epochs "
        "divided by their span (a time-averaged accuracy, %; higher = earlier), the accuracy at fixed "
        "epochs, and the first epoch at which a run reaches the entry's common threshold "
        f"({THRESHOLD_FRACTION:g} x the lowest final accuracy among its runs other than "
        f"{', '.join(THRESHOLD_EXCLUDES)}, so each of those reaches it; fewer = faster; a run that never "
        "reaches it is left out of its cell, n/a when none does). Only entries monitored at "
        f"{MIN_MONITORED_EPOCHS} or more epochs."
        + "".join(f" {entry.short_note()}" for entry in entries.values() if not entry.enough)
        + _notes(datasets, notes)
    )
    return _build("convergence", "Convergence", caption, epochs, methods, columns, formats=("md", "csv"))


# -- rendering ---------------------------------------------------------------------------------------


CellLink = Callable[[Sequence[str]], str | None]  # a cell's stages -> the href of its runs (None: no link)


def _strings(table: Table, pm: str, link: CellLink | None = None) -> list[list[str]]:
    """Each cell's text; with ``link``, a Markdown link to its stages' runs where ``link`` gives one."""
    rows = []
    for method in table.methods:
        row = []
        for i, column in enumerate(table.columns):
            text = format_summary(
                table.cells[(method, i)],
                table.scale if column.scale is None else column.scale,
                table.decimals,
                pm,
            ).replace("(n=1)", "(one fit)" if method == FLOOR_LABELS["pixels"] else "(n=1)")
            text += table.marks.get((method, i), "")
            stages = table.stages.get((method, i))
            href = link(stages) if link is not None and stages else None
            row.append(f"[{text}]({href})" if href else text)
        rows.append(row)
    return rows


def provenance_pointer(href: str = PROVENANCE_FILE) -> str:
    return f" Run ids and output hashes: [{PROVENANCE_FILE}]({href})."


def markdown(table: Table, provenance_href: str = PROVENANCE_FILE, link: CellLink | None = None) -> str:
    """Caption paragraph (pointing to provenance.md at ``provenance_href``), then a pipe table with
    columns '<group> <label>'; ``link`` turns each cell into a link to its MLflow runs (runlinks.py)."""
    if not table.columns:  # e.g. convergence when no entry was monitored long enough
        return f"{table.caption}{provenance_pointer(provenance_href)}\n\nNo columns: nothing to tabulate.\n"
    headers = [f"{c.group} {c.label}" for c in table.columns]
    flat = pd.DataFrame(
        _strings(table, "±", link), index=pd.Index(table.methods, name="method"), columns=headers
    )
    # disable_numparse: tabulate would otherwise re-format our "91.0" strings as numbers ("91").
    body = flat.to_markdown(disable_numparse=True, colalign=("left", *["right"] * flat.shape[1]))
    return f"{table.caption}{provenance_pointer(provenance_href)}\n\n{body}\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "→": r"$\rightarrow$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in str(text))


def latex(table: Table) -> str:
    """A booktabs tabular (Styler: \\toprule/\\midrule/\\bottomrule, centred multicolumn group headers)."""
    columns = pd.MultiIndex.from_tuples(
        [(latex_escape(c.group), latex_escape(c.label)) for c in table.columns]
    )
    index = pd.Index([latex_escape(m) for m in table.methods])
    wide = pd.DataFrame(_strings(table, r"$\pm$"), index=index, columns=columns)
    styler = wide.style.hide(names=True, axis="columns").hide(names=True, axis="index")
    body = styler.to_latex(hrules=True, multicol_align="c", column_format="l" + "r" * wide.shape[1])
    caption = f"{table.caption} Run ids and output hashes: {PROVENANCE_FILE} (next to report.md)."
    caption = "\n".join(f"% {line}" for line in caption.splitlines())
    return f"{caption}\n% Generated by cecl/report/tables.py; needs \\usepackage{{booktabs}}.\n{body}"


def write_table(table: Table, out_dir: Path) -> dict[str, Path]:
    """table_<name>.md/.csv/.tex (those in table.formats) in out_dir; returns 'table_<name>_<ext>' -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in table.formats:
        path = out_dir / f"table_{table.name}.{ext}"
        if ext == "md":  # out_dir is report.md's tables/ folder: provenance.md is one level up
            path.write_text(markdown(table, f"../{PROVENANCE_FILE}"))
        elif ext == "tex":
            path.write_text(latex(table))
        elif ext == "csv":
            table.tidy.to_csv(path, index=False)
        else:
            raise ValueError(f"unknown table format {ext!r}")
        paths[f"table_{table.name}_{ext}"] = path
    return paths


def configuration_markdown(probes: pd.DataFrame, transfers: pd.DataFrame) -> str:
    """Which loss configuration each (dataset, method) used (``config`` block of metrics.json)."""
    frame = pd.concat([f for f in (probes, transfers) if len(f)], ignore_index=True)
    lines = ["## Configurations used", ""]
    if frame.empty:
        return "\n".join([*lines, "No runs."]) + "\n"
    lines += ["| run | seeds | configuration |", "|---|---|---|"]
    frame = frame.assign(
        run=[
            f"{pair_label(s, d) if s else d} {m}"
            for s, d, m in zip(frame["source"], frame["dataset"], frame["method"], strict=True)
        ],
        settings=[
            ", ".join(f"{name}={value}" for name, value in json.loads(config).items()) or "(no options)"
            for config in frame["config"]
        ],
    )
    for (run, settings), rows in frame.groupby(["run", "settings"], sort=False):
        seeds = ", ".join(str(s) for s in sorted(rows["seed"]))
        lines.append(f"| {run} | {seeds} | {settings} |")
    return "\n".join(lines) + "\n"
