"""What a user sees, in headless Chromium: the MLflow UI on runs logged by cecl.tracking, report.html, and
the documentation site (`make docs`) opened from disk.

Skipped, with the reason, where Chromium, chromedriver or selenium is missing (tests/browser.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cecl.report.html import write_html_report
from cecl.runs import RunKey, TransferKey, prepare_stage
from cecl.tracking import EXPERIMENT_TAGS, stage_run
from tests.browser import (
    UIPage,
    assert_shows_runs,
    browser_unavailable,
    experiment_page,
    html_report_check,
    mlflow_ui,
    requires_browser,
    site_search,
    static_page_check,
    table_cells,
)
from tests.test_report_html import sample_report

EXPERIMENT = "cecl"
DATASETS, METHODS, SEEDS = ("bmnist_rho90", "fmnist"), ("ce", "cecl"), (0, 1)
KEYS = [RunKey(d, m, s) for d in DATASETS for m in METHODS for s in SEEDS]
TRANSFERS = [TransferKey("bmnist_rho90", "fmnist", m, 0) for m in METHODS]
# The pipeline's run names (DVC stage names); 'pretrain@fmnist-ce-0' and '...-cecl-0' differ in one cell.
STAGES = (
    [prepare_stage(d) for d in DATASETS]
    + [k.stage("pretrain") for k in KEYS]
    + [k.stage("probe") for k in KEYS]
    + [k.stage() for k in TRANSFERS]
    + ["sweep", "aggregate"]
)
# Grey-level variance of a screenshot: a blank page is ~0, a page of text and tables is in the hundreds.
NOT_BLANK = 50.0


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlflow.db written by the project's own tracking code: one run per stage name, as the stages do."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for stage in STAGES:
            with stage_run(
                stage, EXPERIMENT, {"pretrain": {"epochs": 2}}, {"device": "cpu"}, root=root
            ) as run:
                run.log_metrics({"train_loss": 0.5}, step=1)
    return root / "mlflow.db"


@pytest.fixture(scope="module")
def ui(mlflow_db: Path) -> Iterator[str]:
    """One `mlflow ui` on that database for the module's tests; its base URL."""
    if (reason := browser_unavailable()) is not None:
        pytest.skip(reason)
    with mlflow_ui(mlflow_db) as base:
        yield base


@requires_browser
@pytest.mark.slow
def test_mlflow_ui_shows_every_stage_run_in_the_runs_table(ui: str, tmp_path: Path) -> None:
    page = experiment_page(ui, EXPERIMENT, expect=STAGES, screenshot=tmp_path / "runs.png")
    assert page.view == "runs", page.url
    assert "/overview" not in page.url and "Usage" not in page.lines
    assert f"{len(STAGES)} matching runs" in page.lines
    assert_shows_runs(page, STAGES)
    assert page.experiment_tags["mlflow.experimentKind"] == "custom_model_development"


@requires_browser
@pytest.mark.slow
def test_a_first_visit_without_the_sidebar_choice_lands_on_the_genai_overview(ui: str) -> None:
    """Why the README tells users to pick "Model training": MLflow's default workflow is GenAI."""
    page = experiment_page(ui, EXPERIMENT, workflow_type=None)
    assert page.view == "overview", page.url
    assert not page.shows_runs_table
    assert not set(STAGES) & page.lines
    with pytest.raises(AssertionError, match="not the runs table"):
        assert_shows_runs(page, STAGES)


def test_the_check_requires_the_model_training_tag() -> None:
    """The runs-table check fails on an experiment without the tag, even when the runs are rendered."""
    text = "\n".join([*STAGES, f"{len(STAGES)} matching runs"])
    url = "http://127.0.0.1:1/#/experiments/1/runs?workflowType=machine_learning"
    tagged = UIPage(url, text, "1", dict(EXPERIMENT_TAGS))
    assert_shows_runs(tagged, STAGES)
    with pytest.raises(AssertionError, match=re.escape("mlflow.experimentKind")):
        assert_shows_runs(UIPage(url, text, "1", {}), STAGES)
    # A name must be a cell of its own: a prefix of a rendered name is missing.
    with pytest.raises(AssertionError, match=re.escape("['pretrain@bmnist_rho90-ce']")):
        assert_shows_runs(tagged, [*STAGES, "pretrain@bmnist_rho90-ce"])
    with pytest.raises(AssertionError, match="not the runs table"):
        assert_shows_runs(
            UIPage(url.replace("/runs", "/overview/usage"), text, "1", dict(EXPERIMENT_TAGS)), STAGES
        )


