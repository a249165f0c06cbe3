"""MLflow tracking: run names, tags, params, per-epoch metric steps, failures, fail-fast checks."""

from __future__ import annotations

import socket

import pytest
from mlflow.tracking import MlflowClient

from cecl.io import tree_digest
from cecl.runs import RunKey
from cecl.tracking import (
    NoRun,
    RunLogger,
    TrackingUnavailable,
    check_reachable,
    finished_stage_runs,
    flatten,
    stage_run,
    tracking_uri,
)


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
    key = RunKey("bmnist_rho95", "cecl", 0)
    stage = key.stage()
    tags = {**key.tags(), "device": "cpu"}
    with stage_run(stage, "exp", {"pretrain": {"epochs": 2}}, tags, root=tmp_path) as run:
        for epoch in (1, 2):
            run.log_metrics({"train_loss": 1.0 / epoch}, step=epoch)
        artifact = tmp_path / "history.csv"
        artifact.write_text("epoch\n1\n")
        run.log_artifact(artifact)
        run.set_tags({"best_epoch": 2})
    client = MlflowClient(sqlite_uri)
    logged = client.get_run(run.run_id)
    assert logged.info.run_name == stage == "pretrain@bmnist_rho95-cecl-0"
    assert logged.info.status == "FINISHED"
    assert logged.data.tags["dvc_stage"] == stage
    assert logged.data.tags["dataset"] == "bmnist_rho95" and logged.data.tags["method"] == "cecl"
    assert logged.data.tags["seed"] == "0" and logged.data.tags["best_epoch"] == "2"
    assert "git_commit" in logged.data.tags
    assert logged.data.params["pretrain.epochs"] == "2"
    assert [m.step for m in client.get_metric_history(run.run_id, "train_loss")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["history.csv"]


def test_run_logger_knows_its_experiment(tmp_path, sqlite_uri) -> None:
    with stage_run("probe@bmnist_rho95-cecl-0", "exp", root=tmp_path) as run:
        pass
    with stage_run("probe@bmnist_rho95-cecl-1", "exp", root=tmp_path) as second:
        pass
    with stage_run("other", "another-exp", root=tmp_path) as third:
        pass
    client = MlflowClient(sqlite_uri)
    experiment = client.get_experiment_by_name("exp")
    assert isinstance(run, RunLogger) and run.experiment_id == experiment.experiment_id
    assert client.get_run(run.run_id).info.experiment_id == run.experiment_id
    assert second.experiment_id == run.experiment_id  # the experiment is found, not created twice
    assert third.experiment_id != run.experiment_id
    assert third.experiment_id == client.get_experiment_by_name("another-exp").experiment_id
    assert run.run_id != second.run_id
    # root is not the working directory here: artifacts go next to the database, at an absolute location
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_artifacts_survive_moving_the_repository(tmp_path, monkeypatch) -> None:
    """Stages run at the repository root: the artifact location is stored relative, so a move keeps it."""
    first, moved = tmp_path / "first", tmp_path / "moved"
    first.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first / 'mlflow.db'}")
    monkeypatch.chdir(first)
    (first / "a.txt").write_text("a")
    with stage_run("pretrain@x-cecl-0", "exp") as run:
        run.log_artifact(first / "a.txt")
    monkeypatch.chdir(tmp_path)
    first.rename(moved)
    monkeypatch.chdir(moved)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{moved / 'mlflow.db'}")
    (moved / "b.txt").write_text("b")
    with stage_run("probe@x-cecl-0", "exp") as later:
        later.log_artifact(moved / "b.txt")
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    assert client.get_experiment_by_name("exp").artifact_location == "mlartifacts"
    assert [f.path for f in client.list_artifacts(run.run_id)] == ["a.txt"]  # written before the move
    assert [f.path for f in client.list_artifacts(later.run_id)] == ["b.txt"]
    assert (moved / "mlartifacts" / later.run_id / "artifacts" / "b.txt").is_file()
    assert not first.exists()


def test_finished_stage_runs_by_stage_with_their_output_digests(tmp_path, sqlite_uri) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.json").write_text("{}")
    with stage_run("probe@x-cecl-0", "exp", root=tmp_path) as older:
        older.record_outputs(out)
    with stage_run("probe@x-cecl-0", "exp", root=tmp_path) as newer:
        digest = newer.record_outputs(out)
    with pytest.raises(RuntimeError), stage_run("probe@x-cecl-1", "exp", root=tmp_path):
        raise RuntimeError("failed")
    found = finished_stage_runs("exp", tmp_path)
    assert set(found) == {"probe@x-cecl-0"}  # failed runs are not provenance
    assert [r.run_id for r in found["probe@x-cecl-0"]] == [newer.run_id, older.run_id]  # newest first
    assert {r.outputs_sha256 for r in found["probe@x-cecl-0"]} == {digest}
    assert digest == tree_digest(out)
    assert finished_stage_runs("no-such-experiment", tmp_path) == {}


