"""The procedural synthetic dataset, written as genuine NTU RGB+D `.skeleton` files.

Usage::

    summary = generate(params.synth, Path("data/raw/synthetic"), workers=2)
    # {"files": 2160, "damaged_files": 3, "classes": 30, "bytes": ...}; plus dataset.json

One file per (setup, camera, performer, replication, class), named like NTU
(`S001C002P007R001A013.skeleton`, action = class index + 1), so the real reader, denoiser and
benchmark splits run on it unchanged. As in NTU, the three cameras (yaw -45, 0, +45 degrees)
film the same performance, so camera views of one performance share the motion and differ in
viewpoint, sensor noise, body IDs and artifacts. Real-recording artifacts appear at
`cfg.artifact_rate`, each kind independently per file: empty frames, a spurious short-lived
body, a wide noisy body, a body ID that changes mid-sequence, joint jitter.

Every random draw is seeded from `cfg.seed` and the fields of the file name, never from process
order, so the output is byte-identical for any number of workers.

`cfg.damaged_files` malformed files are written beside the valid ones, as real downloads hold
a few: copies of valid recordings, truncated mid-frame, with a non-numeric token, or with a
body of 24 joints (in turn). They belong to performer 0 (`S001C001P000R...`), whom no valid
file has, so preprocess skips them under their category and the valid samples, their splits
and everything downstream are the same with or without them.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.config import SynthConfig
from pipeline.core.errors import ConfigError
from pipeline.core.io import atomic_dir, atomic_write_json
from pipeline.core.stage import worker_init
from pipeline.data.synthetic.actions import ACTIONS, Action, Performer, perform, sample_performer
from pipeline.data.synthetic.ntu_writer import Body, format_skeleton, project
from pipeline.data.synthetic.skeleton_model import LEAVES, J, V, matrix_to_quaternion, yaw_matrix

CAMERA_YAW = {1: -45.0, 2: 0.0, 3: 45.0}   # degrees, NTU-like
BODY_ID_BASE = 72057594037927936           # 2**56: real Kinect body IDs are 2**56 + a counter
ARTIFACTS = ("empty", "ghost", "wide", "id_switch", "jitter")
_DISTAL = [J[n] for n in ("hand_tip_l", "thumb_l", "hand_tip_r", "thumb_r", "foot_l", "foot_r")]


def classes(cfg: SynthConfig) -> tuple[Action, ...]:
    """The dataset's classes: base classes first, then the novel ones."""
    n = cfg.base_classes + cfg.novel_classes
    if n > len(ACTIONS):
        raise ConfigError(f"synth.base_classes + synth.novel_classes: {n} is invalid: the "
                          f"action library has {len(ACTIONS)} classes")
    return ACTIONS[:n]


def file_name(setup: int, camera: int, performer: int, replication: int, action: int) -> str:
    return f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}.skeleton"


def performer(cfg: SynthConfig, pid: int) -> Performer:
    return sample_performer(np.random.default_rng([cfg.seed, 2, pid]))


def partner_of(cfg: SynthConfig, pid: int, setup: int, action: int) -> int:
    """A different performer (1-based) for two-person classes, fixed per performance."""
    k = (7 * action + setup) % (cfg.performers - 1)
    return (pid + k) % cfg.performers + 1


@dataclass(frozen=True)
class Camera:
    position: np.ndarray   # (3,) world
    axes: np.ndarray       # (3, 3) rows: camera x (sensor's left), y (up), z (viewing) in world

    def to_camera(self, xyz: np.ndarray) -> np.ndarray:
        return (xyz - self.position) @ self.axes.T


def camera(cfg: SynthConfig, setup: int, cam: int) -> Camera:
    """Camera `cam` of `setup`: 2.5-4 m from the performer, 0.6-1.4 m high, aimed at the chest.
    Setups differ in distance and height, like NTU's."""
    rng = np.random.default_rng([cfg.seed, 3, setup])
    dist, height = rng.uniform(2.7, 3.6), rng.uniform(0.6, 1.4)
    rng = np.random.default_rng([cfg.seed, 3, setup, cam])
    yaw = np.radians(CAMERA_YAW[cam] + rng.normal(0, 3))
    dist += rng.uniform(-0.2, 0.2)
    pos = np.array([dist * np.sin(yaw), height, dist * np.cos(yaw)])
    z = np.array([0.0, 1.0, 0.0]) - pos                 # look at the chest
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return Camera(position=pos, axes=np.stack([x, np.cross(z, x), z]))


