"""Experiment tracking behind one facade: MLflow on rank 0, a no-op everywhere else.

Usage (in a stage)::

    with start_run("tune", params, root) as tracker:
        tracker.log_metrics({"loss": 0.3}, step=epoch)

The default store is ``sqlite:///<repository root>/mlflow.db`` as an absolute URI. Under
``dvc exp run --queue``/``--temp`` the stage runs in a temporary copy; DVC then sets
``DVC_ROOT`` to the parent repository, so runs still land in the one store.
``MLFLOW_TRACKING_URI`` overrides the store; a remote server that does not answer fails
within seconds, before any work. mlflow is imported lazily (it takes seconds to import).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.config import Params, TrackingConfig, flatten, to_dict
from pipeline.core.errors import UserError

_PARAM_VALUE_MAX = 6000  # MLflow rejects longer param values


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...


class NullTracker:
    """Tracks nothing: for non-zero ranks, tests, and `tracking.enabled: false`."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass


class MlflowTracker:
    """One MLflow run; metrics are sent in one batch per call (per epoch, not per step)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_PARAM_VALUE_MAX]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in flatten(metrics).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


class Prefixed:
    """A tracker whose metric names get a prefix, for several models or runs in one stage's
    run (e.g. `mamp/probe/loss`); everything else goes to the wrapped tracker unchanged."""

    def __init__(self, tracker: Tracker, prefix: str) -> None:
        self.tracker, self.prefix = tracker, prefix
        self.run_id = getattr(tracker, "run_id", None)

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(params)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.tracker.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.tracker.log_artifact(path, artifact_path)


def repo_root(start: str | Path | None = None) -> Path:
    """The repository the results belong to: DVC_ROOT (set by DVC, also for --temp/--queue
    runs), else the nearest parent holding `dvc.yaml`, else the current directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(cfg: TrackingConfig | None = None, root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI, else `tracking.uri`, else the project's SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (cfg.uri if cfg else "")
    if uri:
        return uri
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before any work) when a remote tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({exc}); start it, fix "
                        "MLFLOW_TRACKING_URI / tracking.uri, or set tracking.enabled: false")


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def start_run(stage: str, params: Params, root: Path | None = None) -> Iterator[Tracker]:
    """One tracked run per stage execution (rank 0 only); all params logged up front.

    The run ends FINISHED on success and FAILED if the stage raises.
    """
    from pipeline.core import dist  # imports torch: only when a run is actually started

    cfg = params.tracking
    if not cfg.enabled or not dist.is_main():
        yield NullTracker()
        return
    root = root or repo_root()
    uri = tracking_uri(cfg, root)
    check_reachable(uri)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    # Artifacts beside the store, not under the working directory: a `dvc exp run --temp`
    # copy is deleted after the run.
    experiment_id = (experiment.experiment_id if experiment else client.create_experiment(
        cfg.experiment, artifact_location=(root / "mlruns").as_uri()))
    tags = {"stage": stage, "git_commit": _git_commit(root),
            "mlflow.runName": f"{stage}-{os.environ.get('DVC_EXP_NAME', 'workspace')}"}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    run = client.create_run(experiment_id, tags=tags)
    tracker = MlflowTracker(client, run.info.run_id)
    tracker.log_params(to_dict(params))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status=status)
