"""`make ui`: the MLflow UI over the project's tracking store, bound to localhost.

Usage::

    python -m pipeline.cli.ui [--port 5000] [--host 127.0.0.1] [--params params.yaml]
    serve(root, port=5000)          # from Python; replaces the process with the server

The store is the one the stages log to (`pipeline.core.tracking.tracking_uri`: the
MLFLOW_TRACKING_URI environment variable, else `tracking.uri`, else <repo>/mlflow.db).
Binding to 127.0.0.1 keeps the UI private to this machine; reach it from elsewhere through an
SSH tunnel (`ssh -L 5000:127.0.0.1:5000 host`) rather than binding to 0.0.0.0.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pipeline.core.config import TrackingConfig, load_params
from pipeline.core.errors import UserError, cli_exit_code
from pipeline.core.tracking import repo_root, tracking_uri


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line (mlflow 3 flags; one worker is plenty for one user)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]


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
    """Run the MLflow UI for the project at `root` in this process (does not return)."""
    uri = tracking_uri(tracking, Path(root).resolve())
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(db).is_file():
        raise UserError(f"no MLflow store at {db}: run the pipeline first (make repro), "
                        "or point MLFLOW_TRACKING_URI at your store")
    _check_port_free(host, port)
    print(f"MLflow UI for {uri} at http://{host}:{port} (Ctrl-C to stop)", flush=True)
    cmd = ui_command(uri, host, port)
    os.execv(cmd[0], cmd)  # the server takes over the process: Ctrl-C and signals go to it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.ui",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (localhost)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--params", default="params.yaml", help="parameters file (tracking group)")
    args = parser.parse_args(argv)
    params_path = Path(args.params)
    return cli_exit_code(lambda: serve(repo_root(params_path.resolve().parent), args.host,
                                       args.port, load_params(params_path).tracking))


if __name__ == "__main__":
    sys.exit(main())
