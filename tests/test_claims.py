"""The claims' statistics against independent references, and the claims on synthetic run folders.

References: scipy.stats.ttest_rel / ttest_1samp (paired and one-sample t, their intervals, one-sided
tests for TOST), scipy.stats.wilcoxon (the smallest signed-rank p), Holm's adjustment by the slow
definition (statsmodels' multipletests when installed). The run folders are written by
tests/test_report.py's fixtures, in the stages' file format.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cecl.report import EntryScale, build_report
from cecl.report.stats import (
    DEGENERATE,
    EQUIVALENT,
    REPRODUCES,
    UNRESOLVED,
    format_interval,
    holm,
    paired,
    rank_test_note,
    smallest_signed_rank_p,
    verdict,
)
from cecl.runs import FloorKey
from tests.test_report import (
    BMNIST,
    FMNIST,
    PIXELS,
    SEEDS,
    floor_keys,
    headline,
    make_tree,
    markdown_rows,
)

# "+0.0 to +0.0", "+20.1 to +20.1": an interval whose printed ends are equal.
ZERO_WIDTH = re.compile(r"(?<![\d.])([+-]?\d+(?:\.\d+)?) to \1(?![\d.])")


def zero_width_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ZERO_WIDTH.search(line)]


# -- statistics --------------------------------------------------------------------------------------


def test_paired_matches_scipy_ttest_rel_on_the_shared_seeds() -> None:
    a = {0: 0.80, 1: 0.78, 2: 0.83, 3: 0.79, 7: 0.5}
    b = {0: 0.70, 1: 0.71, 2: 0.69, 3: 0.72, 9: 0.1}  # seeds 7 and 9 have no partner
    result = paired(a, b, margin=0.01)
    x, y = [0.80, 0.78, 0.83, 0.79], [0.70, 0.71, 0.69, 0.72]
    reference = scipy_stats.ttest_rel(x, y)
    interval = reference.confidence_interval(0.95)
    assert result.seeds == (0, 1, 2, 3) and result.n == 4
    assert result.diff == pytest.approx(np.mean(np.subtract(x, y)), rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high), rel=1e-12)


def test_one_sample_against_a_constant_matches_ttest_1samp() -> None:
    a = {0: 0.76, 1: 0.71, 2: 0.74, 3: 0.80, 4: 0.77}
    result = paired(a, 0.74, margin=0.01)
    reference = scipy_stats.ttest_1samp(list(a.values()), 0.74)
    interval = reference.confidence_interval(0.95)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert (result.ci_low + 0.74, result.ci_high + 0.74) == pytest.approx((interval.low, interval.high))


def test_tost_is_the_larger_of_two_one_sided_tests() -> None:
    differences = [0.002, -0.001, 0.003, 0.000, 0.001]
    result = paired(dict(enumerate(differences)), 0.0, margin=0.01)
    above = scipy_stats.ttest_1samp(differences, -0.01, alternative="greater").pvalue
    below = scipy_stats.ttest_1samp(differences, 0.01, alternative="less").pvalue
    assert result.p_equivalence == pytest.approx(max(above, below), rel=1e-9)
    assert result.p_equivalence < 0.05
    assert (
        verdict(result, p_adjusted=result.p_value, p_equivalence_adjusted=result.p_equivalence) == EQUIVALENT
    )
    # A difference far from 0 is not equivalent, and a significant one is a direction, not equivalence.
    far = paired(dict(enumerate([0.1, 0.12, 0.11])), 0.0, margin=0.01)
    assert far.p_equivalence > 0.5
    assert verdict(far, far.p_value, far.p_equivalence) == REPRODUCES


def holm_by_definition(p_values: list[float]) -> list[float]:
    """Holm's adjusted p_i: the smallest alpha at which the step-down procedure rejects H_i."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    for rank, index in enumerate(order):
        adjusted[index] = min(1.0, max((m - j) * p_values[order[j]] for j in range(rank + 1)))
    return adjusted


def test_holm_matches_the_definition_and_statsmodels() -> None:
    rng = np.random.default_rng(31)
    for _ in range(50):
        p_values = list(rng.uniform(0, 0.2, size=int(rng.integers(1, 9))))
        assert holm(p_values) == pytest.approx(holm_by_definition(p_values), rel=1e-12)
    p_values = [0.01, 0.04, 0.03, 0.005]
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> 0.02, 0.03, 0.06, 0.06
    assert holm(p_values) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, math.nan, 0.04])[1] != holm([0.01, math.nan, 0.04])[1]  # NaN stays NaN
    assert holm([0.01, math.nan, 0.04])[::2] == pytest.approx([0.02, 0.04])  # NaN not counted


