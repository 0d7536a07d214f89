"""kNN: predictions identical to scikit-learn's cosine KNeighborsClassifier, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from pipeline.core.errors import ConfigError
from pipeline.eval import knn
from pipeline.eval.knn import knn_accuracy, knn_predict

KS = [1, 2, 5, 10]


def make_data(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bank (400, D), labels, queries (300, D) of one of several tie-prone kinds."""
    rng = np.random.default_rng(seed)
    n_classes = 60 if kind == "many_classes" else 5
    labels = rng.integers(0, n_classes, 400)
    if kind == "integer":   # 3-D integer vectors: many exactly equal cosines, not duplicates
        bank = rng.integers(-2, 3, (400, 3)).astype(np.float32)
        queries = rng.integers(-2, 3, (300, 3)).astype(np.float32)
        return bank, labels, queries
    bank = rng.standard_normal((400, 32)).astype(np.float32)
    queries = rng.standard_normal((300, 32)).astype(np.float32)
    if kind == "duplicates":  # repeated bank points with different labels; queries on them
        bank[100:200] = bank[:100]
        queries[:50] = bank[:50]
    return bank, labels, queries


def sklearn_predict(bank, labels, queries, k):
    return KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(bank, labels).predict(queries)


@pytest.mark.parametrize("kind", ["gaussian", "duplicates", "integer", "many_classes"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predictions_equal_sklearn(kind, seed):
    bank, labels, queries = make_data(kind, seed)
    ours = knn_predict(bank, labels, queries, KS, chunk=128)
    for k in KS:
        np.testing.assert_array_equal(ours[k], sklearn_predict(bank, labels, queries, k))


def test_tie_data_needs_the_near_tie_fallback(monkeypatch):
    """Guard that the tie test above tests something: without the fallback the float32
    top-k disagrees with scikit-learn on exactly tied neighbours."""
    bank, labels, queries = make_data("integer", 0)
    monkeypatch.setattr(knn, "_gap_tol", lambda dim: -1.0)
    ours = knn_predict(bank, labels, queries, [5])
    assert (ours[5] != sklearn_predict(bank, labels, queries, 5)).any()


def test_majority_tie_goes_to_the_smallest_label():
    # nearest first: labels 9, 3, 3; at k=2 the vote is 1-1, and 3 < 9 wins
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]], dtype=np.float32)
    labels = np.array([9, 3, 3])
    pred = knn_predict(bank, labels, np.array([[1.0, 0.1]], dtype=np.float32), [1, 2, 3])
    assert (pred[1][0], pred[2][0], pred[3][0]) == (9, 3, 3)


def test_float64_input_string_labels_and_single_query_match_sklearn():
    bank, labels, queries = make_data("duplicates", 3)
    names = np.array([f"class{i}" for i in range(5)])[labels]
    for rows in (slice(0, 1), slice(0, 300)):       # one (tied) query, and all
        q = queries[rows].astype(np.float64)
        ours = knn_predict(bank.astype(np.float64), names, q, [1, 5])
        for k in (1, 5):
            np.testing.assert_array_equal(ours[k], sklearn_predict(bank.astype(np.float64),
                                                                   names, q, k))


def test_accuracy_is_the_fraction_of_correct_predictions():
    bank, labels, queries = make_data("gaussian", 4)
    truth = sklearn_predict(bank, labels, queries, 1)
    truth[:30] = (truth[:30] + 1) % 5
    assert knn_accuracy(bank, labels, queries, truth, [1])[1] == pytest.approx(270 / 300)


def test_k_larger_than_the_bank_is_a_config_error_naming_the_keys():
    with pytest.raises(ConfigError, match=r"bank of 3 samples: lower eval\.knn_k"):
        knn_predict(np.eye(3, dtype=np.float32), np.arange(3), np.eye(3, dtype=np.float32), [4])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_predictions_equal_sklearn():
    bank, labels, queries = make_data("duplicates", 5)
    ours = knn_predict(bank, labels, queries, KS, device="cuda")
    for k in KS:
        np.testing.assert_array_equal(ours[k], sklearn_predict(bank, labels, queries, k))
