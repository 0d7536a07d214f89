"""Cosine k-nearest-neighbour classification, equal to the release's scikit-learn kNN, fast.

Usage::

    preds = knn_predict(bank, bank_labels, queries, ks=[1, 2, 5, 10])   # {k: (Nq,) labels}
    accs = knn_accuracy(bank, bank_labels, queries, query_labels, ks=[1])  # {k: accuracy}
    preds = knn_predict(..., precision="fp32")   # screen in float32 whatever the device

The reference is the release's ``knn_eval``: rows L2-normalised by scikit-learn, then
``KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(bank, y).predict(queries)``.
That classifier takes, per query, the k smallest distances ``1 - cos`` (float32) with
``np.argpartition`` (which fixes the order among equal distances) and votes uniformly, the
smallest label winning tied counts. Its distances are float32 products whose rounding
depends on the BLAS kernel and on where a row sits in the product, so two identical bank
rows can come out one ulp apart on one machine and equal on another. We define the distance
as the correctly rounded one (float64 products of the float32 rows, rounded to float32):
identical rows tie exactly, as they did where the golden file
(tests/fixtures/release/expected_knn.pt) was made, and `knn_predict` reproduces it. Which of
several rows at exactly the k-th distance gets in is ``np.argpartition``'s choice, and that
depends on the SIMD kernel numpy picks for the CPU (AVX-512, AVX2 or baseline x86-64): the
release's own answer on such a tie differs between machines, and ours follows the machine's.

How, at close to the cost of one low-precision matrix product:

1. Screen: similarities by chunked bf16 products where the device has native bf16 kernels
   (a GPU, a CPU with AVX512-BF16 or AMX), float32 ones elsewhere (an AVX2 CPU runs bf16
   products about 100x slower than float32), top ``m`` per query. Each is within
   `_error_bound` of the exact cosine.
2. Candidates: with t the approximate kmax-th similarity, every bank row that can be among
   the k nearest (or tie with the k-th) has an approximate similarity >= t - 2e. When the
   m-th approximate similarity is below that (the usual case) the top m hold them all;
   otherwise the query takes every bank row above the threshold from the same product.
3. Re-score the candidates exactly (float64), sort, and vote over the k nearest. Only when
   the k-th and (k+1)-th exact distances are equal does the choice depend on
   ``np.argpartition``'s order: then the query's whole exact distance row goes through
   ``np.argpartition`` as scikit-learn's brute-force search does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sklearn.preprocessing import normalize

from pipeline.core.dist import native_bf16
from pipeline.core.errors import ConfigError

_EPS32 = 2.0 ** -24  # unit roundoff of float32
_UNIT = {"fp32": 0.0, "bf16": 2.0 ** -8}  # rounding of the screening inputs and output
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISIONS = tuple(_UNIT)


def screening_precision(precision: str, device: torch.device) -> str:
    """`precision` itself, or for "auto" the faster one on `device`: bf16 where it has native
    bf16 kernels, float32 elsewhere (predictions are the same either way)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in _UNIT:
        raise ConfigError(f"kNN precision {precision!r} is not one of "
                          f"{['auto', *PRECISIONS]}")
    return precision


def _error_bound(dim: int, precision: str) -> float:
    """Worst-case |screened - exact| cosine of two float32 unit rows in `precision`.

    Rounding both inputs to bf16 moves the dot product by at most (2u + u^2) |q| |b| with
    u = 2^-8; the float32 accumulation over D terms adds D u32 |q| |b|; a bf16 output is
    rounded once more (u |s|). |q| |b| <= n covers the float32 normalisation.
    """
    u, n = _UNIT[precision], 1.0 + 1e-4
    acc = dim * _EPS32 * n * (1 + u) ** 2
    return (2 * u + u * u) * n + acc + u * (n * (1 + u) ** 2 + acc)


# Float32 rounding of the exact cosine and of 1 - cos moves a distance by < 2^-22; a
# non-candidate must stay strictly farther than the k-th after that rounding.
_ROUNDING_MARGIN = 2.0 ** -20


@contextlib.contextmanager
def _plain_matmul() -> Iterator[None]:
    """TF32 or reduced-precision bf16 reductions (if a script enabled them) break the bound."""
    old = torch.get_float32_matmul_precision()
    cuda = torch.backends.cuda.matmul
    old_bf16 = cuda.allow_bf16_reduced_precision_reduction
    torch.set_float32_matmul_precision("highest")
    cuda.allow_bf16_reduced_precision_reduction = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
        cuda.allow_bf16_reduced_precision_reduction = old_bf16


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows as the release hands them to the classifier: its `normalize`, then the
    one inside scikit-learn's cosine distance."""
    return normalize(normalize(np.asarray(x, dtype=np.float32)))


def _distance(sim64: torch.Tensor) -> torch.Tensor:
    """scikit-learn's float32 cosine distance from float64 similarities: 1 - s, clipped."""
    return (1 - sim64.float()).clamp_(0.0, 2.0)


