"""The sweep's files: results.csv, best.json, heatmap.csv/.png and sensitivity.md, moved in together."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cecl.tune.runner import SweepSummary

OUTPUT_FILES = ("results.csv", "best.json", "heatmap.csv", "heatmap.png", "sensitivity.md")


def write_outputs(summary: SweepSummary, out_dir: Path) -> list[Path]:
    """Write the sweep's outputs into ``out_dir``: all files are rendered into a staging folder
    first and moved into place only when every one succeeded (``ray_results`` next to them stays)."""
    from cecl.report import sweep as report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [o.row() for o in summary.outcomes]
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir) as staging:
        tmp = Path(staging)
        frame = report.results_frame(rows)
        frame.to_csv(tmp / "results.csv", index=False)
        (tmp / "best.json").write_text(json.dumps(summary.best, indent=2, sort_keys=True) + "\n")
        epochs = summary.best["epochs"]  # the one budget every compared trial trained to
        report.heatmap_frame(frame, epochs).to_csv(tmp / "heatmap.csv", index=False)
        label = f"validation {report.metric_name(summary.best)} (%)"
        report.plot_heatmap(frame, tmp / "heatmap.png", report.heatmap_title(summary.best), epochs, label)
        (tmp / "sensitivity.md").write_text(report.sensitivity_markdown(frame, summary.best))
        for name in OUTPUT_FILES:
            os.replace(tmp / name, out_dir / name)
    return [out_dir / name for name in OUTPUT_FILES]
