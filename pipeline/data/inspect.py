"""One-screen summary of a raw `.skeleton` file or a packed store
(CLI: `python -m pipeline inspect PATH`).

For a file: the name fields, the frame and body counts, every body ID with its frame span,
what the reference denoiser keeps (and why it drops the rest), and the final length. For a
store folder: its fingerprint is verified (every byte reread), then samples per split, classes
and frames.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.denoise import denoise
from pipeline.data.ntu import parse_name, read_skeleton
from pipeline.data.store import Store


def summarize(path: str | Path) -> str:
    """A human-readable summary of one `.skeleton` file or a store folder; DataError if it
    cannot be read (or the store does not match its fingerprint)."""
    path = Path(path)
    if path.is_dir():
        return summarize_store(path)
    lines = [f"{path}"]
    try:
        s = parse_name(path)
        lines.append(f"  setup {s.setup}  camera {s.camera}  performer {s.performer}  "
                     f"replication {s.replication}  action {s.action} (label {s.action - 1})")
    except DataError as e:
        lines.append(f"  name: {e}")
    raw = read_skeleton(path)
    hist = Counter(raw.body_counts.tolist())
    lines.append(f"  frames in file: {raw.frames}   bodies per frame: "
                 + ", ".join(f"{k}: {hist[k]} frames" for k in sorted(hist)))
    lines.append("  body IDs (file frames first-last, records):")
    ids = np.asarray(raw.body_ids, dtype=object)
    for body_id in dict.fromkeys(raw.body_ids):
        frames = raw.body_frame[ids == body_id]
        lines.append(f"    {body_id}: {frames.min()}-{frames.max()}, {len(frames)}")
    try:
        out, info = denoise(raw)
    except DataError as e:
        lines.append(f"  denoising fails: {e}")
        return "\n".join(lines)
    lines.append("  denoising (frames counted among non-empty frames; motion = sum of variances):")
    for t in info["tracks"]:
        motion = "-" if t["motion"] is None else f"{t['motion']:.6f}"
        lines.append(f"    {t['id']}: frames {t['start']}-{t['end']}  motion {motion}  "
                     f"-> {t['fate']}")
    lines.append(f"  dropped frames: {info['empty_frames']} without bodies, "
                 f"{info['missing_frames']} without actors, {info['nan_frames']} with NaN")
    lines.append(f"  final: {info['frames']} frames, {info['actors']} actor(s), "
                 f"shape {tuple(out.shape)}")
    return "\n".join(lines)


def summarize_store(directory: Path) -> str:
    """Store folder -> samples per split, classes, frames (after `Store.verify`)."""
    store = Store.open(directory)
    store.verify()
    index, meta = store.index, store.meta
    parts = ", ".join(f"{n} {split}{' novel' if novel else ''}" for (split, novel), n in
                      index.groupby(["split", "novel"]).size().items())
    head = f"{directory}: {meta.get('dataset')} {meta.get('benchmark')}, fingerprint verified"
    return (f"{head}\n  {len(store)} samples ({parts or 'none'}), {len(meta['class_names'])} "
            f"classes ({len(meta.get('novel_labels', []))} novel), {meta['frames_shape'][0]} "
            f"frames")
