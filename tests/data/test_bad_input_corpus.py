"""Every case of the bad-input corpus (tests/data/bad_inputs.py) has its documented outcome:
valid files parse; under `on_error: raise` a malformed file stops with one line naming the
file and line; under `skip` it is skipped, reported with its reason, and the metrics account
for every input file. NTU files go through `preprocess` (reader + denoiser), PKU through
`convert_pku`."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.data.issues import CATEGORIES
from pipeline.data.pku import convert_pku
from pipeline.data.preprocess import preprocess
from pipeline.data.store import Store
from tests.data.bad_inputs import Case, write_corpus

NTU_BAD = ["ntu_truncated_mid_frame", "ntu_non_numeric_token", "ntu_wrong_joint_count",
           "ntu_body_count_mismatch", "ntu_binary_garbage", "ntu_empty", "ntu_gzip",
           "ntu_byte_order_mark", "ntu_frame_count_too_large", "ntu_comma_between_numbers",
           "ntu_compressed_name", "ntu_symlink_to_directory"]
PKU_BAD = ["pku_wrong_float_count", "pku_truncated_mid_line", "pku_non_numeric_token",
           "pku_binary_garbage", "pku_empty", "pku_label_out_of_range",
           "pku_label_start_after_end", "pku_label_outside_video", "pku_label_duplicate",
           "pku_label_not_numeric", "pku_comma_between_numbers", "pku_gzip",
           "pku_byte_order_mark"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Case]:
    return {c.name: c for c in write_corpus(tmp_path_factory.mktemp("corpus"))}


def ntu(raw: Path) -> DataConfig:
    return DataConfig(source="ntu60", benchmark="xsub", raw_dir=str(raw))


def pku(raw: Path) -> DataConfig:
    return DataConfig(source="pku1", benchmark="xsub", raw_dir=str(raw))


def copy_case(case: Case, dst: Path) -> Path:
    """A raw folder holding only this case (a PKU case keeps its skeleton + label pair)."""
    if case.fmt == "ntu":
        dst.mkdir()
        if case.path.is_symlink():
            (dst / case.path.name).symlink_to(case.path.readlink())
        else:
            shutil.copy(case.path, dst)
        return dst
    root, video = case.path.parents[1], case.path.name
    for sub in ("skeleton", "label"):
        (dst / sub).mkdir(parents=True)
        shutil.copy(root / sub / video, dst / sub)
    return dst


def assert_names(message: str, case: Case) -> None:
    assert "\n" not in message and "Traceback" not in message
    where = f"{case.path}:{case.line}:" if case.line else f"{case.path}:"
    assert where in message and case.reason in message, message


def test_every_malformed_case_has_a_known_category(corpus):
    assert all(c.category in CATEGORIES for c in corpus.values() if not c.valid)


def test_every_malformed_case_is_tested(corpus):
    assert {n for n, c in corpus.items() if not c.valid} == set(NTU_BAD + PKU_BAD)


@pytest.mark.parametrize("name", NTU_BAD)
def test_malformed_ntu_file_raises_one_line_naming_file_and_line(corpus, tmp_path, name):
    raw = copy_case(corpus[name], tmp_path / "raw")
    with pytest.raises(DataError) as e:
        preprocess(ntu(raw), PreprocessConfig(on_error="raise"), tmp_path / "store")
    assert_names(str(e.value).replace(str(raw), str(corpus[name].path.parent)), corpus[name])
    assert not (tmp_path / "store").exists()


def test_ntu_corpus_under_skip_stores_valid_files_and_reports_every_bad_one(corpus, tmp_path):
    m = preprocess(ntu(corpus["ntu_valid"].path.parent), PreprocessConfig(on_error="skip"),
                   tmp_path / "store")
    stored = sum(m["samples"].values())
    assert stored == 4  # valid, CRLF, leading spaces, NaN tokens
    assert m["files_seen"] == stored + m["skipped"]["count"] + m["missing_samples"] \
        + m["outside_dataset"] == 4 + len(NTU_BAD)
    issues = {Path(i["file"]): i for i in m["issues"]}
    for name in NTU_BAD:
        case = corpus[name]
        assert_names(issues[case.path]["message"], case)
        assert (issues[case.path]["line"], issues[case.path]["category"]) \
            == (case.line, case.category), name
    expected = Counter(corpus[name].category for name in NTU_BAD)
    assert m["skipped"] == {"count": len(NTU_BAD), **expected}
    # CRLF and indentation parse to the same sample; the NaN frame is dropped and counted
    store = Store.open(tmp_path / "store")
    by_name = {n: store.sample(i) for i, n in enumerate(store.index["name"])}
    np.testing.assert_array_equal(by_name["S001C001P001R001A001"], by_name["S001C001P001R001A002"])
    np.testing.assert_array_equal(by_name["S001C001P001R001A001"], by_name["S001C001P001R001A003"])
    assert m["nan_frames"] == 1 and len(by_name["S001C001P001R001A004"]) == 15


@pytest.mark.parametrize("name", PKU_BAD)
def test_malformed_pku_file_raises_one_line_naming_file_and_line(corpus, tmp_path, name):
    case = corpus[name]
    raw = copy_case(case, tmp_path / "raw")
    with pytest.raises(DataError) as e:
        convert_pku(pku(raw), PreprocessConfig(on_error="raise"), tmp_path / "store")
    assert_names(str(e.value).replace(str(raw), str(case.path.parents[1])), case)
    assert not (tmp_path / "store").exists()


def test_pku_corpus_under_skip_converts_valid_rows_and_reports_every_bad_one(corpus, tmp_path):
    raw = corpus["pku_valid"].path.parents[1]
    m = convert_pku(pku(raw), PreprocessConfig(on_error="skip"), tmp_path / "store")
    assert m["videos"] == 17 and m["videos_unlisted"] == 0
    assert m["videos_converted"] + m["videos_skipped"] == 17 and m["videos_skipped"] == 8
    assert m["label_rows"] == sum(m["samples"].values()) + m["rows_rejected"] + m["samples_empty"]
    issues = [(Path(i["file"]), i["line"], i["category"], i["message"]) for i in m["issues"]]
    for name in PKU_BAD:
        case = corpus[name]
        assert any(f == case.path and line == case.line and cat == case.category
                   and case.reason in message for f, line, cat, message in issues), name
    assert m["skipped"]["count"] == len(m["issues"]) == 14  # 8 videos, 6 label rows
    # 4 valid videos x 3 rows, plus the good rows of the label cases (1 + 1 + 1 + 2 + 1)
    assert m["samples"]["train"] == 18 and m["rows_rejected"] == 6
    store = Store.open(tmp_path / "store")
    by_name = {n: store.sample(i) for i, n in enumerate(store.index["name"])}
    for video in ("0002-M", "0002-R"):  # CRLF, leading spaces: same numbers as 0002-L
        np.testing.assert_array_equal(by_name[f"{video}_002"], by_name["0002-L_002"])
    assert m["nan_frames"] == 1 and len(by_name["0003-L_001"]) == 10


def test_valid_pku_variants_convert_under_raise(corpus, tmp_path):
    for name in ("pku_valid", "pku_crlf", "pku_leading_spaces", "pku_nan_tokens"):
        raw = copy_case(corpus[name], tmp_path / name)
        m = convert_pku(pku(raw), PreprocessConfig(on_error="raise"), tmp_path / f"{name}.s")
        assert m["samples"]["train"] == 3 and not m["issues"]
