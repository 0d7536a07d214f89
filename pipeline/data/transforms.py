"""Sample transforms: (T, M, V, C) frames from the store -> (M, T_out, V, C) float32 model input.

Usage::

    x = train_transform(frames, rng, frames_out=120)   # crop 50-100 %, resize, rotate
    x = test_transform(frames, frames_out=120)         # centre crop 95 %, resize
    ds = SkeletonDataset(store, rows, TrainTransform(frames_out=120))   # picklable callables

These follow the MAMP / STARS release (`feeder/tools.py`: `valid_crop_resize`, `random_rot`),
with three documented deviations:

* Valid frames are the frames with any non-zero coordinate, wherever they are; the release
  counts frames whose coordinates *sum* to non-zero and assumes they form a prefix (its data
  are zero-padded at the end). Our store has no padding, so both agree on every real sample.
* Randomness comes from the `np.random.Generator` passed in (derived from the sample seed),
  not from the global numpy / torch generators, so results do not depend on worker processes.
* Rotation is applied to the (M, T, V, C) layout directly; the matrix is the release's
  R = Rz Ry Rx with the same sign convention, angles uniform in [-rotate, rotate].
Resizing is torch `F.interpolate(mode="linear", align_corners=False)` along time, which is
exactly the release's bilinear resize of a (C*V*M, T) image to (C*V*M, T_out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def valid_frames(frames: np.ndarray) -> np.ndarray:
    """(T, M, V, C) -> the frames with any non-zero coordinate."""
    return frames[np.any(frames != 0, axis=(1, 2, 3))]


def resize(frames: np.ndarray, frames_out: int) -> np.ndarray:
    """(T, M, V, C) -> (M, frames_out, V, C) float32, linear in time (align_corners=False)."""
    T, M, V, C = frames.shape
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    x = x.permute(1, 2, 3, 0).reshape(1, M * V * C, T)  # time last for interpolate
    x = F.interpolate(x, size=frames_out, mode="linear", align_corners=False)
    return x.reshape(M, V, C, frames_out).permute(0, 3, 1, 2).contiguous().numpy()


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Angles (ax, ay, az) -> (3, 3) float32 R = Rz @ Ry @ Rx, acting on column vectors."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(angles), np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def train_transform(frames: np.ndarray, rng: np.random.Generator, frames_out: int,
                    crop_min: float = 0.5, crop_floor: int = 64,
                    rotate: float = 0.3) -> np.ndarray:
    """Random crop of a fraction in [crop_min, 1] of the valid frames (never shorter than
    min(crop_floor, valid)), resized to frames_out, rotated by angles in [-rotate, rotate]."""
    valid = valid_frames(frames)
    n = len(valid)
    if n == 0:
        raise ValueError("sample has no valid frame (every coordinate is zero)")
    p = rng.uniform(crop_min, 1.0)
    length = min(max(int(np.floor(n * p)), crop_floor), n)
    start = int(rng.integers(0, n - length + 1))
    x = resize(valid[start:start + length], frames_out)  # (M, T, V, C)
    if rotate > 0:
        R = rotation_matrix(rng.uniform(-rotate, rotate, size=3))
        x = x @ R.T  # each point p -> R p; zeros (absent actors) stay zero
    return np.ascontiguousarray(x, dtype=np.float32)


def test_transform(frames: np.ndarray, frames_out: int, keep: float = 0.95) -> np.ndarray:
    """Centre crop keeping `keep` of the valid frames, resized to frames_out."""
    valid = valid_frames(frames)
    n = len(valid)
    if n == 0:
        raise ValueError("sample has no valid frame (every coordinate is zero)")
    bias = int((1 - keep) * n / 2)
    return resize(valid[bias:n - bias], frames_out)


test_transform.__test__ = False  # a transform, not a test: pytest must not collect it on import


@dataclass(frozen=True)
class TrainTransform:
    """`train_transform` with its parameters bound: called as f(frames, rng)."""

    frames_out: int
    crop_min: float = 0.5
    crop_floor: int = 64
    rotate: float = 0.3

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return train_transform(frames, rng, self.frames_out, self.crop_min, self.crop_floor,
                               self.rotate)


@dataclass(frozen=True)
class TestTransform:
    """`test_transform` with its parameters bound: called as f(frames, rng), rng unused."""

    __test__ = False  # not a pytest test class
    frames_out: int
    keep: float = 0.95

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return test_transform(frames, self.frames_out, self.keep)
