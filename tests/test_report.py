"""Report stage pieces on a synthetic probe/ + models/ tree: collect, tables, plots, claims, report.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cecl.report import (
    claims_markdown,
    collect_histories,
    collect_probe_metrics,
    plot_convergence,
    write_all,
    write_convergence_csv,
    write_report,
    write_tables,
)

REPO = Path(__file__).resolve().parent.parent
RHOS = [0.99, 0.997]
METHODS = ["ce", "simclr", "supcon", "cecl"]
# (unbiased, conflicting, validation-selected test accuracy, official test accuracy) per (method, rho).
VALUES = {
    ("ce", 0.99): (0.4012, 0.3456, 0.4100, 0.4300),
    ("ce", 0.997): (0.3011, 0.2522, 0.3100, 0.3300),
    ("simclr", 0.99): (0.5534, 0.5011, 0.5600, 0.5800),
    ("simclr", 0.997): (0.4466, 0.4023, 0.4500, 0.4700),
    ("supcon", 0.99): (0.6123, 0.5789, 0.6200, 0.6400),
    ("supcon", 0.997): (0.5000, 0.4444, 0.5100, 0.5300),
    ("cecl", 0.99): (0.8123, 0.7891, 0.8200, 0.8400),
    ("cecl", 0.997): (0.4500, 0.4010, 0.4600, 0.4800),  # below SupCon at 0.997
}
EPOCHS = 3


def _write_tree(root: Path, values: dict[tuple[str, float], tuple[float, ...]] = VALUES) -> tuple[Path, Path]:
    """probe/rho_*/*/metrics.json and models/rho_*/*/history.csv as the probe/pretrain stages write them."""
    for i, ((method, rho), (unbiased, conflicting, test_acc, official)) in enumerate(values.items()):
        probe = root / "probe" / f"rho_{rho:g}" / method
        probe.mkdir(parents=True)
        payload = {
            "method": method,
            "rho": rho,
            "seed": 0,
            "selected_epoch": 2,
            "val_accuracy": 0.9,
            "test": {
                "accuracy": test_acc,
                "unbiased_accuracy": unbiased,
                "aligned_accuracy": 0.99,
                "conflicting_accuracy": conflicting,
                "n_groups": 100,
                "n_aligned": 1000,
                "n_conflicting": 9000,
            },
            "official_protocol": {"test_accuracy": official, "epoch": 3},
            "config": {"temperature": 0.1},
        }
        (probe / "metrics.json").write_text(json.dumps(payload))
        models = root / "models" / f"rho_{rho:g}" / method
        models.mkdir(parents=True)
        history = pd.DataFrame(
            {
                "epoch": range(1, EPOCHS + 1),
                "train_loss": [2.0 / e for e in range(1, EPOCHS + 1)],
                "online_probe_val_accuracy": [0.3 + 0.1 * e + 0.01 * i for e in range(1, EPOCHS + 1)],
                "seconds": 1.0,
            }
        )
        history.to_csv(models / "history.csv", index=False)
    return root / "probe", root / "models"


@pytest.fixture
def frames(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    probe_root, models_root = _write_tree(tmp_path)
    return collect_probe_metrics(probe_root, RHOS, METHODS), collect_histories(models_root, RHOS, METHODS)


def _markdown_rows(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and {first cell: cells} of the first pipe table in text."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], {row[0]: row for row in cells[2:]}


def test_collect_frames(frames) -> None:
    probe, hist = frames
    assert list(zip(probe["method"], probe["rho"], strict=True)) == [(m, r) for m in METHODS for r in RHOS]
    assert probe.loc[probe["method"] == "cecl", "test.unbiased_accuracy"].tolist() == [0.8123, 0.45]
    assert list(hist.columns) == ["rho", "method", "epoch", "train_loss", "online_probe_val_accuracy"]
    assert len(hist) == len(METHODS) * len(RHOS) * EPOCHS


@pytest.mark.parametrize(
    ("kind", "stage"), [("probe", "probe@0.997-supcon"), ("models", "pretrain@0.997-supcon")]
)
def test_missing_file_is_named(tmp_path: Path, kind: str, stage: str) -> None:
    probe_root, models_root = _write_tree(tmp_path)
    name = "metrics.json" if kind == "probe" else "history.csv"
    missing = tmp_path / kind / "rho_0.997" / "supcon" / name
    missing.unlink()
    collect = collect_probe_metrics if kind == "probe" else collect_histories
    root = probe_root if kind == "probe" else models_root
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        collect(root, RHOS, METHODS)
    assert stage in str(info.value)


def test_mismatched_metrics_file_is_rejected(tmp_path: Path) -> None:
    probe_root, _ = _write_tree(tmp_path)
    path = probe_root / "rho_0.99" / "ce" / "metrics.json"
    path.write_text(path.read_text().replace('"method": "ce"', '"method": "cecl"'))
    with pytest.raises(ValueError, match=re.escape("expected ce 0.99")):
        collect_probe_metrics(probe_root, RHOS, METHODS)


def test_tables(frames, tmp_path: Path) -> None:
    probe, _ = frames
    paths = write_tables(probe, tmp_path / "reports")
    header, rows = _markdown_rows(paths["markdown"].read_text())
    assert header == [
        "method",
        "ρ=0.99 unbiased",
        "ρ=0.99 conflicting",
        "ρ=0.997 unbiased",
        "ρ=0.997 conflicting",
    ]
    assert list(rows) == METHODS
    assert rows["cecl"][1:] == ["81.2", "78.9", "45.0", "40.1"]
    assert rows["supcon"][1:] == ["61.2", "57.9", "50.0", "44.4"]

    header, rows = _markdown_rows(paths["official_markdown"].read_text())
    assert header[1:3] == [
        "ρ=0.99 validation-selected",
        "ρ=0.99 official protocol (test-selected, optimistic)",
    ]
    assert rows["simclr"][1:] == ["56.0", "58.0", "45.0", "47.0"]

    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(VALUES)
    for row in csv.itertuples():
        unbiased, conflicting, test_acc, official = VALUES[(row.method, row.rho)]
        assert (row.unbiased_accuracy, row.conflicting_accuracy) == (unbiased, conflicting)  # full precision
        assert (row.test_accuracy, row.official_test_accuracy) == (test_acc, official)

    latex = paths["latex"].read_text()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\multicolumn{2}{c}{$\\rho=0.997$}"):
        assert rule in latex
    assert "cecl & 81.2 & 78.9 & 45.0 & 40.1 \\\\" in latex
    assert all(f"\n{m} & " in latex for m in METHODS)
    assert "official protocol (test-selected, optimistic)" in paths["official_latex"].read_text()


def test_plots(frames, tmp_path: Path) -> None:
    _, hist = frames
    png = plot_convergence(hist, tmp_path / "convergence.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    conv = pd.read_csv(write_convergence_csv(hist, tmp_path / "convergence.csv"))
    assert list(conv.columns) == ["epoch", "online_probe_val_accuracy", "method", "rho", "series"]
    assert len(conv) == len(hist)
    assert set(conv["series"]) == {f"{m} (rho={r:g})" for m in METHODS for r in RHOS}


def test_dvc_template_colours_by_series(frames, tmp_path: Path) -> None:
    """The custom template renders with dvc-render (as `dvc plots show` does) and colours by series."""
    from dvc_render import VegaRenderer

    _, hist = frames
    datapoints = [
        {**row, "rev": "workspace"}
        for row in pd.read_csv(write_convergence_csv(hist, tmp_path / "convergence.csv"), dtype=str).to_dict(
            "records"
        )
    ]
    renderer = VegaRenderer(
        datapoints,
        "reports/convergence.csv",
        template="convergence",
        template_dir=str(REPO / ".dvc" / "plots"),
        x="epoch",
        y="online_probe_val_accuracy",
    )
    spec = renderer.get_filled_template()
    assert spec["encoding"]["color"]["field"] == "series"
    assert spec["encoding"]["x"]["field"] == "epoch"
    assert spec["encoding"]["y"]["field"] == "online_probe_val_accuracy"
    assert len(spec["data"]["values"]) == len(hist)
    assert "<DVC_METRIC" not in json.dumps(spec)


def _claim_line(text: str, rho: str, baseline: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- rho={rho}, CECL vs {baseline}:"))


def test_claims_direction_and_magnitude(frames) -> None:
    probe, hist = frames
    text = claims_markdown(probe, hist)
    assert "22.9% improvement compared to original contrastive loss functions" in text
    # rho 0.99: 81.23 vs 61.23 -> +20.0 pp, +32.7% relative.
    line = _claim_line(text, "0.99", "SupCon")
    assert "+20.0 pp" in line and "+32.7%" in line
    assert "direction reproduces" in line
    assert "does not reach 22.9 points absolute and reaches 22.9% relative" in line
    # rho 0.997: 45.0 vs 50.0 -> -5.0 pp, -10.0%.
    line = _claim_line(text, "0.997", "SupCon")
    assert "-5.0 pp" in line and "-10.0%" in line
    assert "direction does not reproduce" in line and "direction reproduces" not in line
    # vs SimCLR at 0.99: 81.23 vs 55.34 -> +25.9 pp: both readings reached.
    line = _claim_line(text, "0.99", "SimCLR")
    assert "+25.9 pp" in line and "reaches 22.9 points absolute and reaches 22.9% relative" in line
    assert "Caveat" in text and "1 seed(s)" in text and f"{EPOCHS} pretraining epochs" in text


def test_claims_follow_the_numbers(tmp_path: Path) -> None:
    """Swap CECL and SupCon: the verdicts flip, so nothing is hard-coded."""
    swapped = dict(VALUES)
    for rho in RHOS:
        swapped[("cecl", rho)], swapped[("supcon", rho)] = VALUES[("supcon", rho)], VALUES[("cecl", rho)]
    probe_root, _ = _write_tree(tmp_path, swapped)
    text = claims_markdown(collect_probe_metrics(probe_root, RHOS, METHODS))
    assert "direction does not reproduce" in _claim_line(text, "0.99", "SupCon")
    assert "direction reproduces" in _claim_line(text, "0.997", "SupCon")


def test_claims_with_missing_methods(frames) -> None:
    probe, _ = frames
    no_supcon = claims_markdown(probe[probe["method"] != "supcon"])
    assert "SupCon (`supcon`) was not measured" in no_supcon
    assert "CECL vs SimCLR" in no_supcon and "CECL vs SupCon" not in no_supcon
    no_cecl = claims_markdown(probe[probe["method"] != "cecl"])
    assert "CECL (`cecl`) was not measured" in no_cecl


def test_write_report(frames, tmp_path: Path) -> None:
    probe, hist = frames
    out = tmp_path / "reports"
    paths = write_all(probe, hist, out, extra_sections=["## Sweep\n\nsweep goes here"])
    for key in ("markdown", "csv", "latex", "convergence_png", "convergence_csv", "report", "claims"):
        assert paths[key].is_file(), key
    report = paths["report"].read_text()
    assert report.startswith("# CECL reproduction on BiasedMNIST")
    assert "![Online-probe validation accuracy per pretraining epoch](convergence.png)" in report
    assert "| cecl " in report and "official protocol (test-selected, optimistic)" in report
    assert report.index("## Claims") < report.index("## Sweep")
    assert "22.9" in paths["claims"].read_text()
    assert write_report(probe, hist, out) == paths["report"]
    assert "## Sweep" not in paths["report"].read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dvc_plots_show_renders_series(frames, tmp_path: Path) -> None:
    """`dvc plots show` in a scratch git+dvc repo renders convergence.csv with the custom template."""
    _, hist = frames
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy(REPO / ".dvc" / "plots" / "convergence.json", repo / ".dvc" / "plots" / "convergence.json")
    write_convergence_csv(hist, repo / "reports" / "convergence.csv")
    (repo / "dvc.yaml").write_text(
        "plots:\n"
        "  - reports/convergence.csv:\n"
        "      template: convergence\n"
        "      x: epoch\n"
        "      y: online_probe_val_accuracy\n"
    )
    subprocess.run([*dvc, "plots", "show"], cwd=repo, check=True, capture_output=True)
    html = (repo / "dvc_plots" / "index.html").read_text()
    spec = json.loads(re.search(r"var spec = (\{.*?\});\n", html, re.S).group(1))
    assert spec["encoding"]["color"]["field"] == "series"
    assert {d["series"] for d in spec["data"]["values"]} == {
        f"{m} (rho={r:g})" for m in METHODS for r in RHOS
    }


def test_configuration_section_lists_each_rows_options() -> None:
    import pandas as pd

    from cecl.report.tables import configuration_markdown

    df = pd.DataFrame(
        [
            {"method": "ce", "rho": 0.99, "seed": 0, "config.temperature": float("nan")},
            {"method": "cecl", "rho": 0.997, "seed": 1, "config.temperature": 0.2},
        ]
    )
    text = configuration_markdown(df)
    assert "| ce | 0.99 | 0 | (no options) |" in text
    assert "| cecl | 0.997 | 1 | temperature=0.2 |" in text
