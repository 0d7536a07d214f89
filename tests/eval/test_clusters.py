"""Cluster quality: high for separable classes, near zero for random features."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval.clusters import cluster_metrics


def features(separable: bool, n_classes: int = 6, per_class: int = 50, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    noise = rng.standard_normal((len(labels), 16))
    if not separable:
        return noise.astype(np.float32), labels
    centres = rng.standard_normal((n_classes, 16)) * 10
    return (centres[labels] + noise).astype(np.float32), labels


def test_separable_classes_score_near_one():
    m = cluster_metrics(*features(True), seed=0)
    assert m["nmi"] > 0.95 and m["ari"] > 0.95 and m["silhouette"] > 0.5


def test_random_features_score_near_zero():
    m = cluster_metrics(*features(False), seed=0)
    assert m["nmi"] < 0.15 and abs(m["ari"]) < 0.05 and abs(m["silhouette"]) < 0.1


def test_seeded_and_subsampled_silhouette_is_reproducible():
    feats, labels = features(True, per_class=100)
    a = cluster_metrics(feats, labels, seed=3, silhouette_max=200)
    b = cluster_metrics(feats, labels, seed=3, silhouette_max=200)
    full = cluster_metrics(feats, labels, seed=3)
    assert a == b
    assert a["silhouette"] == pytest.approx(full["silhouette"], abs=0.05)
