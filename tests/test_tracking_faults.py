"""The pretrain stage as DVC runs it (a subprocess) under tracking faults: Ctrl-C and SIGTERM
mid-training, a resumed run, and a real MLflow server that disappears mid-training."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port
from tests.test_pretrain import TINY, write_store

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp: Path, epochs: int) -> Path:
    """A working copy with a tiny store and params for `epochs` pretraining epochs."""
    (tmp / "dvc.yaml").write_text("stages:\n  pretrain:\n    params: [model, pretrain]\n")
    (tmp / "params.yaml").write_text(yaml.safe_dump(
        {**TINY, "pretrain": {**TINY["pretrain"], "epochs": epochs}}))
    write_store(tmp / "store")
    return tmp


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


@contextlib.contextmanager
def _stage(project: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    cmd = [sys.executable, str(ROOT / "stages/pretrain.py"), "--data", "store", "--ckpt",
           "models/pretrain", "--metrics", "metrics/pretrain.json", "--plots", "plots/pretrain"]
    proc = subprocess.Popen(cmd, cwd=project, env=env, stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_epoch(proc: subprocess.Popen, epoch: int, log: list[str]) -> None:
    """Read the stage's stderr until its per-epoch summary line for `epoch` (1-based)."""
    for line in proc.stderr:
        log.append(line)
        if line.startswith(f"epoch {epoch}/") and " loss " in line:
            return
    raise AssertionError(f"the stage ended before epoch {epoch}:\n" + "".join(log[-30:]))


def _runs(project: Path, uri: str | None = None) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri or f"sqlite:///{project}/mlflow.db")
    experiment = client.get_experiment_by_name("stars")
    return client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_ctrl_c_and_sigterm_end_the_run_killed_and_a_resume_continues_it(tmp_path):
    from mlflow.tracking import MlflowClient

    project = _project(tmp_path, epochs=1000)
    log: list[str] = []
    with _stage(project, _env()) as proc:
        _wait_for_epoch(proc, 2, log)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 130
    last = rest.strip().splitlines()[-1]
    epoch = int(last.split()[3])
    assert last == (f"interrupted in epoch {epoch} of pretrain; run make repro to resume from "
                    f"epoch {epoch - 1}")
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert "it/s" not in "".join(log) + rest   # no progress bar in a log, summaries instead
    (run,) = _runs(project)
    assert run.info.status == "KILLED"

    with _stage(project, _env()) as proc:      # resumes, and continues the same run
        _wait_for_epoch(proc, epoch + 1, log)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert "Traceback" not in rest
    (again,) = _runs(project)
    assert again.info.run_id == run.info.run_id and again.info.status == "KILLED"
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == list(range(len(steps))) and len(steps) > epoch   # one curve


@contextlib.contextmanager
def _mlflow_server(store: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    env = _env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{store}", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        from pipeline.core.errors import UserError
        from pipeline.core.tracking import check_reachable

        deadline = time.monotonic() + 120
        while True:
            try:
                check_reachable(uri, timeout=2)
                break
            except UserError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.5)
        yield uri, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_a_tracking_server_lost_mid_training_costs_a_warning_not_the_run(tmp_path):
    epochs = 12
    project = _project(tmp_path, epochs=epochs)
    log: list[str] = []
    with (_mlflow_server(tmp_path / "server.db") as (uri, server),
          _stage(project, _env(MLFLOW_TRACKING_URI=uri)) as proc):
        _wait_for_epoch(proc, 3, log)
        os.killpg(server.pid, signal.SIGKILL)      # the server vanishes mid-run
        server.wait()
        lost = time.monotonic()
        rest = proc.stderr.read()
        assert proc.wait(timeout=300) == 0, rest[-3000:]
        after = time.monotonic() - lost
    warnings = [line for line in rest.splitlines() if line.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "the stage goes on" in warnings[0]
    assert "Traceback" not in rest
    assert after < 60, f"{after:.0f} s from the loss of the server to the end of the stage"
    assert "final_loss" in json.loads((project / "metrics/pretrain.json").read_text())
    assert json.loads((project / "metrics/timing.json").read_text())["pretrain"]["epochs"] == epochs
    assert len((project / "plots/pretrain/loss.csv").read_text().splitlines()) == epochs + 1

    # At start-up, an unreachable server still fails at once, with one line.
    start = time.monotonic()
    with _stage(project, _env(MLFLOW_TRACKING_URI=uri)) as proc:
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 2
    assert err.strip().startswith(f"error: MLflow tracking server {uri} is unreachable")
    assert time.monotonic() - start < 60   # mostly the interpreter's start-up
