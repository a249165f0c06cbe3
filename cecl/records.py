"""The per-run records that cross stages, read and written here only: metrics.json (probe, transfer, floor),
history.csv (pretrain) and curve.csv (probe, transfer).

The stages write them and the report (cecl/report/collect.py) reads them back; their byte format is
spelled once, here, and so is metrics.json's schema (:func:`run_record`, :func:`metrics_record`: the
probe, transfer and floor evaluations all build it here). Torch-free (the standard library and pandas),
so the aggregate stage reads them without loading the training stack.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cecl.io import atomic_dir, write_json
from cecl.runs import CURVE_FILE, METRICS_FILE

if TYPE_CHECKING:
    import pandas as pd


class Scored(Protocol):
    """What an evaluation hands metrics.json (cecl.eval.linear_probe.ProbeResult is one; read, not imported,
    so that this module stays torch-free)."""

    selected: dict[str, float]
    selected_at_edge: str | None
    val: dict[str, float]
    test: dict[str, float]
    official: dict[str, float] | None


def run_record(
    *,
    stage: str,
    kind: str,
    dataset: str,
    family: str,
    method: str,
    seed: int | None,
    source: str | None = None,
    pretrain_stage: str | None = None,
    pretrain_outputs_sha256: str | None = None,
) -> dict[str, Any]:
    """metrics.json's ``run``: which evaluation this is. ``kind`` is probe, transfer or floor; a floor has
    no pretraining (``method`` is the floor's kind), a transfer names its ``source`` entry.

    ``pretrain_outputs_sha256`` is the encoder folder's digest, not its MLflow run id: metrics.json stays
    byte-identical between equal runs, and provenance.md finds the runs by these digests.
    """
    return {
        "stage": stage,
        "kind": kind,
        "dataset": dataset,
        "family": family,
        "source": source,
        "method": method,
        "seed": seed,
        "pretrain_stage": pretrain_stage,
        "pretrain_outputs_sha256": pretrain_outputs_sha256,
    }


def metrics_record(
    *,
    run: Mapping[str, Any],
    evaluator: str,
    declared: Sequence[str],
    primary: str,
    protocol: str,
    val_description: str,
    data_verified: bool,
    result: Scored,
    config: Mapping[str, Any],
    machine: Mapping[str, Any],
    own_head: Scored | None = None,
) -> dict[str, Any]:
    """The one metrics.json payload of a probe, a transfer and a floor (the report reads all three alike).

    ``declared`` is the metrics the evaluator always produces (``Evaluator.metrics``) and ``primary`` the
    one selected on: a val or test score that lacks one is a one-line error here, before anything is
    written, so a record the report cannot read is never made.
    """
    if primary not in declared:
        raise ValueError(f"evaluator {evaluator!r}: primary metric {primary!r} is not among {list(declared)}")
    for split, scores in (("val", result.val), ("test", result.test)):
        missing = [name for name in declared if name not in scores]
        if missing:
            raise ValueError(
                f"evaluator {evaluator!r}: its {split} scores lack the declared metrics {missing}"
            )
    metrics: dict[str, Any] = {
        "run": dict(run),
        "evaluator": evaluator,
        "protocol": protocol,
        "selected_on": "val",
        "val_description": val_description,
        "data_verified": data_verified,
        # The probe: {"l2", "iterations"} (cecl/eval/linear_probe.py); joint: {"epoch"} of pretraining.
        "selected": result.selected,
        # "weak" / "strong": selected at that edge of the L2 grid (widen it); null inside or joint
        "selected_at_edge": result.selected_at_edge,
        "val_accuracy": result.val[primary],
        "val": result.val,
        "test": result.test,
        # The best test accuracy over the L2 grid (selects on test: optimistic), the counterpart of the
        # released code's best-over-epochs. Joint: null (one classifier, selected on validation).
        "official_protocol": result.official,
        "config": dict(config),
        # where the encoder was trained and where it was probed (cecl/machine.py; make compare shows them)
        "machine": dict(machine),
    }
    if own_head is not None:  # ce's own classifier head, scored beside the probe
        metrics["own_head"] = {
            "epoch": own_head.selected["epoch"],
            "val": own_head.val,
            "test": own_head.test,
        }
    return metrics


def write_evaluation(out: Path, metrics: Mapping[str, Any], curve: Sequence[Mapping[str, Any]]) -> None:
    """An evaluation's folder, replaced in one rename: metrics.json and curve.csv (cecl/runs.py's names)."""
    with atomic_dir(out) as tmp:
        write_metrics(tmp / METRICS_FILE, metrics)
        write_rows(tmp / CURVE_FILE, curve)


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
