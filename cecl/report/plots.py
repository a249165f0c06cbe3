"""Convergence figures: online-probe validation accuracy per pretraining epoch (a PNG and a DVC plot CSV).

The PNG is drawn with matplotlib's object-oriented API on an Agg canvas, so it neither needs a
display nor changes the process-wide backend. The CSV is long format with a ``series`` column that
the custom DVC template .dvc/plots/convergence.json colours by (DVC's built-in templates colour by
revision/file only, so they would draw every method in one colour).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cecl.report.tables import ordered

CONVERGENCE_COLUMNS = ("epoch", "online_probe_val_accuracy", "method", "rho", "series")


def plot_convergence(histories_df: pd.DataFrame, out_png: Path) -> Path:
    """One subplot per rho, one line per method: online-probe validation accuracy vs pretraining epoch."""
    rhos, methods = ordered(histories_df, "rho"), ordered(histories_df, "method")
    fig = Figure(figsize=(4.5 * len(rhos) + 1.5, 3.6 + 0.1 * max(0, len(methods) - 10)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(rhos), sharey=True, squeeze=False)[0]
    # tab20 keeps up to 20 methods apart (the default cycle repeats after 10); markers separate pairs.
    palette, markers = colormaps["tab20"], "os^Dv"
    for ax, rho in zip(axes, rhos, strict=True):
        for index, method in enumerate(methods):
            rows = histories_df[(histories_df["rho"] == rho) & (histories_df["method"] == method)]
            rows = rows.sort_values("epoch")
            style = {"color": palette(index % 20), "marker": markers[index % len(markers)], "ms": 3}
            ax.plot(rows["epoch"], 100 * rows["online_probe_val_accuracy"], label=method, **style)
        ax.set_title(f"training ρ = {rho:g}")
        ax.set_xlabel("pretraining epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("online-probe validation accuracy (%)")
    axes[-1].legend(title="method", loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    fig.suptitle("Convergence on BiasedMNIST (validation split, same rho as training)")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def convergence_long(histories_df: pd.DataFrame) -> pd.DataFrame:
    """DVC plot frame: epoch, online_probe_val_accuracy, method, rho, series (e.g. 'cecl (rho=0.99)')."""
    long = histories_df.loc[:, ["epoch", "online_probe_val_accuracy", "method", "rho"]].copy()
    long["series"] = [
        f"{method} (rho={rho:g})" for method, rho in zip(long["method"], long["rho"], strict=True)
    ]
    return long.loc[:, list(CONVERGENCE_COLUMNS)]


def write_convergence_csv(histories_df: pd.DataFrame, out_csv: Path) -> Path:
    """Write reports/convergence.csv (see convergence_long) for `dvc plots show` (template 'convergence')."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    convergence_long(histories_df).to_csv(out_csv, index=False)
    return out_csv
