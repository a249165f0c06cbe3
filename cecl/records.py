"""The per-run records that cross stages, read and written here only: metrics.json (probe, transfer),
history.csv (pretrain) and curve.csv (probe, transfer).

The stages write them and the report (cecl/report/collect.py) reads them back; their byte format is
spelled once, here. Torch-free (the standard library and pandas), so the aggregate stage reads them
without loading the training stack.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cecl.io import write_json

if TYPE_CHECKING:
    import pandas as pd


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> None:
    """metrics.json: sorted keys, 2-space indent, a final newline (byte-stable between equal runs)."""
    write_json(path, metrics)


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json as a dict; a file that is not a JSON object is a one-line error naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """history.csv or curve.csv: one row per epoch / L2 strength, the first row's keys as the header."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> pd.DataFrame:
    """history.csv or curve.csv as a table (numbers parsed)."""
    import pandas as pd  # here, not at the top: training writes records on GPU hosts that lack pandas

    return pd.read_csv(path)
