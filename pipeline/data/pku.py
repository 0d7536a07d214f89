"""PKU-MMD phase I / II -> packed store.

    from pipeline.data.pku import convert_pku
    metrics = convert_pku(params.data, params.preprocess, params.data.processed_dir)

`data.raw_dir` holds the skeleton and label folders as unpacked from the official archives
(`PKU_Skeleton_Renew/`, `Train_Label_PKU_final/`, also under `Data/` and `Label/`) or as
MAMP's `pku_raw/v1` layout (`skeleton/`, `label/`); see `find_layout`. Splits: phase I
from the official files shipped in `pipeline/data/reference/`, phase II from `data.pku_split_dir`
(default: `raw_dir`) with `cross_subject_v2.txt` / `cross_view_v2.txt` (line 2 training
videos, line 4 test videos, comma separated). Videos in neither list are counted, not used.

Each label row `label,start,end,confidence` is one trimmed sample, frames [start, end),
label 1..51 -> 0-based. Rows with start >= end, a label out of range, a range outside the
video, a syntax error or a duplicate of an earlier row are reported (metrics `issues`, each
{file, line, category, message}, counted per category in `skipped`; `preprocess.on_error:
raise` stops with `file:line: reason`), never clipped. A skeleton
file that does not parse (wrong number count, non-numeric token, not text) rejects its whole
video, since its frame numbering can no longer be trusted.

Per sample: an actor with a non-finite coordinate in a frame is absent in that frame (counted
in `nan_frames`; PKU has no body IDs to denoise, and dropping the frame as NTU's denoiser does
would also drop the other actor's valid pose). Then `preprocess.pku_frames`:
- `mamp` (default, the release): what MAMP's `pku_gendata.py` and feeder hand the model: the
  first 300 frames, not centred, all-zero frames kept where they are; the feeder then reads
  as many frames from the start as the sample has non-zero ones, so the rest is cut here.
- `ntu`: as NTU step 1, frames where nobody is present are dropped, and the sample is centred
  on joint 2 (spine mid) of actor 1 in the first frame where actor 1 is present (actor 2's if
  actor 1 never is), so one transform fits both datasets.
Frames cut either way are counted in `empty_frames`. Absent actors stay exactly zero. A sample
left with no frame is skipped and counted (`samples_empty`; MAMP drops these too).
Store metadata: performer 0 (PKU names do not encode the subject), camera L/M/R = 1/2/3,
setup = the digits of the video name (`0002-L` -> 2, `A01N03-M` -> 103), replication = the
label-file line; sample name `<video>_<line:03d>`.
"""

from __future__ import annotations

import hashlib
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.core.stage import worker_init
from pipeline.data.issues import BadFile, Issue, read_input, sniff, tally, token
from pipeline.data.splits import default_reference_dir
from pipeline.data.store import SampleMeta, StoreWriter

M, V, C = 2, 25, 3  # actors, joints, coordinates in a PKU line (150 numbers)
SPINE_MID = 1  # 0-based joint 2
MAMP_MAX_FRAMES = 300  # pku_gendata.py's max_frame
CAMERAS = {"L": 1, "M": 2, "R": 3}
SKELETON_DIRS = ("skeleton", "PKU_Skeleton_Renew", "Data/PKU_Skeleton_Renew", "Skeleton")
LABEL_DIRS = ("label", "Train_Label_PKU_final", "Label/Train_Label_PKU_final", "Label")
SPLIT_FILES = {  # (phase, benchmark) -> file name
    ("pku1", "xsub"): "pku_v1_cross_subject.txt", ("pku1", "xview"): "pku_v1_cross_view.txt",
    ("pku2", "xsub"): "cross_subject_v2.txt", ("pku2", "xview"): "cross_view_v2.txt",
}


@dataclass(frozen=True)
class LabelRow:
    line: int
    label: int  # 0-based
    start: int
    end: int


# --------------------------------------------------------------------------- readers


def read_text(path: Path, bom_ok: bool = False) -> str:
    """A text file as str; BadFile for anything else (a byte-order mark only if `bom_ok`)."""
    data = read_input(path)
    if bom_ok:
        data = data.removeprefix(b"\xef\xbb\xbf")
    sniff(data, path)
    return data.decode("utf-8")


