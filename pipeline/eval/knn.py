"""Cosine k-nearest-neighbour classification, equal to scikit-learn's, at matmul speed.

Usage::

    preds = knn_predict(bank, bank_labels, queries, ks=[1, 2, 5, 10])   # {k: (Nq,) labels}
    accs = knn_accuracy(bank, bank_labels, queries, query_labels, ks=[1])  # {k: accuracy}

The public STARS/MAMP release scores kNN with
``KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(bank, y).predict(queries)``;
`knn_predict` returns exactly those predictions. How:

- Features are L2-normalised and the cosine similarity is taken by chunked float32 matrix
  products (torch, CPU or GPU), keeping the top k+1 per query with `topk`.
- Vote: uniform majority over the k neighbours' labels; among tied counts the smallest label
  wins, as in scikit-learn (`scipy.stats.mode` over the label codes).
- The vote depends only on *which* k bank points are nearest. That set is certain when the
  k-th and (k+1)-th similarities differ by more than twice the worst-case float32 error of
  a cosine in D dimensions (`_gap_tol`). Otherwise (a near-tie or an exact tie, e.g.
  duplicate bank points) scikit-learn's answer is fixed by its own rounding and by
  `np.argpartition`'s order among equal distances, which is unspecified; for those few
  queries we ask scikit-learn's brute-force `kneighbors` for the neighbour set itself.
  Real features hit this for a fraction of a percent of queries.
  Residual caveat: scikit-learn computes a single-row chunk with a matrix-vector product
  whose rounding differs from the matrix product; we never query it with one row (a lone
  ambiguous query is sent twice), so only a query that scikit-learn itself places alone in
  its last distance chunk could still differ, and only if it is also a near-tie.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from pipeline.core.errors import ConfigError

_EPS32 = 2.0 ** -24  # unit roundoff of float32


def _gap_tol(dim: int) -> float:
    """Similarity gap below which our float32 ranking may disagree with scikit-learn's.

    Each side's cosine of unit vectors is within (D + 4) u of the exact value (dot product
    bound D u, normalisation and 1 - s rounding a few u more), so two similarities can swap
    order only if they are within 2 x 2 (D + 4) u of each other.
    """
    return 4.0 * (dim + 4) * _EPS32


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """TF32 / bf16 matmuls (if a training script enabled them) would break `_gap_tol`."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _vote(codes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Majority label code per row of `codes` (Nq, k); ties go to the smallest code."""
    counts = torch.zeros(codes.shape[0], n_classes, device=codes.device)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=counts.dtype))
    return counts.argmax(dim=1)  # first maximum = smallest code among tied counts


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
                ks: Sequence[int], device: str | torch.device | None = None,
                chunk: int = 2048) -> dict[int, np.ndarray]:
    """Cosine kNN predictions for each k in `ks`, identical to scikit-learn's (module doc).

    bank (Nb, D), bank_labels (Nb,), queries (Nq, D); returns {k: labels (Nq,)} in the
    dtype of `bank_labels`. `chunk` queries are scored per matrix product.
    """
    ks = sorted({int(k) for k in ks})
    n_bank, dim = bank.shape
    if ks[0] < 1 or ks[-1] > n_bank:
        raise ConfigError(f"kNN k {ks} is invalid for a bank of {n_bank} samples: lower "
                          "eval.knn_k, eval.fewshot_knn_k or tune.val_k")
    classes, bank_codes = np.unique(bank_labels, return_inverse=True)
    device = torch.device(device or "cpu")
    # keep one extra neighbour to see the gap between the k-th and the (k+1)-th
    m = min(ks[-1] + 1, n_bank)
    tol = _gap_tol(dim)

    codes_t = torch.from_numpy(bank_codes.astype(np.int64)).to(device)
    bank_t = F.normalize(torch.as_tensor(bank, dtype=torch.float32).to(device), dim=1)
    preds = {k: torch.empty(len(queries), dtype=torch.int64, device=device) for k in ks}
    ambiguous = {k: [] for k in ks}
    with torch.inference_mode(), _full_fp32_matmul():
        # One similarity buffer for every chunk: fresh 300 MB allocations per chunk cost
        # page faults worth ~30% of the product time on the CPU (benchmarks/RESULTS.md).
        buf = torch.empty(min(chunk, len(queries)), n_bank, device=device)
        for start in range(0, len(queries), chunk):
            q = torch.as_tensor(queries[start:start + chunk], dtype=torch.float32).to(device)
            sim = torch.mm(F.normalize(q, dim=1), bank_t.T, out=buf[:len(q)])  # (c, Nb)
            top_sim, top_idx = sim.topk(m, dim=1)                   # (c, m), descending
            for k in ks:
                preds[k][start:start + len(q)] = _vote(codes_t[top_idx[:, :k]], len(classes))
                if k < n_bank:
                    near_tie = (top_sim[:, k - 1] - top_sim[:, k]) <= tol
                    ambiguous[k].append(start + near_tie.nonzero().flatten())

    out = {k: preds[k].cpu().numpy() for k in ks}
    near_ties = {k: torch.cat(v).cpu().numpy() for k, v in ambiguous.items() if v}
    near_ties = {k: rows for k, rows in near_ties.items() if len(rows)}
    if near_ties:
        nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(bank)
    for k, rows in near_ties.items():
        # two rows at least: scikit-learn's one-row product rounds differently (module doc)
        asked = np.concatenate([rows, rows[:1]]) if len(rows) == 1 else rows
        idx = nn.kneighbors(queries[asked], n_neighbors=k, return_distance=False)
        votes = _vote(torch.from_numpy(bank_codes[idx].astype(np.int64)), len(classes))
        out[k][rows] = votes.numpy()[:len(rows)]
    return {k: classes[out[k]] for k in ks}


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
                 query_labels: np.ndarray, ks: Sequence[int],
                 device: str | torch.device | None = None) -> dict[int, float]:
    """Top-1 accuracy of `knn_predict` for each k."""
    preds = knn_predict(bank, bank_labels, queries, ks, device=device)
    return {k: float(np.mean(p == query_labels)) for k, p in preds.items()}
