"""The report package on synthetic run folders written in the stages' file format (cecl/runs.py layout).

Two dataset entries (BiasedMNIST group_bias, Fashion-MNIST classification) x four methods x three
seeds, their floors (raw pixels, untrained encoder per seed), plus one transfer pair; every expected
number is computed independently of cecl.report.stats (scipy.stats.t.interval, scipy.stats.ttest_rel,
numpy, or by hand).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from cecl.io import tree_digest
from cecl.report import build_report
from cecl.report.stats import direction, format_summary, summarize, welch
from cecl.report.tables import epochs_to_threshold, monitor_area
from cecl.runs import FloorKey, RunKey, TransferKey
from cecl.tracking import TrackedRun

BMNIST, FMNIST = "bmnist_rho95", "fmnist"
TRANSFER = "transfer"  # BASE key of the transfer runs' values (BiasedMNIST encoder probed on fmnist)
FAMILY = {BMNIST: "biased_mnist", FMNIST: "fashion_mnist"}
EVALUATOR = {BMNIST: "group_bias", FMNIST: "classification"}
METHODS = ("ce", "simclr", "supcon", "cecl")
SEEDS = (0, 1, 2)
NOTES = {BMNIST: "BiasedMNIST rho 0.95, 10 000 training images", FMNIST: "Fashion-MNIST, 60 000 images"}
VAL_DESCRIPTION = "held-out training images recoloured at rho 0.1 (unbiased)"

# Headline metric (unbiased accuracy for BiasedMNIST, top-1 otherwise) per (dataset, method): a base
# plus per-seed offsets. BiasedMNIST: CECL clearly above SupCon (+20 points), clearly below SimCLR
# (-10 points), overlapping cross-entropy (+1 point, large seed spread).
BASE = {
    (BMNIST, "cecl"): (0.80, (0.010, -0.010, 0.004)),
    (BMNIST, "supcon"): (0.60, (0.008, -0.006, 0.000)),
    (BMNIST, "simclr"): (0.90, (0.005, -0.005, 0.002)),
    (BMNIST, "ce"): (0.79, (0.060, -0.060, 0.030)),
    (FMNIST, "cecl"): (0.91, (0.002, -0.003, 0.001)),
    (FMNIST, "supcon"): (0.90, (0.001, 0.002, -0.002)),
    (FMNIST, "simclr"): (0.88, (0.004, -0.001, 0.000)),
    (FMNIST, "ce"): (0.89, (0.003, 0.000, -0.002)),
    (TRANSFER, "cecl"): (0.70, (0.010, 0.000, -0.010)),
    (TRANSFER, "supcon"): (0.68, (0.005, -0.005, 0.000)),
    (TRANSFER, "simclr"): (0.65, (0.002, 0.003, -0.004)),
    (TRANSFER, "ce"): (0.66, (0.000, 0.001, -0.001)),
}
EPOCHS = {BMNIST: 6, FMNIST: 2}  # Fashion-MNIST is monitored too briefly for a convergence row
# Monitor curves: every run ends at 0.80, so the common threshold is 0.9 x 0.80 = 0.72.
SLOW_CURVE = (0.30, 0.45, 0.60, 0.70, 0.76, 0.80)  # reaches 0.72 at epoch 5
FAST_CURVE = (0.50, 0.65, 0.72, 0.77, 0.79, 0.80)  # reaches 0.72 at epoch 3 (exactly 0.72)
# Floors: raw pixels (one value per entry) and the untrained encoder per seed.
PIXELS = {BMNIST: 0.74, FMNIST: 0.83}
INIT = {BMNIST: (0.44, 0.45, 0.43), FMNIST: (0.70, 0.71, 0.69)}
OWN_HEAD = (0.13, 0.14, 0.12)  # cross-entropy's own head, unbiased (BiasedMNIST) or top-1
EDGE_SEED = ("ce", 1)  # this probe selected at the weak edge of its grid (metrics.json selected_at_edge)


def headline(dataset: str, method: str, seed: int) -> float:
    base, offsets = BASE[(dataset, method)]
    return base + offsets[seed]


def curve(dataset: str, method: str, seed: int) -> tuple[float, ...]:
    full = FAST_CURVE if method == "cecl" and seed in (0, 1) else SLOW_CURVE
    return full[-EPOCHS.get(dataset, len(full)) :]


def run_id(stage: str) -> str:
    """A fake MLflow run id, unique per stage."""
    return "r" + re.sub(r"[^0-9a-z]", "", stage.lower())


def _test_block(dataset: str, value: float) -> dict[str, float]:
    if EVALUATOR[dataset] == "group_bias":
        return {
            "accuracy": value + 0.01,
            "unbiased_accuracy": value,
            "aligned_accuracy": 0.99,
            "conflicting_accuracy": value - 0.05,
        }
    return {"accuracy": value, "mean_per_class_accuracy": value - 0.003, "top5_accuracy": 0.99}


def _metrics(run: dict, dataset: str, value: float) -> dict:
    edge = "weak" if (run["method"], run["seed"]) == EDGE_SEED and run["kind"] == "probe" else None
    metrics = {
        "run": run,
        "evaluator": EVALUATOR[dataset],
        "protocol": "linear_probe",
        "selected_on": "val",
        "val_description": VAL_DESCRIPTION,
        "selected": {"l2": 1e-4, "iterations": 37, "at_grid_edge": False},
        "val_accuracy": value + 0.005,
        "test": _test_block(dataset, value),
        "official_protocol": {"test_accuracy": value + 0.02, "l2": 1e-5},
        "config": {"temperature": 0.1, "weight": 0.5} if run["method"] == "cecl" else {"temperature": 0.1},
        "selected_at_edge": edge,
    }
    if run["method"] == "ce" and run["kind"] == "probe":
        head = OWN_HEAD[run["seed"]]
        metrics["own_head"] = {
            "epoch": 6,
            "val": _test_block(dataset, head),
            "test": _test_block(dataset, head),
        }
    return metrics


def write_run(root: Path, key: RunKey, value: Callable = headline, curve_of: Callable = curve) -> None:
    """models/<...>/history.csv and probe/<...>/metrics.json, as the stages write them."""
    model_dir, probe_dir = root / key.model_dir, root / key.probe_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    probe_dir.mkdir(parents=True, exist_ok=True)
    accuracies = curve_of(key.dataset, key.method, key.seed)
    pd.DataFrame(
        {
            "epoch": range(1, len(accuracies) + 1),
            "train_loss": [2.0 / e for e in range(1, len(accuracies) + 1)],
            "monitor_val_accuracy": accuracies,
            "lr": 0.5,
        }
    ).to_csv(model_dir / "history.csv", index=False)
    pretrain = key.stage("pretrain")
    stage = key.stage("probe")
    run = {
        "stage": stage,
        "kind": "probe",
        "dataset": key.dataset,
        "family": FAMILY[key.dataset],
        "source": None,
        "method": key.method,
        "seed": key.seed,
        "pretrain_stage": pretrain,
        "pretrain_outputs_sha256": tree_digest(model_dir),
    }
    metrics = _metrics(run, key.dataset, value(key.dataset, key.method, key.seed))
    (probe_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def write_transfer(root: Path, key: TransferKey) -> None:
    out = root / key.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stage = key.stage()
    run = {
        "stage": stage,
        "kind": "transfer",
        "dataset": key.target,
        "family": FAMILY[key.target],
        "source": key.source,
        "method": key.method,
        "seed": key.seed,
        "pretrain_stage": key.pretrained.stage("pretrain"),
        "pretrain_outputs_sha256": tree_digest(root / key.pretrained.model_dir),
    }
    metrics = _metrics(run, key.target, headline(TRANSFER, key.method, key.seed))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def write_floor(root: Path, key: FloorKey) -> None:
    """floors/<...>/metrics.json as the floor stage writes it (the probe's schema, run.kind "floor")."""
    out = root / key.out_dir
    out.mkdir(parents=True, exist_ok=True)
    run = {
        "stage": key.stage(),
        "kind": "floor",
        "dataset": key.dataset,
        "family": FAMILY[key.dataset],
        "source": None,
        "method": key.kind,
        "seed": key.seed,
    }
    value = PIXELS[key.dataset] if key.seed is None else INIT[key.dataset][key.seed]
    (out / "metrics.json").write_text(json.dumps(_metrics(run, key.dataset, value), indent=2))


def floor_keys(datasets=(BMNIST, FMNIST), seeds=SEEDS) -> list[FloorKey]:
    return [FloorKey(d, "pixels") for d in datasets] + [
        FloorKey(d, "init", s) for d in datasets for s in seeds
    ]


def make_tree(
    root: Path,
    datasets=(BMNIST, FMNIST),
    methods=METHODS,
    seeds=SEEDS,
    transfer: bool = True,
    value: Callable = headline,
    floors: bool = False,
) -> tuple[list[RunKey], list[TransferKey]]:
    runs = [RunKey(d, m, s) for d in datasets for m in methods for s in seeds]
    for key in runs:
        write_run(root, key, value)
    for key in floor_keys(datasets, seeds) if floors else ():
        write_floor(root, key)
    # The target is also a probed entry: its probe columns must not take the transfer rows.
    transfers = [TransferKey(BMNIST, FMNIST, m, s) for m in methods for s in seeds] if transfer else []
    for key in transfers:
        write_transfer(root, key)
    return runs, transfers


LOCK_MD5 = "0123456789abcdef0123456789abcdef.dir"


def write_lock(root: Path, runs: list[RunKey]) -> None:
    """dvc.lock with entries for the first run's pretrain and probe stages only."""
    key = runs[0]
    lock = {
        "schema": "2.0",
        "stages": {
            key.stage("pretrain"): {
                "cmd": "python -m stages.pretrain",
                "outs": [{"path": key.model_dir.as_posix(), "hash": "md5", "md5": LOCK_MD5, "size": 1}],
            },
            key.stage("probe"): {
                "cmd": "python -m stages.probe",
                "outs": [{"path": key.probe_dir.as_posix(), "hash": "md5", "md5": "feedbeef" * 4 + ".dir"}],
            },
        },
    }
    import yaml

    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, dict[str, Path], list[RunKey]]:
    root = tmp_path_factory.mktemp("project")
    runs, transfers = make_tree(root, floors=True)
    write_lock(root, runs)
    paths = build_report(
        runs,
        transfers,
        root,
        root / "reports",
        extra_sections=["## Sweep\n\nsweep goes here"],
        mlflow_ui="http://mlflow.example:5000/",
        dataset_notes=NOTES,
        tracked=tracked_runs(root, runs, transfers),
        floors=floor_keys(),
    )
    return root, paths, runs


