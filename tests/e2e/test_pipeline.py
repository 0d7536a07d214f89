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
def test_each_stage_logged_one_named_mlflow_run_and_the_report_none(project):
    from mlflow.tracking import MlflowClient

    repo, _ = project
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("stars")
    runs = client.search_runs([exp.experiment_id])
    stages = sorted(r.data.tags["stage"] for r in runs)
    # The report logs into the evaluate run that produced its numbers: no run of its own.
    assert stages == ["evaluate", "finetune", "preprocess", "preprocess_target", "pretrain",
                      "synthesize", "synthesize_target", "tune"]
    assert all(r.info.status == "FINISHED" for r in runs)
    names = {r.data.tags["stage"]: r.info.run_name for r in runs}
    assert names["tune"].startswith("tune · tune.epochs=1, tune.batch_size=8")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def _results_row(report_md: str, label: str) -> dict[str, str]:
    """Cells of one row of the report's results table (markdown), by column header."""
    lines = report_md.splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    (row,) = [line for line in lines if line.startswith(f"| {label} |")]
    return dict(zip(*([c.strip() for c in line.strip("|").split("|")] for line in (header, row))))


@pytest.mark.slow
def test_an_experiments_report_shows_and_attaches_to_its_own_evaluate_run(project):
    """`dvc exp run -S tune.epochs=3`: the report's numbers are those of the evaluate run it
    is attached to (named in metrics/evaluate.json), and that run's linked STARS model is the
    tuned checkpoint's encoder."""
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.core.config import load_params
    from pipeline.eval.features import load_encoder

    repo, env = project
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tune.epochs=3"], repo, env)
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    provenance = evaluation["provenance"]
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    evaluate = client.get_run(provenance["mlflow_run_id"])
    assert evaluate.info.status == "FINISHED" and evaluate.data.tags["stage"] == "evaluate"
    assert evaluate.data.tags["dvc_exp_name"]           # the DVC experiment, as a tag

    # The report in the workspace and the one attached to the run are the same document...
    local = (repo / "reports/report.md").read_text()
    attached = Path(client.download_artifacts(evaluate.info.run_id, "report/report.md",
                                              str(repo / "downloaded"))).read_text()
    assert attached == local
    # ... and its results row shows the run's own metrics.
    row = _results_row(local, "STARS (ours)")
    linear, knn, fewshot = row["linear"], row["kNN k=1"], row["few-shot (kNN k=1, novel classes)"]
    metrics = evaluate.data.metrics
    assert linear == f"{100 * metrics['stars/linear_top1']:.1f}"
    assert knn == f"{100 * metrics['stars/knn_top1_k1']:.1f}"
    assert fewshot == f"{100 * metrics['stars/fewshot_knn_k1']:.1f}"

    # The tune run that produced the checkpoint is named by what differs, and its logged
    # model is linked to the evaluate metrics and holds exactly the checkpoint's encoder.
    stars_id = provenance["mlflow_models"]["stars"]
    model = client.get_logged_model(stars_id)
    tune_run = client.get_run(model.source_run_id)
    assert "tune.epochs=3" in tune_run.info.run_name
    linked = {m.key: m.value for m in model.metrics}
    assert linked["stars/linear_top1"] == metrics["stars/linear_top1"]
    import mlflow.pytorch

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    logged = mlflow.pytorch.load_model(f"models:/{stars_id}")
    encoder = load_encoder(repo / "models/tune/last.pt", load_params(repo / "params.yaml").model)
    x = torch.randn(3, *model_input_shape(encoder), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        np.testing.assert_array_equal(logged(x).numpy(), encoder.forward_features(x).numpy())


def model_input_shape(encoder) -> tuple[int, int, int, int]:
    """(M, T, V, C) of one clip for `encoder`."""
    cfg = encoder.cfg
    return cfg.actors, cfg.frames, cfg.joints, 3


@pytest.mark.slow
def test_make_register_points_champion_at_the_evaluated_encoders(project):
    from mlflow.tracking import MlflowClient

    repo, env = project
    out = run([sys.executable, "-m", "pipeline.cli.register"], repo, env)
    provenance = json.loads((repo / "metrics/evaluate.json").read_text())["provenance"]
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db", registry_uri=f"sqlite:///{repo}/mlflow.db")
    for model, name in (("mamp", "mamp-encoder"), ("stars", "stars-encoder")):
        version = client.get_model_version_by_alias(name, "champion")
        assert version.source == f"models:/{provenance['mlflow_models'][model]}"
        assert f"{name} version {version.version}" in out
    again = run([sys.executable, "-m", "pipeline.cli.register"], repo, env)
    assert "Created version" not in again   # the same models are not registered twice
    assert [line for line in again.splitlines() if "@champion" in line] == [
        line for line in out.splitlines() if "@champion" in line]


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
