"""The 25-joint Kinect v2 skeleton: joint order, bones, bone lengths and forward kinematics.

Used by the synthetic generator::

    lengths = bone_lengths(height=1.75, limb_scale=(1.0, 1.02, 0.98))
    xyz, rot = forward_kinematics(angles, root, lengths)   # (T, 25, 3), (T, 25, 3, 3)

Joints are 0-based here (DESIGN.md section 2 lists them 1-based). The kinematic tree is the
DESIGN.md bone list read as an undirected tree and rooted at joint 0 (spine base), so every
DESIGN.md bone is one rigid segment and its length is constant at every frame.

Body frame (metres, right-handed): x = the performer's left, y = up, z = the performer's
forward. `angles[:, j]` is the local rotation of the segment that ends at joint j relative to
its parent segment, as Euler angles (rx, ry, rz) in radians, applied x then y then z.
`angles[:, 0]` is the root (pelvis) orientation.
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES = (
    "spine_base", "spine_mid", "neck", "head",
    "shoulder_l", "elbow_l", "wrist_l", "hand_l",
    "shoulder_r", "elbow_r", "wrist_r", "hand_r",
    "hip_l", "knee_l", "ankle_l", "foot_l",
    "hip_r", "knee_r", "ankle_r", "foot_r",
    "spine_shoulder", "hand_tip_l", "thumb_l", "hand_tip_r", "thumb_r",
)
V = len(JOINT_NAMES)
J = {name: i for i, name in enumerate(JOINT_NAMES)}

# DESIGN.md bones as (child, parent), 1-based, exactly as listed there.
BONES_1BASED = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12))
BONES = tuple((c - 1, p - 1) for c, p in BONES_1BASED)

# Parent of each joint in the tree rooted at the spine base (-1 for the root).
PARENTS = np.array([-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18,
                    1, 22, 7, 24, 11])
# Parents before children, for the forward pass.
ORDER = (0, 1, 20, 2, 3, 4, 5, 6, 7, 22, 21, 8, 9, 10, 11, 24, 23, 12, 13, 14, 15,
         16, 17, 18, 19)
# Joints Kinect reports without an orientation (all-zero quaternion): the leaves.
LEAVES = (J["head"], J["foot_l"], J["foot_r"], J["hand_tip_l"], J["thumb_l"],
          J["hand_tip_r"], J["thumb_r"])

# Length (m) of the segment ending at each joint. The DESIGN.md table (typical real NTU
# recordings) for the left side; the right side mirrors it.
_LEFT_LENGTHS = {"spine_mid": 0.265, "spine_shoulder": 0.197, "neck": 0.066, "head": 0.123,
                 "shoulder_l": 0.142, "elbow_l": 0.239, "wrist_l": 0.213, "hand_l": 0.065,
                 "hip_l": 0.054, "knee_l": 0.337, "ankle_l": 0.333, "foot_l": 0.099,
                 "hand_tip_l": 0.042, "thumb_l": 0.037}
TABLE_LENGTHS = np.zeros(V)
for _name, _len in _LEFT_LENGTHS.items():
    TABLE_LENGTHS[J[_name]] = _len
    if _name.endswith("_l"):
        TABLE_LENGTHS[J[_name[:-2] + "_r"]] = _len
# The table fits a performer of about this height (head joint ~1.38 m above the floor).
REF_HEIGHT = 1.60

# Rest pose (standing, arms hanging, facing +z): unit direction of each segment in its parent's
# frame. The right side is the left mirrored in x.
_LEFT_DIRS = {"spine_mid": (0, 1, 0), "spine_shoulder": (0, 1, 0), "neck": (0, 1, 0),
              "head": (0, 1, 0.05), "shoulder_l": (1, -0.15, 0), "elbow_l": (0, -1, 0),
              "wrist_l": (0, -1, 0.02), "hand_l": (0, -1, 0.05), "thumb_l": (0, -0.6, 0.8),
              "hand_tip_l": (0, -0.9, -0.44), "hip_l": (0.85, -0.52, 0), "knee_l": (0, -1, 0),
              "ankle_l": (0, -1, 0), "foot_l": (0, -0.35, 0.94)}
REST_DIRS = np.zeros((V, 3))
for _name, _d in _LEFT_DIRS.items():
    _d = np.asarray(_d, float) / np.linalg.norm(_d)
    REST_DIRS[J[_name]] = _d
    if _name.endswith("_l"):
        REST_DIRS[J[_name[:-2] + "_r"]] = _d * (-1, 1, 1)

_ARM = [J[n] for s in "lr" for n in (f"elbow_{s}", f"wrist_{s}", f"hand_{s}",
                                       f"thumb_{s}", f"hand_tip_{s}")]
_LEG = [J[n] for s in "lr" for n in (f"knee_{s}", f"ankle_{s}", f"foot_{s}")]


def bone_lengths(height: float, limb_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
                 ) -> np.ndarray:
    """Segment length per joint (25,) for a performer of `height` metres; `limb_scale`
    (torso, arms, legs) multiplies the proportions on top of the uniform height scaling."""
    lengths = TABLE_LENGTHS * (height / REF_HEIGHT)
    torso, arms, legs = limb_scale
    lengths[[J["spine_mid"], J["spine_shoulder"], J["neck"], J["head"]]] *= torso
    lengths[_ARM] *= arms
    lengths[_LEG] *= legs
    return lengths


def pelvis_height(lengths: np.ndarray) -> float:
    """Height of the spine base above the floor in the rest pose (feet flat on y = 0)."""
    offsets = REST_DIRS * lengths[:, None]
    chain = [J["hip_l"], J["knee_l"], J["ankle_l"], J["foot_l"]]
    return -float(sum(offsets[j, 1] for j in chain))


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """(..., 3) Euler angles (rx, ry, rz), applied x then y then z -> (..., 3, 3) = Rz Ry Rx."""
    cx, cy, cz = np.cos(angles[..., 0]), np.cos(angles[..., 1]), np.cos(angles[..., 2])
    sx, sy, sz = np.sin(angles[..., 0]), np.sin(angles[..., 1]), np.sin(angles[..., 2])
    R = np.empty(angles.shape[:-1] + (3, 3))
    R[..., 0, 0] = cz * cy
    R[..., 0, 1] = cz * sy * sx - sz * cx
    R[..., 0, 2] = cz * sy * cx + sz * sx
    R[..., 1, 0] = sz * cy
    R[..., 1, 1] = sz * sy * sx + cz * cx
    R[..., 1, 2] = sz * sy * cx - cz * sx
    R[..., 2, 0] = -sy
    R[..., 2, 1] = cy * sx
    R[..., 2, 2] = cy * cx
    return R


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about the vertical axis (3, 3)."""
    return euler_to_matrix(np.array([0.0, yaw, 0.0]))


