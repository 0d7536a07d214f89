"""precision: bf16 runs the tiny pipeline end to end on the CPU (pretrain -> tune -> evaluate
with the paper-mode probe); weights and optimizer state stay fp32; features differ from
fp32 ones only by bf16 rounding and are cached per precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core import dist
from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.stage import stage_context
from pipeline.core.tracking import NullTracker
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform
from pipeline.eval.features import extract_features, load_encoder
from pipeline.evaluate import run_evaluate
from pipeline.models.mamp import MAMP
from pipeline.pretrain import run_pretrain
from pipeline.training import checkpoint
from pipeline.tune import run_tune
from tests.test_evaluate import TINY
from tests.test_evaluate import write_store as write_eval_store

BF16 = {**TINY,
        "pretrain": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0, "loader_workers": 0,
                     "crop_floor": 4, "precision": "bf16"},
        "tune": {**TINY["tune"], "epochs": 1, "batch_size": 4, "loader_workers": 0,
                 "val_fraction": 0.25, "precision": "bf16"},
        "eval": {**TINY["eval"], "probe_mode": "paper", "probe_epochs": 1,
                 "precision": "bf16"}}


def assert_fp32_state(path):
    ckpt = checkpoint.load(path)
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values()
               if v.is_floating_point())
    for state in ckpt["optimizer"]["state"].values():
        assert all(v.dtype == torch.float32 for k, v in state.items() if k != "step"), state


@pytest.mark.slow
def test_bf16_runs_the_tiny_pipeline_end_to_end_with_fp32_state(tmp_path):
    params = parse_params(BF16)
    store = write_eval_store(tmp_path / "store")
    pre = run_pretrain(params, store, tmp_path / "pre", tmp_path / "m" / "pre.json",
                       tmp_path / "p", NullTracker())
    assert np.isfinite(pre["final_loss"])
    assert_fp32_state(tmp_path / "pre" / "last.pt")
    tuned = run_tune(params, store, tmp_path / "pre" / "last.pt", tmp_path / "tune",
                     tmp_path / "m" / "tune.json", tmp_path / "p", NullTracker())
    assert np.isfinite(tuned["final_loss"]) and 0 <= tuned["val_knn_last"] <= 1
    assert_fp32_state(tmp_path / "tune" / "last.pt")
    metrics = run_evaluate(params, store, tmp_path / "pre" / "last.pt",
                           tmp_path / "tune" / "last.pt", tmp_path / "features",
                           tmp_path / "probe", tmp_path / "m" / "eval.json", tmp_path / "p",
                           NullTracker())
    assert metrics["probe_mode"] == "paper"
    assert all(np.isfinite(v) for v in metrics["stars"].values())
    assert_fp32_state(tmp_path / "probe" / "stars" / "last.pt")


def test_bf16_features_are_fp32_arrays_close_to_fp32_features(tmp_path):
    params = parse_params(TINY)
    store = Store.open(write_eval_store(tmp_path / "store"))
    torch.manual_seed(0)
    checkpoint.save(tmp_path / "m.pt", checkpoint.make("mamp", MAMP(params.model)))
    encoder = load_encoder(tmp_path / "m.pt", params.model)
    data = SkeletonDataset(store, store.select(split="test", novel=False),
                           TestTransform(params.model.frames))
    f32, _, _ = extract_features(encoder, data, 4, "cpu")
    bf16, _, _ = extract_features(encoder, data, 4, "cpu", precision="bf16")
    assert f32.dtype == bf16.dtype == np.float32
    assert not np.array_equal(f32, bf16)                 # bf16 did run
    assert np.abs(f32 - bf16).max() <= 0.05 * np.abs(f32).max()


def test_precision_is_validated_with_one_line():
    with pytest.raises(ConfigError, match=r"tune\.precision: 'fp16' is invalid: must be one of "
                                        r"'fp32', 'bf16'"):
        parse_params({"tune": {"precision": "fp16"}})


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_on_a_device_without_native_kernels_warns_in_one_line(tmp_path, monkeypatch,
                                                                   capsys, precision):
    """An AVX2 CPU runs bf16 products ~100x slower than fp32 (a default-size pretraining step
    7x slower): the stage says so first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        f"tune:\n  precision: {precision}\ntracking:\n  enabled: false\n")
    with stage_context("tune"):
        pass
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    slow = precision == "bf16" and not dist.native_bf16(dist.device())
    expected = ("warning: tune.precision is bf16, but this cpu has no native bf16 matrix "
                "kernels (a CPU needs AVX512-BF16 or AMX), so bf16 runs several times slower "
                "than fp32 here; set tune.precision: fp32 unless you mean it")
    assert lines == ([expected] if slow else [])
