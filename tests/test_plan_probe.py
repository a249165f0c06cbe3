"""Probe memory in the plan: the paper profile's final probes (ImageNet's 1.28 M x 2048 features
included) fit an 80 GB GPU, the report says so, and a whole-matrix float64 fit would not have."""

from __future__ import annotations

from pathlib import Path

from cecl.config import load_params
from cecl.eval.linear_probe import BLOCK_ROWS, probe_memory_bytes
from cecl.plan import format_plan, plan_params
from cecl.plan.estimate import GIB

REPO = Path(__file__).resolve().parents[1]


def test_the_paper_profiles_probes_fit_80_gb_and_are_reported() -> None:
    params = load_params(REPO / "profiles" / "paper.yaml")
    plan = plan_params(params, "h100")
    probes = {e.entry: e.probe_gib for e in plan.entries if e.probe_gib > 0}
    assert not plan.over_probe_memory()
    assert max(probes.values()) < 80e9 / GIB, probes
    # ImageNet-sized: over 1.2 M training rows of 2048-wide float32 features alone take 9.8 GB
    largest = max(probes, key=probes.__getitem__)
    assert probes[largest] > 1_200_000 * 2048 * 4 / GIB, probes
    text = format_plan(plan, params)
    assert "Probe memory" in text and "every probe fits" in text
    assert "UNMEASURED" in text  # the activation overhead factor is named as an assumption
    # the same rows fitted on the whole float64 matrix (the fit before blocks) would not fit 80 GB
    whole = (1_281_167 * 2048 * (4 + 8 + 8) + 4 * 1_281_167 * 1000 * 8) / GIB
    assert whole > 80e9 / GIB > probe_memory_bytes(1_281_167, 2048, 1000) / GIB
    assert BLOCK_ROWS < 1_281_167
