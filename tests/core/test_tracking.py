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


# --------------------------------------------------------------------------- names

HOSTILE = ["frame count (integer >= 0)", "/leading/slash", "a/../b", "..", ".", "../up",
           "a//b/", "données/état", "tab\tand\nnewline", "x" * 400, "x" * 400 + "y",
           "quote'and\"double", "", "a/./b", "emoji 🚀 name", "..hidden"]


def test_safe_name_makes_every_hostile_name_valid_for_mlflow():
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    from pipeline.core.tracking import safe_name

    for name in HOSTILE:
        clean = safe_name(name)
        _validate_metric_name(clean)
        _validate_param_name(clean)
        assert len(clean) <= 250
    assert safe_name("tune/val_knn") == "tune/val_knn"       # valid names are untouched
    assert safe_name("x" * 400) != safe_name("x" * 400 + "y")  # cut names stay distinct


# One SQLite store for the tests below (creating one costs seconds); each test logs to an
# experiment named after itself.


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    (root / "dvc.yaml").write_text("stages:\n  tune:\n    params: [tune, model]\n")
    return root


@pytest.fixture
def store(shared_store, monkeypatch):
    monkeypatch.chdir(shared_store)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    return shared_store


@pytest.fixture
def params(request):
    """Params (overrides as a dict) logging to this test's own experiment."""
    def make(**raw):
        return parse_params({**raw, "tracking": {"experiment": request.node.name}})
    return make


def _client(root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri(None, root))


def _runs(root, experiment):
    client = _client(root)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_hostile_metric_and_param_names_are_logged_to_a_real_store(store, params):
    values = {name: float(i) for i, name in enumerate(HOSTILE)}
    with start_run("preprocess", params()) as tracker:
        tracker.log_metrics({"skipped": {"by_reason": values}})
        tracker.log_params({"weird": {n: "v" for n in HOSTILE}})
        run_id = tracker.run_id
    run = _client(store).get_run(run_id)
    assert run.info.status == "FINISHED"
    logged = {k for k in run.data.metrics if k.startswith("skipped.by_reason.")}
    assert len(logged) == len(HOSTILE)   # none lost, none merged
    assert "skipped.by_reason.frame count _integer __ 0_" in logged
    assert len([k for k in run.data.params if k.startswith("weird.")]) == len(HOSTILE)


# --------------------------------------------------------------------------- run lifecycle


def test_a_stage_that_logs_nothing_leaves_no_run(store, params, request):
    with start_run("report", params()):
        pass
    assert _runs(store, request.node.name) == []
    # ... and the experiment opens in MLflow 3's model-training view
    experiment = _client(store).get_experiment_by_name(request.node.name)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_run_name_says_which_params_the_stage_reads_differ_from_the_defaults(store, params):
    with start_run("tune", params(tune={"epochs": 2}, pretrain={"epochs": 3})) as tracker:
        run_id = tracker.run_id
    assert _client(store).get_run(run_id).info.run_name == "tune · tune.epochs=2"
    with start_run("tune", params()) as tracker:
        run_id = tracker.run_id
    assert _client(store).get_run(run_id).info.run_name == "tune · defaults"


def test_interrupted_stage_ends_killed_and_a_resumed_one_continues_its_run(store, params,
                                                                          request):
    with pytest.raises(KeyboardInterrupt), start_run("tune", params()) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        first = tracker.run_id
        raise KeyboardInterrupt
    client = _client(store)
    assert client.get_run(first).info.status == "KILLED"
    with start_run("tune", params()) as tracker:
        tracker.resume(first)
        tracker.log_metrics({"loss": 0.5}, step=1)
        assert tracker.run_id == first
    assert [m.value for m in client.get_metric_history(first, "loss")] == [1.0, 0.5]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(_runs(store, request.node.name)) == 1


@pytest.mark.slow
def test_runs_left_running_by_a_dead_process_are_failed_on_the_next_start(store, params,
                                                                         request):
    import subprocess
    import sys

    code = ("import os, signal, sys; from pipeline.core.config import parse_params; "
            "from pipeline.core.tracking import start_run\n"
            "p = parse_params({'tracking': {'experiment': sys.argv[1]}})\n"
            "with start_run('pretrain', p) as t:\n"
            "    print(t.run_id, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    out = subprocess.run([sys.executable, "-c", code, request.node.name], cwd=store,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == -9, out.stderr[-2000:]
    killed = out.stdout.strip()
    client = _client(store)
    assert client.get_run(killed).info.status == "RUNNING"
    with start_run("tune", params()) as live:          # another stage: left alone
        live.log_metrics({"x": 1})
        with start_run("pretrain", params()):          # the same stage: the dead run fails
            pass
        assert client.get_run(live.run_id).info.status == "RUNNING"  # alive: untouched
    assert client.get_run(killed).info.status == "FAILED"


# --------------------------------------------------------------------------- broken stores


def test_corrupt_store_is_one_line(tmp_path, monkeypatch):
    from pipeline.core.tracking import check_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match=r"mlflow.db: the MLflow store is corrupt .*move it aside"):
        check_store(f"sqlite:///{db}")
    with pytest.raises(UserError, match="corrupt"), start_run("tune", parse_params({})):
        pass


def test_read_only_store_is_one_line(tmp_path):
    import os
    import sqlite3

    from pipeline.core.tracking import check_store

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()
    db.chmod(0o444)
    try:
        if os.access(db, os.W_OK):
            pytest.skip("running as root: file permissions are not enforced")
        with pytest.raises(UserError, match="mlflow.db: the MLflow store is read-only"):
            check_store(f"sqlite:///{db}")
    finally:
        db.chmod(0o644)


# --------------------------------------------------------------------------- models


@pytest.mark.slow
def test_logged_model_its_dataset_and_linked_metrics(store, params):
    import numpy as np
    import torch

    module = torch.nn.Linear(3, 2)
    example = np.zeros((2, 3), np.float32)
    with start_run("pretrain", params()) as tracker:
        tracker.log_dataset(store, "tiny", "abc123", "train")
        model_id = tracker.log_model(module, "mamp-encoder", example, step=0,
                                     tags={"checkpoint_sha256": "f00"})
    with start_run("evaluate", params()) as tracker:
        assert tracker.find_model(checkpoint_sha256="f00") == model_id
        assert tracker.find_model(checkpoint_sha256="other") is None
        tracker.log_metrics({"mamp/knn": 0.5}, model_id=model_id)
    client = _client(store)
    model = client.get_logged_model(model_id)
    assert model.name == "mamp-encoder"
    assert model.params["tune.epochs"] == str(params().tune.epochs)
    assert [(m.key, m.value) for m in model.metrics] == [("mamp/knn", 0.5)]
    run = client.get_run(model.source_run_id)
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("tiny", "abc123")
