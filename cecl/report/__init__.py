"""Aggregate report: collect stage outputs, write tables, convergence plots, claims and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cecl.report.claims import claims_markdown, write_report
from cecl.report.collect import collect_histories, collect_probe_metrics
from cecl.report.plots import plot_convergence, write_convergence_csv
from cecl.report.tables import official_table_markdown, table_markdown, write_tables

__all__ = [
    "claims_markdown",
    "collect_histories",
    "collect_probe_metrics",
    "official_table_markdown",
    "plot_convergence",
    "table_markdown",
    "write_all",
    "write_convergence_csv",
    "write_report",
    "write_tables",
]


def write_all(
    df_probe: pd.DataFrame, df_hist: pd.DataFrame, out_dir: Path, extra_sections: Sequence[str] = ()
) -> dict[str, Path]:
    """Every report file in out_dir (tables, convergence.png/.csv, claims.md, report.md); kind -> path."""
    out_dir = Path(out_dir)
    paths = write_tables(df_probe, out_dir)
    paths["convergence_png"] = plot_convergence(df_hist, out_dir / "convergence.png")
    paths["convergence_csv"] = write_convergence_csv(df_hist, out_dir / "convergence.csv")
    paths["report"] = write_report(df_probe, df_hist, out_dir, extra_sections)
    paths["claims"] = out_dir / "claims.md"
    return paths
