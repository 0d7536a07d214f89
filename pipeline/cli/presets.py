"""Paper presets (`presets/<name>.yaml`): dotted `group.key: value` overrides of params.yaml.

`make exp PRESET=ntu60-xsub` checks `preset_params` (values and raw data, `python -m pipeline
check --preset`), then runs `dvc exp run` with the `-S` flags built by `preset_args`.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipeline.core.config import Params, ParamsLoader, load_params, parse_params, to_dict
from pipeline.core.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[2] / "presets"


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str, base: dict) -> dict[str, object]:
    """The preset's overrides, validated against `base` (the current params mapping)."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r} not found in {PRESET_DIR}; "
                          f"available: {', '.join(available())}")
    try:
        overrides = yaml.load(path.read_text(), Loader=ParamsLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    try:
        _merged(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return overrides


def _merged(base: dict, overrides: dict[str, object]) -> Params:
    merged = json.loads(json.dumps(base))
    for dotted, value in overrides.items():
        group, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{dotted!r} must be written group.key")
        merged.setdefault(group, {})[key] = value
    return parse_params(merged)


def preset_params(name: str, params_path: str | Path = "params.yaml") -> Params:
    """The validated parameters a preset's experiment would run with."""
    base = to_dict(load_params(params_path))
    return _merged(base, load_preset(name, base))


def preset_args(name: str, params_path: str | Path = "params.yaml") -> list[str]:
    """`-S group.key=value` flags for `dvc exp run`."""
    base = to_dict(load_params(params_path))
    return [f"-S {k}={json.dumps(v) if isinstance(v, list) else v}"
            for k, v in load_preset(name, base).items()]
