"""The sweep's tables and figure: results.csv frame, τ × w heatmap (PNG + long CSV), sensitivity table.

Every plotted or tabled number is a trial's monitor value (``pretrain.monitor``) on the **validation**
split after its last epoch, for the trials that ran the sweep's whole budget (``sweep.epochs``): like is
compared with like. The metric is the dataset evaluator's primary one, named in best.json (``metric``;
the column keeps the name ``final_val_accuracy``). A trial ASHA stopped early is shown as stopped, with
no value: its value is at a smaller budget. (results.csv also keeps each trial's best value over epochs,
``best_val_accuracy``, for reference.) The test split is never used for selection. The Markdown table
says which configuration each cell is, marks stopped and failed trials, and lists the configuration
chosen per method (the one in best.json). The aggregate stage can include sweep/sensitivity.md as is, or
rebuild it from sweep/results.csv and sweep/best.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RESULT_COLUMNS = (
    "method",
    "temperature",
    "weight",
    "final_val_accuracy",
    "best_val_accuracy",
    "best_epoch",
    "epochs_run",
    "stopped_early",
    "status",
    "retries",
)
HEATMAP_COLUMNS = ("temperature", "weight", "final_val_accuracy")
GRID_METHOD = "cecl"  # the method swept over τ × w


def results_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial in RESULT_COLUMNS order (weight blank for methods without a w axis)."""
    frame = pd.DataFrame(list(rows), columns=list(RESULT_COLUMNS))
    return frame.astype({"best_epoch": "Int64", "epochs_run": "Int64", "retries": "Int64"})


def load_results(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """sweep/results.csv and sweep/best.json, as written by the sweep stage."""
    sweep_dir = Path(sweep_dir)
    frame = pd.read_csv(sweep_dir / "results.csv")
    return frame, json.loads((sweep_dir / "best.json").read_text())


def _grid_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["method"] == GRID_METHOD) & frame["weight"].notna()]


def _at_budget(frame: pd.DataFrame, epochs: int) -> pd.Series:
    """The trials that finished all ``epochs`` with a value: the cells that are compared."""
    return (
        (frame["status"] == "TERMINATED")
        & frame["final_val_accuracy"].notna()
        & (frame["epochs_run"].astype("Int64") == epochs)
    ).fillna(False)


def heatmap_frame(frame: pd.DataFrame, epochs: int) -> pd.DataFrame:
    """Long format (temperature, weight, final_val_accuracy) of CECL's trials at the budget ``epochs``."""
    rows = _grid_rows(frame)
    rows = rows[_at_budget(rows, epochs)]
    return rows[list(HEATMAP_COLUMNS)].sort_values(["temperature", "weight"]).reset_index(drop=True)


def _pct(value: Any) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"
    )


def _cell(row: pd.Series, bold: bool, epochs: int) -> str:
    """``81.2``, ``**81.2**`` (the method's selected configuration), ``stopped (2 ep)`` or ``failed``."""
    if row["status"] != "TERMINATED" or pd.isna(row["final_val_accuracy"]):
        return "failed"
    if int(row["epochs_run"]) != epochs:  # a value at a smaller budget is not comparable: not shown
        return f"stopped ({int(row['epochs_run'])} ep)"
    text = _pct(float(row["final_val_accuracy"]))
    return f"**{text}**" if bold else text


def _is_best(row: pd.Series, best: dict[str, Any]) -> bool:
    chosen = best.get("methods", {}).get(row["method"])
    if not chosen:
        return False
    same_w = pd.isna(row["weight"]) or math.isclose(float(row["weight"]), float(chosen.get("weight", -1)))
    return math.isclose(float(row["temperature"]), float(chosen["temperature"])) and same_w


def metric_name(best: dict[str, Any]) -> str:
    """The objective's metric in words (``unbiased accuracy``); best.json's ``metric``."""
    return str(best.get("metric", "accuracy")).replace("_", " ")


def _setting(best: dict[str, Any]) -> str:
    size = best.get("train_size")
    data = f"Dataset entry `{best['dataset']}`: {best['description']}; training seed {best.get('seed', 0)}"
    if size:
        data += f", trained on a seeded subsample of {size} training images"
    if best.get("scheduler") == "asha":
        stop = "ASHA early stopping (only the trials it ran to the end are compared)"
    else:
        stop = "every trial trained to the end (full grid, no early stopping)"
    return f"{data}, {best['epochs']} pretraining epochs per trial, {stop}."


def heatmap_title(best: dict[str, Any]) -> str:
    """Three lines: the objective, the dataset entry, the one budget every plotted cell trained to."""
    subset = f" on {best['train_size']} training images (seeded subsample)" if best.get("train_size") else ""
    return (
        f"CECL validation {metric_name(best)} (%) over τ × w, after the last epoch\n"
        f"{best['description']}\n"
        f"budget: every cell {best['epochs']} epochs{subset}"
    )