def test_tree_digest_follows_names_and_bytes(tmp_path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a").write_bytes(b"1")
    (tmp_path / "d" / "sub" / "b").write_bytes(b"2")
    before = tree_digest(tmp_path / "d")
    assert tree_digest(tmp_path / "d") == before
    (tmp_path / "d" / "sub" / "b").write_bytes(b"3")
    assert tree_digest(tmp_path / "d") != before
    (tmp_path / "d" / "sub" / "b").write_bytes(b"2")
    (tmp_path / "d" / "sub" / "b").rename(tmp_path / "d" / "sub" / "c")
    assert tree_digest(tmp_path / "d") != before


def test_no_run_is_silent(tmp_path) -> None:
    quiet = NoRun()
    quiet.log_metrics({"loss": 1.0}, step=1)
    quiet.log_artifact(tmp_path / "missing.csv")
    quiet.set_tags({"a": 1})
    (tmp_path / "f").write_text("x")
    assert quiet.record_outputs(tmp_path / "f") == tree_digest(tmp_path / "f")


def test_tracking_uri_defaults_to_sqlite_at_the_root(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert tracking_uri(tmp_path) == "http://example:5000"


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


def test_experiment_is_tagged_as_model_training(tmp_path) -> None:
    """MLflow 3's UI opens an untagged experiment on its GenAI overview instead of the training runs."""
    from mlflow.tracking import MlflowClient

    from cecl.tracking import stage_run

    with stage_run("prepare@x", "kind-test", root=tmp_path):
        pass
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = client.get_experiment_by_name("kind-test").tags
    assert tags.get("mlflow.experimentKind") == "custom_model_development"


def test_an_abandoned_running_run_is_closed_when_the_stage_runs_again(tmp_path, sqlite_uri) -> None:
    """A stage killed with SIGKILL leaves its run RUNNING; the rerun ends it FAILED, tagged as killed
    (a run ends FINISHED or FAILED only), and leaves other stages' runs untouched."""
    stage, other = "pretrain@bm-cecl-0", "pretrain@bm-ce-0"
    with stage_run(stage, "exp", root=tmp_path) as first:
        pass
    client = MlflowClient(sqlite_uri)
    killed = client.create_run(first.experiment_id, tags={"dvc_stage": stage}).info.run_id
    busy = client.create_run(first.experiment_id, tags={"dvc_stage": other}).info.run_id
    with stage_run(stage, "exp", root=tmp_path) as rerun:
        assert client.get_run(killed).info.status == "FAILED"
    assert "later run" in client.get_run(killed).data.tags["closed_by"]
    assert client.get_run(killed).data.tags["cecl.end_reason"] == "killed"
    assert client.get_run(busy).info.status == "RUNNING"
    assert client.get_run(rerun.run_id).info.status == "FINISHED"


def test_a_server_that_dies_after_the_health_check_fails_the_stage_fast(monkeypatch, capsys) -> None:
    """Healthy at start, then every API call is dropped: one line and exit 2 within 30 s, not minutes."""
    import http.server
    import threading
    import time

    from cecl.cli import run_stage

    class HealthOnly(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")
            else:  # the server "dies": the connection closes without an answer
                self.close_connection = True

        do_POST = do_GET

        def log_message(self, *args) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthOnly)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)  # the stage's own limits apply
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")

    def body() -> None:
        with stage_run("probe@bm-cecl-0", "exp"):
            raise AssertionError("the run must not open")

    started = time.perf_counter()
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_stage("probe@bm-cecl-0", body)
    finally:
        server.shutdown()
    assert time.perf_counter() - started < 30
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: probe@bm-cecl-0: ")


def test_log_curve_logs_every_step_of_every_metric_in_one_batch(tmp_path, sqlite_uri) -> None:
    rows = [{"epoch": e, "val_accuracy": 0.1 * e, "test_accuracy": 0.2 * e} for e in (1, 2, 3)]
    with stage_run("probe@x-cecl-0", "exp", root=tmp_path) as run:
        run.log_curve(rows)
    client = MlflowClient(sqlite_uri)
    for key in ("val_accuracy", "test_accuracy"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, key))
        assert history == [(r["epoch"], pytest.approx(r[key])) for r in rows]


def test_an_interrupted_sweeps_open_trial_runs_end_failed(tmp_path, sqlite_uri) -> None:
    """A sweep interrupted mid-trial (cecl/tune/sink.py ``abandon``): the unfinished trial's child run ends
    FAILED with ``cecl.end_reason=interrupted`` (never KILLED or RUNNING); a finished trial keeps its end."""
    from cecl.tune.sink import TrialRuns

    with stage_run("sweep", "exp", root=tmp_path) as parent:
        runs = TrialRuns(parent.run_id, sqlite_uri, {}, root=tmp_path)
        done, open_ = {"method": "cecl", "temperature": 0.1}, {"method": "cecl", "temperature": 0.5}
        client = MlflowClient(sqlite_uri)
        client.set_terminated(runs.run_id(done), "FINISHED")
        runs.finished.add(("cecl", 0.1, None))
        cut = runs.run_id(open_)
        runs.abandon()
    assert client.get_run(cut).info.status == "FAILED"
    assert client.get_run(cut).data.tags["cecl.end_reason"] == "interrupted"
    assert client.get_run(runs.runs[("cecl", 0.1, None)]).info.status == "FINISHED"
    assert "cecl.end_reason" not in client.get_run(runs.runs[("cecl", 0.1, None)]).data.tags