def test_holm_matches_statsmodels_when_installed() -> None:
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p_values = [0.01, 0.04, 0.03, 0.005, 0.2]
    expected = multitest.multipletests(p_values, method="holm")[1]
    assert holm(p_values) == pytest.approx(list(expected))


def test_the_rank_test_note_follows_wilcoxons_exact_smallest_p() -> None:
    for n in range(3, 8):
        smallest = scipy_stats.wilcoxon(np.arange(1, n + 1), method="exact").pvalue  # all positive
        assert smallest_signed_rank_p(n) == pytest.approx(smallest, rel=1e-12)
        assert bool(rank_test_note(n)) == (smallest >= 0.05)
    assert "2/2^5 = 0.0625" in rank_test_note(5) and rank_test_note(6) == ""


def test_a_constant_difference_is_degenerate_not_an_interval() -> None:
    same = paired({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6}, margin=0.01)
    assert same.degenerate and not same.testable and math.isnan(same.ci_low)
    assert verdict(same, math.nan, math.nan) == DEGENERATE
    one = paired({0: 0.5}, {0: 0.4}, margin=0.01)
    assert not one.degenerate and not one.testable and verdict(one, math.nan, math.nan) == UNRESOLVED


def test_an_interval_never_prints_with_equal_ends() -> None:
    assert format_interval(0.090, 0.308) == "+9.0 to +30.8"
    assert format_interval(0.20101, 0.20149) == "+20.10 to +20.15"  # one decimal would print equal ends
    assert format_interval(-0.2, 0.3, scale=1.0) == "-0.2 to +0.3"
    assert format_interval(-0.0053, -0.0004) == "-0.53 to -0.04"  # not '-0.5 to -0.0'
    assert format_interval(-0.01, 0.0) == "-1.0 to +0.0"  # a true 0 end stays as it is
    assert format_interval(math.nan, 0.1) == "n/a"
    with pytest.raises(ValueError, match="degenerate interval"):
        format_interval(0.2, 0.2)
    with pytest.raises(ValueError, match="degenerate interval"):
        format_interval(0.2, 0.2 + 1e-12)


def test_a_spread_below_print_precision_prints_no_interval(tmp_path: Path) -> None:
    """CECL = SupCon + 2 points + a spread of 1e-10: a real interval, too narrow to print."""

    def tiny(dataset: str, method: str, seed: int) -> float:
        if method == "cecl":
            return headline(dataset, "supcon", seed) + 0.02 + 1e-10 * seed
        return headline(dataset, method, seed)

    runs, _ = make_tree(tmp_path, datasets=(FMNIST,), transfer=False, value=tiny)
    claims = build_report(runs, [], tmp_path, tmp_path / "reports")["claims"].read_text()
    line = next(
        line
        for line in claims.splitlines()
        if line.startswith(f"- `{FMNIST}` (linear_probe), CECL vs SupCon")
    )
    assert "95% CI +2.0000 (spread below 0.0001 points)" in line
    assert zero_width_lines(claims) == []


# -- claims on run folders ---------------------------------------------------------------------------


def near_supcon(dataset: str, method: str, seed: int) -> float:
    """CECL = SupCon + 0.05 points with a tiny spread on fmnist (equivalent), + exactly 2 points on
    BiasedMNIST (the same difference in every seed); a 1-epoch ceiling on fmnist's curves."""
    if method == "cecl" and dataset == FMNIST:
        return headline(dataset, "supcon", seed) + (0.0005, 0.0004, 0.0006)[seed]
    if method == "cecl" and dataset == BMNIST:
        return headline(dataset, "supcon", seed) + 0.02
    return headline(dataset, method, seed)


def flat(dataset: str, method: str, seed: int) -> tuple[float, ...]:
    return (0.8, 0.8) if dataset == FMNIST else (0.5, 0.6, 0.7, 0.75, 0.8, 0.8)


