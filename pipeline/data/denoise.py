"""Reference denoising, actor assignment and centring of one NTU sequence (DESIGN.md section 2).

Usage::

    frames, info = denoise(read_skeleton(path))   # float32 (T, M=2, V=25, C=3), dict

This reproduces, decision for decision, the community pipeline every published NTU number uses:
CTR-GCN / SGN `get_raw_skes_data.py` + `get_raw_denoised_data.py` + `seq_transformation.py`
(`seq_translation`). The reference's quirks are kept on purpose, because they decide which
frames and actors end up in the data:

* Frames with 0 bodies are dropped first; frame indices below count only the other frames.
* A track (one body ID) is stored as if contiguous: its k-th record goes to frame start + k,
  even when the ID vanished and came back in between (the reference appends
  `interval[-1] + 1`).
* A file with one body ID skips denoising (no length rule) and keeps every frame.
* Two intervals that share exactly one frame do not "overlap" (`min(end) - max(start) <= 0`);
  the later track overwrites that frame. Actor 2's interval starts as [0, 0] and grows from 0.
* The spread test compares a float32 x-extent with 0.8 x the y-extent in float64, as NumPy 1.x
  did for the reference (NumPy 2 would round the product to float32); motion is float32
  `np.var`, sorted with Python's stable `sorted`, updated with Python's `min`, as there.
* Missing frames are those whose coordinates sum to exactly 0 (the reference's test).

NaN coordinates (a few real files have them): the reference keeps them, so they count as
present joints, make the spread test fail (noisy frame) and propagate into motion; all of that
is reproduced. Where the reference would then *output* NaN we deviate: the centring origin is
taken from actor 1's first frame whose spine-mid joint is finite (the reference takes the
first frame and, if that joint is NaN, turns the whole sequence into NaN), and frames still
holding a non-finite value after centring are dropped (what the reference's own, unused,
`remove_nan_frames` does); `info["nan_frames"]` counts them. For every sequence the reference
outputs finite, our output is identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.issues import BadFile
from pipeline.data.ntu import JOINTS, RawSkeleton

NOISE_LEN = 11  # tracks of <= 11 frames are noise
SPREAD = 0.8  # a frame is noisy if its x-extent > 0.8 x its y-extent
NOISY_FRACTION = 0.69754  # drop a track when this fraction of its frames is noisy
SPINE_MID = 1  # 0-based joint 2: the centring origin


@dataclass(eq=False)  # tracks are compared by identity (list.remove)
class Track:
    """All records of one body ID, packed from its first frame as the reference does."""

    body_id: int
    start: int  # index among non-empty frames
    joints: np.ndarray  # (n, V, C) float32
    motion: np.float32 | None = None
    fate: str = ""

    @property
    def end(self) -> int:  # inclusive, as the reference's `interval[-1]`
        return self.start + len(self.joints) - 1

    def summary(self) -> dict:
        motion = None if self.motion is None else float(self.motion)
        return {"id": self.body_id, "start": self.start, "end": self.end,
                "frames": len(self.joints), "motion": motion, "fate": self.fate}


def motion_of(joints: np.ndarray) -> np.float32:
    """Sum over x, y, z of the variance of all joint positions (float32, as the reference)."""
    return np.sum(np.var(joints.reshape(-1, 3), axis=0))


def noisy_frames(joints: np.ndarray) -> np.ndarray:
    """(n, V, C) -> (n,) bool: x-extent > 0.8 x y-extent (NaN counts as noisy)."""
    x, y = joints[..., 0], joints[..., 1]
    x_extent = x.max(axis=1) - x.min(axis=1)  # float32
    y_extent = y.max(axis=1) - y.min(axis=1)
    return ~(x_extent.astype(np.float64) <= SPREAD * y_extent.astype(np.float64))


def tracks_of(raw: RawSkeleton) -> tuple[list[Track], int]:
    """Group body records by ID in order of first appearance; also return the non-empty frames."""
    present = raw.body_counts > 0
    frame_index = np.cumsum(present) - 1  # file frame -> index among non-empty frames
    num_frames = int(present.sum())
    records: dict[int, list[int]] = {}
    for r, body_id in enumerate(raw.body_ids):
        records.setdefault(body_id, []).append(r)
    tracks = []
    for body_id, rs in records.items():
        tracks.append(Track(body_id, int(frame_index[raw.body_frame[rs[0]]]), raw.joints[rs]))
    return tracks, num_frames


def select_tracks(tracks: list[Track]) -> list[Track]:
    """Steps 2-4 up to the sort: length rule, spread rule, sort by motion (descending)."""
    for t in tracks:
        t.motion = motion_of(t.joints)
    kept = []
    for t in tracks:
        if len(t.joints) <= NOISE_LEN:
            t.fate = f"dropped: length {len(t.joints)} <= {NOISE_LEN}"
        else:
            kept.append(t)
    if len(kept) <= 1:
        return kept
    for t in list(kept):
        if len(kept) == 1:
            break
        noisy = noisy_frames(t.joints)
        num_noise = int(noisy.sum())
        if num_noise == 0:
            continue
        ratio = num_noise / float(len(t.joints))
        if ratio >= NOISY_FRACTION:
            kept.remove(t)
            t.fate = f"dropped: noisy-frame ratio {ratio:.4f} >= {NOISY_FRACTION}"
        else:
            t.motion = min(t.motion, motion_of(t.joints[~noisy]))
    if len(kept) == 1:
        return kept
    return sorted(kept, key=lambda t: t.motion, reverse=True)


def assign_actors(tracks: list[Track], num_frames: int, path: str) -> np.ndarray:
    """Step 4: place tracks (sorted by motion) into actor slots 1 and 2 -> (T, 2, V, C)."""
    out = np.zeros((num_frames, 2, JOINTS, 3), dtype=np.float32)

    def place(t: Track, slot: int) -> None:
        # Packed from its first frame, a track listed twice in some frame runs past the end;
        # the reference fails when it places such a track, so do we.
        if t.end >= num_frames:
            raise BadFile(path, None, "duplicate_body_id", f"expected each body ID at most "
                          f"once per frame, got ID {t.body_id} {len(t.joints)} times in "
                          f"{num_frames} frames")
        out[t.start:t.end + 1, slot] = t.joints
        t.fate = f"actor {slot + 1}"

    first, rest = tracks[0], tracks[1:]
    place(first, 0)
    start1, end1 = first.start, first.end
    start2, end2 = 0, 0  # the reference's "virtual" initial interval of actor 2
    for t in rest:
        if min(end1, t.end) - max(start1, t.start) <= 0:
            place(t, 0)
            start1, end1 = min(t.start, start1), max(t.end, end1)
        elif min(end2, t.end) - max(start2, t.start) <= 0:
            place(t, 1)
            start2, end2 = min(t.start, start2), max(t.end, end2)
        else:
            t.fate = "dropped: overlaps both actors"
    return out


def denoise(raw: RawSkeleton) -> tuple[np.ndarray, dict]:
    """Denoise, assign actors and centre one sequence -> (float32 (T, 2, V, C), info)."""
    tracks, num_frames = tracks_of(raw)
    if not tracks:
        raise BadFile(raw.path, None, "no_usable_body",
                      "expected at least one frame with a body, got none")
    if len(tracks) == 1:
        # One body ID: the reference skips denoising and keeps every frame.
        kept, width = tracks, 1
    else:
        kept = select_tracks(tracks)
        if not kept:
            raise BadFile(raw.path, None, "no_usable_body", f"expected a body tracked for "
                          f"more than {NOISE_LEN} frames, got none")
        width = 1 if len(kept) == 1 else 2
    out = assign_actors(kept, num_frames, raw.path)
    T = num_frames

    # Step 5: drop frames with no actor (the reference's width: 75 or 150 values per frame).
    missing = 0
    if len(tracks) > 1:
        present = out[:, :width].reshape(T, width * JOINTS * 3).sum(axis=1) != 0
        missing = int(T - present.sum())
        out, T = out[present], int(present.sum())

    # Step 6: centre on joint 2 of actor 1's first frame; absent actors stay exactly zero.
    absent = out.reshape(T, 2, JOINTS * 3).sum(axis=2) == 0  # (T, M), before subtracting
    if width == 1:
        absent[:, 0] = False  # the reference subtracts from every frame of a lone actor
    origin_ok = np.any(out[:, 0] != 0, axis=(1, 2)) & np.isfinite(out[:, 0, SPINE_MID]).all(1)
    if not origin_ok.any():
        raise BadFile(raw.path, None, "no_usable_body", "expected a finite spine-mid joint "
                      "for actor 1, got NaN in every frame")
    origin = out[int(np.argmax(origin_ok)), 0, SPINE_MID].copy()
    out -= origin
    out[absent] = 0

    finite = np.isfinite(out).all(axis=(1, 2, 3))
    nan_frames = int(T - finite.sum())
    out = out[finite]
    if len(out) == 0:
        raise BadFile(raw.path, None, "no_usable_body",
                      "expected a frame without NaN, got NaN in every frame")
    info = {
        "frames_in_file": raw.frames,
        "empty_frames": raw.frames - num_frames,
        "missing_frames": missing,
        "nan_frames": nan_frames,
        "frames": len(out),
        "actors": int(np.any(out != 0, axis=(0, 2, 3)).sum()),
        "tracks": [t.summary() for t in tracks],
    }
    return np.ascontiguousarray(out), info
