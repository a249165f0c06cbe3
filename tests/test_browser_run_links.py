"""In headless Chromium: a report cell's run page (opened from disk) lands on the MLflow UI's compare page of
the cell's runs, with every seed's run named on it, and a one-run page on that run.

Runs are logged by cecl/tracking.py into a real MLflow store, matched by cecl.tracking.finished_stage_runs
as aggregate does, and the pages written by cecl/report/runlinks.py. Skipped where Chromium is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cecl.report.runlinks import write_run_pages
from cecl.tracking import finished_stage_runs, stage_run
from tests.browser import PAGE_TIMEOUT_S, browser_unavailable, headless_chromium, mlflow_ui, requires_browser

STAGES = [f"probe@bmnist_rho99-cecl-{seed}" for seed in (0, 1)]
OTHER = "probe@bmnist_rho99-supcon-0"


def _wait_for(driver, words: list[str]) -> str:
    """The page's text once it contains every word (at most PAGE_TIMEOUT_S), else what it shows then."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while True:
        text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
        if all(word in text for word in words) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


@requires_browser
@pytest.mark.slow
def test_a_cell_page_opens_the_compare_page_of_its_runs(tmp_path: Path, monkeypatch) -> None:
    if (reason := browser_unavailable()) is not None:
        pytest.skip(reason)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    digests = {}
    for stage in [*STAGES, OTHER]:
        with stage_run(stage, "cecl", root=tmp_path) as run:
            run.log_metrics({"selected_test_unbiased_accuracy": 0.739})
            digests[stage] = run.record_outputs(out)
    tracked = finished_stage_runs("cecl", tmp_path)
    with mlflow_ui(tmp_path / "mlflow.db") as base:
        pages = write_run_pages(tmp_path / "reports", [STAGES, [OTHER]], digests, tracked, base)
        with headless_chromium(1600, 1400) as driver:
            driver.get(pages[0].as_uri())
            text = _wait_for(driver, STAGES)
            assert "/compare-runs" in driver.current_url, driver.current_url
            assert all(stage in text for stage in STAGES), text[:2000]
            assert OTHER not in text
            driver.get(pages[1].as_uri())
            text = _wait_for(driver, [OTHER, "selected_test_unbiased_accuracy"])
            assert f"/runs/{tracked[OTHER][0].run_id}" in driver.current_url, driver.current_url
            assert OTHER in text and "selected_test_unbiased_accuracy" in text, text[:2000]