@pytest.fixture(scope="module")
def edge_cases(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("edges")
    runs, _ = make_tree(root, transfer=False, value=near_supcon, floors=True)
    for key in runs:  # rewrite the histories with the ceiling curves
        from tests.test_report import write_run

        write_run(root, key, near_supcon, curve_of=flat)
    for key in floor_keys():
        from tests.test_report import write_floor

        write_floor(root, key)
    paths = build_report(
        runs,
        [],
        root,
        root / "reports",
        floors=floor_keys(),
        entry_scales={BMNIST: EntryScale(0.99, 54_000), FMNIST: EntryScale(None, 60_000)},
    )
    return root, paths


def test_no_claim_line_prints_a_zero_width_interval(edge_cases) -> None:
    _, paths = edge_cases
    claims = paths["claims"].read_text()
    assert zero_width_lines(claims) == []
    assert zero_width_lines(paths["report"].read_text()) == []
    # the guard itself catches the old report's line
    assert zero_width_lines("vs SupCon +0.0 (+0.0 to +0.0): not resolved") != []
    # every curve identical (flat ceiling): no interval, said plainly
    bmnist = next(
        line
        for line in claims.splitlines()
        if line.startswith(f"- `{BMNIST}` (linear_probe), CECL vs SupCon")
    )
    assert "the same difference in every seed: no interval, no test" in bmnist
    assert "Direction: not testable: the same difference in every seed." in bmnist
    assert f"`{FMNIST}`: 2 epoch(s) monitored, fewer than 5: no convergence comparison" in claims


def test_equivalence_is_stated_with_its_margin(edge_cases) -> None:
    _, paths = edge_cases
    claims = paths["claims"].read_text()
    line = next(
        line
        for line in claims.splitlines()
        if line.startswith(f"- `{FMNIST}` (linear_probe), CECL vs SupCon")
    )
    differences = [(0.0005, 0.0004, 0.0006)[s] for s in SEEDS]
    above = scipy_stats.ttest_1samp(differences, -0.01, alternative="greater").pvalue
    below = scipy_stats.ttest_1samp(differences, 0.01, alternative="less").pvalue
    tost = max(above, below)
    interval = scipy_stats.ttest_1samp(differences, 0.0).confidence_interval()
    # 1 decimal would print '+0.0 to +0.1', hiding that the low end is above 0: 2 decimals
    assert f"95% CI {100 * interval.low:+.2f} to {100 * interval.high:+.2f}" in line
    # different from 0 (paired p < 0.05) but entirely within ±1 point: equivalence wins
    assert scipy_stats.ttest_1samp(differences, 0.0).pvalue < 0.05
    assert "Direction: equivalent within ±1 point." in line, line
    assert tost < 0.05 / 2  # Holm over claim 3's two comparisons, SimCLR's being larger


def test_floor_standings_against_independent_tests(edge_cases) -> None:
    _, paths = edge_cases
    claims = paths["claims"].read_text()
    section = claims[claims.index("### Floors") : claims.index("### Paper-scale sanity")]
    lines = [line for line in section.splitlines() if line.startswith("| `")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    # BiasedMNIST, SimCLR vs raw pixels: a one-sample test against the pixel floor
    row = next(
        c
        for c in cells
        if c[0].startswith(f"`{BMNIST}`") and c[1] == "SimCLR" and c[2] == "floor: raw pixels"
    )
    values = [headline(BMNIST, "simclr", s) for s in SEEDS]
    interval = scipy_stats.ttest_1samp(values, PIXELS[BMNIST]).confidence_interval()
    assert row[4] == f"{100 * PIXELS[BMNIST]:.1f} (one fit, no seed)"
    assert (
        row[6]
        == f"{100 * (interval.low - PIXELS[BMNIST]):+.1f} to {100 * (interval.high - PIXELS[BMNIST]):+.1f}"
    )
    assert row[8] == "above the floor"
    supcon = next(
        c
        for c in cells
        if c[0].startswith(f"`{BMNIST}`") and c[1] == "SupCon" and c[2] == "floor: raw pixels"
    )
    assert supcon[8] == "below the floor"
    # cross-entropy appears twice: the probe and its own head
    assert {c[1] for c in cells} >= {"cross-entropy", "cross-entropy (own head)", "CECL", "SupCon", "SimCLR"}


def test_sanity_rows(edge_cases, tmp_path: Path) -> None:
    _, paths = edge_cases
    claims = paths["claims"].read_text()
    sanity = claims[claims.index("### Paper-scale sanity") : claims.index("### Caveats")]
    line = next(line for line in sanity.splitlines() if line.startswith(f"- `{BMNIST}`"))
    # own head 13.0% against the rho 0.99 band 87-90%: below; fmnist has no rho: no row
    assert "vanilla cross-entropy (own head) 13.0 ± 2.5 (n=3) unbiased, published band 87–90%: below" in line
    assert "Against the floors: " in line and "CECL: raw pixels" in line
    assert f"`{FMNIST}`" not in sanity

    runs, _ = make_tree(tmp_path, datasets=(BMNIST,), transfer=False)
    scales = {BMNIST: EntryScale(0.99, 8_000)}
    text = build_report(runs, [], tmp_path, tmp_path / "r1", entry_scales=scales)["claims"].read_text()
    assert f"- `{BMNIST}` (rho 0.99, 8000 training images): not comparable: CPU scale" in text
    text = build_report(runs, [], tmp_path, tmp_path / "r2", entry_scales={BMNIST: EntryScale(0.9, 60_000)})[
        "claims"
    ].read_text()
    assert "No BiasedMNIST entry at a published rho" in text
    text = build_report(runs, [], tmp_path, tmp_path / "r3")["claims"].read_text()
    assert "The entries' scales were not given to the report" in text
    assert "No floors were measured" in text


def test_strong_edge_mark_and_bad_edge_value(tmp_path: Path) -> None:
    runs, _ = make_tree(
        tmp_path, datasets=(FMNIST,), methods=("supcon", "cecl"), seeds=(0, 1), transfer=False
    )
    path = tmp_path / runs[-1].probe_dir / "metrics.json"  # cecl seed 1
    data = json.loads(path.read_text())
    data["selected_at_edge"] = "strong"
    path.write_text(json.dumps(data))
    paths = build_report(runs, [], tmp_path, tmp_path / "reports")
    text = paths["table_classification_md"].read_text()
    _, rows = markdown_rows(text)
    assert rows["cecl"][1].endswith("‡") and not rows["supcon"][1].endswith(("†", "‡"))
    assert "‡ in at least one seed the probe selected its L2 strength at the strong edge" in text
    data["selected_at_edge"] = "middle"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(f"{path}: selected_at_edge = 'middle'")):
        build_report(runs, [], tmp_path, tmp_path / "other")


def test_a_missing_or_mismatched_floor_is_named(tmp_path: Path) -> None:
    runs, _ = make_tree(
        tmp_path, datasets=(FMNIST,), methods=("cecl",), seeds=(0,), transfer=False, floors=True
    )
    keys = [FloorKey(FMNIST, "pixels"), FloorKey(FMNIST, "init", 0)]
    paths = build_report(runs, [], tmp_path, tmp_path / "reports", floors=keys)
    assert "floor: untrained encoder" in paths["table_classification_md"].read_text()
    missing = FloorKey(FMNIST, "init", 5)
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"floors/fmnist/init/seed_5/metrics.json not found: run {missing.stage()} first"),
    ):
        build_report(runs, [], tmp_path, tmp_path / "other", floors=[missing])
    path = tmp_path / "floors" / FMNIST / "init" / "seed_0" / "metrics.json"
    data = json.loads(path.read_text())
    data["run"]["method"] = "pixels"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="method='pixels' \\(expected 'init'\\)"):
        build_report(runs, [], tmp_path, tmp_path / "third", floors=keys)


