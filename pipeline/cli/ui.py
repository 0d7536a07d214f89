"""`make ui`: the MLflow UI over the project's tracking store, bound to localhost.

Usage::

    python -m pipeline.cli.ui [--port 5000] [--host 127.0.0.1] [--params params.yaml]
    serve(root, port=5000)          # from Python; replaces the process with the server

The store is the one the stages log to (`pipeline.core.tracking.tracking_uri`: the
MLFLOW_TRACKING_URI environment variable, else `tracking.uri`, else <repo>/mlflow.db).
Binding to 127.0.0.1 keeps the UI private to this machine; reach it from elsewhere through an
SSH tunnel (`ssh -L 5000:127.0.0.1:5000 host`) rather than binding to 0.0.0.0. Another
address is used only when `--host` says so on the command line: MLFLOW_HOST in the
environment cannot widen it, and bind options hidden in MLFLOW_GUNICORN_OPTS /
MLFLOW_UVICORN_OPTS / MLFLOW_WAITRESS_OPTS are refused.

One uvicorn worker and no job-execution runner (MLflow 3 starts a huey consumer for GenAI
jobs by default; `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`): two processes in all, the
`mlflow` launcher and its server.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shlex
import socket
import sqlite3
import sys
from pathlib import Path

from pipeline.core.config import TrackingConfig, load_params
from pipeline.core.errors import UserError, cli_exit_code
from pipeline.core.tracking import check_store, repo_root, tracking_uri

# Server options MLflow reads from the environment, and the flags in them that choose where
# the server listens.
SERVER_OPTS_ENV = ("MLFLOW_GUNICORN_OPTS", "MLFLOW_UVICORN_OPTS", "MLFLOW_WAITRESS_OPTS")
BIND_FLAGS = ("-b", "--bind", "--host", "--port", "--uds", "--fd", "--listen", "--unix-socket")
# No huey job consumer (GenAI jobs; the pipeline has none): one process less, ~200 MB less.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# MLflow 3's UI opens on its GenAI side unless the address asks for model training.
WORKFLOW = "machine_learning"


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line (mlflow 3 flags; one worker is plenty for one user)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_env(env: dict[str, str]) -> None:
    """Refuse listening addresses smuggled in through the environment."""
    for var in SERVER_OPTS_ENV:
        try:
            opts = shlex.split(env.get(var, ""))
        except ValueError as exc:
            raise UserError(f"{var} cannot be parsed ({exc}); unset it") from None
        found = [o for o in opts if o.split("=", 1)[0] in BIND_FLAGS
                 or (o.startswith("-b") and len(o) > 2)]
        if found:
            raise UserError(f"{var} sets where the UI listens ({' '.join(found)}); unset it "
                            "and pass --host/--port to python -m pipeline.cli.ui instead")
    host = env.get("MLFLOW_HOST", "")
    if host and not is_loopback(host):
        raise UserError(f"MLFLOW_HOST={host} would expose the UI beyond this machine; unset "
                        f"it, or pass --host {host} explicitly if you mean it")


def runs_url(uri: str, experiment: str, base: str) -> str:
    """The UI's runs list of `experiment` in the model-training view (its id read straight
    from the SQLite store, which is much faster than importing mlflow), else the home page."""
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///"):
        with contextlib.suppress(sqlite3.Error), \
                contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute("SELECT experiment_id FROM experiments WHERE name = ? AND "
                              "lifecycle_stage = 'active'", (experiment,)).fetchone()
            if row:
                return f"{base}/#/experiments/{row[0]}/runs?workflowType={WORKFLOW}"
    return base


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before starting mlflow, whose own error is a long traceback."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port} is invalid: must be between 1 and 65535")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise UserError(f"--host {host!r} cannot be resolved ({exc}); use 127.0.0.1") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself does
        try:
            s.bind(address)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); another server "
                            "is using it: stop it or pick another port (make ui PORT=5001)")


def serve(root: str | Path, host: str = "127.0.0.1", port: int = 5000,
          tracking: TrackingConfig | None = None) -> None:
    """Run the MLflow UI for the project at `root` in this process (does not return).

    `host` is used as given: the caller decides whether it was asked for explicitly."""
    check_bind_env(dict(os.environ, MLFLOW_HOST=""))
    uri = tracking_uri(tracking, Path(root).resolve())
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(db).is_file():
        raise UserError(f"no MLflow store at {db}: run the pipeline first (make repro), "
                        "or point MLFLOW_TRACKING_URI at your store")
    check_store(uri)
    _check_port_free(host, port)
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    url = runs_url(uri, (tracking or TrackingConfig()).experiment, base)
    print(f"MLflow UI for {uri}: runs at {url} (Ctrl-C to stop)", flush=True)
    cmd = ui_command(uri, host, port)
    # The server takes over the process: Ctrl-C and signals go to it.
    os.execve(cmd[0], cmd, {**os.environ, **SERVER_ENV})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.ui",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1; anything else "
                                       "exposes the UI and must be asked for here)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", default="params.yaml", help="parameters file (tracking group)")
    args = parser.parse_args(argv)
    params_path = Path(args.params)

    def run() -> None:
        if args.host is None:   # not asked for: the environment must not widen the bind
            check_bind_env(dict(os.environ))
        serve(repo_root(params_path.resolve().parent), args.host or "127.0.0.1", args.port,
              load_params(params_path).tracking)

    return cli_exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
