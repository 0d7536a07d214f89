"""Import the skeleton files users already have into a packed store, and export a store to the
layout CTR-GCN / MAMP / STARS read.

    metrics = import_file("npz", "NTU60_XSub.npz", "data/processed", "xsub")
    metrics = import_file("pyskl", "ntu60_3danno.pkl", "data/processed", "xsub")
    metrics = export_npz("data/processed", "NTU60_XSub.npz", max_frames=300)

CTR-GCN / MAMP `.npz`: keys x_train y_train x_test y_test; x float32 (N, T, 150) zero padded
at the end (150 = actor 1's 25 joints x,y,z then actor 2's), y one-hot (N, K) or integer (N,).
Each sample is stored as frames [0, L) with L = last non-zero frame + 1, exactly as given: the
NTU-120 files copy a lone actor into slot 2 and we keep that copy rather than restore zeros,
so that export reproduces the file. Import then export of a float32 file gives back the same
arrays bit for bit (x, and y as float64 one-hot, the dtype both generators write); an all-zero
or non-finite sample is the exception (reported, skipped or raised, see `on_error`). The
arrays are streamed member by member, so files larger than memory convert.

pyskl / mmaction2 pickle: `{"split": {name: [frame_dir, ...]}, "annotations": [{"frame_dir",
"label" (0-based), "keypoint" (M, T, 25, 3), "total_frames"}]}`; the split pair is
`<benchmark>_train` and `<benchmark>_val` (or `_test`). The pickle is loaded by an unpickler
that resolves only numpy array / dtype / scalar reconstruction and `_codecs.encode` (used by
protocol-2 pickles such as mmcv's for array bytes): a file that names any other global is
refused, so loading it cannot run code.

Class names come from the shipped reference lists (pipeline/data/reference/) when the class count is 60 or 120 (NTU) or 51
(PKU-MMD), else `class_000`, ...; NTU-style names (`S001C002P003R001A013`) fill setup,
camera, performer and replication, other names leave them 0.
"""

from __future__ import annotations

import codecs
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path, file_sha256
from pipeline.data import splits
from pipeline.data.issues import Issue
from pipeline.data.pku import read_class_names
from pipeline.data.store import SampleMeta, Store, StoreWriter

M, V, C = 2, 25, 3
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
BLOCK = 256  # samples per read/write block: bounded memory for any file size
_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
_np_core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core


# --------------------------------------------------------------------------- shared helpers


def class_names_for(k: int, reference_dir: Path | None = None) -> list[str]:
    """Names for k classes: NTU's for 60 / 120, PKU-MMD's for 51, else placeholders."""
    if k in (60, 120):
        return splits.class_names("ntu60" if k == 60 else "ntu120", reference_dir)
    if k == 51:
        return read_class_names(reference_dir)
    return [f"class_{i:03d}" for i in range(k)]


def sample_meta(name: str, label: int, split: str) -> SampleMeta:
    m = _NTU_NAME.search(name)
    setup, camera, performer, replication = (int(g) for g in m.groups()[:4]) if m else (0,) * 4
    return SampleMeta(name=name, label=label, performer=performer, camera=camera, setup=setup,
                      replication=replication, split=split, novel=False)


def _issue(src: Path, sample: str, why: str) -> dict[str, Any]:
    """The `issues` entry of a sample that cannot be stored."""
    return {**Issue(str(src), None, "bad_sample", f"{sample}: {why}").record(), "sample": sample}


def sample_problem(frames: np.ndarray) -> str | None:
    """Why a (T, M, V, C) sample cannot go into the store, or None."""
    if not np.isfinite(frames).all():
        return "non-finite coordinates"
    if not len(frames) or not frames.any():
        return "no skeleton (all zeros)"
    return None


# --------------------------------------------------------------------------- .npz


def _open_npy(zf: zipfile.ZipFile, key: str, path: Path) -> tuple[BinaryIO, tuple, np.dtype]:
    """Open member `key` of an npz for streaming: (file positioned at the data, shape, dtype)."""
    try:
        f = zf.open(f"{key}.npy")
    except KeyError:
        raise DataError(f"{path}: no array {key!r}; a CTR-GCN/MAMP .npz has "
                        f"{', '.join(NPZ_KEYS)}") from None
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = read_header(f)
    if fortran or dtype.hasobject:
        raise DataError(f"{path}: array {key!r} is {'Fortran-ordered' if fortran else 'of objects'}"
                        f"; re-save it with numpy.savez from a C-ordered numeric array")
    return f, shape, dtype


