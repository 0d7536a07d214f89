"""Raw dataset -> packed store (stage `preprocess`): parse, denoise, split, pack; returns metrics.

Usage::

    metrics = preprocess(params.data, params.preprocess, Path("data/processed"))

NTU-format sources (`synthetic`, `ntu60`, `ntu120`): every `*.skeleton` (and
`*.skeleton.gz`, which is reported, not read) in `data.raw_dir` is accounted for exactly once
in the metrics, as a stored sample (train / test / novel), an official missing sample (NTU
lists, never read), a file outside the dataset (e.g. NTU-120 files when the source is ntu60,
or a repeated name), or a skipped file (`preprocess.on_error: skip`; with `raise` the first
such line stops the stage and nothing is written). Skipped files are counted per category
in `skipped` ({"count": n, "truncated": n, ...}; the keys of `pipeline.data.issues.CATEGORIES`,
safe as metric names) and listed in `issues` as {file, line, category, message}. Files are
parsed and denoised by `preprocess.workers` processes and written in name order, so the store
is byte-identical whatever the number of workers.

For ntu60 with `data.novel_dir`, the NTU-120 files of actions A061-A120 found there are added
with `novel=True` (the few-shot classes); the class list is then all 120 NTU names.
Other sources are converted by `pipeline.data.pku.convert_pku` and
`pipeline.data.interop.import_file`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import DataConfig, PreprocessConfig
from pipeline.core.errors import DataError
from pipeline.core.stage import worker_init
from pipeline.data import splits
from pipeline.data.denoise import denoise
from pipeline.data.issues import BadFile, Issue, read_input, tally
from pipeline.data.ntu import SampleName, parse_name, parse_skeleton
from pipeline.data.store import SampleMeta, StoreWriter


def preprocess(data: DataConfig, pre: PreprocessConfig, out_dir: Path,
               reference_dir: Path | None = None) -> dict[str, Any]:
    """Convert `data.source` under `data.raw_dir` into a store at `out_dir`; returns metrics."""
    if data.source in ("pku1", "pku2"):
        from pipeline.data.pku import convert_pku
        return convert_pku(data, pre, out_dir, reference_dir)
    elif data.source in ("npz", "pyskl"):
        from pipeline.data.interop import import_file
        return import_file(data.source, data.raw_dir, out_dir, data.benchmark,
                           on_error=pre.on_error)
    return convert_ntu(data, pre, Path(out_dir), reference_dir)


@dataclass(frozen=True)
class _Job:
    path: Path
    meta: SampleMeta


@dataclass
class _Result:
    job: _Job
    digest: str  # sha256 of the file's bytes ("-" when it cannot be read)
    frames: np.ndarray | None = None
    info: dict | None = None
    issue: Issue | None = None


def _load(job: _Job) -> _Result:
    """Worker: read, parse and denoise one file (a bad file comes back as its Issue)."""
    try:
        data = read_input(job.path)
    except BadFile as e:
        return _Result(job, "-", issue=e.issue)
    digest = hashlib.sha256(data).hexdigest()
    try:
        frames, info = denoise(parse_skeleton(data, str(job.path)))
    except BadFile as e:
        return _Result(job, digest, issue=e.issue)
    return _Result(job, digest, frames, info)


def list_skeletons(folder: str | Path, what: str) -> list[Path]:
    """Sorted `*.skeleton` and `*.skeleton.gz` files of `folder` (the compressed ones are
    reported, not read); DataError naming the folder if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found; set data.raw_dir (or run "
                        f"`dvc repro synthesize` for the synthetic data)")
    files = sorted([*folder.glob("*.skeleton"), *folder.glob("*.skeleton.gz")])
    if not files:
        raise DataError(f"{folder}: no .skeleton files in the {what} folder; point data.raw_dir "
                        f"at the NTU skeleton folder (or run `dvc repro synthesize`)")
    return files