def stage(cfg: SynthConfig, setup: int, pid: int, rep: int, label: int
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One performance in the world frame: per actor (xyz (T, V, 3), rot (T, V, 3, 3)),
    before sensor noise. The cameras of a setup all film this."""
    action = classes(cfg)[label]
    rng = np.random.default_rng([cfg.seed, 0, setup, pid, rep, label + 1])
    people = [performer(cfg, pid)]
    if action.actors == 2:
        people.append(performer(cfg, partner_of(cfg, pid, setup, label + 1)))
    actors = perform(action, people, rng, cfg.min_frames, cfg.max_frames)
    # NTU-like facing: towards the left or the right camera by replication (and setup, so that
    # one replication still covers both); pairs stand side-on to the middle camera.
    side = 1 if (rep + setup) % 2 else -1
    facing = side * (75.0 if action.actors == 2 else 30.0) + rng.normal(0, 8)
    R = yaw_matrix(np.radians(facing))
    shift = np.array([rng.uniform(-0.2, 0.2), 0.0, rng.uniform(-0.2, 0.2)])
    return [(xyz @ R.T + shift, R @ rot) for xyz, rot in actors]


# --------------------------------------------------------------------------- recording


def _hand_fields(rng: np.random.Generator, T: int) -> np.ndarray:
    """(T, 4) handLeftConfidence, handLeftState, handRightConfidence, handRightState."""
    base = np.array([1, rng.integers(1, 4), 1, rng.integers(1, 4)])
    out = np.tile(base, (T, 1))
    flip = rng.random((T, 2)) < 0.1
    out[:, [1, 3]] = np.where(flip, rng.integers(0, 4, (T, 2)), out[:, [1, 3]])
    out[:, [0, 2]] = (out[:, [1, 3]] > 1).astype(int)
    return out


def _clipped_edges(xyz: np.ndarray) -> np.ndarray:
    """(T,) Kinect FrameEdges flags (right 1, left 2, top 4, bottom 8) from the depth image."""
    depth, _ = project(xyz)
    u, v = depth[..., 0], depth[..., 1]
    return ((u > 511).any(-1) * 1 + (u < 0).any(-1) * 2 + (v < 0).any(-1) * 4
            + (v > 423).any(-1) * 8)


def _wide_body(rng: np.random.Generator, T: int, cam: Camera) -> np.ndarray:
    """A false detection (furniture, a wall edge) much wider than tall: (T, V, 3) camera space,
    so the reference denoiser's x-extent > 0.8 y-extent test rejects it."""
    centre = np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.6, 0.2), rng.uniform(2.0, 3.5)])
    shape = rng.uniform(-1, 1, (V, 3)) * [rng.uniform(0.5, 0.8), rng.uniform(0.1, 0.25), 0.2]
    return centre + shape + rng.normal(0, 0.03, (T, V, 3))


def record(cfg: SynthConfig, actors: list[tuple[np.ndarray, np.ndarray]], cam: Camera,
           rng: np.random.Generator) -> tuple[list[list[Body]], set[str]]:
    """What the sensor writes for one camera: frames of bodies, and the artifacts applied."""
    T = actors[0][0].shape[0]
    artifacts = {a for a in ARTIFACTS if rng.random() < cfg.artifact_rate}
    tracks = []                                 # (body_ids (T,), xyz (T, V, 3), quat, tracking)
    for xyz, rot in actors:
        xyz = cam.to_camera(xyz)
        xyz = xyz + rng.normal(0, cfg.noise_std, xyz.shape)
        quat = matrix_to_quaternion(cam.axes @ rot)
        quat[:, LEAVES] = 0.0
        tracking = np.full((T, V), 2)
        tracking[:, _DISTAL] = np.where(rng.random((T, len(_DISTAL))) < 0.03, 1, 2)
        ids = np.full(T, BODY_ID_BASE + int(rng.integers(1000, 200000)))
        tracks.append([ids, xyz, quat, tracking])
    if "jitter" in artifacts:
        for _ in range(rng.integers(1, 4)):
            ids, xyz, _, tracking = tracks[rng.integers(len(tracks))]
            t, j = rng.integers(T), rng.integers(V)
            n = min(int(rng.integers(1, 5)), T - t)
            xyz[t:t + n, j] += rng.normal(0, 0.1, 3)
            tracking[t:t + n, j] = 1
    if "id_switch" in artifacts:
        ids = tracks[rng.integers(len(tracks))][0]
        ids[int(T * rng.uniform(0.3, 0.7)):] = BODY_ID_BASE + int(rng.integers(200000, 400000))
    if rng.random() < cfg.nan_rate:
        tracks[0][1][rng.integers(T), rng.integers(V)] = np.nan
    extras = []                                 # (start, body_id, xyz (n, V, 3))
    if "ghost" in artifacts:                    # a short-lived copy of a person elsewhere
        n = int(rng.integers(2, 12))
        start = int(rng.integers(0, T - n + 1))
        offset = np.array([rng.choice([-1, 1]) * rng.uniform(0.7, 1.5), 0.0, rng.uniform(0, 1)])
        ghost = tracks[0][1][start:start + n] + offset + rng.normal(0, 0.05, (n, V, 3))
        extras.append((start, BODY_ID_BASE + int(rng.integers(400000, 500000)), ghost))
    if "wide" in artifacts:
        n = int(rng.integers(min(15, T), T + 1))
        start = int(rng.integers(0, T - n + 1))
        extras.append((start, BODY_ID_BASE + int(rng.integers(500000, 600000)),
                       _wide_body(rng, n, cam)))

    frames: list[list[Body]] = [[] for _ in range(T)]
    for ids, xyz, quat, tracking in tracks:
        hands, edges = _hand_fields(rng, T), _clipped_edges(xyz)
        spine = xyz[:, J["spine_shoulder"]] - xyz[:, J["spine_base"]]
        spine /= np.linalg.norm(spine, axis=-1, keepdims=True) + 1e-9
        lean = np.nan_to_num(np.clip(spine[:, [0, 2]] * [1.0, -1.0], -1, 1))
        for t in range(T):
            frames[t].append(Body(body_id=int(ids[t]), xyz=xyz[t], orientation=quat[t],
                                  tracking=tracking[t], clipped_edges=int(edges[t]),
                                  hand_left=tuple(hands[t, :2]), hand_right=tuple(hands[t, 2:]),
                                  lean=tuple(lean[t])))
    for start, body_id, xyz in extras:
        for k in range(len(xyz)):
            frames[start + k].append(Body(body_id=body_id, xyz=xyz[k], hand_left=(0, 0),
                                          hand_right=(0, 0)))
    if "empty" in artifacts:                    # the sensor lost everyone for a few frames
        n = int(rng.integers(1, 6))
        for t in (range(n) if rng.random() < 0.5 else range(T - n, T)):
            frames[t] = []
    return frames, artifacts


