"""cecl/records.py: the byte format of metrics.json, history.csv and curve.csv, and the one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cecl import records


def test_metrics_bytes_are_sorted_indented_json_with_a_newline(tmp_path: Path) -> None:
    metrics = {"test": {"accuracy": 0.5}, "run": {"seed": 0, "method": "cecl"}, "official_protocol": None}
    records.write_metrics(tmp_path / "metrics.json", metrics)
    expected = json.dumps(metrics, indent=2, sort_keys=True) + "\n"  # the format the report has always read
    assert (tmp_path / "metrics.json").read_text() == expected
    assert records.read_metrics(tmp_path / "metrics.json") == metrics


@pytest.mark.parametrize(("text", "message"), [("{not json", "not valid JSON"), ("[1, 2]", "a JSON object")])
def test_a_bad_metrics_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        records.read_metrics(path)
    assert str(path) in str(err.value)


def test_rows_round_trip_and_match_the_csv_module(tmp_path: Path) -> None:
    rows = [{"epoch": 1, "train_loss": 2.5, "lr": 0.001}, {"epoch": 2, "train_loss": 1.25, "lr": 0.0005}]
    records.write_rows(tmp_path / "history.csv", rows)
    with (tmp_path / "reference.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "train_loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)
    assert (tmp_path / "history.csv").read_bytes() == (tmp_path / "reference.csv").read_bytes()
    table = records.read_rows(tmp_path / "history.csv")
    assert table.to_dict("records") == rows


def test_no_rows_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no rows"):
        records.write_rows(tmp_path / "curve.csv", [])
    assert not (tmp_path / "curve.csv").exists()


def test_records_import_no_torch() -> None:
    """The report reads the records without the training stack (a fresh interpreter)."""
    code = "import sys, cecl.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
