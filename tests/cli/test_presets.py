"""Paper presets: each one is valid against params.yaml and carries the paper's values."""

from pathlib import Path

import pytest
import yaml

from pipeline.cli.presets import available, load_preset, preset_args
from pipeline.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


MERGED = ["ntu60-xsub", "ntu60-xview", "ntu120-xsub", "ntu120-xset", "pku2-xsub"]
PRESETS = [*MERGED, "transfer-ntu60-pku2", "transfer-ntu120-pku2"]


def test_every_paper_benchmark_has_a_single_and_a_two_stage_preset():
    assert set(available()) == {*PRESETS, *(f"{m}-twostage" for m in MERGED)}


@pytest.mark.parametrize("name", MERGED)
def test_two_stage_preset_is_the_single_stage_one_plus_20_head_epochs(name):
    merged, two = load_preset(name, BASE), load_preset(f"{name}-twostage", BASE)
    assert two == {**merged, "tune.epochs": 30, "tune.head_warmup_epochs": 20}


def test_probe_lr_and_batch_are_the_release_linprobe_configs():
    assert {n: (load_preset(n, BASE)["eval.probe_lr"], load_preset(n, BASE)["eval.probe_batch_size"])
            for n in ("ntu60-xsub", "pku2-xsub")} == {"ntu60-xsub": (0.1, 256),
                                                      "pku2-xsub": (0.01, 32)}


@pytest.mark.parametrize("name", available())
def test_preset_is_paper_size_and_valid(name):
    over = load_preset(name, BASE)
    assert (over["model.depth"], over["model.dim"], over["model.frames"]) == (8, 256, 120)
    assert over["pretrain.epochs"] == 400 and over["pretrain.batch_size"] == 128
    decay = {"ntu60": 0.45, "ntu120": 0.4, "pku2": 0.35}[over["data.source"]]
    assert over["tune.layer_decay"] == decay
    assert over["model.decoder_depth"] == (3 if over["data.source"] == "ntu60" else 5)
    args = preset_args(name, ROOT / "params.yaml")
    assert f"-S data.source={over['data.source']}" in args


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: ntu120-xset"):
        load_preset("ntu61-xsub", BASE)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_fine_tunes_with_the_release_recipe(name):
    over = load_preset(name, BASE)
    assert (over["finetune.epochs"], over["finetune.warmup_epochs"]) == (100, 5)
    assert (over["finetune.batch_size"], over["finetune.lr"], over["finetune.min_lr"]) == \
        (48, 3e-4, 1e-5)
    assert (over["finetune.layer_decay"], over["finetune.drop_path"],
            over["finetune.label_smoothing"], over["finetune.head_hidden"]) == (0.8, 0.3, 0.1, 2048)
    assert over["finetune.label_fractions"] == [0.01, 0.1]
    assert len(over["finetune.seeds"]) == 5
    if name.startswith("transfer-"):
        assert over["finetune.protocols"] == ["transfer"]
        assert (over["transfer.source"], over["transfer.benchmark"]) == ("pku2", "xsub")


@pytest.mark.parametrize("name", PRESETS)
def test_preset_says_whether_fewshot_runs(name):
    """Either few-shot is on with the NTU-120 novel classes, or the preset switches it off."""
    over = load_preset(name, BASE)
    assert over.get("data.novel_dir") or over.get("eval.fewshot") is False
    assert ("data.novel_dir" in over) == (name == "ntu60-xsub")