@requires_browser
def test_report_html_renders_offline_with_its_tables_and_plots(tmp_path: Path) -> None:
    report, tables, plots = sample_report(tmp_path)
    html = write_html_report(report)
    view = html_report_check(html, screenshot=tmp_path / "report.png")
    assert view.title == "CECL reproduction report"
    assert view.tables == tables
    assert [(i["prefix"], i["width"], i["height"]) for i in view.images] == [
        ("data:image/png;base64", 160, 90)
    ] * 2
    assert len(view.images) == len(plots)
    assert view.console_errors == []
    assert view.pixel_variance > NOT_BLANK, view.pixel_variance

    # The two checks discriminate: a blank page has no variance; a remote image is blocked and logged.
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><head><title>b</title></head><body></body></html>\n")
    assert html_report_check(blank).pixel_variance < 1.0
    leaky = tmp_path / "reports" / "leaky.html"
    leaky.write_text(html.read_text().replace("</body>", '<img src="http://127.0.0.1:9/x.png"></body>'))
    assert any(
        "Content Security Policy" in e or "x.png" in e for e in html_report_check(leaky).console_errors
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict` (as `make docs`) of this checkout's docs into a temp folder."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.is_file():
        pytest.skip("mkdocs is not installed (make install)")
    root = Path(__file__).resolve().parents[1]
    site = tmp_path_factory.mktemp("docs") / "site"
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)], cwd=root, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return site


@requires_browser
def test_the_documentation_site_opens_offline_with_its_headings_and_tables(site: Path) -> None:
    """The index and a topic page of the built site over file://."""

    index = static_page_check(site / "index.html")
    assert index.headings[:3] == ["CECL reproducibility pipeline", "Quick start", "Pages"], index.headings
    assert index.tables and index.tables[0][0] == ["page", "what it covers"], index.tables[:1]
    assert any(row[0] == "Datasets" for row in index.tables[0])

    datasets = static_page_check(site / "datasets.html")
    assert datasets.headings[0] == "Datasets", datasets.headings
    families = next(t for t in datasets.tables if t[0][:2] == ["family", "where the data comes from"])
    assert {"biased_mnist", "cifar10, cifar100", "imagenet"} <= {row[0] for row in families[1:]}

    for page in (index, datasets):
        assert page.url.startswith("file://")
        assert page.console_errors == [], page.console_errors
        assert page.remote_resources == [], page.remote_resources


@requires_browser
def test_searching_the_site_from_disk_for_temperature_finds_the_sweep(site: Path) -> None:
    """Material's search, from file:// (offline plugin + the vendored iframe-worker shim), as a user types."""
    results = site_search(site / "index.html", "temperature")
    assert results, "the search showed no results"
    assert any("sweep" in title.lower() for title, _ in results), results
    assert all(link.startswith("file://") for _, link in results), results
    assert site_search(site / "index.html", "zzyzxqwv") == []  # the check can fail: nothing matches this


@requires_browser
def test_the_paper_vs_run_verdicts_are_readable_at_1280_px(site: Path) -> None:
    """Every verdict cell of the paper-vs-run table is one of the three verdicts and inside the window."""
    cells = table_cells(site / "paper-vs-run.html", "verdict", width=1280)
    assert cells, "no table with a 'verdict' column on paper-vs-run.html"
    verdicts = {"reproduces", "contradicts the paper", "not resolved at this n"}
    assert {c.text for c in cells} <= verdicts and {c.text for c in cells} & {"reproduces"}, cells
    assert all(c.inside_window for c in cells), [c for c in cells if not c.inside_window]
    claims = table_cells(site / "results.html", "direction", width=1280)
    assert claims and all(c.inside_window for c in claims), [c for c in claims if not c.inside_window]
    narrow = table_cells(site / "results.html", "direction", width=500)  # the check can fail
    assert not all(c.inside_window for c in narrow)
