"""The methods and datasets tables (cecl/docs_catalog.py) against the registries and independent references.

"Uses labels" is measured on the built methods; here it is checked against each registered loss called
directly on fixed features with two labellings, and against what the methods are by definition. The
datasets table's kinds and profiles are checked against the profile files read with plain YAML.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cecl import docs_catalog, losses
from cecl.datasets import families
from cecl.methods import available
from cecl.methods.contrastive import LOSS_METHODS

ROOT = Path(__file__).resolve().parents[1]


def _rows(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    cells = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return {row[0].strip("`"): row for row in cells}


def _loss_reads_labels(name: str) -> bool:
    """The registered loss itself on fixed [B, V, D] features: does a different pairing change it?"""
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(8, 2, 16, generator=generator), dim=-1)
    first, second = torch.arange(8) % 4, torch.arange(8) // 2 % 4
    loss = losses.build(name, **LOSS_METHODS[name]().model_dump())
    return float(loss(features, first)) != float(loss(features, second))


@pytest.fixture(scope="module")
def methods() -> dict[str, list[str]]:
    return _rows(docs_catalog.methods_table(ROOT))


def test_one_row_per_registered_method_in_table_order(methods) -> None:
    assert list(methods) == list(available())


@pytest.mark.parametrize("name", sorted(LOSS_METHODS))
def test_uses_labels_agrees_with_the_loss_itself(methods, name: str) -> None:
    assert methods[name][2] == ("yes" if _loss_reads_labels(name) else "no")
    assert methods[name][1] == f"`{name}`"  # the registered loss of the same name


def test_uses_labels_of_the_other_methods_by_definition(methods) -> None:
    supervised = {"ce", "supmoco"}  # cross-entropy; SupMoCo's positives are the same-class keys
    others = {n for n in available() if n not in LOSS_METHODS}
    assert {n for n in others if methods[n][2] == "yes"} == supervised


def test_options_are_the_schemas_defaults(methods) -> None:
    assert "`weight=0.5`" in methods["cecl"][-1] and "`temperature=0.1`" in methods["cecl"][-1]
    assert methods["simclr"][-1].count("=") == 2


@pytest.fixture(scope="module")
def datasets() -> dict[str, list[str]]:
    return _rows(docs_catalog.datasets_table(ROOT))


def test_one_row_per_family_with_the_profiles_that_use_it(datasets) -> None:
    assert set(datasets) == set(families())
    users: dict[str, set[str]] = {}
    targets: set[str] = set()
    for path in (ROOT / "profiles").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        entries = data.get("datasets") or {}
        for entry in entries.values():
            users.setdefault(entry["family"], set()).add(path.stem)
        for target in (data.get("transfer") or {}).get("targets") or []:
            targets.add(entries[target]["family"])
    for family, row in datasets.items():
        assert set(row[-1].split(", ")) == users.get(family, {"-"}), family
        assert ("transfer target" in row[1]) == (family in targets), family


def test_kind_follows_the_bias_attribute(datasets) -> None:
    assert datasets["biased_mnist"][1] == "bias" and datasets["biased_mnist"][2] == "`group_bias`"
    assert datasets["cifar10"][1] == "classification" and datasets["cifar10"][2] == "`classification`"
    assert datasets["fashion_mnist"][3] == "1x28x28, 10 classes"
