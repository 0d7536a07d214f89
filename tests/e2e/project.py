"""A fresh git+DVC copy of the project with a tiny configuration, for pipeline-level tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
DVC = [sys.executable, "-m", "dvc"]


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    """Run `cmd`; its stdout and stderr, or a failed assertion that shows their tails."""
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def set_params(repo: Path, overrides: dict) -> None:
    """Merge {group: {key: value}} into `repo`/params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for group, values in overrides.items():
        params[group].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(repo: Path, overrides: dict | None = None) -> dict:
    """Copy the project into `repo` with TINY (then `overrides`) params, commit it; returns
    the environment to run its commands in (this interpreter's tools, `repo` importable)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "stages", "presets", ".dvc", "dvc.yaml", ".dvcignore",
                 ".gitignore", "pyproject.toml", "params.yaml", "Makefile"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns(
                "__pycache__", "tmp", "cache"))
        else:
            shutil.copy(src, repo / name)
    set_params(repo, TINY)
    set_params(repo, overrides or {})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@localhost",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@localhost",
           "PYTHONPATH": str(repo)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny project"], repo, env)
    return env
