"""Preprocessing speed: NTU-like `.skeleton` files -> parser throughput -> full preprocess.

Jobs, each run by `benchmarks.run` in a subprocess of its own (in this order, same workdir):
- `generate`: distinct NTU-like files written by the production writer (synthetic
  performances from `pipeline.data.synthetic.synth`, resampled to NTU-like lengths: 30-300 frames,
  mean near 80, 1-2 actors plus the generator's artifacts), and a larger set of valid,
  distinct NTU names hard-linked to them (so 10,000 files cost the disk and time of 1,000);
- `parse`: `pipeline.data.ntu.parse_skeleton` over the distinct files held in memory (one core);
- `preprocess`: the whole `pipeline.data.preprocess.preprocess` (parse, denoise, pack) on
  either set with 2 worker processes; peak RSS of the main process and of the largest worker.
The files are read from the page cache (they were just written): disk reads are not timed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import children_peak_rss_mb, peak_rss_mb
from pipeline.core.config import DataConfig, PreprocessConfig, SynthConfig
from pipeline.data.preprocess import preprocess as run_preprocess
from pipeline.data.synthetic import synth
from pipeline.data.synthetic.ntu_writer import format_skeleton

NTU120_FILES = 114_480
CLASSES = 60
_SYNTH = SynthConfig(base_classes=30, novel_classes=0, performers=40, min_frames=30,
                     max_frames=300)


def ntu_name(j: int) -> str:
    """The j-th of 14,400 distinct valid NTU-60 names (S001; all 60 actions, 3 cameras,
    40 performers, 2 replications), so the X-Sub split mixes train and test."""
    return synth.file_name(setup=1, camera=(j // CLASSES) % 3 + 1,
                           performer=(j // (3 * CLASSES)) % 40 + 1,
                           replication=(j // (120 * CLASSES)) % 2 + 1, action=j % CLASSES + 1)


def _ntu_length(rng: np.random.Generator) -> int:
    """Log-normal frame count, median 72 (mean about 80), clipped to NTU's 30-300."""
    return int(np.clip(round(rng.lognormal(np.log(72), 0.45)), 30, 300))


def _write_one(args: tuple[Path, int]) -> tuple[int, int, float]:
    """Write file j; returns (bytes, frames, mean bodies per frame)."""
    out_dir, j = args
    rng = np.random.default_rng([7, j])
    label = j % len(synth.classes(_SYNTH))
    # a new setup every 120 files: (performer, class) pairs would repeat with period 120
    actors = synth.stage(_SYNTH, j // 120 + 1, j % _SYNTH.performers + 1, 1, label)
    T, T0 = _ntu_length(rng), len(actors[0][0])
    pos = np.linspace(0, T0 - 1, T)
    lo, w = np.floor(pos).astype(int), (pos - np.floor(pos))[:, None, None]
    hi = np.minimum(lo + 1, T0 - 1)
    resampled = [(xyz[lo] * (1 - w) + xyz[hi] * w, rot[np.rint(pos).astype(int)])
                 for xyz, rot in actors]                       # linear xyz, nearest rotation
    frames, _ = synth.record(_SYNTH, resampled, synth.camera(_SYNTH, 1, j % 3 + 1), rng)
    data = format_skeleton(frames).encode("ascii")
    (out_dir / ntu_name(j)).write_bytes(data)
    return len(data), len(frames), float(np.mean([len(f) for f in frames]))


def _write_classes(raw_dir: Path) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "dataset.json").write_text(json.dumps(
        {"class_names": [f"action {a + 1}" for a in range(CLASSES)], "novel_labels": []}))


def generate(workdir: str, distinct: int, linked: int) -> dict:
    """`distinct` files in <workdir>/raw_<distinct>, and <workdir>/raw_<linked> holding
    `linked` names hard-linked to them in turn."""
    work = Path(workdir)
    small, large = work / f"raw_{distinct}", work / f"raw_{linked}"
    _write_classes(small)
    _write_classes(large)
    start = time.perf_counter()
    with mp.get_context().Pool(2) as pool:
        stats = list(pool.imap(_write_one, [(small, j) for j in range(distinct)], chunksize=8))
    seconds = time.perf_counter() - start
    for j in range(linked):
        os.link(small / ntu_name(j % distinct), large / ntu_name(j))
    sizes, lengths, bodies = (np.array(s) for s in zip(*stats))
    return {"distinct_files": distinct, "linked_files": linked, "bytes": int(sizes.sum()),
            "mean_kb": float(sizes.mean() / 1e3), "frames_mean": float(lengths.mean()),
            "frames_min": int(lengths.min()), "frames_max": int(lengths.max()),
            "bodies_per_frame": float(bodies.mean()),
            "two_body_files": float(np.mean(bodies > 1.5)), "generate_s": seconds}


def parse(workdir: str, distinct: int) -> dict:
    """Parser throughput on one core over the distinct files, already in memory."""
    from pipeline.data.ntu import parse_skeleton

    files = sorted((Path(workdir) / f"raw_{distinct}").glob("*.skeleton"))
    blobs = [(f.read_bytes(), str(f)) for f in files]
    total = sum(len(b) for b, _ in blobs)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for data, name in blobs:
            parse_skeleton(data, name)
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    return {"files": len(blobs), "bytes": total, "parse_s": sec, "times": times,
            "mb_per_s": total / 1e6 / sec, "files_per_s": len(blobs) / sec}


def preprocess(workdir: str, files: int, repeats: int) -> dict:
    """The whole preprocess stage (2 workers) on <workdir>/raw_<files>: median of `repeats`."""
    work = Path(workdir)
    data = DataConfig(source="synthetic", benchmark="xsub", raw_dir=str(work / f"raw_{files}"),
                      processed_dir=str(work / f"store_{files}"))
    pre = PreprocessConfig(workers=2, on_error="skip")
    times, metrics = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = run_preprocess(data, pre, Path(data.processed_dir))
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    stored = sum(metrics["samples"].values())
    return {"files": files, "workers": pre.workers, "stored": stored,
            "skipped": metrics["skipped"]["count"], "preprocess_s": sec, "times": times,
            "files_per_s": files / sec, "main_peak_rss_mb": peak_rss_mb(),
            "worker_peak_rss_mb": children_peak_rss_mb(),
            "ntu120_extrapolated_s": sec / files * NTU120_FILES}
