"""make compare (cecl/compare.py): reruns held against a reference, cell by cell."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cecl import compare

ROOT = Path(__file__).resolve().parents[1]


def _write(
    root: Path, dataset: str, method: str, seed: int, value: float, evaluator: str = "classification"
) -> None:
    metric = compare.PRIMARY[evaluator]
    folder = root / "probe" / dataset / method / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "run": {"kind": "probe", "dataset": dataset, "method": method, "seed": seed, "source": None},
        "evaluator": evaluator,
        "test": {metric: value},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _results(root: Path, values: dict[str, list[float]]) -> Path:
    for method, seeds in values.items():
        for seed, value in enumerate(seeds):
            _write(root, "fmnist", method, seed, value)
    return root


def test_a_rerun_within_the_seeds_spread_agrees_and_a_shifted_one_moves(tmp_path, capsys) -> None:
    ref = _results(tmp_path / "ref", {"cecl": [0.80, 0.82, 0.81], "ce": [0.70, 0.71, 0.72]})
    here = _results(tmp_path / "here", {"cecl": [0.81, 0.80, 0.82], "ce": [0.71, 0.70, 0.72]})
    assert compare.main(["--root", str(here), "--reference", str(ref)]) == 0
    assert "2 cells compared, 0 moved" in capsys.readouterr().out
    _write(here, "fmnist", "cecl", 0, 0.90)  # doctored: one seed far off moves the mean
    _write(here, "fmnist", "cecl", 1, 0.91)
    _write(here, "fmnist", "cecl", 2, 0.92)
    assert compare.main(["--root", str(here), "--reference", str(ref)]) == 1
    out = capsys.readouterr().out
    assert "| probe | fmnist | cecl | 3 | 3 | +10.00 |" in out and "MOVED" in out
    ce_row = next(line for line in out.splitlines() if line.startswith("| probe | fmnist | ce |"))
    assert ce_row.endswith("| agrees |")  # the untouched cell still agrees
    assert "1 moved" in out


def test_the_welch_interval_is_scipys(tmp_path) -> None:
    """The interval is Welch's, checked against scipy's confidence_interval for a two-sample t-test."""
    from scipy import stats

    a, b = [0.81, 0.80, 0.84], [0.78, 0.80, 0.79]
    ref = _results(tmp_path / "ref", {"cecl": b})
    here = _results(tmp_path / "here", {"cecl": a})
    rows, _ = compare.compare(compare.workspace(here), compare.workspace(ref), 0.01)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert rows[0].low == pytest.approx(expected.low) and rows[0].high == pytest.approx(expected.high)


def test_one_seed_uses_the_tolerance(tmp_path) -> None:
    ref = _results(tmp_path / "ref", {"cecl": [0.80]})
    here = _results(tmp_path / "here", {"cecl": [0.805]})
    assert compare.main(["--root", str(here), "--reference", str(ref), "--tolerance", "0.01"]) == 0
    assert compare.main(["--root", str(here), "--reference", str(ref), "--tolerance", "0.001"]) == 1


def test_nothing_in_common_and_bad_input_are_errors(tmp_path, capsys) -> None:
    ref = _results(tmp_path / "ref", {"cecl": [0.8]})
    (tmp_path / "empty").mkdir()
    assert compare.main(["--root", str(tmp_path / "empty"), "--reference", str(ref)]) == 2
    assert compare.main(["--root", str(ref), "--reference", "no-such-ref-or-folder"]) == 2
    assert "neither a folder nor a git ref" in capsys.readouterr().err
    assert compare.main(["--root", str(ref), "--reference", str(ref), "--tolerance", "5"]) == 2


def test_the_committed_results_against_head_from_a_copy_agree_and_a_doctored_cell_fails(tmp_path) -> None:
    """The real thing: the repository's committed probe metrics against git HEAD, then one doctored file."""
    if not (ROOT / ".git").exists() or not list((ROOT / "probe").glob("**/metrics.json")):
        pytest.skip("needs the repository's git history and committed probe results")
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", "HEAD", "--", "probe"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.split()
    files = [f for f in files if f.endswith("metrics.json")]
    if not files:
        pytest.skip("no committed probe metrics at HEAD")
    for name in files:
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            subprocess.run(["git", "show", f"HEAD:{name}"], cwd=ROOT, capture_output=True, text=True).stdout
        )
    args = ["--root", str(tmp_path), "--reference", "HEAD"]
    # the reference is read from ROOT's git: run from ROOT
    result = subprocess.run(
        [sys.executable, "-m", "cecl.compare", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doctored = tmp_path / files[0]
    metrics = json.loads(doctored.read_text())
    metric = compare.PRIMARY[metrics["evaluator"]]
    for name in files:  # every seed of that cell shifted by 30 points
        path = tmp_path / name
        other = json.loads(path.read_text())
        if (
            other["run"]["dataset"] == metrics["run"]["dataset"]
            and other["run"]["method"] == metrics["run"]["method"]
        ):
            other["test"][metric] = max(0.0, other["test"][metric] - 0.30)
            path.write_text(json.dumps(other))
    result = subprocess.run(
        [sys.executable, "-m", "cecl.compare", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1 and "MOVED" in result.stdout
    shutil.rmtree(tmp_path / "probe")
