"""Few-shot: episode sampler properties, the CI formula, both classifiers, release protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.eval.fewshot import (
    EpisodeSampler,
    episode_accuracies,
    episodic_fewshot,
    mean_ci95,
    release_fewshot,
)
from pipeline.eval.knn import knn_accuracy


def uneven_labels(seed: int = 0) -> np.ndarray:
    """8 classes with 20..55 samples each, shuffled (labels need not be contiguous)."""
    labels = np.repeat(np.arange(8) * 3 + 1, np.arange(20, 60, 5))
    return np.random.default_rng(seed).permutation(labels)


def clusters(n_classes: int, per_class: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = rng.standard_normal((n_classes, 16)) * 5
    return (centres[labels] + spread * rng.standard_normal((len(labels), 16))).astype(
        np.float32), labels


@pytest.mark.parametrize("n_way,k_shot,n_query", [(5, 1, 15), (3, 5, 10), (0, 2, 3)])
def test_episodes_are_disjoint_class_balanced_and_of_the_chosen_classes(n_way, k_shot,
                                                                         n_query):
    labels = uneven_labels()
    support, query = EpisodeSampler(labels, n_way, k_shot, n_query, seed=0).sample(200)
    n = n_way or 8
    assert support.shape == (200, n, k_shot) and query.shape == (200, n, n_query)
    both = np.concatenate([support, query], axis=2)                  # (E, N, K + Q)
    for e in range(200):
        assert len(np.unique(both[e])) == both[e].size               # no index twice
        classes = labels[both[e]]
        assert (classes == classes[:, :1]).all()                     # row n: one class
        assert len(np.unique(classes[:, 0])) == n                    # N distinct classes


def test_every_sample_and_class_gets_drawn():
    labels = uneven_labels()
    support, query = EpisodeSampler(labels, 5, 1, 15, seed=0).sample(400)
    assert len(np.unique(np.concatenate([support.ravel(), query.ravel()]))) == len(labels)


def test_support_positions_are_uniform_within_a_class():
    """Floyd's subsets are reordered: each sample of a class is a support shot equally often."""
    labels = np.repeat([0, 1], 10)
    support, _ = EpisodeSampler(labels, 2, 1, 3, seed=0).sample(20_000)
    counts = np.bincount(support.ravel(), minlength=20)
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_same_seed_same_episodes_other_seed_other_episodes():
    labels = uneven_labels()
    a = EpisodeSampler(labels, 5, 1, 15, seed=7).sample(50)
    b = EpisodeSampler(labels, 5, 1, 15, seed=7).sample(50)
    c = EpisodeSampler(labels, 5, 1, 15, seed=8).sample(50)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_too_few_samples_or_classes_is_a_config_error():
    labels = np.repeat(np.arange(4), 5)
    with pytest.raises(ConfigError, match="fewshot_queries"):
        EpisodeSampler(labels, 3, 1, 5, seed=0)
    with pytest.raises(ConfigError, match="fewshot_ways"):
        EpisodeSampler(labels, 5, 1, 2, seed=0)


def test_ci95_is_1_96_population_std_over_sqrt_episodes():
    accs = np.array([0.5, 0.7, 0.9, 0.6])
    mean, ci = mean_ci95(accs)
    assert mean == pytest.approx(0.675)
    assert ci == pytest.approx(1.96 * np.sqrt(np.mean((accs - 0.675) ** 2)) / 2)


def test_classifiers_match_a_per_episode_loop():
    feats, labels = clusters(6, 20, spread=6.0)
    f = F.normalize(torch.from_numpy(feats), dim=1)
    support, query = EpisodeSampler(labels, 4, 3, 5, seed=1).sample(30)
    got = episode_accuracies(f, support, query, chunk=7)
    for e in range(30):
        sup, qry = f[support[e]], f[query[e]]                        # (N, K, D), (N, Q, D)
        proto = F.normalize(sup.mean(1), dim=1)
        truth = np.repeat(np.arange(4), 5)
        pred = (qry.reshape(-1, 16) @ proto.T).argmax(1).numpy()
        assert got["proto"][e] == pytest.approx(np.mean(pred == truth))
        nearest = (qry.reshape(-1, 16) @ sup.reshape(-1, 16).T).argmax(1).numpy() // 3
        assert got["nn1"][e] == pytest.approx(np.mean(nearest == truth))


def test_separable_classes_score_perfectly_and_random_ones_near_chance():
    feats, labels = clusters(10, 30, spread=0.1)
    out = episodic_fewshot(feats, labels, ways=[5, 0], shots=[1], n_query=5, episodes=600,
                           seed=0)
    assert set(out) == {f"fewshot_{w}way_1shot_{c}_{s}" for w in (5, "all")
                        for c in ("proto", "nn1") for s in ("mean", "ci95")}
    assert out["fewshot_5way_1shot_proto_mean"] == 1.0
    assert out["fewshot_allway_1shot_nn1_mean"] == 1.0
    noise = np.random.default_rng(0).standard_normal(feats.shape).astype(np.float32)
    chance = episodic_fewshot(noise, labels, [5], [1], 5, 600, seed=0)
    assert abs(chance["fewshot_5way_1shot_proto_mean"] - 0.2) < 0.03
    assert 0 < chance["fewshot_5way_1shot_proto_ci95"] < 0.02


def test_release_protocol_is_knn_of_novel_test_on_novel_train():
    feats, labels = clusters(5, 20, spread=4.0)
    bank, queries = slice(0, None, 2), slice(1, None, 2)
    got = release_fewshot(feats[bank], labels[bank], feats[queries], labels[queries], [1, 2, 5])
    assert got == knn_accuracy(feats[bank], labels[bank], feats[queries], labels[queries],
                               [1, 2, 5])
