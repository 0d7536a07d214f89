"""Everything the report reads: DVC metrics and plots, cached features, the packed store,
`dvc exp show --json`, the MLflow store and git.

A source that does not exist (yet) raises `Unavailable` with the reason, which the report
prints in place of the section; a source that exists but is malformed raises `DataError`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import TrackingConfig
from pipeline.core.errors import DataError, UserError


class Unavailable(Exception):
    """A report source is missing; the message says which one and why."""


def read_json(path: Path) -> dict:
    """A DVC metrics file (or store meta) as a dict."""
    if not path.is_file():
        raise Unavailable(f"{path.name} not found at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); "
                        "rerun the stage that writes it")


def read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    """A DVC plots CSV holding at least `columns`."""
    if not path.is_file():
        raise Unavailable(f"{path.name} not found at {path}")
    df = pd.read_csv(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} "
                        f"(has {', '.join(df.columns)}); rerun the stage that writes it")
    if df.empty:
        raise Unavailable(f"{path.name} has no rows")
    return df


def read_features(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Cached features `(feats (N, D), labels (N,))` written by the evaluate stage."""
    if not path.is_file():
        raise Unavailable(f"{path.name} not found at {path}")
    with np.load(path) as npz:
        missing = [k for k in ("feats", "labels") if k not in npz.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; "
                            "rerun the evaluate stage")
        return npz["feats"], npz["labels"]


def open_store(store_dir: Path) -> Any:
    """The packed store (`pipeline.data.store.Store`)."""
    if not (store_dir / "meta.json").is_file():
        raise Unavailable(f"no packed store at {store_dir} (run the preprocess stage)")
    from pipeline.data.store import Store

    return Store.open(store_dir)


def git_commit(root: Path) -> str:
    """HEAD of the repository, with '+ uncommitted changes' when tracked files differ."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=30, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            raise Unavailable(f"not a git repository: {root}")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"git failed: {exc}")
    return head.stdout.strip() + (" + uncommitted changes" if dirty else "")


def _dvc() -> str:
    """The dvc beside this interpreter (the project venv), else the one on PATH."""
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.is_file() else "dvc"


def dvc_experiments(root: Path) -> pd.DataFrame:
    """One row per workspace / baseline / experiment from `dvc exp show --json`.

    Columns: `experiment`, `rev`, `params.<group>.<key>`, `metrics.<stage>.<key...>`.
    """
    try:
        out = subprocess.run([_dvc(), "exp", "show", "--json"], cwd=root, capture_output=True,
                             text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"`dvc exp show` failed to run: {exc}")
    if out.returncode:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        raise Unavailable(f"`dvc exp show` failed: {lines[-1] if lines else out.returncode}")
    records = []
    for baseline in json.loads(out.stdout):
        revs = [baseline] + [rev for exp in baseline.get("experiments") or []
                             for rev in exp.get("revs") or []]
        for rev in revs:
            data = rev.get("data") or {}
            params = {k: v for f in (data.get("params") or {}).values()
                      for k, v in (f.get("data") or {}).items()}
            metrics = {Path(name).stem: m.get("data") or {}
                       for name, m in (data.get("metrics") or {}).items()}
            short = rev["rev"] if rev["rev"] == "workspace" else rev["rev"][:7]
            records.append({"experiment": rev.get("name") or short, "rev": short,
                            "params": params, "metrics": metrics})
    if not records:
        raise Unavailable("`dvc exp show` lists no experiments")
    return pd.json_normalize(records, sep=".")


def _mlflow_client(root: Path, tracking: TrackingConfig) -> Any:
    """A client of the project's store; Unavailable when there is none or it is unusable."""
    from pipeline.core.tracking import check_reachable, check_store, tracking_uri

    uri = tracking_uri(tracking, root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise Unavailable(f"no MLflow store at {uri.removeprefix('sqlite:///')}")
    try:
        check_reachable(uri)
        check_store(uri)
    except UserError as exc:
        raise Unavailable(str(exc))
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def mlflow_runs(root: Path, tracking: TrackingConfig) -> pd.DataFrame:
    """FINISHED runs of the project's MLflow experiment, newest first (a RUNNING, FAILED or
    KILLED run holds partial results).

    Columns: run_id, stage, run_name, status, start (UTC), dvc_exp, artifact_uri.
    """
    client = _mlflow_client(root, tracking)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        raise Unavailable(f"no MLflow experiment {tracking.experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000,
                              filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise Unavailable(f"MLflow experiment {tracking.experiment!r} has no finished runs")
    return pd.DataFrame([{
        "run_id": r.info.run_id, "stage": r.data.tags.get("stage", ""),
        "run_name": r.info.run_name, "status": r.info.status,
        "start": pd.Timestamp(r.info.start_time, unit="ms", tz="UTC").floor("s"),
        "dvc_exp": r.data.tags.get("dvc_exp_name", ""), "artifact_uri": r.info.artifact_uri,
    } for r in runs])


def evaluate_run(root: Path, tracking: TrackingConfig, evaluation: dict | None) -> Any:
    """The MLflow run that produced `evaluation` (metrics/evaluate.json), by the run id in its
    provenance (never "the latest"); it must have FINISHED."""
    from mlflow.exceptions import MlflowException

    run_id = ((evaluation or {}).get("provenance") or {}).get("mlflow_run_id")
    if not run_id:
        raise Unavailable("metrics/evaluate.json names no MLflow run (tracking was off when "
                          "the evaluate stage ran)")
    client = _mlflow_client(root, tracking)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise Unavailable(f"the evaluate run {run_id} named in metrics/evaluate.json is not in "
                          f"{client.tracking_uri}")
    if run.info.status != "FINISHED":
        raise Unavailable(f"the evaluate run {run_id} named in metrics/evaluate.json is "
                          f"{run.info.status}, not FINISHED; rerun the evaluate stage")
    return run
