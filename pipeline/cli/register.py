"""`make register`: register the evaluated encoders in the MLflow model registry.

Usage::

    python -m pipeline.cli.register [--alias champion] [--params params.yaml]

Reads the MLflow models that metrics/evaluate.json's provenance names (the encoders that
pretrain and tune logged from the checkpoints the evaluate stage measured), registers them as
new versions of `mamp-encoder` and `stars-encoder`, and points the alias at those versions,
so `models:/stars-encoder@champion` always loads the encoder behind the current metrics.
A model already registered from the same logged model is not registered twice.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.core.config import TrackingConfig, load_params
from pipeline.core.errors import UserError, cli_exit_code
from pipeline.core.tracking import check_reachable, check_store, repo_root, tracking_uri

NAMES = {"mamp": "mamp-encoder", "stars": "stars-encoder"}


def register(root: Path, tracking: TrackingConfig, alias: str = "champion") -> list[str]:
    """Register both evaluated encoders under `alias`; returns one line per model."""
    path = root / "metrics" / "evaluate.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run the pipeline first (make repro)")
    models = (json.loads(path.read_text()).get("provenance") or {}).get("mlflow_models") or {}
    missing = [m for m in NAMES if not models.get(m)]
    if missing:
        raise UserError(f"{path} names no logged MLflow model for {', '.join(missing)} "
                        "(tracking was off, or the checkpoints were not trained by this "
                        "pipeline); rerun pretrain/tune with tracking on")
    uri = tracking_uri(tracking, root)
    check_reachable(uri)
    check_store(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    lines = []
    for model, name in NAMES.items():
        model_id = models[model]
        source = f"models:/{model_id}"
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description=f"{model.upper()} skeleton "
                                           "encoder (features: mean of the final tokens)")
        versions = [v for v in client.search_model_versions(f"name = '{name}'")
                    if v.source == source]
        version = versions[0] if versions else mlflow.register_model(source, name)
        client.set_registered_model_alias(name, alias, version.version)
        lines.append(f"{name} version {version.version} ({source}) is now @{alias}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.register",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--alias", default="champion", help="alias for these versions")
    parser.add_argument("--params", default="params.yaml", help="parameters file (tracking group)")
    args = parser.parse_args(argv)
    params_path = Path(args.params)

    def run() -> None:
        root = repo_root(params_path.resolve().parent)
        for line in register(root, load_params(params_path).tracking, args.alias):
            print(line)

    return cli_exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
