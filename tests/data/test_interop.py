"""Import of CTR-GCN/MAMP .npz and pyskl pickles into the store, export back to .npz."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.data.dataset import SkeletonDataset
from pipeline.data.interop import export_npz, import_file, load_pickle
from pipeline.data.preprocess import preprocess
from pipeline.data.store import SampleMeta, Store, StoreWriter
from pipeline.data.transforms import TestTransform, TrainTransform


def sequences(rng: np.random.Generator, n: int, T: int = 300, second: str = "zero"
              ) -> np.ndarray:
    """x (n, T, 150) float32 zero padded at the end; second actor zero, own or duplicated."""
    x = np.zeros((n, T, 150), np.float32)
    for i in range(n):
        length = int(rng.integers(5, T))
        a1 = rng.normal(size=(length, 75)).astype(np.float32)
        a2 = {"zero": np.zeros_like(a1), "dup": a1,
              "own": rng.normal(size=(length, 75)).astype(np.float32)}[second]
        x[i, :length] = np.concatenate([a1, a2], axis=1)
        x[i, length // 2] = 0.0  # an empty frame inside the sequence is data, not padding
    return x


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    y = np.zeros((len(labels), k))  # float64, as CTR-GCN / MAMP write it
    y[np.arange(len(labels)), labels] = 1
    return y


def mamp_npz(path: Path, seed: int = 0, second: str = "zero", k: int = 60,
             onehot: bool = True, T: int = 300) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for s, n in (("train", 7), ("test", 4)):
        labels = rng.integers(0, k, n)
        arrays[f"x_{s}"] = sequences(rng, n, T, second)
        arrays[f"y_{s}"] = one_hot(labels, k) if onehot else labels
    np.savez(path, **arrays)
    return arrays


def check_dataset(store: Store) -> None:
    for split, transform in (("train", TrainTransform(frames_out=8, crop_floor=4)),
                             ("test", TestTransform(frames_out=8))):
        rows = store.select(split=split, novel=False)
        ds = SkeletonDataset(store, rows, transform)
        items = [ds[(pos, 7)] for pos in range(len(ds))]
        assert all(it["x"].shape == (2, 8, 25, 3) for it in items)
        assert [int(it["label"]) for it in items] == list(store.index["label"][rows])


@pytest.mark.parametrize("second", ["zero", "dup", "own"])
def test_npz_import_then_export_reproduces_arrays_exactly(tmp_path, second):
    original = mamp_npz(tmp_path / "NTU60_XSub.npz", second=second)
    m = import_file("npz", tmp_path / "NTU60_XSub.npz", tmp_path / "store", "xsub")
    store = Store.open(tmp_path / "store")
    assert m["samples"] == {"train": 7, "test": 4, "novel": 0} and m["classes"] == 60
    json.dumps(m)  # metrics are plain JSON (DVC metrics file)
    assert store.meta["class_names"][0] == "drink water"
    assert store.index["name"][0] == "train_000000"
    check_dataset(store)

    json.dumps(export_npz(tmp_path / "store", tmp_path / "out.npz"))
    with np.load(tmp_path / "out.npz") as out:
        assert list(out.keys()) == ["x_train", "y_train", "x_test", "y_test"]
        for key, a in original.items():
            assert out[key].dtype == a.dtype and out[key].shape == a.shape, key
            assert out[key].tobytes() == a.tobytes(), key


def test_npz_with_integer_labels_imports_and_exports_one_hot(tmp_path):
    original = mamp_npz(tmp_path / "a.npz", seed=1, k=51, onehot=False)
    import_file("npz", tmp_path / "a.npz", tmp_path / "store", "xview")
    store = Store.open(tmp_path / "store")
    train = store.select(split="train")
    np.testing.assert_array_equal(store.index["label"][train], original["y_train"])
    assert store.meta["benchmark"] == "xview"
    check_dataset(store)
    export_npz(tmp_path / "store", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as out:
        k = int(max(original["y_train"].max(), original["y_test"].max())) + 1
        assert out["y_test"].shape == (4, k)
        np.testing.assert_array_equal(out["y_test"].argmax(1), original["y_test"])
        assert out["x_test"].tobytes() == original["x_test"].tobytes()


def test_npz_sample_of_zeros_or_nan_is_reported_or_raised(tmp_path):
    arrays = mamp_npz(tmp_path / "a.npz", seed=2)
    arrays["x_train"][3] = 0.0
    arrays["x_test"][1, 0, 0] = np.nan
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(DataError, match=r"a\.npz: x_train sample 3: no skeleton"):
        import_file("npz", tmp_path / "a.npz", tmp_path / "store", "xsub")
    m = import_file("npz", tmp_path / "a.npz", tmp_path / "store", "xsub", on_error="skip")
    assert sum(m["samples"].values()) == 9
    assert m["skipped"] == {"count": 2, "bad_sample": 2}
    assert [i["sample"] for i in m["issues"]] == ["x_train[3]", "x_test[1]"]
    assert "train_000003" not in set(Store.open(tmp_path / "store").index["name"])


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("y_test"), "no array 'y_test'"),
    (lambda a: a.update(x_train=a["x_train"][:, :, :75]), r"expected float \(N, T, 150\)"),
    (lambda a: a["y_train"].__setitem__((0, 5), 1), "y_train row 0 is not one-hot"),
])
def test_malformed_npz_is_a_one_line_error(tmp_path, change, message):
    arrays = mamp_npz(tmp_path / "a.npz", seed=3)
    change(arrays)
    np.savez(tmp_path / "a.npz", **arrays)
    with pytest.raises(DataError, match=message):
        import_file("npz", tmp_path / "a.npz", tmp_path / "store", "xsub")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        import_file("npz", tmp_path / "junk.npz", tmp_path / "store", "xsub")


def pyskl_file(path: Path, protocol: int, rng: np.random.Generator) -> dict:
    anns = []
    for i in range(6):
        M, T = 1 + i % 2, 10 + i
        anns.append({"frame_dir": f"S001C00{1 + i % 3}P00{1 + i}R001A0{10 + i}",
                     "label": 9 + i, "total_frames": T, "img_shape": (1080, 1920),
                     "keypoint": rng.normal(size=(M, T, 25, 3)).astype(np.float16)})
    names = [a["frame_dir"] for a in anns]
    data = {"split": {"xsub_train": names[:4], "xsub_val": names[4:],
                      "xview_train": names[2:], "xview_val": names[:2]}, "annotations": anns}
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return data


@pytest.mark.parametrize("protocol", [2, 5])
def test_pyskl_pickle_imports_into_store_and_dataset(tmp_path, protocol):
    data = pyskl_file(tmp_path / "ntu60_3danno.pkl", protocol, np.random.default_rng(4))
    m = import_file("pyskl", tmp_path / "ntu60_3danno.pkl", tmp_path / "store", "xview")
    store = Store.open(tmp_path / "store")
    idx = store.index
    assert m["samples"] == {"train": 4, "test": 2, "novel": 0} and m["classes"] == 15
    json.dumps(m)
    assert list(idx["name"]) == data["split"]["xview_train"] + data["split"]["xview_val"]
    assert list(idx["split"]) == ["train"] * 4 + ["test"] * 2
    assert list(idx["performer"][:2]) == [3, 4] and list(idx["camera"][:2]) == [3, 1]
    for row, ann in zip(range(4), data["annotations"][2:]):
        kp = ann["keypoint"].astype(np.float32)
        sample = store.sample(row)
        assert ann["label"] == idx["label"][row] and len(sample) == ann["total_frames"]
        np.testing.assert_array_equal(sample[:, :len(kp)], kp.transpose(1, 0, 2, 3))
        assert (sample[:, len(kp):] == 0).all()  # a lone actor leaves slot 2 empty
    check_dataset(store)


@pytest.mark.parametrize("objects", ["floats", "None"])
def test_pyskl_object_typed_keypoints_are_one_line_not_a_traceback(tmp_path, objects):
    data = pyskl_file(tmp_path / "a.pkl", 4, np.random.default_rng(6))
    kp = data["annotations"][0]["keypoint"].astype(object)
    if objects == "None":
        kp[0, 0, 0, 0] = None
    data["annotations"][0]["keypoint"] = kp
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump(data, f, protocol=4)
    name = data["annotations"][0]["frame_dir"]
    with pytest.raises(DataError) as err:
        import_file("pyskl", tmp_path / "a.pkl", tmp_path / "store", "xsub")
    assert str(err.value) == (f"{tmp_path / 'a.pkl'}: {name}: keypoint holds object values; "
                              f"expected a float array; fix it or import with on_error skip")
    m = import_file("pyskl", tmp_path / "a.pkl", tmp_path / "store", "xsub", on_error="skip")
    assert m["skipped"] == {"count": 1, "bad_sample": 1} and m["samples"]["train"] == 3
    assert m["issues"][0]["sample"] == name


def test_pyskl_missing_benchmark_split_names_the_available_ones(tmp_path):
    pyskl_file(tmp_path / "a.pkl", 4, np.random.default_rng(5))
    with pytest.raises(DataError, match="no xset_train / xset_val split; the file has xsub_train"):
        import_file("pyskl", tmp_path / "a.pkl", tmp_path / "store", "xset")


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_naming_any_other_global_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pkl", "wb") as f:
        pickle.dump({"split": {}, "annotations": [RunsCode()]}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load (posix|os|nt)\.system") as e:
        import_file("pyskl", Path("evil.pkl"), tmp_path / "store", "xsub")
    assert "\n" not in str(e.value) and not Path("pwned").exists()
    np.savez("not_a_pickle.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="not a valid pickle") as e:
        load_pickle(Path("not_a_pickle.npz"))
    assert "\n" not in str(e.value)


def test_export_drops_novel_classes_truncates_long_samples_and_leaves_no_temp_file(tmp_path):
    rng = np.random.default_rng(6)
    with StoreWriter(tmp_path / "store", dataset="ntu60", benchmark="xsub",
                     class_names=["a", "b", "c", "d"], novel_labels=[1]) as w:
        for i, (label, T, split) in enumerate([(0, 5, "train"), (1, 8, "train"),
                                               (3, 12, "train"), (2, 4, "test")]):
            meta = SampleMeta(f"s{i}", label, 1, 1, 1, 1, split, novel=label == 1)
            w.add(meta, rng.normal(size=(T, 2, 25, 3)).astype(np.float32))
    m = export_npz(tmp_path / "store", tmp_path / "out" / "x.npz", max_frames=10)
    assert m["truncated"] == 1 and m["classes"] == 3
    assert os.listdir(tmp_path / "out") == ["x.npz"]
    store = Store.open(tmp_path / "store")
    with np.load(tmp_path / "out" / "x.npz") as out:
        assert out["x_train"].shape == (2, 10, 150) and out["x_test"].shape == (1, 10, 150)
        np.testing.assert_array_equal(out["y_train"], [[1, 0, 0], [0, 0, 1]])  # c -> column 1
        np.testing.assert_array_equal(out["y_test"], [[0, 1, 0]])
        np.testing.assert_array_equal(out["x_train"][1], store.sample(2)[:10].reshape(10, 150))
        np.testing.assert_array_equal(out["x_train"][0, 5:], 0.0)
    assert zipfile.is_zipfile(tmp_path / "out" / "x.npz")


def test_preprocess_stage_dispatches_npz_and_pyskl_sources_here(tmp_path):
    mamp_npz(tmp_path / "a.npz", seed=7)
    pyskl_file(tmp_path / "b.pkl", 4, np.random.default_rng(7))
    for source, src in (("npz", "a.npz"), ("pyskl", "b.pkl")):
        data = DataConfig(source=source, benchmark="xsub", raw_dir=str(tmp_path / src))
        m = preprocess(data, PreprocessConfig(), tmp_path / source)
        assert sum(m["samples"].values()) == len(Store.open(tmp_path / source).index) > 0
