"""run_tune on a tiny generated store and a tiny MAMP checkpoint; validation split; views."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError
from pipeline.core.io import file_sha256
from pipeline.core.tracking import NullTracker
from pipeline.data import transforms
from pipeline.eval.features import load_encoder
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS
from pipeline.training import checkpoint
from pipeline.training.views import ViewTransform, mask_tokens
from pipeline.tune import run_tune, split_validation, stars_step
from tests.conftest import write_store as write_tiny_store

TINY = {"model": {"depth": 2, "dim": 16, "heads": 2, "frames": 8, "t_patch": 4,
                  "decoder_depth": 1, "decoder_dim": 16, "decoder_heads": 2},
        "tune": {"epochs": 2, "batch_size": 4, "queue_size": 16, "predictor_dim": 32,
                 "loader_workers": 0, "val_fraction": 0.25}}


def write_store(out: Path) -> Path:
    """3 base classes x 4 train samples with class-specific motion, 1 test and 1 novel."""
    rng = np.random.default_rng(0)

    def samples():
        for i in range(14):
            label = 3 if i == 13 else i % 3
            t = np.arange(10 + i)[:, None, None, None]
            frames = 0.3 * np.sin(t * (label + 1) / 4.0) + rng.normal(0, 0.02, (len(t), 2, 25, 3))
            frames[:, 1] = 0.0                                      # one actor
            yield f"s{i}", label, "test" if i == 12 else "train", frames

    return write_tiny_store(out, samples(), ["a", "b", "c", "d"], novel_labels=[3])


def write_mamp(path: Path, params) -> dict:
    torch.manual_seed(0)
    model = MAMP(params.model)
    checkpoint.save(path, checkpoint.make("mamp", model, config={}))
    return model.state_dict()


def tune(tmp: Path, **overrides):
    params = parse_params({**TINY, "tune": {**TINY["tune"], **overrides}})
    store = tmp / "store"
    if not store.exists():
        write_store(store)
    pretrained = write_mamp(tmp / "mamp.pt", params)
    metrics = run_tune(params, store, tmp / "mamp.pt", tmp / "ckpt", tmp / "metrics.json",
                       tmp / "plots", NullTracker())
    return params, metrics, pretrained


def test_validation_split_is_stratified_disjoint_and_reproducible():
    rows = np.arange(100, 130)
    labels = np.repeat([0, 1, 2], 10)
    train, val = split_validation(rows, labels, 0.2, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), rows)
    assert np.bincount(labels[val - 100]).tolist() == [2, 2, 2]
    again = split_validation(rows, labels, 0.2, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(split_validation(rows, labels, 0.2, seed=4)[1], val)
    # every class keeps a bank sample; none is held out with fraction 0
    assert split_validation(rows[:2], np.array([0, 0]), 0.9, 0)[0].size == 1
    assert split_validation(rows, labels, 0.0, 0)[1].size == 0


def test_run_tune_writes_checkpoints_metrics_and_curves_with_published_keys(tmp_path):
    params, metrics, pretrained = tune(tmp_path)
    results = json.loads((tmp_path / "metrics.json").read_text())
    timing = json.loads((tmp_path / "timing.json").read_text())["tune"]
    assert set(results) == {"final_loss", "val_knn_last", "val_knn_best", "best_epoch",
                            "val_knn_curve"} and results | timing == metrics
    assert (metrics["epochs"], metrics["train_samples"], metrics["val_samples"]) == (2, 9, 3)
    assert len(metrics["val_knn_curve"]) == 2 and 0 <= metrics["val_knn_last"] <= 1
    assert metrics["best_epoch"] in (0, 1) and np.isfinite(metrics["final_loss"])
    assert metrics["trainable_parameters"] > 0 and metrics["frozen_parameters"] > 0
    rows = list(csv.DictReader((tmp_path / "plots" / "curves.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[-1]["val_knn"]) == metrics["val_knn_last"]

    last = checkpoint.load(tmp_path / "ckpt" / "last.pt")
    assert (last["kind"], last["epoch"]) == ("stars", 2)
    assert (tmp_path / "ckpt" / "best.pt").is_file()
    state = last["model"]
    assert {"head.projector.0.weight", "head.predictor.3.bias", "queue.queue"} <= set(state)
    encoder = load_encoder(tmp_path / "ckpt" / "last.pt", params.model)
    # frozen: block 0 and the embeddings are the pretrained ones bit for bit; block 1 moved
    for key in ("pos_embed", "joints_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        assert torch.equal(encoder.state_dict()[key], pretrained[key]), key
    assert not torch.equal(encoder.state_dict()["blocks.1.mlp.fc1.weight"],
                           pretrained["blocks.1.mlp.fc1.weight"])


def test_resume_key_is_the_pretrained_weights_not_the_file_bytes(tmp_path, capsys):
    """A pretrain re-run that gives the same weights rewrites last.pt with other timings:
    tune resumes. Changed weights start tune afresh."""
    params, _, _ = tune(tmp_path, epochs=1)
    first = checkpoint.load(tmp_path / "ckpt" / "last.pt")["extra"]["history"]
    mamp = checkpoint.load(tmp_path / "mamp.pt")
    before = file_sha256(tmp_path / "mamp.pt")
    checkpoint.save(tmp_path / "mamp.pt", {**mamp, "extra": {"history": [{"wall_s": 1.5}]}})
    assert file_sha256(tmp_path / "mamp.pt") != before
    args = (tmp_path / "store", tmp_path / "mamp.pt", tmp_path / "ckpt", tmp_path / "m.json",
            tmp_path / "plots", NullTracker())
    capsys.readouterr()
    run_tune(params, *args)
    assert "resuming after epoch 1" in capsys.readouterr().out
    # nothing re-trained: the epochs and their timings are the first run's
    assert checkpoint.load(tmp_path / "ckpt" / "last.pt")["extra"]["history"] == first

    mamp["model"]["pos_embed"] += 1e-3
    checkpoint.save(tmp_path / "mamp.pt", mamp)
    run_tune(params, *args)
    assert "starting fresh" in capsys.readouterr().out


def test_head_warmup_trains_the_encoder_only_after_its_epochs(tmp_path):
    tune(tmp_path, epochs=3, head_warmup_epochs=2, val_fraction=0.0)
    last = checkpoint.load(tmp_path / "ckpt" / "last.pt")
    names = {i: n for g in last["optimizer"]["param_groups"]
             for i, n in zip(g["params"], g["names"])}
    steps = {names[i]: float(s["step"]) for i, s in last["optimizer"]["state"].items()}
    per_epoch = 12 // 4                        # 12 base-class train samples, batch 4
    assert steps["head.predictor.0.weight"] == 3 * per_epoch
    assert steps["blocks.1.mlp.fc1.weight"] == steps["norm.weight"] == 1 * per_epoch


@pytest.mark.parametrize("key, value, holds", [
    ("batch_size", 10, "9 tuning samples after the validation split"),
    ("val_k", 10, "9 samples in the validation kNN bank"),
])
def test_data_dependent_key_is_checked_before_any_training(tmp_path, key, value, holds):
    with pytest.raises(ConfigError) as err:
        tune(tmp_path, **{key: value})
    message = str(err.value)
    assert message.startswith(f"tune.{key}: {value} is invalid: the store {tmp_path / 'store'} "
                              f"holds {holds}") and message.endswith("use at most 9")
    assert re.findall(r"\b(?:tune|eval|pretrain)\.\w+", message) == [f"tune.{key}"]
    assert not (tmp_path / "ckpt").exists()  # nothing trained


def test_head_warmup_must_leave_epochs_to_tune(tmp_path):
    with pytest.raises(ConfigError, match="head_warmup_epochs"):
        tune(tmp_path, epochs=2, head_warmup_epochs=2)


def test_two_view_batches_use_the_explicit_two_view_loss():
    params = parse_params({**TINY, "tune": {**TINY["tune"], "view": "mask"}})
    torch.manual_seed(0)
    model = STARS(params.model, params.tune)
    x = torch.randn(4, 2, 2, 8, 25, 3)                               # (N, 2 views, M, T, V, C)
    loss, _ = stars_step(model, {"x": x, "index": torch.arange(4)})
    assert torch.isfinite(loss) and loss.requires_grad


def _frames(seed: int = 0, length: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(length, 2, 25, 3)).astype(np.float32)


def test_view_none_is_the_full_sequence_resized_once():
    frames = _frames()
    out = ViewTransform("none", 8)(frames, np.random.default_rng(0))
    assert np.array_equal(out, transforms.test_transform(frames, 8, keep=1.0))


def test_view_mask_zeroes_the_ratio_of_tokens_of_each_actor_in_two_different_views():
    frames = _frames()
    out = ViewTransform("mask", 8, mask_ratio=0.5, t_patch=4)(frames, np.random.default_rng(0))
    assert out.shape == (2, 2, 8, 25, 3)                             # (views, M, T, V, C)
    tokens = out.reshape(2, 2, 2, 4, 25, 3)                          # (views, M, T', t, V, C)
    zero = (tokens == 0).all(axis=(3, 5))                            # (views, M, T', V)
    assert (zero.sum(axis=(2, 3)) == int(2 * 25 * 0.5)).all()
    assert not np.array_equal(zero[0], zero[1])
    full = transforms.test_transform(frames, 8, keep=1.0)
    assert np.array_equal(out[0][out[0] != 0], full[out[0] != 0])


def test_view_crop_rotate_draws_two_views_from_the_sample_rng_only():
    frames = _frames(length=40)
    view = ViewTransform("crop_rotate", 8, crop_floor=4)
    a = view(frames, np.random.default_rng(5))
    assert a.shape == (2, 2, 8, 25, 3) and not np.allclose(a[0], a[1])
    assert np.array_equal(a, view(frames, np.random.default_rng(5)))


def test_mask_tokens_with_ratio_zero_is_identity():
    x = _frames(length=8).transpose(1, 0, 2, 3)                      # (M, T, V, C)
    assert np.array_equal(mask_tokens(x, np.random.default_rng(0), 0.0, 4), x)