def read_skeleton(path: Path) -> np.ndarray:
    """A PKU skeleton file -> float32 (T, M=2, V=25, C=3), non-finite values kept.
    Raises DataError naming the file and line on any malformed line."""
    lines = read_text(path).splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines only; inner ones shift frames
        lines.pop()
    if not lines:
        raise BadFile(path, None, "empty", "empty skeleton file (no frames)")
    rows = [line.split() for line in lines]
    for i, row in enumerate(rows):
        bad = next((t for t in row if not _is_number(t)), None)
        if bad is not None:  # before the count: a stray character is the real error
            raise BadFile(path, i + 1, "bad_token", f"non-numeric token {token(bad)}")
        if len(row) != M * V * C:
            raise BadFile(path, i + 1, "truncated" if i == len(rows) - 1 else
                          "wrong_value_count", f"expected {M * V * C} numbers per frame, got "
                                               f"{len(row)} (truncated or corrupt file)")
    flat = np.array(rows, dtype=np.float64)
    return flat.astype(np.float32).reshape(len(rows), M, V, C)


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _check_row(fields: list[str], n_frames: int, num_classes: int) -> tuple[int, int, int] | str:
    """(label 1-based, start, end) of a valid label row, else why it is not valid."""
    if len(fields) != 4:
        return f"expected 4 comma-separated fields label,start,end,confidence, got {len(fields)}"
    try:
        label, start, end = (int(f) for f in fields[:3])
    except ValueError:
        return f"label, start and end must be integers, got {token(','.join(fields[:3]))}"
    if not 1 <= label <= num_classes:
        return f"label {label} out of range 1..{num_classes}"
    if start < 0 or start >= end:
        return f"empty or reversed range: start {start}, end {end}"
    if end > n_frames:
        return f"range [{start}, {end}) outside the video ({n_frames} frames)"
    return label, start, end


def read_labels(path: Path, n_frames: int, num_classes: int) -> tuple[list[LabelRow], list[Issue]]:
    """Label rows that describe a valid sample of a video of `n_frames`, and an Issue for each
    row that does not (syntax, label range, start >= end, outside the video, duplicate)."""
    rows: list[LabelRow] = []
    issues: list[Issue] = []
    seen: dict[tuple[int, int, int], int] = {}  # (label, start, end) -> first line
    for i, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        row = _check_row([f.strip() for f in line.split(",")], n_frames, num_classes)
        if isinstance(row, tuple) and row in seen:
            row = f"duplicate of line {seen[row]}"
        if isinstance(row, str):
            issues.append(Issue(str(path), i, "bad_label", row))
            continue
        seen[row] = i
        rows.append(LabelRow(i, row[0] - 1, row[1], row[2]))
    return rows, issues


def read_split(path: Path) -> tuple[list[str], list[str]]:
    """An official split file -> (training videos, test videos): lines 2 and 4."""
    if not path.is_file():
        raise DataError(f"{path}: PKU-MMD split file not found; set data.pku_split_dir to the "
                        f"folder holding the official split files")
    lines = read_text(path, bom_ok=True).splitlines()
    if len(lines) < 4:
        raise DataError(f"{path}: expected 4 lines (header, training videos, header, test "
                        f"videos), got {len(lines)}")
    train, test = ([v.strip() for v in lines[k].split(",") if v.strip()] for k in (1, 3))
    both = sorted(set(train) & set(test))
    if both:
        raise DataError(f"{path}:4: video {both[0]} is listed for both training and test")
    return train, test


def find_layout(raw_dir: Path) -> tuple[Path, Path]:
    """(skeleton folder, label folder) under raw_dir: the first of SKELETON_DIRS / LABEL_DIRS
    that holds .txt files."""
    def first(candidates: Iterable[str], what: str) -> Path:
        for name in candidates:
            d = raw_dir / name
            if d.is_dir() and any(d.glob("*.txt")):
                return d
        raise DataError(f"{raw_dir}: no PKU-MMD {what} folder with .txt files; expected one "
                        f"of {', '.join(candidates)}; set data.raw_dir to the unpacked dataset")
    return first(SKELETON_DIRS, "skeleton"), first(LABEL_DIRS, "label")


