"""The whole DVC pipeline on a tiny synthetic configuration: real DVC, real MLflow, real torch.

Runs `dvc repro` in a fresh git+DVC copy of the project, then `dvc exp run -S tune.epochs=2`
and checks that only tune and what depends on it (evaluate, finetune, report) re-ran.
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
                 "metrics/evaluate.json", "metrics/finetune.json", "metrics/preprocess_target.json",
                 "models/pretrain/last.pt", "models/tune/last.pt",
                 "models/finetune/stars/transfer/last.pt",
                 "reports/report.html", "reports/report.md", "plots/tune/curves.csv"):
        assert (repo / path).is_file(), path
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev["mamp"]) == set(ev["stars"])
    assert set(ev["delta"]) <= set(ev["mamp"])
    ft = json.loads((repo / "metrics/finetune.json").read_text())
    for model in ("mamp", "stars"):
        assert set(ft[model]) == {"full", "semi", "transfer"}
        assert set(ft[model]["semi"]) == {"0.5", "1"}
        assert set(ft[model]["semi"]["0.5"]["runs"]) == {"seed0", "seed1"}
    assert ft["transfer_target"]["classes"] == 3       # read through the PKU-MMD reader


@pytest.mark.slow
def test_each_stage_logged_one_mlflowrun(project):
    from mlflow.tracking import MlflowClient

    repo, _ = project
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("stars")
    runs = client.search_runs([exp.experiment_id])
    stages = sorted(r.data.tags["stage"] for r in runs)
    assert stages == ["evaluate", "finetune", "preprocess", "preprocess_target", "pretrain",
                      "report", "synthesize", "synthesize_target", "tune"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_exp_run_with_new_tune_epochs_reruns_only_tune_and_downstream(project):
    repo, env = project
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tune.epochs=2"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"inputs", "tune", "evaluate", "finetune", "report"}   # inputs always runs
    tune = json.loads((repo / "metrics/tune.json").read_text())
    assert len(tune["val_knn_curve"]) == 2
    assert json.loads((repo / "metrics/timing.json").read_text())["tune"]["epochs"] == 2
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
    assert "tune.epochs" in shown or '"epochs": 2' in shown


@pytest.mark.slow
def test_two_process_stages_reproduce_the_one_process_pretraining_curve(project):
    """`dist.nproc=2` relaunches pretrain, tune and finetune under torchrun (gloo); the global
    batch is unchanged, so the pretraining loss curve matches the 1-process run (rtol 1e-4),
    and fine-tuning draws the same labelled subsets."""
    import pandas as pd

    from pipeline.training import checkpoint

    repo, env = project
    one = pd.read_csv(repo / "plots/pretrain/loss.csv")
    subset = repo / "models/finetune/stars/semi_0.5_seed1/last.pt"
    rows_one = checkpoint.load(subset)["config"]["rows"]
    for stage in ("pretrain", "tune"):  # persisted checkpoints would otherwise be resumed
        shutil.rmtree(repo / "models" / stage)
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "dist.nproc=2"], repo, env)
    assert "Running stage 'pretrain'" in out and "Running stage 'tune'" in out
    two = pd.read_csv(repo / "plots/pretrain/loss.csv")
    timing = json.loads((repo / "metrics/timing.json").read_text())
    assert timing["pretrain"]["processes"] == 2 and timing["tune"]["processes"] == 2
    assert timing["finetune"]["processes"] == 2
    # the semi-supervised subset does not depend on the number of processes
    assert checkpoint.load(subset)["config"]["rows"] == rows_one
    assert list(two["epoch"]) == list(one["epoch"])
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=1e-4)
