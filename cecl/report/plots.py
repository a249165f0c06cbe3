"""Convergence figure and DVC plot data: the per-epoch monitor's validation accuracy per pretraining epoch.

convergence.png: one subplot per dataset entry, one line per method = the mean over seeds at each
epoch, with a shaded min–max band over seeds (none for a single seed). tab20 colours plus markers keep
up to 20 methods apart; the legend sits outside the axes. Drawn with matplotlib's object-oriented API
on an Agg canvas, so it neither needs a display nor changes the process-wide backend.

convergence.csv: long format, one row per (dataset, method, seed, epoch), with a ``series`` column
(``cecl (bmnist_rho95, seed 0)``) that the custom DVC template .dvc/plots/convergence.json colours by.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cecl.report.collect import ordered

CONVERGENCE_COLUMNS = ("dataset", "method", "seed", "epoch", "monitor_val_accuracy", "series")
MARKERS = "os^Dv<>pPX*h"
MAX_COLUMNS = 3


def _colour_and_marker(index: int) -> dict[str, object]:
    """tab20's dark shades first (10 hues), then the light ones, so up to 10 methods get distinct hues
    and up to 20 distinct colours; markers cycle independently so same-hue pairs still differ."""
    slot = index % 20
    colour = colormaps["tab20"]((2 * slot) % 20 + slot // 10)
    return {"color": colour, "marker": MARKERS[index % len(MARKERS)]}


def plot_convergence(
    histories: pd.DataFrame,
    out_png: Path,
    methods: Sequence[str] | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """One subplot per dataset entry, one line (mean over seeds) and min–max band per method."""
    notes = notes or {}
    datasets = ordered(histories["dataset"])
    methods = list(methods) if methods is not None else ordered(histories["method"])
    if not datasets:
        raise ValueError("no pretraining histories to plot")
    n_cols = min(MAX_COLUMNS, len(datasets))
    n_rows = math.ceil(len(datasets) / n_cols)
    fig = Figure(
        figsize=(4.6 * n_cols + 2.2, 3.6 * n_rows + 0.1 * max(0, len(methods) - 10)), layout="constrained"
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    handles: dict[str, object] = {}
    for ax, dataset in zip(axes, datasets, strict=False):
        rows = histories[histories["dataset"] == dataset]
        for index, method in enumerate(methods):
            run = rows[rows["method"] == method]
            if run.empty:
                continue
            by_epoch = run.groupby("epoch")["monitor_val_accuracy"].agg(["mean", "min", "max", "count"])
            style = _colour_and_marker(index)
            (line,) = ax.plot(by_epoch.index, 100 * by_epoch["mean"], label=method, ms=3, **style)
            if by_epoch["count"].max() > 1:
                ax.fill_between(
                    by_epoch.index,
                    100 * by_epoch["min"],
                    100 * by_epoch["max"],
                    color=style["color"],
                    alpha=0.2,
                )
            handles.setdefault(method, line)
        title = dataset if not notes.get(dataset) else f"{dataset}\n{notes[dataset]}"
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("pretraining epoch")
        ax.set_ylabel("monitor val. accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    ordered_handles = [handles[m] for m in methods if m in handles]
    fig.legend(
        ordered_handles,
        [m for m in methods if m in handles],
        title="method (mean; band: min–max over seeds)",
        loc="outside right center",
        fontsize="small",
    )
    fig.suptitle("Convergence: the per-epoch monitor's validation accuracy (pretrain.monitor) per epoch")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def convergence_long(histories: pd.DataFrame) -> pd.DataFrame:
    """DVC plot frame (CONVERGENCE_COLUMNS): one row per (dataset, method, seed, epoch)."""
    long = histories.loc[:, ["dataset", "method", "seed", "epoch", "monitor_val_accuracy"]].copy()
    long["series"] = [
        f"{method} ({dataset}, seed {seed})"
        for dataset, method, seed in zip(long["dataset"], long["method"], long["seed"], strict=True)
    ]
    return long.loc[:, list(CONVERGENCE_COLUMNS)].reset_index(drop=True)


def write_convergence_csv(histories: pd.DataFrame, out_csv: Path) -> Path:
    """Write convergence.csv (see convergence_long) for `dvc plots show` (template 'convergence')."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    convergence_long(histories).to_csv(out_csv, index=False)
    return out_csv
