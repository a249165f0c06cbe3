"""From a table cell to its MLflow runs in one click, and which metric a run reports.

report.md's cells link to runs/<cell>.html pages that forward to MLflow's compare page of the cell's runs
(cecl/report/runlinks.py); the docs' tables link through docs/measurements/mlflow-runs.json, written from
a real MLflow store here (cecl/docs_blocks.py record_runs). The URLs are decoded independently (urllib,
json) and compared with the run ids the store itself returns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from cecl import docs_blocks
from cecl.report import build_report
from cecl.report.html import write_html_report
from cecl.report.runlinks import MAX_NAME, page_name, runs_url
from cecl.runs import FloorKey, RunKey, TransferKey
from cecl.tracking import REPORTED_TAG, stage_run
from tests.committed import committed_tree
from tests.test_report import (
    BMNIST,
    FMNIST,
    floor_keys,
    make_tree,
    markdown_rows,
    run_id,
    tracked_runs,
    write_lock,
)

ROOT = Path(__file__).resolve().parents[1]
UI = "http://mlflow.example:5000"
REFRESH = re.compile(r'<meta http-equiv="refresh" content="0; url=([^"]+)">')


def _target(page: Path) -> str | None:
    """The URL a run page forwards to (HTML-unescaped), or None."""
    import html

    found = REFRESH.search(page.read_text(encoding="utf-8"))
    return html.unescape(found.group(1)) if found else None


def _compare(url: str) -> tuple[list[str], list[str]]:
    """(run ids, experiment ids) of an MLflow compare-runs URL, decoded with urllib and json."""
    fragment = urlsplit(url).fragment
    route, _, query = fragment.partition("?")
    assert route == "/compare-runs", url
    fields = parse_qs(query)
    return json.loads(fields["runs"][0]), json.loads(fields["experiments"][0])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], list[RunKey]]:
    root = tmp_path_factory.mktemp("links")
    runs, transfers = make_tree(root, floors=True)
    write_lock(root, runs)
    paths = build_report(
        runs,
        transfers,
        root,
        root / "reports",
        mlflow_ui=UI,
        tracked=tracked_runs(root, runs, transfers),
        floors=floor_keys(),
    )
    return root, paths, runs


def _cell_link(report_md: str, section: str, row: str, column: int) -> str:
    text = report_md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    _, rows = markdown_rows(text)
    found = re.fullmatch(r"\[(.+)\]\((.+)\)", rows[row][column])
    assert found, f"{section} {row}: cell {rows[row][column]!r} is not a link"
    return found.group(2)


def test_a_cell_opens_the_compare_page_of_its_seeds_runs(report) -> None:
    root, paths, _ = report
    text = paths["report"].read_text()
    stages = [RunKey(BMNIST, "cecl", seed).stage("probe") for seed in (0, 1, 2)]
    href = _cell_link(text, "Bias benchmarks", "cecl", 1)
    assert unquote(href) == f"runs/probe@{BMNIST}-cecl-0,1,2.html"
    assert _cell_link(text, "Bias benchmarks", "cecl", 2) == href  # both metrics come from these runs
    page = root / "reports" / unquote(href)
    runs, experiments = _compare(_target(page))
    assert runs == [run_id(stage) for stage in stages] and experiments == ["7"]  # newest run, seed order
    assert urlsplit(_target(page)).netloc == "mlflow.example:5000"


def test_transfer_cells_link_their_transfer_runs(report) -> None:
    root, paths, _ = report
    href = _cell_link(paths["report"].read_text(), "Evaluation protocol", "supcon", -1)
    runs, experiments = _compare(_target(root / "reports" / unquote(href)))
    assert runs == [run_id(TransferKey(BMNIST, FMNIST, "supcon", s).stage()) for s in (0, 1, 2)]
    assert experiments == ["8"]


def test_a_cell_whose_runs_are_not_in_the_store_says_so_and_forwards_nowhere(report) -> None:
    root, paths, _ = report
    href = _cell_link(paths["report"].read_text(), "Bias benchmarks", "floor: raw pixels", 1)
    page = root / "reports" / unquote(href)
    assert unquote(href) == f"runs/{FloorKey(BMNIST, 'pixels').stage()}.html"
    assert _target(page) is None
    assert "no run of this stage in this MLflow store" in page.read_text()


def test_report_md_is_the_same_bytes_whatever_the_store_holds(report, tmp_path: Path) -> None:
    root, paths, runs = report
    keys = [TransferKey(BMNIST, FMNIST, m, s) for m in ("ce", "simclr", "supcon", "cecl") for s in (0, 1, 2)]
    stale = tmp_path / "out" / "runs" / "probe@gone-cecl-0.html"  # a cell of an earlier report
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    again = build_report(runs, keys, root, tmp_path / "out", mlflow_ui=UI, tracked=None, floors=floor_keys())
    assert not stale.exists()
    assert again["report"].read_bytes() == paths["report"].read_bytes()
    page = next(p for k, p in again.items() if k.startswith("runs_"))
    assert _target(page) is None and "not logged" in page.read_text()


def test_every_run_link_of_report_html_resolves_to_a_page(report) -> None:
    root, paths, _ = report
    page = write_html_report(paths["report"])
    hrefs = re.findall(r'href="(runs/[^"]+)"', page.read_text())
    assert len(hrefs) >= 20
    assert all((root / "reports" / unquote(href)).is_file() for href in hrefs)


def test_one_run_opens_its_own_page_and_long_names_stay_short() -> None:
    assert runs_url(UI, [("abc", "3")]) == f"{UI}/#/experiments/3/runs/abc"
    many = [f"probe@a_long_entry_name-cecl-{seed}" for seed in range(200)]
    assert len(page_name(many)) <= MAX_NAME + len(".html")
    assert page_name(many) != page_name(many[:-1])
    with pytest.raises(ValueError, match="at least one"):
        runs_url(UI, [])


# -- the docs' tables: the committed record of which run wrote each result -----------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A results tree with two methods x two seeds and a real MLflow store holding their probe runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs, _ = make_tree(
        tmp_path, datasets=(BMNIST,), methods=("supcon", "cecl"), seeds=(0, 1), transfer=False
    )
    lock = {"schema": "2.0", "stages": {key.stage("probe"): {"cmd": "x"} for key in runs}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "links"}}))
    for key in runs:
        with stage_run(key.stage("probe"), "links", root=tmp_path) as run:
            run.record_outputs(tmp_path / key.probe_dir)
    return tmp_path


def _ids_in_store(root: Path, stages: list[str]) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("links").experiment_id
    found = []
    for stage in stages:
        (run,) = client.search_runs([experiment], filter_string=f"tags.dvc_stage = '{stage}'")
        found.append(run.info.run_id)
    return found


def test_the_docs_tables_link_each_cell_to_the_runs_the_store_holds(store: Path) -> None:
    path, missing = docs_blocks.record_runs(store, UI)
    assert missing == [] and path == store / docs_blocks.RUNS_FILE
    assert docs_blocks.stale_run_records(store) == []
    table = docs_blocks.results_tables(store)
    stages = [RunKey(BMNIST, "cecl", seed).stage("probe") for seed in (0, 1)]
    _, rows = markdown_rows(table.split("\n\n", 1)[1])
    url = re.fullmatch(r"\[.+\]\((.+)\)", rows["cecl"][1]).group(1)
    runs, _ = _compare(url)
    assert runs == _ids_in_store(store, stages)
    assert "Each cell links to its seeds' MLflow runs" in table


def test_a_record_of_another_run_is_named_stale(store: Path) -> None:
    docs_blocks.record_runs(store, UI)
    key = RunKey(BMNIST, "supcon", 1)
    metrics = store / key.probe_dir / "metrics.json"
    metrics.write_text(metrics.read_text().replace("0.", "0.0", 1))  # a rerun wrote other bytes
    assert docs_blocks.stale_run_records(store) == [
        f"{key.stage('probe')}: {docs_blocks.RUNS_FILE} records a run that wrote another metrics.json"
    ]
    # its outputs changed, so its run no longer matches: the record leaves it out, its cell unlinked
    _, missing = docs_blocks.record_runs(store, UI)
    assert missing == [f"{key.stage('probe')}: none of this stage's 1 run(s) wrote these bytes"]
    _, rows = markdown_rows(docs_blocks.results_tables(store).split("\n\n", 1)[1])
    assert not rows["supcon"][1].startswith("[") and rows["cecl"][1].startswith("[")


def test_the_committed_record_names_the_committed_results(tmp_path: Path) -> None:
    root = committed_tree(ROOT, tmp_path / "repo", ("probe", "floors", "transfer", "dvc.lock", "docs"))
    if not (root / docs_blocks.RUNS_FILE).is_file():
        pytest.skip(f"{docs_blocks.RUNS_FILE} is not committed (make docs-results where the run's store is)")
    assert docs_blocks.stale_run_records(root) == []


# -- which number is the reported one -------------------------------------------------------------------


def test_a_run_that_logs_the_selected_metrics_names_them_as_reported(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with stage_run("probe@x-cecl-0", "exp", root=tmp_path) as probe:
        probe.log_curve(
            [{"step": 0, "test_unbiased_accuracy": 0.70}, {"step": 1, "test_unbiased_accuracy": 0.731}],
            step="step",
        )
        probe.log_metrics({"selected_test_unbiased_accuracy": 0.739, "selected_test_accuracy": 0.74})
    with stage_run("pretrain@x-cecl-0", "exp", root=tmp_path) as pretrain:
        pretrain.log_metrics({"loss": 1.0}, step=0)
    client = MlflowClient()
    tags = client.get_run(probe.run_id).data.tags
    assert tags[REPORTED_TAG] == "selected_test_accuracy, selected_test_unbiased_accuracy"
    assert "selected_test_" in tags["mlflow.note.content"] and "test_*" in tags["mlflow.note.content"]
    assert REPORTED_TAG not in client.get_run(pretrain.run_id).data.tags


def test_the_glossary_names_the_reported_metric_and_tag() -> None:
    from cecl.tracking import REPORTED_PREFIX

    text = (ROOT / "docs" / "glossary.md").read_text(encoding="utf-8")
    assert f"`{REPORTED_PREFIX}<metric>`" in text and f"`{REPORTED_TAG}`" in text
    assert "glossary.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
