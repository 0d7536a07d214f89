"""NTU benchmarks (train/test membership from the file name) and the official missing-sample lists.

Usage::

    split_of("ntu60", "xsub", parse_name(path))        # "train" or "test"
    missing = missing_samples("ntu120")                 # set of names without skeletons
    names = available_samples("ntu60")                  # the 56,578 usable NTU-60 names

Rules (DESIGN.md section 2; the split sizes there follow from the available-sample lists):
NTU-60 X-Sub and NTU-120 X-Sub split by performer, NTU-60 X-View by camera (2, 3 train),
NTU-120 X-Set by setup parity (even train). The synthetic dataset uses the NTU-60 rules.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.data.ntu import SampleName

NTU60_TRAIN_PERFORMERS = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28,
                                    31, 34, 35, 38})
NTU120_TRAIN_PERFORMERS = NTU60_TRAIN_PERFORMERS | {
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103}
XVIEW_TRAIN_CAMERAS = frozenset({2, 3})
NTU60_SETUPS = 17  # S001-S017
NTU60_ACTIONS = 60  # A001-A060

BENCHMARKS = {"ntu60": ("xsub", "xview"), "synthetic": ("xsub", "xview"),
              "ntu120": ("xsub", "xset")}


def default_reference_dir() -> Path:
    """The reference lists shipped with the package (`pipeline/data/reference/`: class names,
    official missing-sample lists, available-sample lists, PKU-MMD phase I splits)."""
    return Path(__file__).resolve().parent / "reference"


def split_of(dataset: str, benchmark: str, s: SampleName) -> str:
    """'train' or 'test' for sample `s` under `dataset`'s `benchmark`."""
    if benchmark not in BENCHMARKS.get(dataset, ()):
        raise DataError(f"benchmark {benchmark!r}: expected one of "
                        f"{', '.join(BENCHMARKS.get(dataset, ()))} for dataset {dataset!r}")
    if benchmark == "xview":
        train = s.camera in XVIEW_TRAIN_CAMERAS
    elif benchmark == "xset":
        train = s.setup % 2 == 0
    elif dataset == "ntu120":
        train = s.performer in NTU120_TRAIN_PERFORMERS
    else:
        train = s.performer in NTU60_TRAIN_PERFORMERS
    return "train" if train else "test"


def in_ntu60(s: SampleName) -> bool:
    """NTU-60 is S001-S017 with A001-A060; NTU-120 adds S018-S032 and A061-A120."""
    return s.setup <= NTU60_SETUPS and s.action <= NTU60_ACTIONS


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: reference list not found; pass reference_dir pointing at a "
                        f"folder of the official lists (pipeline/data/reference/ has them)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def missing_samples(dataset: str, reference_dir: Path | None = None) -> set[str]:
    """Official names of samples whose skeletons are missing (302 for NTU-60, 535 for NTU-120)."""
    ref = Path(reference_dir) if reference_dir else default_reference_dir()
    return set(_read_names(ref / f"{dataset}_missing_skeletons.txt"))


def available_samples(dataset: str, reference_dir: Path | None = None) -> list[str]:
    """Every usable sample name (56,578 for NTU-60, 113,945 for NTU-120)."""
    ref = Path(reference_dir) if reference_dir else default_reference_dir()
    return _read_names(ref / f"{dataset}_available_samples.txt")


def class_names(dataset: str, reference_dir: Path | None = None) -> list[str]:
    """NTU action names, line i = action A(i); the first 60 are NTU-60."""
    ref = Path(reference_dir) if reference_dir else default_reference_dir()
    names = _read_names(ref / "ntu120_classes.txt")
    return names[:NTU60_ACTIONS] if dataset == "ntu60" else names
