"""The whole DVC pipeline on a tiny synthetic configuration: real DVC, real MLflow, real torch.

Runs `dvc repro` in a fresh git+DVC copy of the project, then `dvc exp run -S tune.epochs=2`
and checks that only tune and what depends on it re-ran.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.project import make_project, run


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("project")
    env = make_project(repo)
    run([sys.executable, "-m", "dvc", "repro"], repo, env)
    return repo, env


@pytest.mark.slow
def test_repro_writes_every_stage_output(project):
    repo, _ = project
    for path in ("metrics/preprocess.json", "metrics/pretrain.json", "metrics/tune.json",
                 "metrics/evaluate.json", "models/pretrain/last.pt", "models/tune/last.pt",
                 "reports/report.html", "reports/report.md", "plots/tune/curves.csv"):
        assert (repo / path).is_file(), path
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev["mamp"]) == set(ev["stars"])
    assert set(ev["delta"]) <= set(ev["mamp"])


@pytest.mark.slow
def test_each_stage_logged_one_mlflowrun(project):
    from mlflow.tracking import MlflowClient

    repo, _ = project
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("stars")
    runs = client.search_runs([exp.experiment_id])
    stages = sorted(r.data.tags["stage"] for r in runs)
    assert stages == ["evaluate", "preprocess", "pretrain", "report", "synthesize", "tune"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_exp_run_with_new_tune_epochs_reruns_only_tune_and_downstream(project):
    repo, env = project
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tune.epochs=2"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"inputs", "tune", "evaluate", "report"}   # inputs always runs (a stat walk)
    tune = json.loads((repo / "metrics/tune.json").read_text())
    assert len(tune["val_knn_curve"]) == 2
    assert json.loads((repo / "metrics/timing.json").read_text())["tune"]["epochs"] == 2
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
    assert "tune.epochs" in shown or '"epochs": 2' in shown


@pytest.mark.slow
def test_two_process_stages_reproduce_the_one_process_pretraining_curve(project):
    """`dist.nproc=2` relaunches pretrain and tune under torchrun (gloo); the global batch is
    unchanged, so the pretraining loss curve matches the 1-process run (rtol 1e-4)."""
    import pandas as pd

    repo, env = project
    one = pd.read_csv(repo / "plots/pretrain/loss.csv")
    for stage in ("pretrain", "tune"):  # persisted checkpoints would otherwise be resumed
        shutil.rmtree(repo / "models" / stage)
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "dist.nproc=2"], repo, env)
    assert "Running stage 'pretrain'" in out and "Running stage 'tune'" in out
    two = pd.read_csv(repo / "plots/pretrain/loss.csv")
    timing = json.loads((repo / "metrics/timing.json").read_text())
    assert timing["pretrain"]["processes"] == 2 and timing["tune"]["processes"] == 2
    assert list(two["epoch"]) == list(one["epoch"])
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=1e-4)