def read_synthetic_classes(raw_dir: Path) -> tuple[list[str], list[int]]:
    """`<raw_dir>/dataset.json` = {"class_names": [...], "novel_labels": [0-based labels]}."""
    path = raw_dir / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; regenerate the synthetic data (dvc repro synthesize)")
    try:
        spec = json.loads(path.read_text())
        return [str(c) for c in spec["class_names"]], [int(c) for c in spec["novel_labels"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: expected {{\"class_names\": [...], \"novel_labels\": [...]}}, "
                        f"got {type(e).__name__}: {e}; regenerate the synthetic data") from None


def convert_ntu(data: DataConfig, pre: PreprocessConfig, out_dir: Path,
                reference_dir: Path | None = None) -> dict[str, Any]:
    """The NTU-format path of `preprocess` (synthetic, ntu60, ntu120)."""
    source, benchmark = data.source, data.benchmark
    raw_dir = Path(data.raw_dir)
    files = list_skeletons(raw_dir, "raw data")
    novel_files = []
    if source == "synthetic":
        class_names, novel_labels = read_synthetic_classes(raw_dir)
        missing: set[str] = set()
    else:
        class_names, novel_labels = splits.class_names(source, reference_dir), []
        missing = splits.missing_samples(source, reference_dir)
        if source == "ntu60" and data.novel_dir:
            novel_files = list_skeletons(data.novel_dir, "data.novel_dir")
            class_names = splits.class_names("ntu120", reference_dir)
            novel_labels = list(range(splits.NTU60_ACTIONS, len(class_names)))
            missing |= splits.missing_samples("ntu120", reference_dir)

    m: dict[str, Any] = {
        "dataset": source, "benchmark": benchmark, "files_seen": len(files) + len(novel_files),
        "samples": {"train": 0, "test": 0, "novel": 0}, "frames": 0, "missing_samples": 0,
        "outside_dataset": 0, "skipped": {"count": 0},
        "nan_frames": 0, "empty_frames": 0, "missing_frames": 0, "dropped_tracks": 0,
    }
    skipped: list[Issue] = []

    def skip(issue: Issue) -> None:
        if pre.on_error == "raise":
            raise DataError(f"{issue.message} (set preprocess.on_error: skip to skip such "
                            f"files)")
        skipped.append(issue)

    jobs: dict[str, _Job] = {}
    for path, from_novel_dir in [(p, False) for p in files] + [(p, True) for p in novel_files]:
        if path.name.endswith(".gz"):
            skip(Issue(str(path), None, "compressed", "gzip-compressed: decompress it first"))
            continue
        try:
            s = parse_name(path)
        except BadFile as e:
            skip(e.issue)
            continue
        if s.name in missing:
            m["missing_samples"] += 1
            continue
        if s.name in jobs or not _belongs(source, s, from_novel_dir):
            m["outside_dataset"] += 1
            continue
        label = s.action - 1
        if label >= len(class_names):
            skip(Issue(str(path), None, "unknown_action", f"expected an action of "
                       f"A001-A{len(class_names):03d} (the class list), got A{s.action:03d}"))
            continue
        # Novel NTU-120 samples follow the NTU-120 performer split under X-Sub.
        rules = "ntu120" if from_novel_dir and benchmark == "xsub" else source
        split = splits.split_of(rules, benchmark, s)
        jobs[s.name] = _Job(path, SampleMeta(
            name=s.name, label=label, performer=s.performer, camera=s.camera, setup=s.setup,
            replication=s.replication, split=split, novel=label in novel_labels))

    ordered = [jobs[name] for name in sorted(jobs)]
    digests = hashlib.sha256()
    with StoreWriter(out_dir, dataset=source, benchmark=benchmark, class_names=class_names,
                     novel_labels=novel_labels) as writer:
        for r in _ordered_map(ordered, pre.workers):
            digests.update(f"{r.job.meta.name} {r.digest}\n".encode())
            if r.issue:
                skip(r.issue)
                continue
            writer.add(r.job.meta, r.frames)
            m["samples"]["novel" if r.job.meta.novel else r.job.meta.split] += 1
            m["frames"] += len(r.frames)
            for key in ("nan_frames", "empty_frames", "missing_frames"):
                m[key] += r.info[key]
            m["dropped_tracks"] += sum(t["fate"].startswith("dropped") for t in r.info["tracks"])
        if not any(m["samples"].values()):
            first = f"; first skipped: {skipped[0].message}" if skipped else ""
            raise DataError(f"{raw_dir}: no usable samples among {m['files_seen']} files "
                            f"({len(skipped)} skipped, {m['missing_samples']} official missing, "
                            f"{m['outside_dataset']} outside {source}); check data.raw_dir"
                            f"{first}")
        writer.meta["source_fingerprint"] = digests.hexdigest()

    m["skipped"] = tally(skipped)
    m["issues"] = [i.record() for i in sorted(skipped, key=lambda i: i.file)]
    return m


def _belongs(source: str, s: SampleName, from_novel_dir: bool) -> bool:
    """Is this file part of the dataset being built (novel dir: only the A061-A120 classes)?"""
    if from_novel_dir:
        return s.action > splits.NTU60_ACTIONS
    if source == "ntu60":
        return splits.in_ntu60(s)
    return True


def _ordered_map(jobs: list[_Job], workers: int):
    """`_load` over jobs, results in job order; in-process when one worker suffices."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_load, jobs)
        return
    chunksize = max(1, min(32, len(jobs) // (workers * 8)))
    with Pool(min(workers, len(jobs)), initializer=worker_init) as pool:
        yield from pool.imap(_load, jobs, chunksize=chunksize)