def test_the_readme_summary_reads_the_new_claims_file(edge_cases, tmp_path: Path) -> None:
    """cecl/docs_blocks.py's claims-summary parses this claims.md: Holm p per claim, and the floors."""
    from cecl import docs_blocks

    _, paths = edge_cases
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "claims.md").write_text(paths["claims"].read_text())
    summary = docs_blocks.claims_summary(tmp_path)
    first = next(line for line in summary.splitlines() if line.startswith("- **3. Accuracy"))
    assert f"`{FMNIST}` (linear_probe): vs SupCon" in first and "Holm p" in first
    assert "equivalent within ±1 point" in first
    floors = next(
        line for line in summary.splitlines() if line.startswith("- **Floors: where each method stands**")
    )
    assert "SimCLR vs raw pixels" in floors and "above the floor" in floors
    assert "Welch" not in summary
    assert zero_width_lines(summary) == []


def test_no_entry_monitored_long_enough_still_writes_the_convergence_file(tmp_path: Path) -> None:
    runs, _ = make_tree(tmp_path, datasets=(FMNIST,), transfer=False)  # 2 monitored epochs
    paths = build_report(runs, [], tmp_path, tmp_path / "reports")
    text = paths["table_convergence_md"].read_text()
    assert f"`{FMNIST}`: 2 epoch(s) monitored, fewer than 5: no convergence comparison" in text
    assert "No columns: nothing to tabulate." in text
    assert "Area under the monitor curve" not in paths["claims"].read_text()