def _vote(codes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Majority label code per row of `codes` (Nq, k); ties go to the smallest code."""
    counts = torch.zeros(codes.shape[0], n_classes, device=codes.device)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=counts.dtype))
    return counts.argmax(dim=1)  # first maximum = smallest code among tied counts


def _candidates(sim: torch.Tensor, kmax: int, m: int, err: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank indices (c, w) that hold every possible k-nearest row of each query and a mask
    of the valid ones, from the screened similarities `sim` (c, Nb)."""
    top_sim, top_idx = sim.topk(m, dim=1)                               # descending
    floor = top_sim[:, kmax - 1].float() - (2 * err + _ROUNDING_MARGIN)
    inside = top_sim.float() >= floor[:, None]                          # a prefix of each row
    overflow = (inside[:, -1] & (m < sim.shape[1])).nonzero().flatten()
    if not len(overflow):   # only the rows above the floor need the exact re-score
        w = min(max(int(inside.sum(dim=1).max()), kmax + 1), m)
        return top_idx[:, :w], inside[:, :w]
    # rare: more rows than m near the boundary; take all of them from the same product
    wide = sim[overflow].float() >= floor[overflow, None]             # (r, Nb)
    w = int(wide.sum(dim=1).max())
    _, wide_idx = wide.to(torch.int8).topk(w, dim=1)                  # the True columns
    valid = torch.zeros(len(sim), w, dtype=torch.bool, device=sim.device)
    idx = torch.zeros(len(sim), w, dtype=torch.int64, device=sim.device)
    valid[:, :m], idx[:, :m] = inside, top_idx
    valid[overflow] = wide.gather(1, wide_idx)
    idx[overflow] = wide_idx
    return idx, valid


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
                ks: Sequence[int], device: str | torch.device | None = None,
                chunk: int = 2048, precision: str = "auto",
                slack: int = 32) -> dict[int, np.ndarray]:
    """Cosine kNN predictions for each k in `ks`, identical to the release's (module doc).

    bank (Nb, D), bank_labels (Nb,), queries (Nq, D); returns {k: labels (Nq,)} in the
    dtype of `bank_labels`. `chunk` queries are screened per matrix product in `precision`
    ("auto", "bf16" or "fp32"; `screening_precision`); `slack` extra neighbours are kept per
    query beyond the largest k.
    """
    ks = sorted({int(k) for k in ks})
    n_bank, dim = bank.shape
    if ks[0] < 1 or ks[-1] > n_bank:
        raise ConfigError(f"kNN k {ks} is invalid for a bank of {n_bank} samples: lower "
                          "eval.knn_k, eval.fewshot_knn_k or tune.val_k")
    classes, bank_codes = np.unique(bank_labels, return_inverse=True)
    device = torch.device(device or "cpu")
    precision = screening_precision(precision, device)
    kmax, m = ks[-1], min(ks[-1] + slack, n_bank)
    err = _error_bound(dim, precision)

    bank_np, queries_np = _unit_rows(bank), _unit_rows(queries)
    bank32 = torch.from_numpy(bank_np).to(device)
    bank_low = bank32.to(DTYPES[precision])
    codes_t = torch.from_numpy(bank_codes.astype(np.int64)).to(device)
    preds = {k: torch.empty(len(queries_np), dtype=torch.int64, device=device) for k in ks}
    tied: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    with torch.inference_mode(), _plain_matmul():
        for start in range(0, len(queries_np), chunk):
            q32 = torch.from_numpy(queries_np[start:start + chunk]).to(device)
            sim = q32.to(DTYPES[precision]) @ bank_low.T                # (c, Nb) screened
            idx, valid = _candidates(sim, kmax, m, err)
            del sim
            # float64 products of float32 values are exact: the sum is the exact cosine
            exact = torch.einsum("cwd,cd->cw", bank32[idx].double(), q32.double())  # (c, w)
            dist = _distance(exact).masked_fill_(~valid, torch.inf)
            dist, order = dist.sort(dim=1, stable=True)
            nearest = idx.gather(1, order)
            for k in ks:
                preds[k][start:start + len(q32)] = _vote(codes_t[nearest[:, :k]], len(classes))
                if k < n_bank:  # exact tie across the boundary: np.argpartition decides
                    tie = dist[:, k - 1] == dist[:, k]
                    tied[k].append(start + tie.nonzero().flatten())

    out = {k: preds[k].cpu().numpy() for k in ks}
    for k, rows in tied.items():
        rows = torch.cat(rows).cpu().numpy() if rows else np.empty(0, dtype=np.int64)
        if len(rows):
            out[k][rows] = _argpartition_vote(bank32, bank_codes, queries_np[rows], k,
                                              len(classes))
    return {k: classes[out[k]] for k in ks}


def _argpartition_vote(bank32: torch.Tensor, bank_codes: np.ndarray, queries: np.ndarray,
                       k: int, n_classes: int) -> np.ndarray:
    """Vote over the k neighbours scikit-learn's brute-force search picks from the whole
    exact distance row: the first k of ``np.argpartition(dist, k - 1)``."""
    with torch.inference_mode():
        q64 = torch.from_numpy(queries).to(bank32.device).double()
        dist = _distance(q64 @ bank32.double().T).cpu().numpy()
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
    return _vote(torch.from_numpy(bank_codes[idx].astype(np.int64)), n_classes).numpy()


def knn_accuracy(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
                 query_labels: np.ndarray, ks: Sequence[int],
                 device: str | torch.device | None = None,
                 precision: str = "auto") -> dict[int, float]:
    """Top-1 accuracy of `knn_predict` for each k."""
    preds = knn_predict(bank, bank_labels, queries, ks, device=device, precision=precision)
    return {k: float(np.mean(p == query_labels)) for k, p in preds.items()}
