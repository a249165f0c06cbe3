"""Paper-style tables over many datasets and seeds: Markdown, tidy CSV and booktabs LaTeX.

Tables (rows = methods in the order the runs were given):

- ``classification``: per classification dataset entry (probe runs), top-1 test accuracy;
- ``bias``: per group_bias entry, unbiased and bias-conflicting test accuracy;
- ``transfer``: per source → target, top-1 and mean per-class test accuracy;
- ``official``: per entry (and transfer pair), validation-selected test accuracy next to the
  official protocol's test-selected (optimistic) one;
- ``convergence``: per entry, the first pretraining epoch at which the per-epoch monitor reaches 90% and
  95% of the run's own final accuracy.

Every cell is mean ± 95% Student-t half-width over seeds with n (stats.py), e.g. ``91.2 ± 0.4 (n=3)``.
The tidy CSV has one row per (table, dataset, source, protocol, method, metric) with mean, ci95, std,
n, and the per-seed values (``seeds`` and ``values``, ``;``-separated, same order); accuracies stay
fractions in [0, 1] at full precision. When a dataset entry was measured with more than one
protocol, each protocol gets its own column group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cecl.report.collect import (
    CLASSIFICATION,
    CONFLICTING,
    GROUP_BIAS,
    MEAN_PER_CLASS,
    OFFICIAL,
    TOP1,
    UNBIASED,
    ordered,
)
from cecl.report.stats import Summary, format_summary, format_value, summarize

OFFICIAL_LABEL = "official protocol (test-selected, optimistic)"
HONEST_LABEL = "validation-selected"
PROVENANCE_FILE = "provenance.md"
TABLES_DIR = "tables"  # build_report writes the table files into out_dir/TABLES_DIR
CONVERGENCE_FRACTIONS = (0.90, 0.95)
# A curve "reaches" fraction·final when acc >= fraction·final - TOLERANCE (0.9 * 0.8 != 0.72 in floats).
TOLERANCE = 1e-9
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

    @property
    def has_single_seed_cells(self) -> bool:
        return any(summary.n == 1 for summary in self.cells.values())


def _values(frame: pd.DataFrame, column: Column, method: str) -> tuple[list[int], list[float]]:
    rows = frame[(frame["method"] == method) & (frame["dataset"] == column.dataset)]
    if "source" in rows.columns:  # probe rows have source "", so a probe column never takes a transfer
        rows = rows[rows["source"] == column.source]
    if column.protocol:
        rows = rows[rows["protocol"] == column.protocol]
    if column.metric not in rows.columns:
        return [], []
    rows = rows[rows[column.metric].notna()].sort_values("seed", kind="stable")
    return [int(s) for s in rows["seed"]], [float(v) for v in rows[column.metric]]


def _build(
    name: str,
    title: str,
    caption: str,
    frame: pd.DataFrame,
    methods: Sequence[str],
    columns: Sequence[Column],
    **options,
) -> Table:
    """Summaries of every (method, column) cell and the tidy rows; the caption gets the cell legend."""
    cells, tidy = {}, []
    for index, column in enumerate(columns):
        for method in methods:
            seeds, values = _values(frame, column, method)
            summary = summarize(values)
            cells[(method, index)] = summary
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
                        "seeds": ";".join(str(s) for s in seeds),
                        "values": ";".join(format_value(v) for v in values),
                    }
                )
    table = Table(name, title, caption, list(methods), list(columns), cells, **options)
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
    return f"Protocol {names}; the probe's L2 strength selected on the {selected} split (see report.md)."


def classification_table(probes: pd.DataFrame, methods: Sequence[str], notes: Mapping[str, str]) -> Table:
    """Top-1 test accuracy (%) per classification dataset entry (probe runs)."""
    columns, protocols = _protocol_columns(probes, CLASSIFICATION, {"top-1": TOP1})
    datasets = ordered(c.dataset for c in columns)
    caption = (
        "Top-1 test accuracy (%) on the classification datasets. "
        + _protocol_text(probes, protocols)
        + _notes(datasets, notes)
    )
    return _build("classification", "Classification", caption, probes, methods, columns)


def bias_table(probes: pd.DataFrame, methods: Sequence[str], notes: Mapping[str, str]) -> Table:
    """Unbiased and bias-conflicting test accuracy (%) per group_bias dataset entry (probe runs)."""
    metrics = {"unbiased": UNBIASED, "conflicting": CONFLICTING}
    columns, protocols = _protocol_columns(probes, GROUP_BIAS, metrics)
    datasets = ordered(c.dataset for c in columns)
    caption = (
        "Unbiased / bias-conflicting test accuracy (%) on the bias benchmarks (unbiased = mean over the "
        "(target, bias) groups of the group accuracy; conflicting = the same over the groups whose bias "
        "attribute disagrees with the target). " + _protocol_text(probes, protocols) + _notes(datasets, notes)
    )
    return _build("bias", "Bias benchmarks", caption, probes, methods, columns)


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
    return _build("official", "Evaluation protocol", caption, frame, methods, columns, formats=("md", "tex"))


def epochs_to_fraction(epochs: Sequence[int], accuracy: Sequence[float], fraction: float) -> int:
    """First epoch whose accuracy reaches ``fraction`` of the last epoch's (the run's final) accuracy."""
    pairs = sorted(zip(epochs, accuracy, strict=True))
    final = pairs[-1][1]
    target = fraction * final - TOLERANCE
    return int(next(epoch for epoch, value in pairs if value >= target))


def convergence_metric(fraction: float) -> str:
    return f"epochs_to_{round(100 * fraction)}pct_final"


def convergence_frame(histories: pd.DataFrame) -> pd.DataFrame:
    """One row per pretraining run: dataset, method, seed, final_epoch, final_accuracy, epochs_to_*."""
    rows = []
    if histories.empty:
        return pd.DataFrame(columns=["dataset", "method", "seed", "final_epoch", "final_accuracy"])
    for (dataset, method, seed), run in histories.groupby(["dataset", "method", "seed"], sort=False):
        run = run.dropna(subset=["monitor_val_accuracy"]).sort_values("epoch")
        if run.empty:
            continue
        epochs, accuracy = run["epoch"].tolist(), run["monitor_val_accuracy"].tolist()
        row = {
            "dataset": dataset,
            "method": method,
            "seed": int(seed),
            "final_epoch": int(epochs[-1]),
            "final_accuracy": float(accuracy[-1]),
        }
        for fraction in CONVERGENCE_FRACTIONS:
            row[convergence_metric(fraction)] = epochs_to_fraction(epochs, accuracy, fraction)
        rows.append(row)
    return pd.DataFrame(rows)


def convergence_table(epochs: pd.DataFrame, methods: Sequence[str], notes: Mapping[str, str]) -> Table:
    """Per dataset entry and method: epochs to 90% / 95% of the run's own final monitor accuracy."""
    datasets = ordered(epochs["dataset"]) if len(epochs) else []
    columns = [
        Column(dataset, f"{round(100 * fraction)}% of final", convergence_metric(fraction), dataset)
        for dataset in datasets
        for fraction in CONVERGENCE_FRACTIONS
    ]
    caption = (
        "Convergence: the first pretraining epoch at which the per-epoch monitor's validation accuracy "
        "(pretrain.monitor: kNN, or a linear probe on bias benchmarks) reaches 90% / 95% of that run's own "
        "final (last-epoch) accuracy; fewer epochs = faster." + _notes(datasets, notes)
    )
    return _build(
        "convergence", "Convergence", caption, epochs, methods, columns, scale=1.0, formats=("md", "csv")
    )


# -- rendering ---------------------------------------------------------------------------------------


def _strings(table: Table, pm: str) -> list[list[str]]:
    return [
        [
            format_summary(table.cells[(method, i)], table.scale, table.decimals, pm)
            for i in range(len(table.columns))
        ]
        for method in table.methods
    ]


def provenance_pointer(href: str = PROVENANCE_FILE) -> str:
    return f" Run ids and output hashes: [{PROVENANCE_FILE}]({href})."


def markdown(table: Table, provenance_href: str = PROVENANCE_FILE) -> str:
    """Caption paragraph (pointing to provenance.md at ``provenance_href``), then a pipe table with
    columns '<group> <label>'."""
    headers = [f"{c.group} {c.label}" for c in table.columns]
    flat = pd.DataFrame(_strings(table, "±"), index=pd.Index(table.methods, name="method"), columns=headers)
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
