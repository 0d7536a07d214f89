"""Experiment tracking behind one facade: MLflow on rank 0, a no-op everywhere else.

Usage (in a stage)::

    with start_run("tune", params, root) as tracker:
        tracker.log_metrics({"loss": 0.3}, step=epoch)

The default store is ``sqlite:///<repository root>/mlflow.db`` as an absolute URI. Under
``dvc exp run --queue``/``--temp`` the stage runs in a temporary copy; DVC then sets
``DVC_ROOT`` to the parent repository, so runs still land in the one store.
``MLFLOW_TRACKING_URI`` overrides the store; a remote server that does not answer fails
within seconds, before any work. mlflow is imported lazily (it takes seconds to import).

What the facade guarantees:
- every metric and param name is made MLflow-safe here (`safe_name`), so no caller can crash
  a stage through a name;
- tracking is best effort once the stage runs: a logging call that fails (server gone, store
  locked) prints one warning, the first time, and the stage goes on; the DVC files hold the
  results. HTTP calls time out after a few seconds with one retry;
- the run is created on first use (a stage that logs nothing leaves no empty run), named
  after what differs from the default params (`tune · tune.epochs=2`), and closed FINISHED,
  FAILED (an exception) or KILLED (SIGINT/SIGTERM); runs of the same stage left RUNNING by a
  process that no longer exists (`kill -9`) are marked FAILED when the stage next starts;
- a resumed training continues its earlier run (`Tracker.resume`), so a curve is one curve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from pipeline.core.config import Params, TrackingConfig, flatten, to_dict
from pipeline.core.errors import UserError

_PARAM_VALUE_MAX = 6000          # MLflow rejects longer param values
_NAME_MAX = 250                  # ... and longer metric / param names
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /:]")   # MLflow's allowed characters (POSIX), ASCII
# Short HTTP timeouts while a stage runs: a lost server costs seconds per call, not minutes.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# The experiment tag MLflow 3's UI reads to open the model-training (not GenAI) view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RUN_NAME_DIFFS = 3               # differing params spelled out in a run name


def safe_name(name: object) -> str:
    """An MLflow-valid metric or param name for any string: characters outside MLflow's set
    become `_`, path segments that are empty or start with '..' are dropped or defused (MLflow
    rejects names that normalise to another path), and names over 250 characters are cut and
    suffixed with a hash of the whole name so they stay distinct."""
    text = _UNSAFE.sub("_", str(name))
    segments = ["_" + s.lstrip(".") if s.startswith("..") or s == "." else s
                for s in text.split("/") if s]
    clean = "/".join(segments) or "_"
    if len(clean) > _NAME_MAX:
        digest = hashlib.sha256(str(name).encode()).hexdigest()[:8]
        clean = clean[:_NAME_MAX - 9].rstrip("/") + "-" + digest
    return clean


def safe_names(values: dict[str, Any]) -> dict[str, Any]:
    """`values` under `safe_name` keys; two names that clash after cleaning are kept apart by
    a hash of the original name."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = safe_name(key)
        if name in out:   # e.g. "a/./b" after "a/../b"
            name = safe_name(f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")
        out[name] = value
    return out


class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, Any], step: int = 0,
                    model_id: str | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def resume(self, run_id: str | None) -> None: ...
    def log_dataset(self, path: str | Path, name: str, digest: str, context: str) -> None: ...
    def log_model(self, module: Any, name: str, input_example: Any, step: int,
                  tags: dict[str, str]) -> str | None: ...
    def find_model(self, **tags: str) -> str | None: ...


