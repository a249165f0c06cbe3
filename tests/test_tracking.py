"""MLflow tracking: run names, tags, params, per-epoch metric steps, failures, fail-fast checks."""

from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient

from cecl.tracking import TrackingUnavailable, check_reachable, flatten, stage_run


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_with_one_line() -> None:
    with pytest.raises(TrackingUnavailable, match="unreachable") as info:
        check_reachable(f"http://127.0.0.1:{_closed_port()}", timeout_s=2)
    assert "\n" not in str(info.value)


def test_missing_database_folder_and_file_store_are_rejected(tmp_path) -> None:
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        check_reachable(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailable, match="file store"):
        check_reachable("./mlruns")


def test_stage_run_logs_name_tags_params_and_steps(tmp_path, sqlite_uri) -> None:
    tags = {"dataset": "biased_mnist", "method": "cecl", "seed": 0, "device": "cpu"}
    with stage_run("pretrain@0.99-cecl", "exp", {"pretrain": {"epochs": 2}}, tags, root=tmp_path) as run:
        for epoch in (1, 2):
            run.log_metrics({"train_loss": 1.0 / epoch}, step=epoch)
        artifact = tmp_path / "history.csv"
        artifact.write_text("epoch\n1\n")
        run.log_artifact(artifact)
    client = MlflowClient(sqlite_uri)
    logged = client.get_run(run.run_id)
    assert logged.info.run_name == "pretrain@0.99-cecl"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["dvc_stage"] == "pretrain@0.99-cecl"
    assert logged.data.tags["method"] == "cecl"
    assert "git_commit" in logged.data.tags
    assert logged.data.params["pretrain.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["history.csv"]


def test_failed_body_marks_run_failed_and_children_nest(tmp_path, sqlite_uri) -> None:
    with stage_run("sweep", "exp", root=tmp_path) as parent:
        pass
    with (
        pytest.raises(RuntimeError),
        stage_run("trial", "exp", root=tmp_path, parent_run_id=parent.run_id) as child,
    ):
        raise RuntimeError("boom")
    client = MlflowClient(sqlite_uri)
    logged = client.get_run(child.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["mlflow.parentRunId"] == parent.run_id


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
