"""The semi-supervised protocol's labelled subsets: seeded, stratified, process-independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.data.subsets import stratified_subset

# 3 classes of 100, 40 and 3 samples; rows are not 0..n-1, labels interleaved
LABELS = np.repeat([0, 1, 2], [100, 40, 3])[np.random.default_rng(0).permutation(143)]
ROWS = np.arange(143) * 7 + 5


def test_each_class_keeps_its_fraction_and_at_least_one_sample():
    rows = stratified_subset(ROWS, LABELS, 0.1, seed=0)
    picked = LABELS[np.searchsorted(ROWS, rows)]
    assert np.bincount(picked).tolist() == [10, 4, 1]      # round(0.3) = 0 -> at least one
    assert np.all(np.diff(rows) > 0) and set(rows) <= set(ROWS)
    assert np.bincount(LABELS[np.searchsorted(ROWS, stratified_subset(ROWS, LABELS, 0.001, 0))
                              ]).tolist() == [1, 1, 1]
    assert np.array_equal(stratified_subset(ROWS, LABELS, 1.0, 0), ROWS)


def test_same_seed_same_subset_whatever_the_global_generators_and_row_order():
    a = stratified_subset(ROWS, LABELS, 0.2, seed=3)
    np.random.seed(123)
    torch.manual_seed(123)
    order = np.random.default_rng(1).permutation(len(ROWS))
    b = stratified_subset(ROWS[order], LABELS[order], 0.2, seed=3)
    assert np.array_equal(a, b)


def test_the_subset_is_the_same_in_every_process_of_a_run(tmp_path):
    """What each rank of a 2-process run draws (here: 2 real processes) is one subset."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        subsets = pool.starmap(stratified_subset, [(ROWS, LABELS, 0.1, 5)] * 2)
    assert np.array_equal(subsets[0], subsets[1])
    assert np.array_equal(subsets[0], stratified_subset(ROWS, LABELS, 0.1, 5))


def test_different_seeds_draw_different_subsets():
    subsets = [tuple(stratified_subset(ROWS, LABELS, 0.1, seed=s)) for s in range(5)]
    assert len(set(subsets)) == 5


def test_fraction_outside_0_1_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        stratified_subset(ROWS, LABELS, 0.0, 0)
