"""A stratified validation split, for honest model selection (tuning, `eval.select: val`).

Usage::

    train_rows, val_rows = split_validation(rows, labels[rows], fraction=0.1, seed=0)
"""

from __future__ import annotations

import numpy as np


def split_validation(rows: np.ndarray, labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `rows` (labels aligned) into (train, val), both sorted: each class
    gives round(fraction * n) samples to val, at least 1 and at most n - 1 (so it stays in the
    kNN bank), none when fraction is 0 or the class has a single sample."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = rows[labels == c]
        if fraction == 0 or len(members) < 2:
            continue
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        val.append(rng.permutation(members)[:k])
    val_rows = np.sort(np.concatenate(val)) if val else np.array([], dtype=rows.dtype)
    return np.setdiff1d(rows, val_rows), val_rows
