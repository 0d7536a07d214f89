"""Seeded, class-stratified subsets of a split: the labelled fraction of the semi-supervised
protocol.

Usage::

    rows = store.select(split="train", novel=False)
    labelled = stratified_subset(rows, labels[rows], fraction=0.01, seed=3)   # sorted rows

Each class keeps round(fraction * its size) samples, at least one, drawn by a generator seeded
from (seed, class label) alone: the subset depends on nothing but the rows, their labels, the
fraction and the seed, so every process of a distributed run (and every process count) draws
the same one, and each seed a different one. (The release draws `int(N * fraction)` samples
unstratified from the global numpy generator, seeded by the process rank: one subset per GPU,
the same one in every repeat.)
"""

from __future__ import annotations

import numpy as np


def stratified_subset(rows: np.ndarray, labels: np.ndarray, fraction: float,
                      seed: int) -> np.ndarray:
    """Sorted subset of `rows` (labels aligned): per class max(1, round(fraction * n)) rows."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} outside (0, 1]")
    picked = []
    for c in np.unique(labels):
        members = np.sort(rows[labels == c])   # the subset ignores the order of `rows`
        k = min(max(round(fraction * len(members)), 1), len(members))
        rng = np.random.default_rng([seed, int(c)])
        picked.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(picked)) if picked else rows[:0]
