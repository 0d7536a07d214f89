"""params.yaml validation: every bad value fails before any work, naming key, value and fix."""

import dataclasses
import re
from pathlib import Path

import pytest

from pipeline.core.config import Params, load_params, parse_params, to_dict
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_yaml_is_valid_and_covers_every_key():
    params = load_params(ROOT / "params.yaml")
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == set(to_dict(params))
    for group, values in to_dict(params).items():
        assert set(raw[group]) == set(values), f"params.yaml group {group} misses keys"


def test_empty_mapping_gives_defaults():
    assert parse_params({}) == Params()


@pytest.mark.parametrize("raw, message", [
    ({"tune": {"epochs": -1}}, "tune.epochs: -1 is invalid: must be an integer >= 1"),
    ({"tune": {"epochs": 2.5}}, "tune.epochs: 2.5 is invalid: must be an integer"),
    ({"tune": {"epochs": True}}, "tune.epochs: True is invalid: must be an integer"),
    ({"pretrain": {"mask_ratio": 1.0}}, "pretrain.mask_ratio: 1.0 is invalid: must be a number > 0 and < 1"),
    ({"pretrain": {"lr": float("nan")}}, "pretrain.lr: nan is invalid"),
    ({"data": {"source": "kinetics"}}, "data.source: 'kinetics' is invalid: must be one of 'synthetic'"),
    ({"eval": {"knn_k": [1, 0]}}, "eval.knn_k[1]: 0 is invalid"),
    ({"eval": {"knn_k": []}}, "eval.knn_k: [] is invalid: must be a non-empty list"),
    ({"tracking": {"enabled": "yes"}}, "tracking.enabled: 'yes' is invalid: must be true or false"),
])
def test_bad_value_names_key_value_and_rule(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match=r"tune\.epoch: unknown key; allowed: epochs, "):
        parse_params({"tune": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"^trainer: unknown key"):
        parse_params({"trainer": {}})


@pytest.mark.parametrize("raw, key", [
    ({"model": {"dim": 64, "heads": 5}}, "model.heads"),
    ({"model": {"frames": 42, "t_patch": 4}}, "model.t_patch"),
    ({"data": {"source": "ntu120", "benchmark": "xview"}}, "data.benchmark"),
    ({"data": {"source": "ntu60", "benchmark": "xset"}}, "data.benchmark"),
    ({"dist": {"nproc": 3}, "pretrain": {"batch_size": 64}}, "pretrain.batch_size"),
    ({"tune": {"tuned_blocks": 9}, "model": {"depth": 8}}, "tune.tuned_blocks"),
])
def test_cross_key_constraints(raw, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        parse_params(raw)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("tune:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:\d+: not valid YAML"):
        load_params(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="parameters file not found"):
        load_params(tmp_path / "nope.yaml")


def test_config_is_frozen():
    params = parse_params({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.tune.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("data, synth, message", [
    ({"source": "ntu60"}, {}, ("eval.fewshot needs novel classes: set data.novel_dir to the "
                               "NTU-120 .skeleton folder, or eval.fewshot: off")),
    ({"source": "ntu120", "benchmark": "xset"}, {},
     "eval.fewshot needs novel classes, and data.source 'ntu120' has none"),
    ({"source": "pku2"}, {}, "eval.fewshot needs novel classes, and data.source 'pku2'"),
    ({}, {"novel_classes": 0}, "eval.fewshot needs novel classes: set synth.novel_classes"),
])
def test_fewshot_without_novel_classes_fails_before_any_work(data, synth, message):
    with pytest.raises(ConfigError) as exc:
        parse_params({"data": data, "synth": synth})
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    # switched off on purpose, or given the novel classes, it runs
    parse_params({"data": data, "synth": synth, "eval": {"fewshot": False}})
    if data.get("source") == "ntu60":
        parse_params({"data": {**data, "novel_dir": "data/raw/ntu120"}})


def test_yaml_off_switches_fewshot_off(tmp_path):
    (tmp_path / "params.yaml").write_text("data: {source: ntu120}\neval: {fewshot: off}\n")
    assert load_params(tmp_path / "params.yaml").eval.fewshot is False


@pytest.mark.parametrize("raw, message", [
    ({"finetune": {"min_lr": 0.1}}, "finetune.min_lr: 0.1 is invalid: must be <= finetune.lr"),
    ({"finetune": {"protocols": ["full", "linear"]}}, "finetune.protocols[1]: 'linear'"),
    ({"finetune": {"label_fractions": [0.0]}}, "finetune.label_fractions[0]: 0.0 is invalid"),
    ({"finetune": {"batch_size": 15}, "dist": {"nproc": 2}}, "finetune.batch_size: 15"),
    ({"transfer": {"source": "pku2", "benchmark": "xset"}}, "transfer.benchmark: 'xset'"),
    ({"model": {"drop_path": 1.0}}, "model.drop_path: 1.0 is invalid"),
])
def test_finetune_and_transfer_keys_are_checked(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_params(raw)
