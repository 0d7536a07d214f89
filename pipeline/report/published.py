"""The published STARS / MAMP numbers (DESIGN.md section 5, few-shot from section 4) as data.

Usage::

    rows = published("ntu60", "xsub")   # {"STARS (paper)": {"linear": 87.1, ...}, ...}

Accuracies are top-1 percent. A missing cell means the paper does not report it.
"""

from __future__ import annotations

# (dataset, benchmark) -> model -> column -> top-1 %. PKU-II is the cross-subject benchmark.
# Few-shot: the release's kNN (k=1) over a labelled bank of the 60 NTU-120 classes not in
# NTU-60, after pretraining and tuning on NTU-60 X-Sub (STARS paper; no MAMP figure given).
PUBLISHED: dict[tuple[str, str], dict[str, dict[str, float]]] = {
    ("ntu60", "xsub"): {"STARS": {"linear": 87.1, "knn_k1": 79.9, "fewshot": 63.5},
                        "MAMP": {"linear": 84.9}},
    ("ntu60", "xview"): {"STARS": {"linear": 90.9, "knn_k1": 88.6}, "MAMP": {"linear": 89.1}},
    ("ntu120", "xsub"): {"STARS": {"linear": 79.9, "knn_k1": 67.6}, "MAMP": {"linear": 78.6}},
    ("ntu120", "xset"): {"STARS": {"linear": 80.8, "knn_k1": 67.7}, "MAMP": {"linear": 79.1}},
    ("pku2", "xsub"): {"STARS": {"linear": 52.7}, "MAMP": {"linear": 53.8}},
}

DATASET_NAMES = {"ntu60": "NTU-60", "ntu120": "NTU-120", "pku1": "PKU-MMD I",
                 "pku2": "PKU-MMD II", "synthetic": "synthetic"}
BENCHMARK_NAMES = {"xsub": "X-Sub", "xview": "X-View", "xset": "X-Set"}


def published(dataset: str, benchmark: str) -> dict[str, dict[str, float]]:
    """Paper numbers for one benchmark, keyed by row label; empty when none were published."""
    rows = PUBLISHED.get((dataset, benchmark), {})
    return {f"{model} (paper)": cells for model, cells in rows.items()}


def benchmark_name(dataset: str, benchmark: str) -> str:
    """'ntu60', 'xsub' -> 'NTU-60 X-Sub'."""
    return f"{DATASET_NAMES.get(dataset, dataset)} {BENCHMARK_NAMES.get(benchmark, benchmark)}"