def forward_kinematics(angles: np.ndarray, root: np.ndarray, lengths: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Joint positions (T, V, 3) and global segment rotations (T, V, 3, 3) from local Euler
    angles (T, V, 3), root positions (T, 3) and segment lengths (V,)."""
    T = angles.shape[0]
    local = euler_to_matrix(angles)                       # (T, V, 3, 3)
    offsets = REST_DIRS * lengths[:, None]                # (V, 3) in the parent frame
    rot = np.empty((T, V, 3, 3))
    xyz = np.empty((T, V, 3))
    rot[:, 0], xyz[:, 0] = local[:, 0], root
    for j in ORDER[1:]:
        p = PARENTS[j]
        rot[:, j] = rot[:, p] @ local[:, j]
        xyz[:, j] = xyz[:, p] + rot[:, j] @ offsets[j]
    return xyz, rot


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (w, x, y, z), w >= 0."""
    m = R
    w = np.sqrt(np.maximum(1.0 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2], 0.0)) / 2
    x = np.sqrt(np.maximum(1.0 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], 0.0)) / 2
    y = np.sqrt(np.maximum(1.0 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 0.0)) / 2
    z = np.sqrt(np.maximum(1.0 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2], 0.0)) / 2
    # Magnitudes from the diagonal, signs from the antisymmetric part (stable for any angle).
    x = np.copysign(x, m[..., 2, 1] - m[..., 1, 2])
    y = np.copysign(y, m[..., 0, 2] - m[..., 2, 0])
    z = np.copysign(z, m[..., 1, 0] - m[..., 0, 1])
    q = np.stack([w, x, y, z], axis=-1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def leg_ik(forward: np.ndarray, down: np.ndarray, thigh: float, shin: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Hip flexion and knee flexion (radians, (T,)) that put the ankle `forward` and `down`
    metres from the hip in the sagittal plane (law of cosines; unreachable targets clamp to
    a straight leg)."""
    dist = np.clip(np.hypot(forward, down), abs(thigh - shin) + 1e-6, thigh + shin - 1e-6)
    knee_inner = np.arccos(np.clip((thigh**2 + shin**2 - dist**2) / (2 * thigh * shin), -1, 1))
    knee = np.pi - knee_inner
    # Thigh angle from the vertical = angle of the hip->ankle line plus the triangle's hip angle.
    at_hip = np.arccos(np.clip((thigh**2 + dist**2 - shin**2) / (2 * thigh * dist), -1, 1))
    hip = np.arctan2(forward, down) + at_hip
    return hip, knee