def tracked_runs(root: Path, runs: list[RunKey], transfers: list[TransferKey]) -> dict[str, list[TrackedRun]]:
    """MLflow runs as finished_stage_runs returns them: each stage's run tagged with its folder's digest.

    The probe of the first run has two runs with equal outputs; the pretrain of the second run has only a
    run that wrote other bytes; the transfers live in experiment 8.
    """
    tracked: dict[str, list[TrackedRun]] = {}
    for key in runs:
        pretrain, probe = key.stage("pretrain"), key.stage("probe")
        tracked[pretrain] = [TrackedRun(run_id(pretrain), "7", tree_digest(root / key.model_dir), 2)]
        tracked[probe] = [TrackedRun(run_id(probe), "7", tree_digest(root / key.probe_dir), 2)]
    first_probe, second_pretrain = runs[0].stage("probe"), runs[1].stage("pretrain")
    tracked[first_probe].append(TrackedRun("older", "7", tracked[first_probe][0].outputs_sha256, 1))
    tracked[second_pretrain] = [TrackedRun("other", "7", "0" * 64, 1)]
    for key in transfers:
        stage = key.stage()
        tracked[stage] = [TrackedRun(run_id(stage), "8", tree_digest(root / key.out_dir), 2)]
    return tracked


def markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {first cell: cells} of the first pipe table in text."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], {row[0]: row for row in cells[2:]}