def _read_rows(f: BinaryIO, shape: tuple, dtype: np.dtype, path: Path, key: str
               ) -> Iterator[np.ndarray]:
    """Blocks of up to BLOCK rows of a streamed array."""
    row = int(np.prod(shape[1:])) * dtype.itemsize
    for start in range(0, shape[0], BLOCK):
        n = min(BLOCK, shape[0] - start)
        buf = f.read(n * row)
        if len(buf) != n * row:
            raise DataError(f"{path}: array {key!r} is truncated at sample {start}")
        yield np.frombuffer(buf, dtype=dtype).reshape(n, *shape[1:])


def _npz_labels(zf: zipfile.ZipFile, key: str, n: int, path: Path) -> tuple[np.ndarray, int | None]:
    """(0-based labels (n,), one-hot width or None for integer labels)."""
    f, shape, dtype = _open_npy(zf, key, path)
    y = np.frombuffer(f.read(), dtype=dtype)
    if y.size != int(np.prod(shape)) or shape[0] != n or len(shape) not in (1, 2):
        raise DataError(f"{path}: {key} has shape {shape}; expected ({n},) labels or ({n}, K) "
                        f"one-hot for the {n} samples of x_{key[2:]}")
    y = y.reshape(shape)
    if len(shape) == 2:
        bad = np.flatnonzero(((y != 0) & (y != 1)).any(axis=1) | ((y == 1).sum(axis=1) != 1))
        if len(bad):
            raise DataError(f"{path}: {key} row {bad[0]} is not one-hot")
        return y.argmax(axis=1), shape[1]
    if not np.issubdtype(dtype, np.number) or (y != np.round(y)).any() or (y < 0).any():
        raise DataError(f"{path}: {key} must hold non-negative integer labels or one-hot rows")
    return y.astype(np.int64), None


def _import_npz(src: Path, writer_args: dict, out_dir: Path, on_error: str) -> dict[str, Any]:
    m: dict[str, Any] = {"samples": {"train": 0, "test": 0, "novel": 0}, "frames": 0,
                         "issues": []}
    with zipfile.ZipFile(src) as zf:
        xs = {s: _open_npy(zf, f"x_{s}", src) for s in ("train", "test")}
        for s, (_, shape, dtype) in xs.items():
            if len(shape) != 3 or shape[2] != M * V * C or dtype.kind != "f":
                raise DataError(f"{src}: x_{s} is {dtype} {shape}; expected float (N, T, "
                                f"{M * V * C})")
        ys = {s: _npz_labels(zf, f"y_{s}", xs[s][1][0], src) for s in ("train", "test")}
        widths = {w for _, w in ys.values()}
        if len(widths) != 1:
            raise DataError(f"{src}: y_train and y_test disagree (one-hot widths or one-hot vs "
                            f"integer labels: {sorted(widths, key=str)})")
        k = widths.pop() or int(max(y.max(initial=-1) for y, _ in ys.values())) + 1
        names = class_names_for(k)
        m.update(format="npz", classes=k, max_frames=xs["train"][1][1])
        with StoreWriter(out_dir, class_names=names, **writer_args) as writer:
            for s, (f, shape, dtype) in xs.items():
                labels = ys[s][0]
                for b, block in enumerate(_read_rows(f, shape, dtype, src, f"x_{s}")):
                    for j, x in enumerate(block):  # x (T, 150)
                        i = b * BLOCK + j
                        nonzero = np.flatnonzero(x.any(axis=1))
                        length = int(nonzero[-1]) + 1 if len(nonzero) else 0
                        frames = x[:length].astype(np.float32).reshape(length, M, V, C)
                        why = sample_problem(frames)
                        if why:
                            if on_error == "raise":
                                raise DataError(f"{src}: x_{s} sample {i}: {why}; remove it or "
                                                f"import with on_error skip")
                            m["issues"].append(_issue(src, f"x_{s}[{i}]", why))
                            continue
                        writer.add(sample_meta(f"{s}_{i:06d}", int(labels[i]), s), frames)
                        m["samples"][s] += 1
                        m["frames"] += length
            if not any(m["samples"].values()):
                raise DataError(f"{src}: no usable samples")
    return m


# --------------------------------------------------------------------------- pyskl pickle


