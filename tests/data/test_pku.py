"""PKU-MMD phase I / II conversion: official splits, label rows, centring, store + Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.pku import centre, clean_actors, convert_pku, read_split, split_path
from pipeline.data.preprocess import preprocess
from pipeline.data.store import Store
from pipeline.data.transforms import TestTransform, TrainTransform


def moving_actor(rng: np.random.Generator, T: int, shift: float = 0.0) -> np.ndarray:
    """(T, 25, 3) a standing skeleton drifting in time, 3 m away."""
    pose = np.stack([rng.uniform(-0.2, 0.2, 25) + shift, np.linspace(-0.8, 0.8, 25),
                     3 + rng.uniform(-0.1, 0.1, 25)], axis=1)
    return pose + np.linspace(0, 0.2, T)[:, None, None] * rng.normal(size=3)


def write_video(raw: Path, video: str, frames: np.ndarray, labels: str, indent: str = "",
                skeleton_dir: str = "skeleton", label_dir: str = "label") -> None:
    """frames (T, 2, 25, 3) -> PKU text (150 numbers a line); labels verbatim."""
    (raw / skeleton_dir).mkdir(parents=True, exist_ok=True)
    (raw / label_dir).mkdir(parents=True, exist_ok=True)
    text = "\n".join(indent + " ".join(f"{v:.6f}" for v in f.ravel()) for f in frames)
    (raw / skeleton_dir / f"{video}.txt").write_text(text + "\n")
    (raw / label_dir / f"{video}.txt").write_text(labels)


def video(rng: np.random.Generator, T: int = 60, actors: int = 1) -> np.ndarray:
    frames = np.zeros((T, 2, 25, 3))
    for m in range(actors):
        frames[:, m] = moving_actor(rng, T, shift=m)
    return frames


def cfg(raw: Path, source: str = "pku1", benchmark: str = "xsub", split_dir: str = ""):
    return DataConfig(source=source, benchmark=benchmark, raw_dir=str(raw),
                      pku_split_dir=split_dir)


def check_dataset(store: Store) -> None:
    """Every sample reaches the training Dataset with its label, through both transforms."""
    for split, transform in (("train", TrainTransform(frames_out=8, crop_floor=4)),
                             ("test", TestTransform(frames_out=8))):
        rows = store.select(split=split, novel=False)
        ds = SkeletonDataset(store, rows, transform)
        for pos in range(len(ds)):
            item = ds[(pos, 123)]
            assert item["x"].shape == (2, 8, 25, 3)
            assert item["label"] == store.index["label"][rows[pos]]


def test_official_phase1_split_files_give_944_132_xsub_and_lr_m_xview():
    train, test = read_split(split_path("pku1", "xsub"))
    assert (len(train), len(test)) == (944, 132)
    train, test = read_split(split_path("pku1", "xview"))
    assert len(train) + len(test) == 1076
    assert {v[-1] for v in train} == {"L", "R"} and {v[-1] for v in test} == {"M"}


def test_phase1_rows_become_centred_samples_in_store_and_dataset(tmp_path):
    rng = np.random.default_rng(0)
    a, b = video(rng, 60, actors=1), video(rng, 50, actors=2)
    write_video(tmp_path / "raw", "0002-L", a, "1,0,20,1\n51,20,60,2\n")  # xsub train
    write_video(tmp_path / "raw", "0291-M", b, "12,5,45,1\n")  # xsub test
    m = convert_pku(cfg(tmp_path / "raw"), PreprocessConfig(workers=1), tmp_path / "store")

    store = Store.open(tmp_path / "store")
    idx = store.index
    assert list(idx["name"]) == ["0002-L_001", "0002-L_002", "0291-M_001"]
    assert list(idx["label"]) == [0, 50, 11]
    assert list(idx["split"]) == ["train", "train", "test"]
    assert list(idx["length"]) == [20, 40, 40]
    assert list(idx["camera"]) == [1, 1, 2] and list(idx["setup"]) == [2, 2, 291]
    assert list(idx["actors"]) == [1, 1, 2]
    assert store.meta["class_names"][0] == "bow" and len(store.meta["class_names"]) == 51
    # frames [start, end), centred on actor 1's spine mid in the first frame
    clip = a[20:60].astype(np.float32)
    expected = clip - clip[0, 0, 1]
    expected[:, 1] = 0.0  # absent actor stays exactly zero
    np.testing.assert_allclose(store.sample(1), expected, atol=2e-6)
    assert (store.sample(2)[0, 0, 1] == 0).all()
    assert m["samples"] == {"train": 2, "test": 1, "novel": 0}
    assert m["videos"] == m["videos_converted"] == 2 and m["frames"] == 100
    json.dumps(m)  # metrics are plain JSON (DVC metrics file)
    check_dataset(store)


def test_phase2_uses_split_dir_and_accepts_leading_spaces_and_official_folder_names(tmp_path):
    rng = np.random.default_rng(1)
    raw, splits = tmp_path / "raw", tmp_path / "splits"
    for name, indent in (("A01N01-L", " "), ("A01N02-M", " "), ("A02N01-R", "")):
        write_video(raw, name, video(rng, 30), "3,0,15,1\n41,15,30,1\n", indent=indent,
                    skeleton_dir="PKU_Skeleton_Renew", label_dir="Train_Label_PKU_final")
    splits.mkdir()
    (splits / "cross_view_v2.txt").write_text(
        "Training videos: \nA01N01-L, A02N01-R, \nValidataion videos: \nA01N02-M, \n")
    m = convert_pku(cfg(raw, "pku2", "xview", str(splits)), PreprocessConfig(), tmp_path / "s")
    store = Store.open(tmp_path / "s")
    assert sum(m["samples"].values()) == 6 and store.meta["dataset"] == "pku2"
    assert list(store.index["split"]) == ["train"] * 2 + ["test"] * 2 + ["train"] * 2
    assert list(store.index["setup"]) == [101, 101, 102, 102, 201, 201]
    check_dataset(store)


def bad_rows_tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    write_video(raw, "0002-L", video(rng, 40), "1,0,10,1\n")
    rows = ["1,0,10,1",       # 1 ok
            "52,10,20,1",     # 2 label out of range
            "4,30,20,1",      # 3 start > end
            "4,30,41,1",      # 4 outside the 40-frame video
            "1,0,10,3",       # 5 duplicate of line 1
            "5,10,20",        # 6 three fields
            "5,20,40,1"]      # 7 ok: ends exactly at the last frame
    write_video(raw, "0003-L", video(rng, 40), "\n".join(rows) + "\n")
    return raw


def test_bad_label_rows_are_reported_and_skipped(tmp_path):
    m = convert_pku(cfg(bad_rows_tree(tmp_path)), PreprocessConfig(on_error="skip"),
                    tmp_path / "store")
    bad = {(Path(i["file"]).name, i["line"]): i["message"] for i in m["issues"]}
    assert m["skipped"] == {"count": 5, "bad_label": 5}
    assert set(bad) == {("0003-L.txt", n) for n in (2, 3, 4, 5, 6)}
    assert "label 52 out of range 1..51" in bad["0003-L.txt", 2]
    assert "start 30, end 20" in bad["0003-L.txt", 3]
    assert "outside the video (40 frames)" in bad["0003-L.txt", 4]
    assert "duplicate of line 1" in bad["0003-L.txt", 5]
    assert m["label_rows"] == 8 and m["rows_rejected"] == 5 and m["samples"]["train"] == 3
    assert list(Store.open(tmp_path / "store").index["name"]) == [
        "0002-L_001", "0003-L_001", "0003-L_007"]


def test_bad_label_row_raises_one_line_naming_file_and_line(tmp_path):
    with pytest.raises(DataError) as e:
        convert_pku(cfg(bad_rows_tree(tmp_path)), PreprocessConfig(on_error="raise"),
                    tmp_path / "store")
    msg = str(e.value)
    assert "\n" not in msg and "label/0003-L.txt:2: label 52 out of range" in msg
    assert not (tmp_path / "store").exists()  # nothing half-written


def test_nonfinite_actor_is_absent_empty_frames_dropped_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    frames = video(rng, 30, actors=2)
    frames[3, 1, 4] = np.nan  # actor 2 in frame 3
    frames[10:12] = 0.0  # nobody in frames 10, 11
    write_video(tmp_path / "raw", "0002-L", frames, "2,0,30,1\n")
    m = convert_pku(cfg(tmp_path / "raw"), PreprocessConfig(), tmp_path / "store")
    sample = Store.open(tmp_path / "store").sample(0)
    assert len(sample) == 28 and m["empty_frames"] == 2 and m["nan_frames"] == 1
    assert (sample[3, 1] == 0).all() and (sample[3, 0] != 0).any()


def test_centre_uses_first_frame_where_actor1_is_present():
    frames = np.zeros((4, 2, 25, 3), np.float32)
    frames[1:, 0] = 1.0
    frames[1:, 0, 1] = [0.5, 0.25, 3.0]
    frames[:, 1] = 2.0
    out = centre(frames)
    assert len(out) == 4  # frame 0 has actor 2, so it stays
    np.testing.assert_array_equal(out[1, 0, 1], 0.0)
    np.testing.assert_array_equal(out[0, 0], 0.0)  # absent actor 1 stays zero
    np.testing.assert_array_equal(out[0, 1, 0], [1.5, 1.75, -1.0])
    cleaned, bad = clean_actors(np.full((2, 2, 25, 3), np.inf, np.float32))
    assert bad == 2 and not cleaned.any()


def test_sample_without_skeleton_and_unlisted_video_are_counted_not_stored(tmp_path):
    rng = np.random.default_rng(4)
    frames = video(rng, 30)
    frames[15:] = 0.0
    write_video(tmp_path / "raw", "0002-L", frames, "1,0,15,1\n2,15,30,1\n")
    write_video(tmp_path / "raw", "9999-L", video(rng, 30), "1,0,15,1\n")  # in no split
    m = convert_pku(cfg(tmp_path / "raw"), PreprocessConfig(), tmp_path / "store")
    assert m["videos"] == 2 and m["videos_unlisted"] == 1 and m["videos_converted"] == 1
    assert m["samples"]["train"] == 1 and m["samples_empty"] == 1
    assert "no skeleton in frames [15, 30)" in m["issues"][0]["message"]
    assert m["issues"][0]["category"] == "no_skeleton"


def test_preprocess_with_two_workers_writes_the_same_store_as_one(tmp_path):
    rng = np.random.default_rng(5)
    for v in ("0002-L", "0002-M", "0002-R", "0003-L", "0291-L"):
        write_video(tmp_path / "raw", v, video(rng, 20), "1,0,10,1\n2,10,20,1\n")
    fps = []
    for workers in (1, 2):  # through the preprocess stage's entry point
        preprocess(cfg(tmp_path / "raw"), PreprocessConfig(workers=workers),
                   tmp_path / f"s{workers}")
        fps.append(Store.open(tmp_path / f"s{workers}").meta["fingerprint"])
    assert fps[0] == fps[1]


def test_missing_layout_and_wrong_source_are_one_line_errors(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError, match="no PKU-MMD skeleton folder"):
        convert_pku(cfg(tmp_path / "raw"), PreprocessConfig(), tmp_path / "s")
    with pytest.raises(DataError, match="split file not found"):
        convert_pku(cfg(tmp_path / "raw", "pku2", "xsub", str(tmp_path)), PreprocessConfig(),
                    tmp_path / "s")