class NullTracker:
    """Tracks nothing: for non-zero ranks, tests, and `tracking.enabled: false`."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any], step: int = 0,
                    model_id: str | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def resume(self, run_id: str | None) -> None:
        pass

    def log_dataset(self, path: str | Path, name: str, digest: str, context: str) -> None:
        pass

    def log_model(self, module: Any, name: str, input_example: Any, step: int,
                  tags: dict[str, str]) -> str | None:
        return None

    def find_model(self, **tags: str) -> str | None:
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class MlflowTracker:
    """One MLflow run, created on first use; metrics go in one batch per call (per epoch).

    Every MLflow call is best effort: a failure warns once on stderr and is otherwise ignored.
    """

    def __init__(self, client: Any, experiment_id: str, stage: str, params: Params,
                 tags: dict[str, str]) -> None:
        self.client, self.experiment_id, self.stage = client, experiment_id, stage
        self._params, self._tags = params, tags
        self._run_id: str | None = None
        self._failed = False          # creating the run failed: log nothing more
        self._warned = False
        self._inputs: list[Any] = []  # dataset inputs waiting for the run to exist

    # -- best effort ---------------------------------------------------------------------

    def _guarded(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return call(*args, **kwargs)
        except (MlflowException, OSError) as exc:   # requests' errors are OSErrors
            if not self._warned:
                self._warned = True
                print(f"warning: MLflow {what} failed ({_one_line(exc)}); the stage goes on "
                      "and its DVC outputs are complete; further tracking errors of this "
                      "run are not shown", file=sys.stderr, flush=True)
            return None

    # -- the run -------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The run's id, creating the run (with tags and params) on first access."""
        if self._run_id is None and not self._failed:
            run = self._guarded("run creation", self.client.create_run, self.experiment_id,
                                tags=self._tags)
            if run is None:
                self._failed = True
                return None
            self._run_id = run.info.run_id
            self.log_params(to_dict(self._params))
            self._log_inputs()
        return self._run_id

    def resume(self, run_id: str | None) -> None:
        """Continue `run_id` (kept in a checkpoint) instead of starting a new run, when it
        exists, belongs to this experiment and stage, and no run was created yet."""
        if not run_id or self._run_id is not None or self._failed:
            return
        run = self._guarded("lookup of the resumed run", self.client.get_run, run_id)
        if (run is None or run.info.experiment_id != self.experiment_id
                or run.info.lifecycle_stage != "active"
                or run.data.tags.get("stage") != self.stage):
            return
        self._run_id = run_id
        self._guarded("run reopening", self.client.update_run, run_id, status="RUNNING")
        self._guarded("run tagging", self.client.log_batch, run_id, tags=self._tag_entities(
            {k: v for k, v in self._tags.items() if k != "mlflow.runName"}))
        # Params already logged keep their values (MLflow refuses changes); those of groups
        # this stage does not read may differ, since they are not in its resume fingerprint.
        known = run.data.params
        self.log_params({k: v for k, v in flatten(to_dict(self._params)).items()
                         if safe_name(k) not in known})
        self._log_inputs()

    def end(self, status: str) -> None:
        if self._run_id is not None:
            self._guarded("run closing", self.client.set_terminated, self._run_id,
                          status=status)

    # -- logging -------------------------------------------------------------------------

    @staticmethod
    def _tag_entities(tags: dict[str, str]) -> list[Any]:
        from mlflow.entities import RunTag

        return [RunTag(k, str(v)) for k, v in tags.items()]

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self.run_id is None:
            return
        items = [Param(k, str(v)[:_PARAM_VALUE_MAX])
                 for k, v in safe_names(flatten(params)).items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self._guarded("param logging", self.client.log_batch, self.run_id,
                          params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int = 0,
                    model_id: str | None = None) -> None:
        """Numeric values of `metrics` (nested dicts flattened); `model_id` links them to a
        logged model (MLflow 3)."""
        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        numeric = {k: float(v) for k, v in flatten(metrics).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        items = [Metric(k, v, now, step, model_id=model_id)
                 for k, v in safe_names(numeric).items()]
        for i in range(0, len(items), 1000):
            self._guarded("metric logging", self.client.log_batch, self.run_id,
                          metrics=items[i:i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self._guarded("artifact upload", self.client.log_artifact, self.run_id, str(path),
                          artifact_path)

    def log_dataset(self, path: str | Path, name: str, digest: str, context: str) -> None:
        """Record the data a run reads as its dataset input; `digest` is its fingerprint.
        Before the run exists this waits for it, so a resumed run is not pre-empted."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(name=name, digest=digest[:36], source_type="local",  # MLflow's max
                          source=json.dumps({"uri": Path(path).resolve().as_uri()}))
        self._inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context",
                                                                 context)]))
        if self._run_id is not None:
            self._log_inputs()

    def _log_inputs(self) -> None:
        if self._inputs:
            self._guarded("dataset logging", self.client.log_inputs, self._run_id,
                          datasets=self._inputs)
            self._inputs = []

    def log_model(self, module: Any, name: str, input_example: Any, step: int,
                  tags: dict[str, str]) -> str | None:
        """Log a torch module as an MLflow 3 LoggedModel of this run (params, signature from
        `input_example`; the run's metrics of `step` are linked to it); returns its model
        id, or None when logging failed."""
        if self.run_id is None:
            return None
        import mlflow.pytorch

        def log() -> str:
            model = self.client.create_logged_model(
                self.experiment_id, name=name, source_run_id=self.run_id, tags=tags,
                params=self.client.get_run(self.run_id).data.params, model_type="encoder")
            mlflow.set_tracking_uri(self.client.tracking_uri)
            mlflow.pytorch.log_model(module, name=name, input_example=input_example, step=step,
                                     model_id=model.model_id, run_id=self.run_id)
            return model.model_id

        return self._guarded("model logging", log)

    def find_model(self, **tags: str) -> str | None:
        """The newest logged model of this experiment carrying all `tags`, or None."""
        query = " AND ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = self._guarded("model lookup", self.client.search_logged_models,
                              [self.experiment_id], filter_string=query, max_results=1,
                              order_by=[{"field_name": "creation_timestamp", "ascending": False}])
        return found[0].model_id if found else None


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


def check_store(uri: str) -> None:
    """One line for a SQLite store that cannot be used: not a database, corrupt, or not
    writable (MLflow's own errors are pages of SQLAlchemy traceback)."""
    if not uri.startswith("sqlite:///"):
        return
    import sqlite3

    db = Path(uri.removeprefix("sqlite:///"))
    if not db.exists():
        if not os.access(db.parent, os.W_OK):
            raise UserError(f"{db}: cannot create the MLflow store, {db.parent} is not "
                            "writable; make it writable or set MLFLOW_TRACKING_URI")
        return
    if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
        raise UserError(f"{db}: the MLflow store is read-only (SQLite also needs to write "
                        f"beside it in {db.parent}); make both writable, or set "
                        "tracking.enabled: false")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        ok, tables = str(exc), set()
    if ok != "ok":
        raise UserError(f"{db}: the MLflow store is corrupt ({ok}); move it aside (a new one "
                        "is created) or restore it from a backup")
    if tables and "experiments" not in tables:   # an empty file is a new store
        raise UserError(f"{db}: a SQLite database but not an MLflow store; move it aside or "
                        "set MLFLOW_TRACKING_URI to your store")


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _stage_keys(root: Path, stage: str) -> list[str] | None:
    """The params the stage reads, as listed in dvc.yaml (None: unknown, compare all)."""
    import yaml

    try:
        spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return [p for p in spec.get("params") or [] if isinstance(p, str)]


def run_name(stage: str, params: Params, root: Path) -> str:
    """`<stage> · key=value, ...`: the params this stage reads that differ from the defaults
    of the config classes (`<stage> · defaults` when none do)."""
    keys = _stage_keys(root, stage)
    default = flatten(to_dict(Params()))
    diffs = [f"{k}={v}" for k, v in flatten(to_dict(params)).items()
             if v != default.get(k) and (keys is None or any(
                 k == p or k.startswith(p + ".") for p in keys))]
    own = {"evaluate": "eval"}.get(stage, stage) + "."
    diffs.sort(key=lambda d: not d.startswith(own))   # the stage's own group first
    if not diffs:
        return f"{stage} · defaults"
    more = f" +{len(diffs) - RUN_NAME_DIFFS} more" if len(diffs) > RUN_NAME_DIFFS else ""
    return f"{stage} · {', '.join(diffs[:RUN_NAME_DIFFS])}{more}"[:_NAME_MAX]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def close_stale_runs(client: Any, experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED the runs of `stage` left RUNNING by a process of this host that no longer
    exists (killed with SIGKILL, power loss); returns their ids."""
    host = socket.gethostname()
    stale = []
    for run in client.search_runs([experiment_id], max_results=1000, filter_string=(
            f"tags.stage = '{stage}' AND attributes.status = 'RUNNING'")):
        tags = run.data.tags
        pid = tags.get("pid", "")
        if tags.get("host", host) == host and not (pid.isdigit() and _alive(int(pid))):
            client.set_terminated(run.info.run_id, status="FAILED")
            stale.append(run.info.run_id)
    return stale


def _experiment(client: Any, name: str, root: Path) -> str:
    """The experiment's id, created (model-training view) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        # Artifacts beside the store, not under the working directory: a `dvc exp run
        # --temp` copy is deleted after the run.
        return client.create_experiment(name, artifact_location=(root / "mlruns").as_uri(),
                                        tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


@contextlib.contextmanager
def start_run(stage: str, params: Params, root: Path | None = None) -> Iterator[Tracker]:
    """One tracked run per stage execution (rank 0 only), created on first use.

    The run ends FINISHED on success, KILLED on KeyboardInterrupt (SIGINT, and SIGTERM as
    `pipeline.core.stage` maps it) and FAILED on any other exception.
    """
    from pipeline.core import dist  # imports torch: only when a run is actually started

    cfg = params.tracking
    if not cfg.enabled or not dist.is_main():
        yield NullTracker()
        return
    root = root or repo_root()
    uri = tracking_uri(cfg, root)
    check_reachable(uri)
    check_store(uri)
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment(client, cfg.experiment, root)
    close_stale_runs(client, experiment_id, stage)
    tags = {"stage": stage, "git_commit": _git_commit(root), "host": socket.gethostname(),
            "pid": str(os.getpid()), "mlflow.runName": run_name(stage, params, root)}
    for var, tag in (("DVC_EXP_NAME", "dvc_exp_name"),
                     ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(var):
            tags[tag] = os.environ[var]
    tracker = MlflowTracker(client, experiment_id, stage, params, tags)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
