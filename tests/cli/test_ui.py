"""`make ui`: the real MLflow server over a real SQLite store, queried through its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.cli.ui import check_bind_env, main, serve, ui_command
from pipeline.core.errors import UserError
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_ui_command_binds_localhost_with_one_worker():
    cmd = ui_command("sqlite:////x/mlflow.db", "127.0.0.1", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    for flag, value in (("--backend-store-uri", "sqlite:////x/mlflow.db"),
                        ("--host", "127.0.0.1"), ("--port", "5123"), ("--workers", "1")):
        assert cmd[cmd.index(flag) + 1] == value


def test_serve_without_a_store_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="no MLflow store at .*mlflow.db: run the pipeline first"):
        serve(tmp_path, port=free_port())


def test_serve_on_a_busy_port_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1:.*another port"):
            serve(tmp_path, port=busy.getsockname()[1])


@pytest.mark.parametrize("var, value", [
    ("MLFLOW_UVICORN_OPTS", "--host 0.0.0.0"), ("MLFLOW_UVICORN_OPTS", "--uds /tmp/x.sock"),
    ("MLFLOW_GUNICORN_OPTS", "-b 0.0.0.0:80"), ("MLFLOW_GUNICORN_OPTS", "--bind=0.0.0.0:80"),
    ("MLFLOW_GUNICORN_OPTS", "-b0.0.0.0:80"), ("MLFLOW_WAITRESS_OPTS", "--listen=*:80")])
def test_binds_smuggled_through_server_options_are_refused(tmp_path, monkeypatch, capsys,
                                                           var, value):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.db").touch()
    monkeypatch.setenv(var, value)
    with pytest.raises(UserError, match=f"{var} sets where the UI listens"):
        serve(tmp_path, port=free_port())       # also when --host was given
    assert main(["--params", str(tmp_path / "params.yaml")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {var} sets where the UI listens")


def test_harmless_server_options_pass():
    check_bind_env({"MLFLOW_UVICORN_OPTS": "--timeout-keep-alive 5", "MLFLOW_HOST": "::1"})


def test_a_non_loopback_host_needs_an_explicit_host_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HOST", "0.0.0.0")
    assert main(["--params", str(tmp_path / "params.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: MLFLOW_HOST=0.0.0.0 would expose the UI beyond this machine; unset it, or "
        "pass --host 0.0.0.0 explicitly if you mean it")


def test_port_must_be_an_integer(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "5000; echo pwned"])
    assert exit_.value.code == 2
    assert "argument --port: invalid int value" in capsys.readouterr().err


def test_corrupt_store_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / "mlflow.db").write_bytes(b"garbage" * 200)
    assert main(["--params", str(tmp_path / "params.yaml"), "--port", str(free_port())]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {tmp_path}/mlflow.db: the MLflow store is corrupt")


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True,
                         check=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(out[::2], out[1::2]):
        children.setdefault(int(parent), []).append(int(child))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


@pytest.mark.slow
def test_ui_serves_the_projects_experiment_and_run_over_rest(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("stars",
                                             artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(experiment_id, tags={"stage": "evaluate"}).info.run_id
    client.log_metric(run_id, "knn_top1_k1", 72.5)

    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    code = f"from pipeline.cli.ui import serve; serve({str(tmp_path)!r}, port={port})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # own process group: stopped as one below
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "MLflow UI did not answer within 60 s"
                time.sleep(0.5)
        time.sleep(3)   # let anything the server starts in the background start
        processes = _tree(proc.pid)
        print(f"make ui: {len(processes)} processes, {_rss_mb(processes):.0f} MB RSS")
        assert len(processes) == 2   # the mlflow launcher and one uvicorn worker, no job runner
        experiments = _post(f"{base}/api/2.0/mlflow/experiments/search", {"max_results": 10})
        assert "stars" in {e["name"] for e in experiments["experiments"]}
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})
        (run,) = runs["runs"]
        assert run["info"]["run_id"] == run_id
        assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"knn_top1_k1": 72.5}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (f"MLflow UI for sqlite:///{tmp_path}/mlflow.db: runs at "
            f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            ) in proc.stdout.read()
