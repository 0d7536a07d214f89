"""The golden fixtures of the official code (tests/fixtures/release, README.md there) and the
"small" model they were made with, loaded through our own import path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline.cli.weights import import_weights
from pipeline.core.config import ModelConfig, Params, load_params

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "release"
# README "Model configuration": depth 2, dim 32, 4 heads, 16 frames, t_patch 4, decoder 2 x 48.
SMALL = ModelConfig(depth=2, dim=32, heads=4, mlp_ratio=4.0, frames=16, t_patch=4, actors=2,
                    joints=25, decoder_depth=2, decoder_dim=48, decoder_heads=4)
ENCODER = "encoder_student."   # the release's prefix of every STARS parameter


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, weights_only=True)


def default_params() -> Params:
    """The shipped default configuration (params.yaml) with the fixtures' model size."""
    params = load_params(ROOT / "params.yaml")
    return dataclasses.replace(params, model=SMALL)


def imported(fmt: str, name: str, tmp_path: Path, predictor_dim: int = 4096) -> Path:
    """`import-weights --format <fmt>` of a release file: the path of our checkpoint."""
    dst = tmp_path / f"{name}.pt"
    import_weights(fmt, FIXTURES / name, dst, SMALL, predictor_dim=predictor_dim)
    return dst


def ours(release_name: str) -> str:
    """Our parameter name for a release STARS name (`encoder_student.` dropped)."""
    return release_name.removeprefix(ENCODER)
