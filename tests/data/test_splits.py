"""NTU benchmarks and reference lists: split sizes must match DESIGN.md section 2 exactly."""

from collections import Counter
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.data import splits
from pipeline.data.ntu import SampleName, parse_name


@pytest.mark.parametrize("dataset,benchmark,train,test", [
    ("ntu60", "xsub", 40091, 16487), ("ntu60", "xview", 37646, 18932),
    ("ntu120", "xsub", 63026, 50919), ("ntu120", "xset", 54468, 59477)])
def test_split_sizes_of_available_samples_match_the_benchmarks(dataset, benchmark, train, test):
    names = splits.available_samples(dataset)
    counts = Counter(splits.split_of(dataset, benchmark, parse_name(n)) for n in names)
    assert counts == {"train": train, "test": test}


def test_missing_sample_lists_have_302_and_535_names_disjoint_from_available():
    for dataset, n in (("ntu60", 302), ("ntu120", 535)):
        missing = splits.missing_samples(dataset)
        assert len(missing) == n and not missing & set(splits.available_samples(dataset))


def test_synthetic_uses_ntu60_rules():
    s = SampleName(setup=1, camera=1, performer=3, replication=1, action=1)
    assert splits.split_of("synthetic", "xsub", s) == "test"
    assert splits.split_of("synthetic", "xsub", SampleName(1, 1, 2, 1, 1)) == "train"
    assert splits.split_of("synthetic", "xview", s) == "test"
    assert splits.split_of("synthetic", "xview", SampleName(1, 2, 3, 1, 1)) == "train"


def test_unknown_benchmark_for_dataset_is_a_data_error():
    with pytest.raises(DataError, match="benchmark 'xset': expected one of xsub, xview"):
        splits.split_of("ntu60", "xset", SampleName(1, 1, 1, 1, 1))


def test_reference_dir_defaults_to_the_shipped_lists_and_can_be_overridden(tmp_path):
    assert (splits.default_reference_dir() / "ntu120_classes.txt").is_file()
    assert len(splits.class_names("ntu60")) == 60 and len(splits.class_names("ntu120")) == 120
    (tmp_path / "ntu60_missing_skeletons.txt").write_text("S001C001P001R001A001\n\n")
    assert splits.missing_samples("ntu60", tmp_path) == {"S001C001P001R001A001"}
    with pytest.raises(DataError, match="ntu120_missing_skeletons.txt: reference list not found"):
        splits.missing_samples("ntu120", tmp_path)


def test_shipped_reference_lists_match_the_shared_originals():
    shared = Path(__file__).resolve().parents[3] / "shared" / "reference"
    if not shared.is_dir():
        pytest.skip("no shared/reference beside the repository to compare with")
    for original in shared.glob("*.txt"):
        assert (splits.default_reference_dir() / original.name).read_bytes() == \
            original.read_bytes(), original.name
