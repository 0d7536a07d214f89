"""The published STARS / MAMP numbers as data, each with the document it comes from.

Usage::

    rows = published("ntu60", "xsub")   # {"STARS (paper)": {"linear": 87.1, ...}, ...}
    cited = sources("ntu60", "xsub")    # the documents behind those cells

Accuracies are top-1 percent. Columns: `linear`, `knn_k1`, `finetune`, `semi_<fraction>`
(e.g. `semi_0.01`), `transfer` (fine-tuned on PKU-MMD II from encoders pretrained on this
benchmark's training data), `fewshot`. A missing cell means we found no published number we
could check against its source: it stays empty rather than guessed. (MAMP's paper also
reports semi-supervised and transfer results; they are not transcribed here until checked
against the paper.)
"""

from __future__ import annotations

SOURCES = {
    "stars_readme": "STARS README, Results table (github.com/TaatiTeam/STARS)",
    "stars_paper": "STARS paper, Mehraban et al. 2024 (arXiv 2407.10935), as read in "
                   "DESIGN.md sections 4-5",
    "mamp_paper": "MAMP paper, Mao et al., ICCV 2023 (arXiv 2308.07092), as read in "
                  "DESIGN.md section 5",
    "mamp_readme": "MAMP README, table of the released weights (github.com/maoyunyao/MAMP)",
}

# (dataset, benchmark) -> model -> column -> (top-1 %, SOURCES key). PKU-II: cross-subject.
# Few-shot: the release's kNN (k=1) over a labelled bank of the 60 NTU-120 classes not in
# NTU-60, after pretraining and tuning on NTU-60 X-Sub (STARS paper; no MAMP figure given).
PUBLISHED: dict[tuple[str, str], dict[str, dict[str, tuple[float, str]]]] = {
    ("ntu60", "xsub"): {
        "STARS": {"linear": (87.1, "stars_readme"), "knn_k1": (79.9, "stars_readme"),
                  "finetune": (93.0, "stars_readme"), "fewshot": (63.5, "stars_paper")},
        "MAMP": {"linear": (84.9, "mamp_paper"), "finetune": (93.0, "mamp_readme")}},
    ("ntu60", "xview"): {
        "STARS": {"linear": (90.9, "stars_readme"), "knn_k1": (88.6, "stars_readme"),
                  "finetune": (97.5, "stars_readme")},
        "MAMP": {"linear": (89.1, "mamp_paper"), "finetune": (97.5, "mamp_readme")}},
    ("ntu120", "xsub"): {
        "STARS": {"linear": (79.9, "stars_readme"), "knn_k1": (67.6, "stars_readme"),
                  "finetune": (89.9, "stars_readme")},
        "MAMP": {"linear": (78.6, "mamp_paper"), "finetune": (89.8, "mamp_readme")}},
    ("ntu120", "xset"): {
        "STARS": {"linear": (80.8, "stars_readme"), "knn_k1": (67.7, "stars_readme"),
                  "finetune": (91.4, "stars_readme")},
        "MAMP": {"linear": (79.1, "mamp_paper"), "finetune": (91.5, "mamp_readme")}},
    ("pku2", "xsub"): {
        "STARS": {"linear": (52.7, "stars_paper")},
        "MAMP": {"linear": (53.8, "stars_paper")}},   # MAMP retrained by the STARS authors
}

DATASET_NAMES = {"ntu60": "NTU-60", "ntu120": "NTU-120", "pku1": "PKU-MMD I",
                 "pku2": "PKU-MMD II", "synthetic": "synthetic"}
BENCHMARK_NAMES = {"xsub": "X-Sub", "xview": "X-View", "xset": "X-Set"}


def published(dataset: str, benchmark: str) -> dict[str, dict[str, float]]:
    """Paper numbers for one benchmark, keyed by row label; empty when none were published."""
    rows = PUBLISHED.get((dataset, benchmark), {})
    return {f"{model} (paper)": {col: value for col, (value, _) in cells.items()}
            for model, cells in rows.items()}


def sources(dataset: str, benchmark: str) -> list[str]:
    """The documents behind `published(dataset, benchmark)`, in a fixed order."""
    used = {src for cells in PUBLISHED.get((dataset, benchmark), {}).values()
            for _, src in cells.values()}
    return [text for key, text in SOURCES.items() if key in used]


def benchmark_name(dataset: str, benchmark: str) -> str:
    """'ntu60', 'xsub' -> 'NTU-60 X-Sub'."""
    return f"{DATASET_NAMES.get(dataset, dataset)} {BENCHMARK_NAMES.get(benchmark, benchmark)}"