# --------------------------------------------------------------------------- dataset


def _write_performance(args: tuple[SynthConfig, Path, int, int, int, int]) -> int:
    """Stage one performance and write it as seen by every camera; returns bytes written."""
    cfg, out_dir, setup, pid, rep, label = args
    actors = stage(cfg, setup, pid, rep, label)
    total = 0
    for cam in range(1, cfg.cameras + 1):
        name = file_name(setup, cam, pid, rep, label + 1)
        rng = np.random.default_rng([cfg.seed, 1, setup, cam, pid, rep, label + 1])
        frames, _ = record(cfg, actors, camera(cfg, setup, cam), rng)
        data = format_skeleton(frames).encode("ascii")
        (out_dir / name).write_bytes(data)
        total += len(data)
    return total


DAMAGE = ("truncated", "bad_token", "wrong_joint_count")  # the skip category each produces


def damage(text: str, kind: str) -> str:
    """A malformed copy of a valid `.skeleton` text, damaged in its middle frame."""
    lines = text.splitlines(keepends=True)
    # joint-count lines ("25" after a body line): the middle one's joints are damaged
    counts = [i for i in range(2, len(lines)) if lines[i] == f"{V}\n"
              and len(lines[i - 1].split()) == 10]
    at = counts[len(counts) // 2]
    if kind == "truncated":  # the file ends inside a joint line
        return "".join(lines[:at + 3]) + lines[at + 3][:len(lines[at + 3]) // 2]
    if kind == "bad_token":
        fields = lines[at + 1].split(" ")
        return "".join(lines[:at + 1] + [" ".join(["n/a", *fields[1:]])] + lines[at + 2:])
    if kind == "wrong_joint_count":
        return "".join(lines[:at] + [f"{V - 1}\n"] + lines[at + 1:at + V] + lines[at + V + 1:])
    raise ValueError(f"unknown damage {kind!r}")


def write_damaged(cfg: SynthConfig, out_dir: Path) -> list[str]:
    """`cfg.damaged_files` damaged copies of valid files of `out_dir` (names returned)."""
    n_classes = cfg.base_classes + cfg.novel_classes
    names = []
    for i in range(cfg.damaged_files):
        action, rep = i % n_classes + 1, i // n_classes + 1
        text = (out_dir / file_name(1, 1, 1, 1, action)).read_text()
        name = file_name(1, 1, 0, rep, action)
        (out_dir / name).write_text(damage(text, DAMAGE[i % len(DAMAGE)]))
        names.append(name)
    return names


def generate(cfg: SynthConfig, out_dir: Path, workers: int = 2) -> dict:
    """Write the dataset to `out_dir` (replaced whole, atomically) and return a summary."""
    acts = classes(cfg)
    if cfg.min_frames > cfg.max_frames:
        raise ConfigError(f"synth.min_frames: {cfg.min_frames} is invalid: must be <= "
                          f"synth.max_frames ({cfg.max_frames})")
    with atomic_dir(out_dir) as tmp:
        tasks = [(cfg, tmp, s, p, r, k) for s in range(1, cfg.setups + 1)
                 for p in range(1, cfg.performers + 1) for r in range(1, cfg.replications + 1)
                 for k in range(len(acts))]
        if workers > 1:
            with mp.get_context().Pool(workers, initializer=worker_init) as pool:
                sizes = list(pool.imap_unordered(_write_performance, tasks, chunksize=4))
        else:
            sizes = [_write_performance(t) for t in tasks]
        damaged = write_damaged(cfg, tmp)
        n_base = cfg.base_classes
        atomic_write_json(tmp / "dataset.json", {
            "class_names": [a.name for a in acts],
            "novel_labels": list(range(n_base, len(acts))),
            "two_person_labels": [i for i, a in enumerate(acts) if a.actors == 2],
            "seed": cfg.seed,
        })
    return {"files": len(tasks) * cfg.cameras, "damaged_files": len(damaged),
            "classes": len(acts), "bytes": sum(sizes)}
