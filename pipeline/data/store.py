"""The packed store: every sample's frames in one memory-mapped float32 file plus an index.

Usage::

    with StoreWriter(out_dir, dataset="ntu60", benchmark="xsub", class_names=names) as w:
        w.add(SampleMeta(name=..., label=..., performer=..., camera=..., setup=...,
                         replication=..., split="train", novel=False), frames)  # (T, 2, 25, 3)
    store = Store.open(out_dir)          # checks layout, labels, offsets and size
    store.verify()                       # optional: rereads every byte against the fingerprint
    store.sample(i)                      # (T, 2, 25, 3) read-only view of row i of store.index
    store.select(split="train", novel=False)

Layout (contract in docs/ARCHITECTURE.md): `frames.f32` raw little-endian float32
(F, M=2, V=25, C=3), all samples concatenated without padding; `index.csv` one row per sample
(name, offset, length, label, performer, camera, setup, replication, actors, split, novel);
`meta.json`. The writer streams frames to disk and hashes them on the way, so the dataset is
never held in memory; it writes into a temporary directory that replaces `out_dir` only when
the `with` block ends without an exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_dir

FORMAT_VERSION = 1
M, V, C = 2, 25, 3
FRAME_BYTES = M * V * C * 4
COLUMNS = ["name", "offset", "length", "label", "performer", "camera", "setup", "replication",
           "actors", "split", "novel"]
INT_COLUMNS = ["offset", "length", "label", "performer", "camera", "setup", "replication",
               "actors"]


@dataclass(frozen=True)
class SampleMeta:
    """What the index records about a sample besides where its frames are."""

    name: str
    label: int
    performer: int
    camera: int
    setup: int
    replication: int
    split: str  # "train" or "test"
    novel: bool = False


def fingerprint(directory: str | Path) -> str:
    """sha256 over frames.f32 then index.csv, streamed (the data identity put in checkpoints)."""
    h = hashlib.sha256()
    for name in ("frames.f32", "index.csv"):
        with open(Path(directory) / name, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


class StoreWriter:
    """Context manager that streams samples into a new store at `out_dir` (atomic)."""

    def __init__(self, out_dir: str | Path, dataset: str, benchmark: str, class_names: list[str],
                 novel_labels: Sequence[int] = (), source_fingerprint: str = ""):
        self.out_dir = Path(out_dir)
        self.meta = {"format_version": FORMAT_VERSION, "dataset": dataset,
                     "benchmark": benchmark, "class_names": list(class_names),
                     "novel_labels": sorted(int(x) for x in novel_labels),
                     "source_fingerprint": source_fingerprint}
        self.rows: list[dict] = []
        self.frames = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        self.tmp = self._stack.enter_context(atomic_dir(self.out_dir))
        self._file = self._stack.enter_context(open(self.tmp / "frames.f32", "wb"))
        self._hash = hashlib.sha256()
        return self

    def add(self, meta: SampleMeta, frames: np.ndarray) -> None:
        """Append one sample; `frames` (T, 2, 25, 3) float-like, T >= 1, all finite."""
        if frames.ndim != 4 or frames.shape[1:] != (M, V, C) or len(frames) == 0:
            raise ValueError(f"{meta.name}: frames must have shape (T>=1, {M}, {V}, {C}), "
                             f"got {frames.shape}")
        if not 0 <= meta.label < len(self.meta["class_names"]):
            raise ValueError(f"{meta.name}: label {meta.label} outside the "
                             f"{len(self.meta['class_names'])} class names")
        if meta.split not in ("train", "test"):
            raise ValueError(f"{meta.name}: split must be 'train' or 'test', got {meta.split!r}")
        data = np.ascontiguousarray(frames, dtype="<f4")
        if not np.isfinite(data).all():
            raise ValueError(f"{meta.name}: frames contain NaN or inf")
        buf = data.tobytes()
        self._file.write(buf)
        self._hash.update(buf)
        actors = int(np.any(data != 0, axis=(0, 2, 3)).sum())
        self.rows.append({**asdict(meta), "offset": self.frames, "length": len(data),
                          "actors": actors})
        self.frames += len(data)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as e:
                self._stack.__exit__(type(e), e, e.__traceback__)  # removes the temp dir
                raise
        return self._stack.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        self._file.close()
        index = pd.DataFrame(self.rows, columns=COLUMNS)
        index_bytes = index.to_csv(index=False, lineterminator="\n").encode()
        (self.tmp / "index.csv").write_bytes(index_bytes)
        self._hash.update(index_bytes)
        meta = {**self.meta, "frames_shape": [self.frames, M, V, C], "joints": V,
                "fingerprint": self._hash.hexdigest()}
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


class Store:
    """A packed store opened for reading; frames are memory-mapped on first use (fork-safe)."""

    def __init__(self, directory: Path, meta: dict, index: pd.DataFrame):
        self.dir, self.meta, self.index = directory, meta, index
        self._offset = index["offset"].to_numpy(np.int64)
        self._length = index["length"].to_numpy(np.int64)
        self._frames: np.ndarray | None = None

    @classmethod
    def open(cls, directory: str | Path) -> Store:
        d = Path(directory)
        meta_path, index_path, frames_path = d / "meta.json", d / "index.csv", d / "frames.f32"
        for p in (meta_path, index_path, frames_path):
            if not p.is_file():
                raise DataError(f"{p}: missing; run the preprocess stage (dvc repro preprocess)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}:{e.lineno}: not valid JSON ({e.msg}); "
                            f"rerun the preprocess stage") from None
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError(f"{meta_path}: format_version {version!r}, expected "
                            f"{FORMAT_VERSION}; rerun the preprocess stage")
        shape = meta.get("frames_shape")
        if not (isinstance(shape, list) and len(shape) == 4 and shape[1:] == [M, V, C]):
            raise DataError(f"{meta_path}: frames_shape {shape!r}, expected [F, {M}, {V}, {C}]")
        size = frames_path.stat().st_size
        if size != shape[0] * FRAME_BYTES:
            raise DataError(f"{frames_path}: {size} bytes, expected {shape[0] * FRAME_BYTES} "
                            f"for frames_shape {shape}; the store is damaged, rerun preprocess")
        try:
            index = pd.read_csv(index_path, dtype={"name": str, "split": str},
                                keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise DataError(f"{index_path}: not a valid index ({e}); rerun preprocess") from None
        missing = [c for c in COLUMNS if c not in index.columns]
        if missing:
            raise DataError(f"{index_path}: missing columns {', '.join(missing)}; "
                            f"rerun preprocess")
        if len(index) and (index["novel"].dtype != bool
                           or not index["split"].isin(["train", "test"]).all()):
            raise DataError(f"{index_path}: novel must be True/False and split train/test; "
                            f"rerun preprocess")
        numeric = [c for c in INT_COLUMNS if not pd.api.types.is_integer_dtype(index[c])]
        if len(index) and numeric:
            raise DataError(f"{index_path}: column {numeric[0]} holds non-integers; "
                            f"rerun preprocess")
        names = meta.get("class_names")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DataError(f"{meta_path}: class_names must be a list of names; "
                            f"rerun preprocess")
        label = index["label"].to_numpy(np.int64)
        outside = np.flatnonzero((label < 0) | (label >= len(names)))
        if len(outside):
            row = int(outside[0])
            raise DataError(f"{index_path}:{row + 2}: label {label[row]} outside the "
                            f"{len(names)} classes of meta.json; rerun preprocess")
        length = index["length"].to_numpy(np.int64)
        ends = np.concatenate([[0], np.cumsum(length)])
        if (length < 1).any() or (index["offset"].to_numpy() != ends[:-1]).any() \
                or ends[-1] != shape[0]:
            raise DataError(f"{index_path}: offsets/lengths do not tile the {shape[0]} frames "
                            f"of frames.f32; rerun preprocess")
        return cls(d, meta, index)

    @property
    def frames(self) -> np.ndarray:
        """All frames, (F, M, V, C) float32, read-only memory map."""
        if self._frames is None:
            F = self.meta["frames_shape"][0]
            if F == 0:
                self._frames = np.zeros((0, M, V, C), dtype="<f4")
            else:
                self._frames = np.memmap(self.dir / "frames.f32", dtype="<f4", mode="r",
                                         shape=(F, M, V, C))
        return self._frames

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        # Workers re-open the memory map instead of receiving a pickled copy of every frame.
        return {**self.__dict__, "_frames": None}

    def sample(self, i: int) -> np.ndarray:
        """Frames of row `i` of the index: (T, M, V, C) read-only view."""
        o = self._offset[i]
        return self.frames[o:o + self._length[i]]

    def select(self, split: str | None = None, novel: bool | None = None) -> np.ndarray:
        """Row positions (int64) matching the given split and/or novel flag."""
        mask = np.ones(len(self.index), dtype=bool)
        if split is not None:
            mask &= (self.index["split"] == split).to_numpy()
        if novel is not None:
            mask &= (self.index["novel"] == novel).to_numpy()
        return np.flatnonzero(mask)

    def verify(self) -> None:
        """Recompute the fingerprint (reads every byte) and compare with meta.json."""
        if fingerprint(self.dir) != self.meta.get("fingerprint"):
            raise DataError(f"{self.dir / 'meta.json'}: fingerprint does not match frames.f32 "
                            f"+ index.csv; the store was modified, rerun preprocess")