class SafeUnpickler(pickle.Unpickler):
    """Resolves only what numpy arrays, dtypes and scalars need; anything else is refused."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        short = module.replace("numpy._core.", "numpy.core.")
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): _np_core.multiarray.scalar,
            ("numpy.core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
            ("_codecs", "encode"): codecs.encode,  # protocol-2 array bytes
            ("collections", "OrderedDict"): dict,
        }
        if (short, name) not in allowed:
            raise DataError(f"{self.path}: refusing to load {module}.{name}: a pyskl pickle may "
                            f"hold only dicts, lists, strings, numbers and numpy arrays")
        return allowed[short, name]


def load_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return SafeUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
                AttributeError, IndexError) as exc:
            why = " ".join(str(exc).split())  # some pickle messages span lines
            raise DataError(f"{path}: not a valid pickle ({type(exc).__name__}: {why})") from None


def _pyskl_frames(ann: dict) -> tuple[np.ndarray | None, str | None]:
    """One annotation -> ((T, 2, 25, 3) float32, None) or (None, why not)."""
    kp = ann.get("keypoint")
    if not isinstance(kp, np.ndarray) or kp.ndim != 4 or kp.shape[2:] != (V, C):
        shape = getattr(kp, "shape", type(kp).__name__)
        return None, f"keypoint {shape}; expected (M, T, {V}, {C})"
    if kp.dtype.kind not in "fiu":
        return None, f"keypoint holds {kp.dtype} values; expected a float array"
    if not 1 <= kp.shape[0] <= M:
        return None, f"keypoint has {kp.shape[0]} actors; expected 1 or {M}"
    total = ann.get("total_frames", kp.shape[1])
    if total != kp.shape[1]:
        return None, f"total_frames {total} != keypoint frames {kp.shape[1]}"
    frames = np.zeros((kp.shape[1], M, V, C), dtype=np.float32)
    frames[:, :kp.shape[0]] = kp.transpose(1, 0, 2, 3)  # (M, T, V, C) -> (T, M, V, C)
    return frames, sample_problem(frames)


def _import_pyskl(src: Path, writer_args: dict, out_dir: Path, benchmark: str, on_error: str
                  ) -> dict[str, Any]:
    data = load_pickle(src)
    if not (isinstance(data, dict) and isinstance(data.get("split"), dict)
            and isinstance(data.get("annotations"), list)):
        raise DataError(f"{src}: expected a pyskl dict with 'split' and 'annotations'")
    split = data["split"]
    test_key = next((k for k in (f"{benchmark}_val", f"{benchmark}_test") if k in split), None)
    if f"{benchmark}_train" not in split or test_key is None:
        raise DataError(f"{src}: no {benchmark}_train / {benchmark}_val split; the file has "
                        f"{', '.join(sorted(split))}; pass one of those benchmarks")
    anns = data["annotations"]
    kp0 = anns[0].get("keypoint") if anns and isinstance(anns[0], dict) else None
    if isinstance(kp0, np.ndarray) and kp0.ndim == 4 and kp0.shape[-1] != C:
        raise DataError(f"{src}: keypoints have {kp0.shape[-1]} coordinates: a 2D pickle; "
                        f"use the 3D one (e.g. ntu60_3danno.pkl)")
    by_name: dict[str, dict] = {}
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or not {"frame_dir", "label", "keypoint"} <= ann.keys():
            raise DataError(f"{src}: annotation {i} lacks frame_dir, label or keypoint")
        if ann["frame_dir"] in by_name:
            raise DataError(f"{src}: annotation {i}: duplicate frame_dir {ann['frame_dir']!r}")
        by_name[ann["frame_dir"]] = ann
    labels = [int(a["label"]) for a in anns]
    if min(labels) < 0:
        raise DataError(f"{src}: negative label {min(labels)}; pyskl labels are 0-based")
    k = max(labels) + 1
    listed = {s: set(split[key]) for s, key in (("train", f"{benchmark}_train"),
                                                 ("test", test_key))}
    m: dict[str, Any] = {"format": "pyskl", "classes": k, "frames": 0,
                         "samples": {"train": 0, "test": 0, "novel": 0},
                         "unlisted": len(by_name.keys() - listed["train"] - listed["test"]),
                         "issues": []}

    def problem(name: str, why: str) -> None:
        if on_error == "raise":
            raise DataError(f"{src}: {name}: {why}; fix it or import with on_error skip")
        m["issues"].append(_issue(src, name, why))

    with StoreWriter(out_dir, class_names=class_names_for(k), **writer_args) as writer:
        for s in ("train", "test"):
            for name in sorted(listed[s] - by_name.keys()):
                problem(name, f"listed in split {s} but has no annotation")
            for ann in anns:  # annotation order, as pyskl's own dataset filters them
                if ann["frame_dir"] not in listed[s]:
                    continue
                frames, why = _pyskl_frames(ann)
                if why:
                    problem(ann["frame_dir"], why)
                    continue
                writer.add(sample_meta(str(ann["frame_dir"]), int(ann["label"]), s), frames)
                m["samples"][s] += 1
                m["frames"] += len(frames)
        if not any(m["samples"].values()):
            raise DataError(f"{src}: no usable samples in {benchmark}_train / {test_key}")
    return m


# --------------------------------------------------------------------------- public API


def import_file(fmt: Literal["npz", "pyskl"], src: str | Path, out_dir: str | Path,
                benchmark: str, on_error: Literal["skip", "raise"] = "raise") -> dict[str, Any]:
    """Convert a CTR-GCN/MAMP .npz or a pyskl .pkl into a store at out_dir; returns metrics.
    Samples that cannot be stored (non-finite, all zeros, malformed annotation) raise a
    DataError, or with on_error="skip" are skipped and listed in metrics["issues"]."""
    src, out_dir = Path(src), Path(out_dir)
    if fmt not in ("npz", "pyskl"):
        raise DataError(f"format {fmt!r} is not importable; use npz or pyskl")
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    writer_args = {"dataset": fmt, "benchmark": benchmark, "novel_labels": [],
                   "source_fingerprint": file_sha256(src)}
    if fmt == "pyskl":
        m = _import_pyskl(src, writer_args, out_dir, benchmark, on_error)
    else:
        try:
            m = _import_npz(src, writer_args, out_dir, on_error)
        except (zipfile.BadZipFile, ValueError) as exc:  # bad zip, bad .npy magic or header
            why = " ".join(str(exc).split())
            raise DataError(f"{src}: not a readable .npz ({why})") from None
    m["skipped"] = {"count": len(m["issues"])} | ({"bad_sample": len(m["issues"])}
                                                  if m["issues"] else {})
    return {"source": str(src), "benchmark": benchmark, **m}


def _write_npy(zf: zipfile.ZipFile, key: str, shape: tuple, dtype: np.dtype,
               blocks: Iterator[np.ndarray]) -> None:
    """Stream `blocks` (C-ordered, concatenated along axis 0) as member key.npy of an npz."""
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                "shape": shape})
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def export_npz(store_dir: str | Path, dst: str | Path, max_frames: int = 300) -> dict[str, Any]:
    """Write the store's train / test samples of base (non-novel) classes as a CTR-GCN/MAMP
    .npz: x float32 (N, max_frames, 150), zero padded, longer samples truncated (counted);
    y float64 one-hot over the base classes in class-list order. Atomic."""
    store = Store.open(store_dir)
    store.verify()  # an export is a copy for other tools: never of a silently modified store
    dst = Path(dst)
    novel = set(store.meta.get("novel_labels", []))
    base = [c for c in range(len(store.meta["class_names"])) if c not in novel]
    column = {c: j for j, c in enumerate(base)}  # store label -> one-hot column
    labels = store.index["label"].to_numpy()
    lengths = store.index["length"].to_numpy()
    m: dict[str, Any] = {"store": str(store_dir), "file": str(dst), "classes": len(base),
                         "max_frames": max_frames, "truncated": 0}

    def x_blocks(rows: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), BLOCK):
            chunk = rows[start:start + BLOCK]
            x = np.zeros((len(chunk), max_frames, M * V * C), dtype=np.float32)
            for j, r in enumerate(chunk):
                frames = store.sample(int(r))[:max_frames]  # (T, M, V, C)
                x[j, :len(frames)] = frames.reshape(len(frames), -1)
            yield x

    with atomic_path(dst) as tmp, open(tmp, "wb") as f, \
            zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for s in ("train", "test"):
            rows = np.asarray(store.select(split=s, novel=False))
            y = np.zeros((len(rows), len(base)), dtype=np.float64)
            y[np.arange(len(rows)), [column[int(c)] for c in labels[rows]]] = 1.0
            _write_npy(zf, f"x_{s}", (len(rows), max_frames, M * V * C), np.float32,
                       x_blocks(rows))
            _write_npy(zf, f"y_{s}", y.shape, np.float64, iter([y]))
            m[f"samples_{s}"] = len(rows)
            m["truncated"] += int((lengths[rows] > max_frames).sum())
    return m
