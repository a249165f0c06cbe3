"""reports/summary.json: the few numbers a `dvc exp show` / `dvc metrics show` table should hold.

The per-run metrics.json files (24 in the CPU default, over 1 700 in the paper profile) carry every
metric of every seed; as DVC metrics they made `dvc exp show` about 850 columns wide. This file is the
one DVC metrics file instead: per dataset entry and method, the mean over seeds of the headline test
metrics (bias benchmarks: unbiased and conflicting accuracy; classification: top-1; transfers: top-1),
rounded to 4 decimals, plus the number of seeds; the floors under ``floor_pixels`` / ``floor_init``
(``seeds`` 0 for the raw pixels: one fit without a seed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from cecl.report.collect import CONFLICTING, GROUP_BIAS, TOP1, UNBIASED, Collected, ordered

HEADLINES = {GROUP_BIAS: {"unbiased": UNBIASED, "conflicting": CONFLICTING}}
DEFAULT_HEADLINES = {"top1": TOP1}


def _means(frame: pd.DataFrame, label: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in ordered(frame["method"]):
        rows = frame[frame["method"] == method]
        evaluator = rows["evaluator"].iloc[0]
        values: dict[str, Any] = {
            name: round(float(rows[column].mean()), 4)
            for name, column in HEADLINES.get(evaluator, DEFAULT_HEADLINES).items()
        }
        values["seeds"] = int(rows["seed"].nunique())  # nunique skips the raw-pixel floor's null seed
        out[method] = values
    return out


def summary_metrics(collected: Collected) -> dict[str, Any]:
    """{entry: {method: {metric: mean, seeds: n}}}, transfers under ``"source->target"`` keys."""
    summary: dict[str, Any] = {}
    probes, floors = collected.probes, collected.floors
    for dataset in ordered(probes.get("dataset", [])):
        summary[dataset] = _means(probes[probes["dataset"] == dataset], dataset)
        entry_floors = floors[floors["dataset"] == dataset] if len(floors) else floors
        if len(entry_floors):
            named = entry_floors.assign(method=["floor_" + kind for kind in entry_floors["method"]])
            summary[dataset].update(_means(named, dataset))
    transfers = collected.transfers
    if len(transfers):
        for source, target in ordered(zip(transfers["source"], transfers["dataset"], strict=True)):
            pair = transfers[(transfers["source"] == source) & (transfers["dataset"] == target)]
            summary[f"{source}->{target}"] = _means(pair, target)
    return summary


def write_summary(collected: Collected, path: Path) -> Path:
    path.write_text(json.dumps(summary_metrics(collected), indent=2) + "\n")
    return path
