"""Write NTU RGB+D `.skeleton` text files (the format of DESIGN.md section 2).

Usage::

    frames = [[Body(body_id=72057594037931101, xyz=joints)], []]   # frame 1: one body, frame 2: none
    write_skeleton("S001C001P001R001A001.skeleton", frames)

Floats are printed the way the Kinect SDK (.NET `float.ToString()`) printed them in the public
files: 7 significant digits, trailing zeros dropped, scientific notation below 1e-4 with a
two-digit exponent (`-9.276937E-05`, `0`, `1026`, `0.2189543`), which is C's `%.7G`.
depthX/depthY and colorX/colorY come from pinhole projections of x, y, z with Kinect v2
intrinsics, so they are consistent with the 3D joints like in real recordings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_text

JOINTS = 25

# Kinect v2 intrinsics (approximate factory values). Depth: 512 x 424; colour: 1920 x 1080,
# whose camera sits about 5 cm to the side of the depth camera.
DEPTH_F, DEPTH_C = 365.0, (256.0, 208.0)
COLOR_F, COLOR_C, COLOR_T = 1081.0, (960.0, 540.0), (0.052, 0.0)

_JOINT_LINE = "%.7G " * 11 + "%d\n"
_JOINT_BLOCK = _JOINT_LINE * JOINTS
_BODY_LINE = "%d %d %d %d %d %d %d %.7G %.7G %d\n"


@dataclass
class Body:
    """One tracked body in one frame."""

    body_id: int                               # 64-bit Kinect tracking id
    xyz: np.ndarray                            # (25, 3) camera space, metres
    orientation: np.ndarray | None = None      # (25, 4) quaternion w, x, y, z; None = zeros
    tracking: np.ndarray | None = None         # (25,) 0 untracked, 1 inferred, 2 tracked
    clipped_edges: int = 0
    hand_left: tuple[int, int] = (1, 1)        # (confidence, state)
    hand_right: tuple[int, int] = (1, 1)
    restricted: int = 0
    lean: tuple[float, float] = (0.0, 0.0)     # leanX, leanY in [-1, 1]
    tracking_state: int = 2


def project(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) camera-space points -> depth pixels (..., 2) and colour pixels (..., 2).
    Camera space: x to the sensor's left, y up, z away from the sensor."""
    x, y = xyz[..., 0], xyz[..., 1]
    z = np.where(np.abs(xyz[..., 2]) < 1e-6, 1e-6, xyz[..., 2])
    depth = np.stack([DEPTH_C[0] + DEPTH_F * x / z, DEPTH_C[1] - DEPTH_F * y / z], -1)
    color = np.stack([COLOR_C[0] + COLOR_F * (x + COLOR_T[0]) / z,
                      COLOR_C[1] - COLOR_F * (y + COLOR_T[1]) / z], -1)
    return depth, color


def _joint_rows(bodies: list[Body]) -> np.ndarray:
    """All bodies' 25 x 12 joint fields at once: (B, 25, 12) float64."""
    B = len(bodies)
    rows = np.zeros((B, JOINTS, 12))
    rows[..., 0:3] = np.stack([b.xyz for b in bodies])
    rows[..., 3:5], rows[..., 5:7] = project(rows[..., 0:3])
    for i, b in enumerate(bodies):
        if b.orientation is not None:
            rows[i, :, 7:11] = b.orientation
        rows[i, :, 11] = 2 if b.tracking is None else b.tracking
    # float32 like the SDK, then back so %.7G prints the float32's digits; + 0.0 drops -0.
    return rows.astype(np.float32).astype(np.float64) + 0.0


def format_skeleton(frames: list[list[Body]]) -> str:
    """The `.skeleton` text for `frames` (each a list of bodies, possibly empty)."""
    bodies = [b for frame in frames for b in frame]
    rows = _joint_rows(bodies) if bodies else np.zeros((0, JOINTS, 12))
    values = rows.reshape(len(bodies), -1).tolist()
    parts = [f"{len(frames)}\n"]
    k = 0
    for frame in frames:
        parts.append(f"{len(frame)}\n")
        for b in frame:
            parts.append(_BODY_LINE % (b.body_id, b.clipped_edges, *b.hand_left, *b.hand_right,
                                       b.restricted, b.lean[0] + 0.0, b.lean[1] + 0.0,
                                       b.tracking_state))
            parts.append(f"{JOINTS}\n")
            parts.append(_JOINT_BLOCK % tuple(values[k]))
            k += 1
    text = "".join(parts)
    # C prints NaN as NAN; the Kinect files (.NET) print NaN.
    return text.replace("NAN", "NaN") if np.isnan(rows).any() else text


def write_skeleton(path: str | Path, frames: list[list[Body]]) -> None:
    """Write `frames` to `path` atomically."""
    atomic_write_text(path, format_skeleton(frames))
