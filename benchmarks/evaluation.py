"""Evaluation speed: feature extraction, kNN at NTU-60 X-Sub scale, linear probe (both modes).

Each function is one benchmark job run by `benchmarks.run` in a subprocess of its own.
Features for the cached probe are random unit vectors of the real sizes. kNN features are
clustered (60 classes, neighbours at cosine about 0.6-0.8 as trained features have them):
the candidates that the low-precision screening keeps depend on how crowded the
neighbourhoods are.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    bf16_measurable,
    cuda_sync,
    encoder_flops,
    median_time,
    paper_model,
    tiny_model,
)
from pipeline.core.config import EvalConfig, to_dict
from pipeline.core.tracking import NullTracker
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.store import SampleMeta, Store, StoreWriter
from pipeline.data.transforms import TrainTransform
from pipeline.eval.knn import DTYPES, knn_predict, screening_precision
from pipeline.eval.linear_probe import probe_cached, probe_paper
from pipeline.models.encoder import Encoder
from pipeline.training.loop import autocast

# NTU-60 X-Sub: 40,091 training and 16,487 test samples, 60 classes (DESIGN.md section 2).
XSUB_TRAIN, XSUB_TEST, XSUB_CLASSES = 40_091, 16_487, 60


def _unit_features(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def features(quick: bool = False, precision: str = "fp32", device: str = "cpu") -> dict:
    """Encoder forward_features throughput under inference_mode and the loop's autocast in
    `precision`, as `pipeline.eval.features.extract_features` runs it; paper size."""
    cfg, batch = (tiny_model(), 4) if quick else (paper_model(), 16)
    torch.manual_seed(0)
    encoder = Encoder(cfg).eval().to(device)
    x = torch.randn(batch, cfg.actors, cfg.frames, cfg.joints, 3, device=device)  # N M T V C

    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, precision):
            return encoder.forward_features(x)

    sec, times = median_time(run, repeats=2 if quick else 3, warmup=1, sync=cuda_sync)
    return {"model": to_dict(cfg), "batch": batch, "step_s": sec, "times": times,
            "precision": precision, "forward_gflop_per_sample": encoder_flops(cfg)["forward"] / 1e9}


def clustered_features(n_bank: int, n_query: int, dim: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bank (n_bank, dim), its labels, queries: 60 class means plus noise of the same norm."""
    means = rng.standard_normal((XSUB_CLASSES, dim), dtype=np.float32)
    labels = rng.integers(0, XSUB_CLASSES, n_bank)
    noise = rng.standard_normal((n_bank + n_query, dim), dtype=np.float32)
    rows = means[np.concatenate([labels, rng.integers(0, XSUB_CLASSES, n_query)])] + noise
    return rows[:n_bank], labels, rows[n_bank:]


def knn(quick: bool = False) -> dict:
    """k = 1 cosine kNN, ours with every screening precision that pays here (side by side)
    vs scikit-learn's brute force, on the same clustered features."""
    from sklearn.neighbors import KNeighborsClassifier

    n_bank, n_query, dim = (2000, 500, 64) if quick else (XSUB_TRAIN, XSUB_TEST, 256)
    rng = np.random.default_rng(0)
    bank, labels, queries = clustered_features(n_bank, n_query, dim, rng)
    repeats = 1 if quick else 3
    # a bf16 screening without native kernels would take minutes: "auto" never picks it
    screenings = ("fp32", "bf16") if bf16_measurable(quick) else ("fp32",)
    preds: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {p: [] for p in screenings}
    for _ in range(repeats):        # alternate, so all see the same load
        for precision in screenings:
            start = time.perf_counter()
            preds[precision] = knn_predict(bank, labels, queries, ks=[1],
                                           precision=precision)[1]
            times[precision].append(time.perf_counter() - start)
    theirs = {}

    def sklearn_predict() -> None:
        clf = KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute")
        theirs[1] = clf.fit(bank, labels).predict(queries)

    sk_s, sk_times = median_time(sklearn_predict, repeats=1 if quick else 2, warmup=0)
    # The shape's own floor: one plain product queries @ bank^T in the screening precision.
    # With an inner dimension of only 256 it runs well below the 4096^3 ceiling.
    q_t, b_t = torch.from_numpy(queries), torch.from_numpy(bank)
    products = {}
    for precision in screenings:
        q, b = q_t.to(DTYPES[precision]), b_t.to(DTYPES[precision])
        products[precision] = median_time(lambda q=q, b=b: q @ b.T, repeats, warmup=1)[0]
    auto = screening_precision("auto", torch.device("cpu"))
    return {"bank": n_bank, "queries": n_query, "dim": dim,
            "product_gflop": 2 * n_bank * n_query * dim / 1e9, "auto": auto,
            "ours_s": statistics.median(times[auto]),
            "screening_s": {p: statistics.median(t) for p, t in times.items()},
            "screening_times": times, "product_s": products,
            "sklearn_s": sk_s, "sklearn_times": sk_times,
            **_agreement(bank, labels, queries, preds, theirs[1])}


