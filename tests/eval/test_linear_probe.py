"""Linear probe (cached mode): learns separable classes, reports consistent numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.config import EvalConfig
from pipeline.core.errors import DataError
from pipeline.eval.linear_probe import LinearProbe, probe_cached


def gaussian_clusters(n_classes: int, n: int, spread: float, seed: int, dim: int = 32):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((n_classes, dim)) * 3
    labels = rng.integers(0, n_classes, n)
    feats = centres[labels] + spread * rng.standard_normal((n, dim))
    return feats.astype(np.float32), labels * 2 + 10          # labels need not be 0..C-1


CFG = EvalConfig(probe_epochs=15, probe_batch_size=64)


def test_probe_learns_separable_gaussian_clusters():
    train_f, train_y = gaussian_clusters(8, 1200, spread=1.0, seed=0)
    test_f, test_y = gaussian_clusters(8, 400, spread=1.0, seed=1)
    result = probe_cached(train_f, train_y, test_f, test_y, CFG)
    assert result["mode"] == "cached"
    assert result["top1"] > 0.95 and result["mean_class_acc"] > 0.95
    assert result["curve"][-1]["train_acc"] > 0.95
    assert result["curve"][-1]["loss"] < result["curve"][0]["loss"]


def test_reported_numbers_agree_with_each_other():
    train_f, train_y = gaussian_clusters(6, 600, spread=4.0, seed=0)
    test_f, test_y = gaussian_clusters(6, 300, spread=4.0, seed=1)
    r = probe_cached(train_f, train_y, test_f, test_y, CFG)
    confusion = r["confusion"]
    assert confusion.shape == (6, 6) and confusion.sum() == 300
    assert r["classes"] == sorted(np.unique(train_y).tolist())
    assert r["top1"] == pytest.approx(np.mean(r["predictions"] == test_y))
    assert r["top1"] == pytest.approx(np.trace(confusion) / 300)
    assert r["top5"] >= r["top1"]
    per_class = [np.mean(r["predictions"][test_y == c] == c) for c in r["classes"]]
    np.testing.assert_allclose(r["per_class_acc"], per_class)
    assert r["mean_class_acc"] == pytest.approx(np.mean(per_class))
    assert [c["epoch"] for c in r["curve"]] == list(range(CFG.probe_epochs))
    # cosine schedule: starts at probe_lr, decays towards 0 by the last step
    assert r["curve"][0]["lr"] < CFG.probe_lr and r["curve"][-1]["lr"] < 1e-3


def test_same_seed_same_result():
    train_f, train_y = gaussian_clusters(4, 300, spread=3.0, seed=0)
    test_f, test_y = gaussian_clusters(4, 100, spread=3.0, seed=1)
    cfg = EvalConfig(probe_epochs=3, probe_batch_size=32)
    torch.manual_seed(1)
    a = probe_cached(train_f, train_y, test_f, test_y, cfg)
    torch.manual_seed(2)  # the global stream does not matter
    b = probe_cached(train_f, train_y, test_f, test_y, cfg)
    np.testing.assert_array_equal(a["predictions"], b["predictions"])
    assert a["curve"] == b["curve"]


def test_head_is_batchnorm_without_affine_then_linear_initialised_as_the_release():
    torch.manual_seed(0)
    probe = LinearProbe(256, 60)
    assert not probe.bn.affine and probe.bn.eps == 1e-6
    assert probe.fc.in_features == 256 and probe.fc.out_features == 60
    w = probe.fc.weight
    # trunc_normal_(std=0.01) with the release's bounds +-2 (absolute, not in std units)
    assert abs(w.std().item() - 0.01) < 5e-4 and abs(w.mean().item()) < 5e-4
    assert not probe.fc.bias.any()


@pytest.mark.parametrize("on_test", [False, True])
def test_selection_reports_the_first_epoch_best_on_the_selection_set(on_test):
    train_f, train_y = gaussian_clusters(6, 300, spread=5.0, seed=0)
    test_f, test_y = gaussian_clusters(6, 200, spread=5.0, seed=1)
    val_f, val_y = gaussian_clusters(6, 100, spread=5.0, seed=2)
    cfg = EvalConfig(probe_epochs=6, probe_batch_size=32, probe_lr=1.0)
    select = (test_f, test_y) if on_test else (val_f, val_y)
    r = probe_cached(train_f, train_y, test_f, test_y, cfg, select=select)
    picked = [c["select_top1"] for c in r["curve"]]
    assert r["epoch"] == int(np.argmax(picked))
    if on_test:   # the release's reporting: the maximum of the test curve
        assert r["top1"] == pytest.approx(max(picked))
    last = probe_cached(train_f, train_y, test_f, test_y, cfg)
    assert last["epoch"] == cfg.probe_epochs - 1 and "select_top1" not in last["curve"][0]


def test_test_class_missing_from_train_is_a_data_error():
    f = np.zeros((4, 3), np.float32)
    with pytest.raises(DataError, match="no train samples"):
        probe_cached(f, np.array([0, 0, 1, 1]), f, np.array([0, 1, 2, 2]), CFG)