def sensitivity_markdown(frame: pd.DataFrame, best: dict[str, Any]) -> str:
    """The sensitivity table: CECL's τ × w grid, the other methods per τ, the selected configurations."""
    lines = [
        "## Sensitivity to the temperature τ and the weight w (sweep)",
        "",
        _setting(best),
        f"Each number is one configuration's monitor {metric_name(best)} (%) on the **validation**",
        f"split after its last epoch, every one after the same {best['epochs']} epochs; the test split is",
        "never used.",
        "**Bold**: the configuration selected for its method (sweep/best.json). `stopped (k ep)`: stopped",
        "early by ASHA after k epochs, not compared. `failed`: the trial crashed on every retry. Source:",
        "sweep/results.csv; MLflow: the `sweep` run's nested runs.",
        "",
    ]
    grid = _grid_rows(frame)
    if not grid.empty:
        weights = sorted(grid["weight"].unique())
        lines += [
            "### CECL: τ (rows) × w (columns)",
            "",
            "L = (τ/τ_base) · mean[w · L_a + (1 − w) · L_b]: w = 0 is pure NT-Xent (L_b), w = 1 pure L_a.",
            "",
            "| τ \\ w | " + " | ".join(f"{w:g}" for w in weights) + " |",
            "|---|" + "---|" * len(weights),
        ]
        for tau in sorted(grid["temperature"].unique()):
            cells = []
            for w in weights:
                match = grid[(grid["temperature"] == tau) & (grid["weight"] == w)]
                cells.append(
                    "—"
                    if match.empty
                    else _cell(match.iloc[0], _is_best(match.iloc[0], best), best["epochs"])
                )
            lines.append(f"| {tau:g} | " + " | ".join(cells) + " |")
        lines.append("")
    others = frame.drop(grid.index)
    if not others.empty:
        methods = list(dict.fromkeys(others["method"]))
        lines += [
            "### " + ", ".join(methods) + ": τ",
            "",
            "| τ | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for tau in sorted(others["temperature"].unique()):
            cells = []
            for method in methods:
                match = others[(others["temperature"] == tau) & (others["method"] == method)]
                cells.append(
                    "—"
                    if match.empty
                    else _cell(match.iloc[0], _is_best(match.iloc[0], best), best["epochs"])
                )
            lines.append(f"| {tau:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"### Selected configuration per method (highest validation {metric_name(best)})",
        "",
        f"| method | τ | w | validation {metric_name(best)} (%) after the last epoch | epochs run |",
        "|---|---|---|---|---|",
    ]
    tied = []
    for method, chosen in best.get("methods", {}).items():
        weight = f"{chosen['weight']:g}" if chosen.get("weight") is not None else "—"
        lines.append(
            f"| {method} | {chosen['temperature']:g} | {weight} | {_pct(chosen['final_val_accuracy'])} | "
            f"{chosen['epochs_run']} |"
        )
        if chosen.get("ties", 1) > 1:
            tied.append(
                f"{method}: {chosen['ties']} configurations tie at {_pct(chosen['final_val_accuracy'])}"
            )
    if tied:
        lines += [
            "",
            "**Ties:** " + "; ".join(tied) + ". Among tied configurations the selection is simply the",
            "first by (τ, w) and says nothing about which is better: the validation objective does not",
            "separate them.",
        ]
    return "\n".join(lines) + "\n"


def plot_heatmap(
    frame: pd.DataFrame, out_png: Path, title: str, epochs: int, value_label: str = "validation accuracy (%)"
) -> Path:
    """CECL's last-epoch validation value over τ (rows) × w (columns) for the trials that ran all ``epochs``
    epochs, annotated; the others grey, marked failed or stopped (no value: another budget)."""
    grid = _grid_rows(frame)
    n_w, n_tau = max(grid["weight"].nunique(), 2), max(grid["temperature"].nunique(), 2)
    fig = Figure(figsize=(1.2 * n_w + 2.4, 0.6 * n_tau + 1.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if grid.empty:
        ax.text(0.5, 0.5, "no CECL τ × w grid in this sweep", ha="center", va="center")
        ax.set_axis_off()
    else:
        compared = grid.assign(final_val_accuracy=grid["final_val_accuracy"].where(_at_budget(grid, epochs)))
        table = compared.pivot_table(
            index="temperature", columns="weight", values="final_val_accuracy", aggfunc="max", dropna=False
        )
        values = 100 * table.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(table.columns)), [f"{w:g}" for w in table.columns])
        ax.set_yticks(range(len(table.index)), [f"{t:g}" for t in table.index])
        ax.set_xlabel("weight w (0: NT-Xent only, 1: L_a only)")
        ax.set_ylabel("temperature τ")
        ax.set_facecolor("0.85")  # NaN cells: failed, or stopped at a smaller budget
        stopped = {
            (float(r["temperature"]), float(r["weight"])): int(r["epochs_run"])
            for _, r in grid.iterrows()
            if r["status"] == "TERMINATED" and int(r["epochs_run"]) != epochs
        }
        for i, tau in enumerate(table.index):
            for j, w in enumerate(table.columns):
                value = values[i, j]
                if not math.isnan(value):
                    text = f"{value:.1f}"
                elif (tau, w) in stopped:
                    text = f"stopped\n({stopped[(tau, w)]} ep)"
                else:
                    text = "failed"
                ax.text(
                    j, i, text, ha="center", va="center", color="white" if value < _mid(values) else "black"
                )
        fig.colorbar(image, ax=ax, label=value_label)
    fig.suptitle(title, fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def _mid(values: Any) -> float:
    finite = values[~pd.isna(values)]
    return float((finite.min() + finite.max()) / 2) if finite.size else 0.0