def split_path(source: str, benchmark: str, split_dir: str | Path = "",
               reference_dir: Path | None = None) -> Path:
    name = SPLIT_FILES.get((source, benchmark))
    if name is None:
        raise DataError(f"data.benchmark: {benchmark!r} is not a PKU-MMD benchmark "
                        f"(data.source {source!r}); use xsub or xview")
    ref = reference_dir or default_reference_dir()
    return (ref if source == "pku1" else Path(split_dir)) / name


# --------------------------------------------------------------------------- processing


def clean_actors(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Zero every actor with a non-finite coordinate in a frame (it is absent there);
    returns the frames and how many frames had one."""
    bad = ~np.isfinite(frames).all(axis=(2, 3))  # (T, M)
    if bad.any():
        frames = frames.copy()
        frames[bad] = 0.0
    return frames, int(bad.any(axis=1).sum())


def centre(frames: np.ndarray) -> np.ndarray:
    """Drop frames with nobody; subtract actor 1's spine mid in its first present frame
    (actor 2's if actor 1 is never present) from every present actor. (T, M, V, C) in/out."""
    present = (frames != 0).any(axis=(2, 3))  # (T, M)
    frames = frames[present.any(axis=1)]
    present = present[present.any(axis=1)]
    if not len(frames):
        return frames
    actor = 0 if present[:, 0].any() else 1
    origin = frames[np.argmax(present[:, actor]), actor, SPINE_MID]  # (C,)
    return np.where(present[:, :, None, None], frames - origin, 0.0).astype(np.float32)


def mamp_frames(frames: np.ndarray) -> np.ndarray:
    """MAMP's sample: the first 300 frames, then as many from the start as there are frames
    with a non-zero value (its feeder's valid-frame count); not centred. (T, M, V, C)."""
    frames = frames[:MAMP_MAX_FRAMES]
    valid = int((frames != 0).any(axis=(1, 2, 3)).sum())
    return frames[:valid].astype(np.float32)


def video_meta(video: str) -> tuple[int, int]:
    """(camera, setup) from a PKU video name: `0002-L` -> (1, 2), `A01N03-M` -> (2, 103)."""
    camera = CAMERAS.get(video.rsplit("-", 1)[-1], 0)
    digits = "".join(re.findall(r"\d", video.rsplit("-", 1)[0]))
    return camera, int(digits) if digits else 0


@dataclass(frozen=True)
class _Job:
    video: str
    skeleton: Path | None
    label: Path | None
    split: str
    num_classes: int
    frames: str = "mamp"   # preprocess.pku_frames


@dataclass
class _Result:
    video: str
    samples: list[tuple[SampleMeta, np.ndarray]] = field(default_factory=list)
    video_issue: Issue | None = None  # the whole video rejected
    row_issues: list[Issue] = field(default_factory=list)
    empty: list[Issue] = field(default_factory=list)  # valid rows with no skeleton
    rows: int = 0
    nan_frames: int = 0
    empty_frames: int = 0


def _convert_video(job: _Job) -> _Result:
    """One video -> its trimmed samples, as `job.frames` says (runs in a worker process)."""
    out = _Result(job.video)
    if job.skeleton is None or job.label is None:
        have, missing = (job.label, "skeleton") if job.skeleton is None else (job.skeleton, "label")
        out.video_issue = Issue(str(have), None, "missing_pair",
                                f"no {missing} file for video {job.video}")
        return out
    try:
        frames = read_skeleton(job.skeleton)
        rows, out.row_issues = read_labels(job.label, len(frames), job.num_classes)
    except BadFile as exc:
        out.video_issue = exc.issue
        return out
    out.rows = len(rows) + len(out.row_issues)
    frames, out.nan_frames = clean_actors(frames)
    camera, setup = video_meta(job.video)
    for row in rows:
        clip = frames[row.start:row.end]
        sample = mamp_frames(clip) if job.frames == "mamp" else centre(clip)
        out.empty_frames += len(clip) - len(sample)
        if not len(sample):
            out.empty.append(Issue(str(job.label), row.line, "no_skeleton",
                                   f"no skeleton in frames [{row.start}, {row.end})"))
            continue
        meta = SampleMeta(name=f"{job.video}_{row.line:03d}", label=row.label, performer=0,
                          camera=camera, setup=setup, replication=row.line, split=job.split,
                          novel=False)
        out.samples.append((meta, sample))
    return out


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """map(fn, items) over `workers` processes, results in input order, at most 2 x workers
    in flight so memory stays bounded while the caller streams results to disk."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers, initializer=worker_init) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_class_names(reference_dir: Path | None = None) -> list[str]:
    path = (reference_dir or default_reference_dir()) / "pku_mmd_classes.txt"
    names = [n.strip() for n in read_text(path, bom_ok=True).splitlines() if n.strip()]
    if len(names) != 51:
        raise DataError(f"{path}: expected 51 PKU-MMD class names, got {len(names)}")
    return names


def source_fingerprint(split_file: Path, jobs: list[_Job]) -> str:
    """sha256 of the split file and the name and size of every file converted: cheap (no
    second read of the data) and changes whenever a file is added, removed or rewritten with
    a different length. DVC hashes the contents themselves."""
    h = hashlib.sha256(split_file.read_bytes())
    for job in jobs:
        for p in (job.skeleton, job.label):
            h.update(f"{p.name if p else '-'}:{p.stat().st_size if p else 0};".encode())
    return h.hexdigest()


def convert_pku(data: DataConfig, pre: PreprocessConfig, out_dir: str | Path,
                reference_dir: Path | None = None) -> dict[str, Any]:
    """Convert PKU-MMD (data.source pku1 / pku2) under data.raw_dir into a store at out_dir.
    Returns metrics; every video is counted as converted, skipped or unlisted, every label
    row of a converted video as a sample, rejected or empty."""
    if data.source not in ("pku1", "pku2"):
        raise DataError(f"data.source: {data.source!r} is not PKU-MMD; use pku1 or pku2")
    raw = Path(data.raw_dir)
    split_file = split_path(data.source, data.benchmark, data.pku_split_dir or raw, reference_dir)
    train, test = read_split(split_file)
    split_of = {**{v: "train" for v in train}, **{v: "test" for v in test}}
    class_names = read_class_names(reference_dir)
    skel_dir, label_dir = find_layout(raw)
    skeletons = {p.stem: p for p in skel_dir.glob("*.txt")}
    labels = {p.stem: p for p in label_dir.glob("*.txt")}
    videos = sorted(skeletons.keys() | labels.keys())
    jobs = [_Job(v, skeletons.get(v), labels.get(v), split_of[v], len(class_names),
                 pre.pku_frames) for v in videos if v in split_of]

    m: dict[str, Any] = {
        "dataset": data.source, "benchmark": data.benchmark, "videos": len(videos),
        "videos_converted": 0, "videos_skipped": 0, "videos_unlisted": len(videos) - len(jobs),
        "videos_missing": len(split_of.keys() - set(videos)), "label_rows": 0,
        "samples": {"train": 0, "test": 0, "novel": 0}, "rows_rejected": 0, "samples_empty": 0,
        "frames": 0, "nan_frames": 0, "empty_frames": 0,
    }
    issues: list[Issue] = []
    with StoreWriter(out_dir, dataset=data.source, benchmark=data.benchmark,
                     class_names=class_names, novel_labels=[],
                     source_fingerprint=source_fingerprint(split_file, jobs)) as writer:
        for res in ordered_map(_convert_video, jobs, pre.workers):
            problems = ([res.video_issue] if res.video_issue else []) + res.row_issues
            if problems and pre.on_error == "raise":
                raise DataError(f"{problems[0].message}; fix the file or set "
                                f"preprocess.on_error: skip")
            issues += problems + res.empty
            if res.video_issue:
                m["videos_skipped"] += 1
                continue
            m["videos_converted"] += 1
            m["label_rows"] += res.rows
            m["rows_rejected"] += len(res.row_issues)
            m["samples_empty"] += len(res.empty)
            m["nan_frames"] += res.nan_frames
            m["empty_frames"] += res.empty_frames
            for meta, frames in res.samples:
                writer.add(meta, frames)
                m["samples"][meta.split] += 1
                m["frames"] += len(frames)
        if not any(m["samples"].values()):
            raise DataError(f"{raw}: no usable PKU-MMD samples for {data.benchmark} "
                            f"({len(jobs)} listed videos found); check data.raw_dir")
    m["skipped"] = tally(issues)
    m["issues"] = [i.record() for i in issues]
    return m
