"""The whole DVC pipeline on a tiny synthetic configuration: real DVC, real MLflow, real torch.

Runs `dvc repro` in a fresh git+DVC copy of the project, then `dvc exp run -S tune.epochs=2`
and checks that only tune and what depends on it (evaluate, finetune, report) re-ran.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "synth": {"base_classes": 4, "novel_classes": 5, "performers": 4, "setups": 1,
              "replications": 1, "cameras": 2, "min_frames": 24, "max_frames": 40},
    "model": {"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
              "decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 2},
    "pretrain": {"epochs": 2, "batch_size": 8, "warmup_epochs": 1, "loader_workers": 0},
    "tune": {"epochs": 1, "batch_size": 8, "queue_size": 64, "predictor_dim": 32,
             "loader_workers": 0, "val_fraction": 0.2},
    "eval": {"probe_epochs": 3, "fewshot_episodes": 20, "fewshot_queries": 2, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 8, "head_hidden": 16, "loader_workers": 0,
                 "label_fractions": [0.5, 1.0], "seeds": [0, 1]},
    "transfer": {"synth_classes": 3, "synth_performers": 3},
    "report": {"tsne_per_class": 3, "stick_samples": 2},
}


def _run(cmd: list[str], cwd: Path, env: dict) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("project")
    for name in ("pipeline", "stages", "presets", ".dvc", "dvc.yaml", ".dvcignore",
                 ".gitignore", "pyproject.toml"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns(
                "__pycache__", "tmp", "cache"))
        else:
            shutil.copy(src, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in TINY.items():
        params[group].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@localhost",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@localhost",
           "PYTHONPATH": str(repo)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    _run(["git", "init", "-q"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-qm", "tiny project"], repo, env)
    _run([sys.executable, "-m", "dvc", "repro"], repo, env)
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
def test_each_stage_logged_one_mlflow_run(project):
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
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "tune.epochs=2"], repo, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"tune", "evaluate", "finetune", "report"}
    tune = json.loads((repo / "metrics/tune.json").read_text())
    assert tune["epochs"] == 2 and len(tune["val_knn_curve"]) == 2
    shown = _run([sys.executable, "-m", "dvc", "exp", "show", "--json"], repo, env)
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
    out = _run([sys.executable, "-m", "dvc", "exp", "run", "-S", "dist.nproc=2"], repo, env)
    assert "Running stage 'pretrain'" in out and "Running stage 'tune'" in out
    two = pd.read_csv(repo / "plots/pretrain/loss.csv")
    assert json.loads((repo / "metrics/pretrain.json").read_text())["processes"] == 2
    assert json.loads((repo / "metrics/tune.json").read_text())["processes"] == 2
    assert json.loads((repo / "metrics/finetune.json").read_text())["processes"] == 2
    # the semi-supervised subset does not depend on the number of processes
    assert checkpoint.load(subset)["config"]["rows"] == rows_one
    assert list(two["epoch"]) == list(one["epoch"])
    assert two["loss"].to_numpy() == pytest.approx(one["loss"].to_numpy(), rel=1e-4)