def _agreement(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray,
               ours: dict[str, np.ndarray], sklearn: np.ndarray) -> dict:
    """Every screening must give the same predictions. Where plain scikit-learn differs, its
    BLAS rounding decided a near-tie: those rows are re-checked against the correctly rounded
    distances (float64 products of the normalised rows) with scikit-learn's argpartition."""
    from sklearn.preprocessing import normalize

    first = next(iter(ours.values()))
    rows = np.flatnonzero(first != sklearn)
    exact = rows
    if len(rows):
        b, q = (normalize(normalize(x)).astype(np.float64) for x in (bank, queries[rows]))
        dist = np.clip(1 - (q @ b.T).astype(np.float32), 0, 2)
        exact = labels[np.argpartition(dist, 0, axis=1)[:, 0]]
    same = all(np.array_equal(first, p) for p in ours.values())
    return {"identical": bool(same and np.array_equal(first[rows], exact)),
            "sklearn_blas_differences": len(rows)}


def _random_store(path: Path, n: int, classes: int, rng: np.random.Generator) -> Store:
    """n samples of 60-150 frames (one actor, the second absent) in a real packed store."""
    names = [f"class{c}" for c in range(classes)]
    with StoreWriter(path, dataset="synthetic", benchmark="xsub", class_names=names) as w:
        for i in range(n):
            frames = np.zeros((int(rng.integers(60, 151)), 2, 25, 3), np.float32)
            frames[:, 0] = rng.standard_normal((len(frames), 25, 3)).cumsum(0) * 0.01
            w.add(SampleMeta(name=f"S001C001P{i + 1:03d}R001A{i % classes + 1:03d}",
                             label=i % classes, performer=i + 1, camera=1, setup=1,
                             replication=1, split="train"), frames)
    return Store.open(path)


def probe(quick: bool = False) -> dict:
    """Linear probe time. Cached: `probe_epochs` epochs on NTU-60 X-Sub-sized features.
    Paper: one epoch through the frozen paper-size encoder (train transform, `fit`) on a
    small store, extrapolated per sample to the X-Sub train split."""
    cfg = EvalConfig()
    rng = np.random.default_rng(0)
    n_train, n_test, dim = (1000, 200, 32) if quick else (XSUB_TRAIN, XSUB_TEST, 256)
    cached_cfg = EvalConfig(probe_epochs=2) if quick else cfg
    train_labels = rng.integers(0, XSUB_CLASSES, n_train)
    test_labels = rng.integers(0, XSUB_CLASSES, n_test)
    train_feats, test_feats = _unit_features(n_train, dim, rng), _unit_features(n_test, dim, rng)
    start = time.perf_counter()
    probe_cached(train_feats, train_labels, test_feats, test_labels, cached_cfg)
    cached_s = time.perf_counter() - start

    model_cfg, n, batch = (tiny_model(), 8, 4) if quick else (paper_model(), 48, 16)
    paper_cfg = EvalConfig(probe_epochs=1, probe_batch_size=batch)
    classes = 4
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        store = _random_store(Path(tmp) / "store", n, classes, rng)
        dataset = SkeletonDataset(store, np.arange(n), TrainTransform(model_cfg.frames))
        labels = store.index["label"].to_numpy()
        torch.manual_seed(0)
        encoder = Encoder(model_cfg)
        test_labels = np.arange(2 * classes) % classes
        test_feats = _unit_features(len(test_labels), model_cfg.dim, rng)
        start = time.perf_counter()
        probe_paper(encoder, dataset, labels, test_feats, test_labels, paper_cfg,
                    ckpt_dir=Path(tmp) / "ckpt", config={}, fingerprint="bench",
                    tracker=NullTracker(), workers=0)
        paper_s = time.perf_counter() - start
    per_sample = paper_s / n
    return {"cached_epochs": cached_cfg.probe_epochs, "cached_train": n_train,
            "cached_batch": cached_cfg.probe_batch_size, "cached_s": cached_s,
            "paper_model": to_dict(model_cfg), "paper_samples": n, "paper_batch": batch,
            "paper_measured_s": paper_s, "paper_s_per_sample": per_sample,
            "paper_epoch_s_xsub": per_sample * XSUB_TRAIN,
            "paper_total_s_xsub": per_sample * XSUB_TRAIN * cfg.probe_epochs,
            "paper_epochs": cfg.probe_epochs}