def reference_cell(values: list[float], scale: float = 100.0) -> str:
    """mean ± half-width of scipy's Student-t 95% interval, formatted like the tables."""
    mean = float(np.mean(values))
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=scipy_stats.sem(values))
    return f"{scale * mean:.1f} ± {scale * (high - low) / 2:.1f} (n={len(values)})"


def seeds_of(dataset: str, method: str, fn: Callable = headline) -> list[float]:
    return [fn(dataset, method, s) for s in SEEDS]


# -- statistics against independent references --------------------------------------------------------


def test_summary_matches_scipy_t_interval() -> None:
    values = [0.81, 0.79, 0.804, 0.77]
    summary = summarize(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert summary.mean == pytest.approx(np.mean(values))
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.ci95 == pytest.approx((high - low) / 2, rel=1e-12)
    single = summarize([0.912])
    assert single.n == 1 and math.isnan(single.ci95) and math.isnan(single.std)
    assert format_summary(single) == "91.2 (n=1)"
    assert format_summary(summarize([])) == "n/a"


def test_welch_matches_scipy_and_hand_computed_df() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    d = welch(a, b)
    # s_a² = 5/3, s_b² = 4: df = (5/12 + 4/3)² / ((5/12)²/3 + (4/3)²/2) = 1323/409 by hand.
    hand_df = Fraction(5, 12) + Fraction(4, 3)
    hand_df = hand_df**2 / (Fraction(5, 12) ** 2 / 3 + Fraction(4, 3) ** 2 / 2)
    assert hand_df == Fraction(1323, 409)
    assert d.df == pytest.approx(float(hand_df), rel=1e-12)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert d.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert d.diff == pytest.approx(2.5 - 4.0)
    se = math.sqrt(5 / 3 / 4 + 4 / 3)
    half = scipy_stats.t.ppf(0.975, float(hand_df)) * se
    assert (d.ci_low, d.ci_high) == pytest.approx((-1.5 - half, -1.5 + half), rel=1e-12)
    assert direction(d) == "not resolved at this n"
    assert direction(welch([5.0, 5.1, 4.9], [1.0, 1.1, 0.9])) == "reproduces"
    assert (
        direction(welch([5.0, 5.1, 4.9], [1.0, 1.1, 0.9]), higher_is_better=False) == "contradicts the paper"
    )
    one = welch([5.0], [1.0, 1.1])
    assert not one.testable and math.isnan(one.ci_low) and math.isnan(one.p_value)
    assert direction(one) == "not resolved at this n"


def test_convergence_measures_on_hand_made_curves() -> None:
    # Trapezoids by hand over epochs 1..6 (span 5): interior points count once, the ends half.
    slow = (0.30 / 2 + 0.45 + 0.60 + 0.70 + 0.76 + 0.80 / 2) / 5
    assert monitor_area(range(1, 7), SLOW_CURVE) == pytest.approx(slow, rel=1e-12)
    assert monitor_area([2, 4, 6], [0.2, 0.4, 0.4]) == pytest.approx((0.6 + 0.8) / 4, rel=1e-12)  # widths 2
    assert monitor_area([3], [0.5]) == 0.5
    # 0.9 * 0.80 is 0.7200000000000001 in floats: an epoch at exactly 0.72 still counts.
    assert epochs_to_threshold(range(1, 7), FAST_CURVE, 0.9 * 0.80) == 3
    assert epochs_to_threshold(range(1, 7), SLOW_CURVE, 0.9 * 0.80) == 5
    assert epochs_to_threshold([3, 1, 2], [0.5, 0.2, 0.9], 0.45) == 2  # epochs in any order
    assert math.isnan(epochs_to_threshold([1, 2], [0.1, 0.2], 0.5))


# -- tables --------------------------------------------------------------------------------------------


def test_written_files(full) -> None:
    _, paths, _ = full
    tables = {
        "classification": ("md", "csv", "tex"),
        "bias": ("md", "csv", "tex"),
        "transfer": ("md", "csv", "tex"),
        "official": ("md", "tex"),
        "convergence": ("md", "csv"),
    }
    expected = {f"table_{name}_{ext}" for name, exts in tables.items() for ext in exts}
    expected |= {"convergence_png", "convergence_csv", "summary", "claims", "provenance", "report"}
    pages = {kind for kind in paths if kind.startswith("runs_")}  # one per cell (tests/test_run_links.py)
    assert pages and set(paths) == expected | pages
    assert all(path.is_file() for path in paths.values())
    assert {
        kind: path.name.replace(".", "_") for kind, path in paths.items() if kind.startswith("table")
    } == {kind: kind for kind in expected if kind.startswith("table")}
    assert paths["convergence_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["table_official_md"].name == "table_official.md"


def test_cells_are_mean_and_student_t_interval(full) -> None:
    _, paths, _ = full
    header, rows = markdown_rows(paths["table_bias_md"].read_text())
    assert header == ["method", f"{BMNIST} unbiased", f"{BMNIST} conflicting"]
    assert list(rows) == [*METHODS, "ce (own head)", "floor: raw pixels", "floor: untrained encoder"]
    for method in METHODS:
        unbiased = seeds_of(BMNIST, method)
        mark = "†" if method == EDGE_SEED[0] else ""  # one seed's probe selected at the weak edge
        assert rows[method][1] == reference_cell(unbiased) + mark
        assert rows[method][2] == reference_cell([v - 0.05 for v in unbiased]) + mark
    assert rows["ce (own head)"][1] == reference_cell(list(OWN_HEAD))  # a head, not a probe: no mark
    assert rows["floor: raw pixels"][1] == f"{100 * PIXELS[BMNIST]:.1f} (one fit)"
    assert rows["floor: untrained encoder"][1] == reference_cell(list(INIT[BMNIST]))

    header, rows = markdown_rows(paths["table_classification_md"].read_text())
    assert header == ["method", f"{FMNIST} top-1"]
    assert rows["cecl"][1] == reference_cell(seeds_of(FMNIST, "cecl")) == "91.0 ± 0.7 (n=3)"

    header, rows = markdown_rows(paths["table_transfer_md"].read_text())
    assert header == ["method", f"{BMNIST}→{FMNIST} top-1", f"{BMNIST}→{FMNIST} mean per-class"]
    assert rows["supcon"][1] == reference_cell(seeds_of(TRANSFER, "supcon"))
    assert rows["supcon"][2] == reference_cell([v - 0.003 for v in seeds_of(TRANSFER, "supcon")])

    text = paths["table_official_md"].read_text()
    assert "official protocol (test-selected, optimistic)" in text
    header, rows = markdown_rows(text)
    assert header[1:3] == [
        f"{BMNIST} validation-selected",
        f"{BMNIST} official protocol (test-selected, optimistic)",
    ]
    assert rows["ce"][1] == reference_cell([v + 0.01 for v in seeds_of(BMNIST, "ce")])
    assert rows["ce"][2] == reference_cell([v + 0.02 for v in seeds_of(BMNIST, "ce")])
    # transfer columns come last and take the transfer rows, not fmnist's probe rows
    assert header[-1] == f"{BMNIST}→{FMNIST} official protocol (test-selected, optimistic)"
    assert rows["cecl"][-1] == reference_cell([v + 0.02 for v in seeds_of(TRANSFER, "cecl")])


def test_captions(full) -> None:
    _, paths, _ = full
    text = paths["table_bias_md"].read_text()
    assert "95% confidence half-width" in text
    assert "[provenance.md](../provenance.md)" in text  # the table file lives in reports/tables/
    assert paths["table_bias_md"].parent.name == "tables"
    assert NOTES[BMNIST] in text and "`linear_probe`" in text
    assert "n=1 cells have no interval" not in text  # every cell has three seeds (pixels: one fit)
    assert "the raw pixels (one fit per entry, no seed)" in text and "the field's vanilla number" in text
    assert "† in at least one seed the probe selected its L2 strength at the weak edge" in text
    assert "‡" not in text


def test_single_seed_cells(tmp_path: Path) -> None:
    runs, _ = make_tree(tmp_path, datasets=(FMNIST,), methods=("supcon", "cecl"), seeds=(0,), transfer=False)
    paths = build_report(runs, [], tmp_path, tmp_path / "reports")
    text = paths["table_classification_md"].read_text()
    _, rows = markdown_rows(text)
    assert rows["cecl"][1] == f"{100 * headline(FMNIST, 'cecl', 0):.1f} (n=1)" == "91.2 (n=1)"
    assert "n=1 cells have no interval" in text
    assert "n=1 cells have no interval" in paths["table_classification_tex"].read_text()
    claims = paths["claims"].read_text()
    assert "n = 1 paired seed(s)). Direction: not testable: fewer than 2 paired seeds." in claims
    assert "as few as 1 seed(s)" in claims


def test_nan_metric_is_left_out_of_its_cell(tmp_path: Path) -> None:
    """metrics.json writes NaN (json.dumps) for a metric without samples: the cell uses the other seeds."""
    runs, _ = make_tree(tmp_path, datasets=(BMNIST,), methods=("cecl",), transfer=False)
    path = tmp_path / runs[0].probe_dir / "metrics.json"
    data = json.loads(path.read_text())
    data["test"]["conflicting_accuracy"] = float("nan")
    path.write_text(json.dumps(data))
    paths = build_report(runs, [], tmp_path, tmp_path / "reports")
    _, rows = markdown_rows(paths["table_bias_md"].read_text())
    assert rows["cecl"][2] == reference_cell([headline(BMNIST, "cecl", s) - 0.05 for s in (1, 2)])
    assert rows["cecl"][1].endswith("(n=3)")


def test_tidy_csv(full) -> None:
    _, paths, _ = full
    tidy = pd.read_csv(paths["table_bias_csv"], dtype={"seeds": str, "values": str}, keep_default_na=False)
    assert list(tidy.columns) == [
        "table",
        "dataset",
        "source",
        "protocol",
        "method",
        "metric",
        "mean",
        "ci95",
        "std",
        "n",
        "seeds",
        "values",
    ]
    assert len(tidy) == (len(METHODS) + 3) * 2  # + own head and the two floors
    pixels = tidy[(tidy["method"] == "floor: raw pixels") & (tidy["metric"] == "unbiased_accuracy")].iloc[0]
    assert (pixels["seeds"], pixels["n"], float(pixels["values"])) == ("", 1, PIXELS[BMNIST])
    row = tidy[(tidy["method"] == "cecl") & (tidy["metric"] == "unbiased_accuracy")].iloc[0]
    values = seeds_of(BMNIST, "cecl")
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (row["table"], row["dataset"], row["protocol"], row["n"]) == ("bias", BMNIST, "linear_probe", 3)
    assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-12)
    assert float(row["ci95"]) == pytest.approx((high - low) / 2, rel=1e-12)
    assert float(row["std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert row["seeds"] == "0;1;2"
    assert [float(v) for v in row["values"].split(";")] == values  # full precision fractions

    transfer = pd.read_csv(paths["table_transfer_csv"], keep_default_na=False)
    assert set(transfer["source"]) == {BMNIST} and set(transfer["dataset"]) == {FMNIST}
    assert set(transfer["metric"]) == {"accuracy", "mean_per_class_accuracy"}


def test_latex_is_booktabs(full) -> None:
    _, paths, _ = full
    tex = paths["table_bias_tex"].read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\multicolumn{2}{c}{bmnist\\_rho95}"):
        assert rule in tex
    values = seeds_of(BMNIST, "cecl")
    cell = reference_cell(values).replace("±", "$\\pm$")
    assert f"\ncecl & {cell} & " in tex
    assert "$\\rightarrow$" in paths["table_transfer_tex"].read_text()
    assert "official protocol (test-selected, optimistic)" in paths["table_official_tex"].read_text()


# -- convergence ---------------------------------------------------------------------------------------


def test_convergence_table_and_csv(full) -> None:
    _, paths, _ = full
    tidy = pd.read_csv(paths["table_convergence_csv"], dtype={"values": str})
    assert set(tidy["dataset"]) == {BMNIST}  # fmnist: 2 monitored epochs, no row
    cecl = tidy[(tidy["dataset"] == BMNIST) & (tidy["method"] == "cecl")].set_index("metric")
    assert cecl.loc["epochs_to_threshold", "values"] == "3;3;5"  # FAST, FAST, SLOW curves reach 0.72
    fast, slow = monitor_area(range(1, 7), FAST_CURVE), monitor_area(range(1, 7), SLOW_CURVE)
    assert [float(v) for v in cecl.loc["monitor_area", "values"].split(";")] == pytest.approx(
        [fast, fast, slow]
    )
    # fixed epochs: the first and the one nearest the middle of 6
    assert cecl.loc["accuracy_at_epoch_1", "values"] == "0.5;0.5;0.3"
    assert cecl.loc["accuracy_at_epoch_3", "values"] == "0.72;0.72;0.6"
    header, rows = markdown_rows(paths["table_convergence_md"].read_text())
    assert header == [
        "method",
        f"{BMNIST} area (mean %)",
        f"{BMNIST} % at epoch 1",
        f"{BMNIST} % at epoch 3",
        f"{BMNIST} epochs to 72.0%",
    ]
    assert rows["cecl"][4] == reference_cell([3, 3, 5], scale=1.0)
    assert rows["cecl"][1] == reference_cell([fast, fast, slow])
    assert rows["supcon"][4] == "5.0 ± 0.0 (n=3)"
    report = paths["report"].read_text()
    assert f"`{FMNIST}`: 2 epoch(s) monitored, fewer than 5: no convergence comparison" in report

    long = pd.read_csv(paths["convergence_csv"])
    assert list(long.columns) == ["dataset", "method", "seed", "epoch", "monitor_val_accuracy", "series"]
    assert len(long) == len(METHODS) * len(SEEDS) * sum(EPOCHS.values())
    assert long["series"].nunique() == 2 * len(METHODS) * len(SEEDS)
    assert "cecl (bmnist_rho95, seed 2)" in set(long["series"])


def test_dvc_template_colours_by_series(full) -> None:
    """The repository's custom DVC template renders convergence.csv (dvc-render) coloured by series."""
    dvc_render = pytest.importorskip("dvc_render")
    _, paths, _ = full
    template_dir = Path(__file__).resolve().parent.parent / ".dvc" / "plots"
    if not (template_dir / "convergence.json").is_file():
        pytest.skip("no custom DVC template")
    records = pd.read_csv(paths["convergence_csv"], dtype=str).to_dict("records")
    renderer = dvc_render.VegaRenderer(
        [{**row, "rev": "workspace"} for row in records],
        "reports/convergence.csv",
        template="convergence",
        template_dir=str(template_dir),
        x="epoch",
        y="monitor_val_accuracy",
    )
    spec = renderer.get_filled_template()
    assert spec["encoding"]["color"]["field"] == "series"
    assert len(spec["data"]["values"]) == len(records)


# -- claims --------------------------------------------------------------------------------------------


def claim_line(text: str, where: str, baseline: str, what: str = "") -> str:
    prefix = f"- {where}, CECL vs {baseline}: "
    return next(line for line in text.splitlines() if line.startswith(prefix) and what in line)


def p_text(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def holm_reference(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment, the slow way: for each p, the max over the hypotheses ranked at or
    below it of min(1, (m - rank) * p)."""
    m = len(p_values)
    ranked = sorted(p_values)
    return [max(min(1.0, (m - j) * ranked[j]) for j in range(m) if ranked[j] <= p) for p in p_values]


def test_claim_bias_is_paired_holm_adjusted_and_contrastive_only(full) -> None:
    _, paths, _ = full
    text = paths["claims"].read_text()
    assert "22.9% improvement compared to original contrastive loss functions" in text
    where = f"`{BMNIST}` (linear_probe)"
    ours = seeds_of(BMNIST, "cecl")
    tests = {b: scipy_stats.ttest_rel(ours, seeds_of(BMNIST, b)) for b in ("supcon", "simclr")}
    adjusted = dict(zip(tests, holm_reference([t.pvalue for t in tests.values()]), strict=True))
    win = claim_line(text, where, "SupCon")
    diff = np.mean(np.subtract(ours, seeds_of(BMNIST, "supcon")))
    interval = tests["supcon"].confidence_interval()
    assert f"{100 * diff:+.1f} points unbiased accuracy" in win
    assert f"95% CI {100 * interval.low:+.1f} to {100 * interval.high:+.1f}" in win
    assert f"paired t p {p_text(tests['supcon'].pvalue)}, Holm p {p_text(adjusted['supcon'])}" in win
    assert "Direction: reproduces" in win and "n = 3 paired seed(s)" in win
    magnitude = text.splitlines()[text.splitlines().index(win) + 1]
    rel = 100 * diff / np.mean(seeds_of(BMNIST, "supcon"))
    assert f"does not reach 22.9 points; the relative change {rel:+.1f}% reaches 22.9% relative" in magnitude
    loss = claim_line(text, where, "SimCLR")
    assert adjusted["simclr"] < 0.05 and "Direction: contradicts the paper" in loss
    assert f"Holm p {p_text(adjusted['simclr'])}" in loss
    # cross-entropy: a reference with its two readings, never a verdict
    assert "CECL vs cross-entropy" not in text
    reference = next(line for line in text.splitlines() if "cross-entropy (reference, no verdict)" in line)
    assert f"own head (the field's vanilla) {reference_cell(list(OWN_HEAD))}" in reference
    assert f"probe {reference_cell(seeds_of(BMNIST, 'ce'))}" in reference
    assert "no rank test can reject at 0.05" in text  # 3 pairs


def test_claim_convergence_and_accuracy(full) -> None:
    _, paths, _ = full
    text = paths["claims"].read_text()
    # Epochs to 0.72: CECL 3, 3, 5 vs SupCon 5, 5, 5: differences -2, -2, 0 (paired t by scipy).
    line = claim_line(text, f"`{BMNIST}`", "SupCon", "to reach the common threshold")
    reference = scipy_stats.ttest_rel([3, 3, 5], [5, 5, 5])
    interval = reference.confidence_interval()
    assert (
        f"-1.3 epochs to reach the common threshold (95% CI {interval.low:+.1f} to {interval.high:+.1f}"
        in line
    )
    assert f"paired t p {p_text(reference.pvalue)}" in line
    area = claim_line(text, f"`{BMNIST}`", "SimCLR", "area under the monitor curve")
    assert "points area under the monitor curve" in area
    assert not any("CECL vs cross-entropy" in line for line in text.splitlines())
    assert f"`{FMNIST}`: 2 epoch(s) monitored, fewer than 5: no convergence comparison" in text

    where = f"`{FMNIST}` (linear_probe)"
    line = claim_line(text, where, "SimCLR", "top-1")
    assert "Direction: reproduces" in line
    assert "6 pretraining epochs (BiasCon's BiasedMNIST schedule: 80" in text
    assert f"`{BMNIST}` ({NOTES[BMNIST]})" in text and "0.999, 0.997, 0.995, 0.99" in text


def test_claims_follow_the_numbers(tmp_path: Path) -> None:
    """Swap CECL and SupCon: the BiasedMNIST verdict flips, so nothing is hard-coded."""

    def swapped(dataset: str, method: str, seed: int) -> float:
        other = {"cecl": "supcon", "supcon": "cecl"}.get(method, method)
        return headline(dataset, other, seed)

    runs, _ = make_tree(tmp_path, datasets=(BMNIST,), transfer=False, value=swapped)
    text = build_report(runs, [], tmp_path, tmp_path / "reports")["claims"].read_text()
    assert "Direction: contradicts the paper" in claim_line(text, f"`{BMNIST}` (linear_probe)", "SupCon")


def test_missing_baseline_is_named(tmp_path: Path) -> None:
    runs, _ = make_tree(tmp_path, methods=("ce", "supcon", "cecl"), seeds=(0, 1), transfer=False)
    text = build_report(runs, [], tmp_path, tmp_path / "reports")["claims"].read_text()
    assert (
        f"- `{BMNIST}` (linear_probe): SimCLR (`simclr`) was not measured; the comparison with it is skipped."
        in text
    )
    assert f"- `{FMNIST}` (linear_probe): SimCLR (`simclr`) was not measured" in text
    assert "CECL vs SimCLR" not in text
    no_cecl = make_tree(tmp_path / "b", datasets=(FMNIST,), methods=("supcon",), seeds=(0,), transfer=False)[
        0
    ]
    text = build_report(no_cecl, [], tmp_path / "b", tmp_path / "b" / "reports")["claims"].read_text()
    assert "CECL (`cecl`) was not measured; nothing to compare." in text


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "stage"),
    [
        ("probe/fmnist/supcon/seed_1/metrics.json", "probe@fmnist-supcon-1"),
        ("models/fmnist/supcon/seed_1/history.csv", "pretrain@fmnist-supcon-1"),
        ("transfer/bmnist_rho95__fmnist/cecl/seed_0/metrics.json", "transfer@bmnist_rho95-fmnist-cecl-0"),
    ],
)
def test_missing_file_names_the_stage(tmp_path: Path, relative: str, stage: str) -> None:
    runs, transfers = make_tree(tmp_path, datasets=(FMNIST,), methods=("supcon", "cecl"), seeds=(0, 1))
    (tmp_path / relative).unlink()
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{relative} not found: run {stage} first (dvc repro)")
    ):
        build_report(runs, transfers, tmp_path, tmp_path / "reports")
    assert not (tmp_path / "reports").exists()  # nothing half-written


def test_mismatched_run_block_is_rejected(tmp_path: Path) -> None:
    runs, _ = make_tree(
        tmp_path, datasets=(FMNIST,), methods=("supcon", "cecl"), seeds=(0, 1), transfer=False
    )
    path = tmp_path / "probe" / "fmnist" / "cecl" / "seed_1" / "metrics.json"
    data = json.loads(path.read_text())
    data["run"]["seed"] = 0  # a seed-0 file copied into seed_1's folder
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        build_report(runs, [], tmp_path, tmp_path / "reports")
    assert "seed=0 (expected 1)" in str(info.value)


# -- provenance and report -----------------------------------------------------------------------------


def test_provenance(full) -> None:
    _, paths, runs = full
    text = paths["provenance"].read_text()
    first = runs[0]
    pretrain, probe = first.stage("pretrain"), first.stage("probe")
    pretrain_row = next(line for line in text.splitlines() if f"`{pretrain}`" in line)
    assert f"`{first.model_dir.as_posix()}`: `{LOCK_MD5}`" in pretrain_row
    link = f"[{run_id(pretrain)}](http://mlflow.example:5000/#/experiments/7/runs/{run_id(pretrain)})"
    assert link in pretrain_row
    probe_row = next(line for line in text.splitlines() if f"`{probe}`" in line)
    assert f"/#/experiments/7/runs/{run_id(probe)}) (+1 earlier with equal outputs)" in probe_row
    assert "older" not in probe_row  # the newest matching run is the one linked
    other_row = next(line for line in text.splitlines() if f"`{runs[1].stage('pretrain')}`" in line)
    assert "none of this stage's 1 run(s) wrote these bytes" in other_row
    transfer = TransferKey(BMNIST, FMNIST, "cecl", 2).stage()
    transfer_row = next(line for line in text.splitlines() if f"`{transfer}`" in line)
    assert "not in dvc.lock" in transfer_row and f"/#/experiments/8/runs/{run_id(transfer)})" in transfer_row
    # one row per pretrain, probe and transfer run
    assert sum(line.startswith("| pretrain |") for line in text.splitlines()) == len(runs)
    assert sum(line.startswith("| transfer |") for line in text.splitlines()) == len(METHODS) * len(SEEDS)


def test_provenance_flags_a_stale_probe(tmp_path: Path) -> None:
    runs, _ = make_tree(tmp_path, datasets=(FMNIST,), methods=("cecl",), seeds=(0,), transfer=False)
    before = tree_digest(tmp_path / runs[0].model_dir)
    with (tmp_path / runs[0].model_dir / "history.csv").open("a") as handle:  # the encoder was retrained
        handle.write("99,0.1,0.5,0.5\n")
    text = build_report(runs, [], tmp_path, tmp_path / "reports")["provenance"].read_text()
    after = tree_digest(tmp_path / runs[0].model_dir)
    assert f"`{runs[0].stage('probe')}` probed an encoder folder with digest {before[:12]}" in text
    assert f"now has {after[:12]}: the result may be stale" in text


def test_provenance_without_mlflow_says_so(tmp_path: Path) -> None:
    runs, _ = make_tree(tmp_path, datasets=(FMNIST,), methods=("cecl",), seeds=(0,), transfer=False)
    text = build_report(runs, [], tmp_path, tmp_path / "reports", tracked={})["provenance"].read_text()
    assert text.count("no run of this stage in this MLflow store") == 2  # pretrain and probe rows


def test_report_md(full) -> None:
    _, paths, _ = full
    report = paths["report"].read_text()
    assert report.startswith("# CECL reproduction report")
    assert NOTES[BMNIST] in report and VAL_DESCRIPTION in report and "Seeds: 0, 1, 2" in report
    assert "![Online-probe validation accuracy per pretraining epoch](convergence.png)" in report
    assert report.index("## Bias benchmarks") < report.index("## Claims") < report.index("## Sweep")
    assert "[provenance.md](provenance.md)" in report
    assert "Run ids and output hashes: [provenance.md](provenance.md)." in report  # table captions
    assert paths["claims"].read_text().strip() in report


def test_kind_without_runs_writes_no_files(tmp_path: Path) -> None:
    runs, _ = make_tree(
        tmp_path, datasets=(BMNIST,), methods=("supcon", "cecl"), seeds=(0, 1), transfer=False
    )
    out = tmp_path / "reports"
    paths = build_report(runs, [], tmp_path, out)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not any("classification" in name or "transfer" in name for name in written)
    assert {"tables/table_bias.md", "tables/table_bias.csv", "tables/table_bias.tex"} <= written
    assert {"provenance.md", "report.md", "claims.md", "convergence.png"} <= written
    assert not any(key.startswith(("table_classification", "table_transfer")) for key in paths)
    assert written == {p.relative_to(out).as_posix() for p in paths.values()}
    report = paths["report"].read_text()
    assert "No classification probe runs were measured: no classification table." in report
    assert "No transfer runs were measured: no transfer table." in report
    assert "No `dvc.lock` was found" in paths["provenance"].read_text()


def test_summary_json_holds_the_seed_means_of_the_headline_metrics(full) -> None:
    """The one DVC metrics file: means over seeds, checked against the values the runs were written with."""
    _, paths, _ = full
    summary = json.loads(paths["summary"].read_text())
    assert list(summary) == [BMNIST, FMNIST, f"{BMNIST}->{FMNIST}"]
    for method in METHODS:
        unbiased = sum(headline(BMNIST, method, s) for s in SEEDS) / len(SEEDS)
        conflicting = unbiased - 0.05  # _test_block's conflicting accuracy
        assert summary[BMNIST][method] == {
            "unbiased": round(unbiased, 4),
            "conflicting": round(conflicting, 4),
            "seeds": 3,
        }
        top1 = sum(headline(FMNIST, method, s) for s in SEEDS) / len(SEEDS)
        assert summary[FMNIST][method] == {"top1": round(top1, 4), "seeds": 3}
        transfer = sum(headline(TRANSFER, method, s) for s in SEEDS) / len(SEEDS)
        assert summary[f"{BMNIST}->{FMNIST}"][method] == {"top1": round(transfer, 4), "seeds": 3}
    assert summary[FMNIST]["floor_pixels"] == {"top1": PIXELS[FMNIST], "seeds": 0}
    init = sum(INIT[BMNIST]) / len(SEEDS)
    assert summary[BMNIST]["floor_init"] == {
        "unbiased": round(init, 4),
        "conflicting": round(init - 0.05, 4),
        "seeds": 3,
    }
    assert sum(len(values) for entry in summary.values() for values in entry.values()) < 40
