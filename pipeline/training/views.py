"""Input views for STARS tuning, as a Dataset transform `(frames, rng) -> array`.

Usage::

    ds = SkeletonDataset(store, rows, ViewTransform("none", frames_out=120))   # x (M, T, V, C)
    ds = SkeletonDataset(store, rows, ViewTransform("mask", 120, mask_ratio=0.5))  # (2, M, T, V, C)

STARS uses no augmentation (DESIGN.md section 3): both views are the full sequence resized to
`frames_out`, so "none" returns it once and the model runs one forward for both views. The
other kinds are ablations and return two independently drawn views, stacked:
"crop_rotate" is the pretraining augmentation (`train_transform`: random crop of
crop_min..100% of the frames, resized, random rotation), "mask" zeroes a random `mask_ratio`
of the (t_patch frames x joint) tokens of each actor of the full sequence. All randomness comes
from `rng`, which the Dataset derives from the sample's seed (not from the process).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.data.transforms import test_transform, train_transform


def mask_tokens(x: np.ndarray, rng: np.random.Generator, ratio: float, t_patch: int) -> np.ndarray:
    """x (M, T, V, C) -> a copy with int(L * ratio) of the L = T/t_patch * V tokens of each
    actor set to 0, chosen uniformly."""
    M, T, V, C = x.shape
    L = T // t_patch * V
    order = rng.random((M, L)).argsort(axis=1)                      # random token order
    masked = np.zeros((M, L), dtype=bool)
    np.put_along_axis(masked, order[:, :int(L * ratio)], True, axis=1)
    masked = masked.reshape(M, T // t_patch, 1, V, 1)               # (M, T', 1, V, 1)
    tokens = x.reshape(M, T // t_patch, t_patch, V, C)              # (M, T', t_patch, V, C)
    return np.where(masked, 0.0, tokens).astype(x.dtype).reshape(M, T, V, C)


@dataclass(frozen=True)
class ViewTransform:
    """The tuning Dataset transform for `view` (module doc); picklable for loader workers."""

    view: Literal["none", "crop_rotate", "mask"]
    frames_out: int
    mask_ratio: float = 0.5
    t_patch: int = 4
    crop_min: float = 0.5
    crop_floor: int = 64
    rotate: float = 0.3

    def one(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One view (M, T, V, C)."""
        if self.view == "crop_rotate":
            return train_transform(frames, rng, self.frames_out, self.crop_min,
                                   self.crop_floor, self.rotate)
        full = test_transform(frames, self.frames_out, keep=1.0)
        if self.view == "mask":
            return mask_tokens(full, rng, self.mask_ratio, self.t_patch)
        return full

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.view == "none":
            return self.one(frames, rng)                                     # (M, T, V, C)
        return np.stack([self.one(frames, rng), self.one(frames, rng)])    # (2, M, T, V, C)
