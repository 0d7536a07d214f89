"""MLflow facade: one run per stage on a real SQLite store, params and batched metrics."""

import time

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import UserError
from pipeline.core.tracking import NullTracker, check_reachable, repo_root, start_run, tracking_uri


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_default_store_is_absolute_sqlite_uri_in_repo_root(repo):
    (repo / "sub").mkdir()
    assert repo_root(repo / "sub") == repo
    assert tracking_uri(None, repo) == f"sqlite:///{repo}/mlflow.db"


def test_dvc_root_wins_so_temp_experiments_log_to_the_parent_store(repo, monkeypatch, tmp_path_factory):
    parent = tmp_path_factory.mktemp("parent")
    monkeypatch.setenv("DVC_ROOT", str(parent))
    assert tracking_uri() == f"sqlite:///{parent}/mlflow.db"


def test_env_uri_overrides_params(repo, monkeypatch):
    params = parse_params({"tracking": {"uri": "sqlite:////x/from-params.db"}})
    assert tracking_uri(params.tracking) == "sqlite:////x/from-params.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/from-env.db")
    assert tracking_uri(params.tracking) == "sqlite:////x/from-env.db"


def test_unreachable_server_fails_fast_with_a_clear_message():
    start = time.monotonic()
    with pytest.raises(UserError, match="unreachable.*tracking.enabled: false"):
        check_reachable("http://127.0.0.1:9", timeout=2)
    assert time.monotonic() - start < 5


def test_disabled_tracking_is_a_null_tracker(repo):
    params = parse_params({"tracking": {"enabled": False}})
    with start_run("tune", params) as tracker:
        assert isinstance(tracker, NullTracker)
    assert not (repo / "mlflow.db").exists()


def test_stage_run_logs_params_tags_and_per_epoch_metrics(repo, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    params = parse_params({"tune": {"epochs": 3}})
    with start_run("tune", params) as tracker:
        for epoch in range(3):
            tracker.log_metrics({"loss": 1.0 / (epoch + 1), "nested": {"acc": 0.5}}, step=epoch)
        run_id = tracker.run_id
    client = MlflowClient(tracking_uri(None, repo))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["tune.epochs"] == "3"
    assert run.data.tags["stage"] == "tune" and run.data.tags["dvc_exp_name"] == "exp-abc"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.metrics["nested.acc"] == 0.5


def test_failed_stage_marks_run_failed(repo):
    from mlflow.tracking import MlflowClient

    params = parse_params({})
    with pytest.raises(RuntimeError), start_run("pretrain", params) as tracker:
        run_id = tracker.run_id
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri(None, repo)).get_run(run_id).info.status == "FAILED"
