"""metrics.json's one schema (cecl/records.py) and the metrics every evaluator declares (cecl/eval/*).

- Every evaluator a dataset family can name returns, on real logits, at least the metrics it declares,
  in the declared order, with its primary among them; an evaluator that omits a declared metric makes
  the record builder fail with one line naming the metric, before anything is written.
- The record is the schema the report reads (cecl/report/collect.py's REQUIRED_KEYS), checked against a
  payload spelled out here by hand (the probe's metrics.json as it was before the builder existed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from cecl import records, runs
from cecl.datasets import families
from cecl.eval import Classification, Evaluator, GroupBias
from cecl.report.collect import REQUIRED_KEYS


def _evaluators() -> list[Evaluator]:
    """Each evaluator class at a few class counts (Classification's top-5 appears above 5 classes)."""
    diagonal = np.eye(4, dtype=bool)
    return [Classification(2), Classification(10), GroupBias(4, diagonal), GroupBias(4, ~diagonal)]


def test_every_evaluator_class_is_exercised() -> None:
    """A new Evaluator subclass must be added to _evaluators (so its declaration is checked below)."""
    assert {type(e) for e in _evaluators()} == set(Evaluator.__subclasses__())
    assert families()  # the registries load, and with them every evaluator a family names


@pytest.mark.parametrize("evaluator", _evaluators(), ids=lambda e: f"{e.name}-{e.n_classes}")
def test_an_evaluator_returns_the_metrics_it_declares(evaluator: Evaluator) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, evaluator.n_classes, generator=generator)
    targets = torch.randint(0, evaluator.n_classes, (64,), generator=generator)
    bias = torch.randint(0, 4, (64,), generator=generator)
    scores = evaluator(logits, targets, bias)
    assert list(scores)[: len(evaluator.metrics)] == list(evaluator.metrics)
    assert evaluator.primary in evaluator.metrics
    # the primary metric of a classification is top-1, by its definition (argmax == target)
    assert scores["accuracy"] == pytest.approx(float((logits.argmax(1) == targets).double().mean()))


def test_a_primary_metric_that_is_not_declared_is_refused() -> None:
    with pytest.raises(TypeError, match="primary metric 'f1' is not among"):

        class _Bad(Evaluator):  # never registered: the class statement itself fails
            name = "bad"
            metrics = ("accuracy",)
            primary = "f1"


@dataclass
class _Result:
    """A ProbeResult's fields, as the builder reads them."""

    val: dict[str, float]
    test: dict[str, float]
    selected: dict[str, float] = field(default_factory=lambda: {"l2": 1e-3, "iterations": 12})
    selected_at_edge: str | None = None
    official: dict[str, float] | None = None


def _record(result: _Result, evaluator: Evaluator) -> dict:
    return records.metrics_record(
        run=records.run_record(stage="probe@bm-ce-0", kind="probe", dataset="bm", family="biased_mnist",
                               method="ce", seed=0, pretrain_stage="pretrain@bm-ce-0",
                               pretrain_outputs_sha256="ab" * 32),
        evaluator=evaluator.name, declared=evaluator.metrics, primary=evaluator.primary,
        protocol="linear_probe", val_description="v", data_verified=True, result=result,
        config={"temperature": 0.1}, machine={"pretrain": None, "probe": {"cpu": "x"}},
    )  # fmt: skip


def test_an_evaluator_that_omits_a_declared_metric_is_a_one_line_error(tmp_path: Path) -> None:
    evaluator = GroupBias(4, np.eye(4, dtype=bool))
    full = dict.fromkeys(evaluator.metrics, 0.5)
    short = {k: v for k, v in full.items() if k != "conflicting_accuracy"}
    with pytest.raises(ValueError, match=r"test scores lack the declared metrics \['conflicting_accuracy'\]"):
        _record(_Result(val=full, test=short), evaluator)
    out = tmp_path / "probe"
    with pytest.raises(ValueError, match="val scores lack"):
        records.write_evaluation(out, _record(_Result(val=short, test=full), evaluator), [{"l2": 1.0}])
    assert not out.exists()  # the error comes before the folder is made


def test_the_record_is_the_probes_schema_spelled_out(tmp_path: Path) -> None:
    evaluator = Classification(10)
    val = {"accuracy": 0.5, "mean_per_class_accuracy": 0.4, "top5_accuracy": 0.9}
    test = {"accuracy": 0.6, "mean_per_class_accuracy": 0.55, "top5_accuracy": 0.95}
    result = _Result(val=val, test=test, official={"l2": 1e-4, "test_accuracy": 0.61})
    expected = {  # by hand: the payload stages/probe.py wrote before cecl/records.py built it
        "run": {"stage": "probe@bm-ce-0", "kind": "probe", "dataset": "bm", "family": "biased_mnist",
                "source": None, "method": "ce", "seed": 0, "pretrain_stage": "pretrain@bm-ce-0",
                "pretrain_outputs_sha256": "ab" * 32},
        "evaluator": "classification", "protocol": "linear_probe", "selected_on": "val",
        "val_description": "v", "data_verified": True, "selected": {"l2": 1e-3, "iterations": 12},
        "selected_at_edge": None, "val_accuracy": 0.5, "val": val, "test": test,
        "official_protocol": {"l2": 1e-4, "test_accuracy": 0.61}, "config": {"temperature": 0.1},
        "machine": {"pretrain": None, "probe": {"cpu": "x"}},
    }  # fmt: skip
    record = _record(result, evaluator)
    assert record == expected and set(REQUIRED_KEYS) <= set(record)
    head = _Result(val=val, test=test, selected={"epoch": 3})
    with_head = records.metrics_record(**{**_builder_args(result, evaluator), "own_head": head})
    assert with_head["own_head"] == {"epoch": 3, "val": val, "test": test}
    out = tmp_path / "probe"
    records.write_evaluation(out, record, [{"l2": 1e-3, "val_accuracy": 0.5}])
    assert json.loads((out / runs.METRICS_FILE).read_text()) == expected
    assert (out / runs.CURVE_FILE).read_text() == "l2,val_accuracy\n0.001,0.5\n"


def _builder_args(result: _Result, evaluator: Evaluator) -> dict:
    run = records.run_record(stage="s", kind="probe", dataset="bm", family="f", method="ce", seed=0)
    return {
        "run": run, "evaluator": evaluator.name, "declared": evaluator.metrics, "primary": evaluator.primary,
        "protocol": "linear_probe", "val_description": "v", "data_verified": True, "result": result,
        "config": {}, "machine": {},
    }  # fmt: skip
