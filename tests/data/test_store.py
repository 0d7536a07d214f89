"""Packed store: round trip, atomic writes, validation on open, fingerprint."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from pipeline.data.inspect import summarize
from pipeline.data.interop import export_npz
from pipeline.data.store import COLUMNS, SampleMeta, Store, StoreWriter, fingerprint

CLASSES = ["wave", "kick", "jump"]


def meta(name, label=0, split="train", novel=False, performer=1):
    return SampleMeta(name=name, label=label, performer=performer, camera=2, setup=3,
                      replication=1, split=split, novel=novel)


def samples(rng):
    one_actor = rng.normal(size=(5, 2, 25, 3)).astype(np.float32)
    one_actor[:, 1] = 0
    return [(meta("S003C002P001R001A001"), one_actor),
            (meta("S003C002P002R001A002", 1, "test"), rng.normal(size=(7, 2, 25, 3))),
            (meta("S003C002P003R001A003", 2, "test", novel=True), rng.normal(size=(1, 2, 25, 3)))]


def write(out, items, **kw):
    with StoreWriter(out, dataset="synthetic", benchmark="xsub", class_names=CLASSES,
                     novel_labels=[2], **kw) as w:
        for m, frames in items:
            w.add(m, frames)


def test_round_trip_keeps_frames_index_and_meta(tmp_path):
    items = samples(np.random.default_rng(0))
    write(tmp_path / "store", items, source_fingerprint="abc")
    store = Store.open(tmp_path / "store")
    assert list(store.index.columns) == COLUMNS and len(store) == 3
    assert store.index["offset"].tolist() == [0, 5, 12] and store.index["length"].tolist() == [5, 7, 1]
    assert store.index["actors"].tolist() == [1, 2, 2]
    assert store.index["novel"].tolist() == [False, False, True]
    for i, (m, frames) in enumerate(items):
        np.testing.assert_array_equal(store.sample(i), frames.astype(np.float32))
        row = store.index.iloc[i]
        assert (row["name"], row["label"], row["split"], row["performer"]) == (
            m.name, m.label, m.split, m.performer)
    assert store.meta["frames_shape"] == [13, 2, 25, 3] and store.meta["class_names"] == CLASSES
    assert store.meta["novel_labels"] == [2] and store.meta["source_fingerprint"] == "abc"
    assert store.meta["format_version"] == 1 and store.meta["joints"] == 25
    assert store.meta["fingerprint"] == fingerprint(tmp_path / "store")
    assert store.select(split="test").tolist() == [1, 2]
    assert store.select(split="test", novel=False).tolist() == [1]
    raw = np.fromfile(tmp_path / "store" / "frames.f32", dtype="<f4")
    assert raw.size == 13 * 150  # raw little-endian float32, no header, no padding


def test_exception_inside_writer_leaves_no_output(tmp_path):
    items = samples(np.random.default_rng(1))
    with (pytest.raises(RuntimeError),
          StoreWriter(tmp_path / "store", dataset="synthetic", benchmark="xsub",
                      class_names=CLASSES) as w):
        w.add(*items[0])
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_store(tmp_path):
    items = samples(np.random.default_rng(2))
    write(tmp_path / "store", items)
    before = fingerprint(tmp_path / "store")
    with pytest.raises(ValueError, match="frames contain NaN"):
        write(tmp_path / "store", [items[0], (meta("bad"), np.full((2, 2, 25, 3), np.nan))])
    assert fingerprint(tmp_path / "store") == before
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_store_is_identical_when_written_twice(tmp_path):
    items = samples(np.random.default_rng(3))
    write(tmp_path / "a", items)
    write(tmp_path / "b", items)
    assert fingerprint(tmp_path / "a") == fingerprint(tmp_path / "b")


def test_pickled_store_does_not_carry_the_frames(tmp_path):
    write(tmp_path / "store", samples(np.random.default_rng(4)))
    store = Store.open(tmp_path / "store")
    store.sample(0)  # maps the frames
    clone = pickle.loads(pickle.dumps(store))
    assert clone._frames is None
    np.testing.assert_array_equal(clone.sample(1), store.sample(1))


def _break_meta(d):
    m = json.loads((d / "meta.json").read_text())
    m["format_version"] = 99
    (d / "meta.json").write_text(json.dumps(m))


def _truncate_frames(d):
    data = (d / "frames.f32").read_bytes()
    (d / "frames.f32").write_bytes(data[:-4])


def _drop_column(d):
    pd.read_csv(d / "index.csv").drop(columns="split").to_csv(d / "index.csv", index=False)


def _bad_offsets(d):
    index = pd.read_csv(d / "index.csv")
    index.loc[1, "offset"] = 4
    index.to_csv(d / "index.csv", index=False)


def _edit_index(row, column, value):
    def damage(d):
        index = pd.read_csv(d / "index.csv")
        index[column] = index[column].astype(object)
        index.loc[row, column] = value
        index.to_csv(d / "index.csv", index=False)
    return damage


def _edit_meta(key, value):
    def damage(d):
        m = json.loads((d / "meta.json").read_text())
        m[key] = value
        (d / "meta.json").write_text(json.dumps(m))
    return damage


@pytest.mark.parametrize("damage,file,message", [
    (lambda d: (d / "index.csv").unlink(), "index.csv", "missing"),
    (lambda d: (d / "meta.json").write_text("{"), "meta.json", "not valid JSON"),
    (_break_meta, "meta.json", "format_version 99"),
    (_truncate_frames, "frames.f32", "bytes, expected"),
    (_drop_column, "index.csv", "missing columns split"),
    (_bad_offsets, "index.csv", "offsets/lengths do not tile"),
    (_edit_index(1, "label", 3), "index.csv:3", "label 3 outside the 3 classes"),
    (_edit_index(0, "label", -1), "index.csv:2", "label -1 outside the 3 classes"),
    (_edit_index(2, "label", "kick"), "index.csv", "column label holds non-integers"),
    (_edit_index(0, "length", 2.5), "index.csv", "column length holds non-integers"),
    (_edit_meta("class_names", ["wave", "kick"]), "index.csv:4", "label 2 outside the 2"),
    (_edit_meta("class_names", "wave"), "meta.json", "class_names must be a list"),
])
def test_open_names_the_damaged_file(tmp_path, damage, file, message):
    write(tmp_path / "store", samples(np.random.default_rng(5)))
    damage(tmp_path / "store")
    with pytest.raises(DataError) as err:
        Store.open(tmp_path / "store")
    assert str(tmp_path / "store" / file) in str(err.value) and message in str(err.value)


def test_verify_detects_modified_frames(tmp_path):
    write(tmp_path / "store", samples(np.random.default_rng(6)))
    store = Store.open(tmp_path / "store")
    store.verify()
    data = bytearray((tmp_path / "store" / "frames.f32").read_bytes())
    data[0] ^= 1
    (tmp_path / "store" / "frames.f32").write_bytes(bytes(data))
    with pytest.raises(DataError, match="fingerprint does not match"):
        Store.open(tmp_path / "store").verify()


def test_export_and_inspect_verify_the_fingerprint(tmp_path):
    write(tmp_path / "store", samples(np.random.default_rng(6)))
    assert "3 samples" in summarize(tmp_path / "store")
    data = bytearray((tmp_path / "store" / "frames.f32").read_bytes())
    data[0] ^= 1  # same size: opening does not read every byte, verify does
    (tmp_path / "store" / "frames.f32").write_bytes(bytes(data))
    Store.open(tmp_path / "store")
    for run in (lambda: export_npz(tmp_path / "store", tmp_path / "out.npz"),
                lambda: summarize(tmp_path / "store")):
        with pytest.raises(DataError, match="fingerprint does not match"):
            run()
    assert not (tmp_path / "out.npz").exists()
