"""preprocess: raw `.skeleton` folder -> store, every file accounted for in the metrics."""

import json

import numpy as np
import pytest

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.data.preprocess import preprocess
from pipeline.data.store import Store, fingerprint
from tests.data.test_ntu_reader import skeleton_text, standing


def write_file(folder, name, rng, frames=20, bodies=1, text=None):
    folder.mkdir(parents=True, exist_ok=True)
    if text is None:
        poses = [standing(rng, 1.0 * b, frames) + rng.normal(0, 0.02 * (b + 1), (frames, 25, 3))
                 for b in range(bodies)]
        text = skeleton_text([[(100 + b, poses[b][t]) for b in range(bodies)]
                              for t in range(frames)])
    (folder / name).write_text(text)


def synthetic_raw(tmp_path):
    raw, rng = tmp_path / "raw", np.random.default_rng(0)
    write_file(raw, "S001C001P001R001A001.skeleton", rng)  # train
    write_file(raw, "S001C002P002R001A002.skeleton", rng, bodies=2)  # train, two actors
    write_file(raw, "S001C003P003R001A001.skeleton", rng)  # test (performer 3)
    write_file(raw, "S001C001P001R001A003.skeleton", rng)  # novel class
    write_file(raw, "S001C001P002R001A003.skeleton", rng, frames=30)  # novel class
    good = skeleton_text([[(1, standing(rng)[0])]] * 3)
    write_file(raw, "S001C002P003R002A002.skeleton", rng, text=good[:-200])  # truncated
    write_file(raw, "notes.skeleton", rng, text=good)  # bad name
    (raw / "dataset.json").write_text(json.dumps({"class_names": ["a", "b", "c"],
                                                  "novel_labels": [2]}))
    return raw


def run(raw, out, workers=2, on_error="skip", source="synthetic", novel_dir=""):
    return preprocess(DataConfig(source=source, benchmark="xsub", raw_dir=str(raw),
                                 novel_dir=novel_dir),
                      PreprocessConfig(workers=workers, on_error=on_error), out)


def accounted(m):
    return (sum(m["samples"].values()) + m["skipped"]["count"] + m["missing_samples"]
            + m["outside_dataset"])


def test_synthetic_end_to_end_metrics_add_up_and_bad_files_are_skipped(tmp_path):
    m = run(synthetic_raw(tmp_path), tmp_path / "store")
    assert m["files_seen"] == 7 and accounted(m) == 7
    assert m["samples"] == {"train": 2, "test": 1, "novel": 2}
    assert m["skipped"] == {"count": 2, "bad_name": 1, "truncated": 1}
    raw = tmp_path / "raw"
    assert [(i["file"], i["category"]) for i in m["issues"]] == [
        (str(raw / "S001C002P003R002A002.skeleton"), "truncated"),
        (str(raw / "notes.skeleton"), "bad_name")]
    assert m["issues"][0]["message"].startswith(f"{raw / 'S001C002P003R002A002.skeleton'}:")
    store = Store.open(tmp_path / "store")
    assert store.index["name"].tolist() == sorted(store.index["name"])  # name order
    assert store.index["label"].tolist() == [0, 2, 2, 1, 0]
    assert store.index["novel"].tolist() == [False, True, True, False, False]
    assert store.index["split"].tolist() == ["train", "train", "train", "train", "test"]
    assert store.index["actors"].tolist() == [1, 1, 1, 2, 1]
    assert m["frames"] == store.meta["frames_shape"][0] == 20 * 4 + 30
    assert store.meta["class_names"] == ["a", "b", "c"] and store.meta["novel_labels"] == [2]
    assert len(store.meta["source_fingerprint"]) == 64
    for i in range(len(store)):  # centred on actor 1's spine mid in the first frame
        assert (store.sample(i)[0, 0, 1] == 0).all()


def test_store_is_identical_for_one_and_two_workers(tmp_path):
    raw = synthetic_raw(tmp_path)
    run(raw, tmp_path / "one", workers=1)
    run(raw, tmp_path / "two", workers=2)
    assert fingerprint(tmp_path / "one") == fingerprint(tmp_path / "two")


def test_on_error_raise_stops_with_the_files_line_and_writes_nothing(tmp_path):
    raw = synthetic_raw(tmp_path)
    (raw / "notes.skeleton").unlink()
    with pytest.raises(DataError, match=r"S001C002P003R002A002.skeleton:\d+: expected .*, got"):
        run(raw, tmp_path / "store", on_error="raise")
    assert not (tmp_path / "store").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_missing_or_empty_raw_dir_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nope'}: raw data folder not found"):
        run(tmp_path / "nope", tmp_path / "store")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .skeleton files"):
        run(tmp_path / "empty", tmp_path / "store")
    raw = synthetic_raw(tmp_path)
    (raw / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json: missing; regenerate"):
        run(raw, tmp_path / "store")


def test_ntu60_drops_official_missing_samples_and_adds_novel_ntu120_classes(tmp_path):
    rng = np.random.default_rng(1)
    raw, novel = tmp_path / "ntu60", tmp_path / "ntu120"
    write_file(raw, "S001C001P001R001A001.skeleton", rng)  # train
    write_file(raw, "S001C001P003R001A002.skeleton", rng)  # test
    write_file(raw, "S001C002P005R002A008.skeleton", rng, text="")  # official missing: unread
    write_file(raw, "S018C001P050R001A001.skeleton", rng)  # NTU-120 setup: outside NTU-60
    write_file(raw, "S001C001P001R001A061.skeleton", rng)  # NTU-120 action: outside NTU-60
    write_file(novel, "S018C001P045R001A061.skeleton", rng)  # novel, NTU-120 train performer
    write_file(novel, "S018C001P044R001A062.skeleton", rng)  # novel, NTU-120 test performer
    write_file(novel, "S018C001P050R001A001.skeleton", rng)  # base class: not novel, outside
    m = run(raw, tmp_path / "store", source="ntu60", novel_dir=str(novel))
    assert m["files_seen"] == 8 and accounted(m) == 8
    assert m["samples"] == {"train": 1, "test": 1, "novel": 2}
    assert m["missing_samples"] == 1 and m["outside_dataset"] == 3 and m["skipped"]["count"] == 0
    store = Store.open(tmp_path / "store")
    assert len(store.meta["class_names"]) == 120 and store.meta["novel_labels"] == list(range(60, 120))
    novel_rows = store.index[store.index["novel"]]
    assert novel_rows["label"].tolist() == [61, 60]  # sorted by name: P044 first
    assert novel_rows["split"].tolist() == ["test", "train"]
