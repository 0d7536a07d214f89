"""A second synthetic dataset, written in the PKU-MMD phase II layout: the transfer target.

Usage::

    summary = generate_pku(params.synth, params.transfer, Path("data/raw/synthetic_pku"))
    # {"videos": 24, "samples": 288, "classes": 12}

Layout, as `pipeline.data.pku` reads it (DESIGN.md section 2): `skeleton/<video>.txt`, one
line per frame of 150 numbers (actor 1's 25 joints x, y, z, then actor 2's; an absent actor
is 75 zeros; lines start with a space, as in phase II), `label/<video>.txt` with rows
`label,start,end,confidence` (frames [start, end), label 1-based), and the split files
`cross_subject_v2.txt` / `cross_view_v2.txt` (line 2 training videos, line 4 test videos).
Videos are named `A<performer>N<take>-<view>`; each is one untrimmed recording in which the
performer does every target class once, in a seeded order, with idle pauses between them,
seen by three cameras (views L, M, R).

It differs from the source dataset in what a transfer protocol should face: its own class
list (`transfer.synth_classes` actions taken from the end of the action library, numbered
in that order), its own performers and camera placements (`transfer.synth_seed`), people
facing the middle camera, and untrimmed recordings cut by the label rows. Cross-subject:
every third performer is a test subject; cross-view: views L and R train, M tests.
`actions.json` records which library action each label is (the store's class names are the
51 PKU-MMD names, which the reader always uses).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.core.config import SynthConfig, TransferConfig
from pipeline.core.io import atomic_dir, atomic_write_json
from pipeline.data.synthetic.actions import ACTIONS, perform, sample_performer
from pipeline.data.synthetic.skeleton_model import V, yaw_matrix
from pipeline.data.synthetic.synth import camera

VIEWS = {"L": 1, "M": 2, "R": 3}   # view letter -> the synthetic camera (yaw -45, 0, +45)


def target_actions(t: TransferConfig) -> list[int]:
    """Library indices of the target's classes: label k + 1 is library action [k]."""
    return list(range(len(ACTIONS) - 1, len(ACTIONS) - 1 - t.synth_classes, -1))


def video_name(performer: int, take: int, view: str) -> str:
    return f"A{performer:02d}N{take:02d}-{view}"


def record_video(synth: SynthConfig, t: TransferConfig, performer: int, take: int
                 ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """One untrimmed recording in the world frame: xyz (T, M=2, V, 3) (actor 2 zero where
    absent) and its label rows (label 1-based, start, end)."""
    rng = np.random.default_rng([t.synth_seed, 5, performer, take])
    people = [sample_performer(np.random.default_rng([t.synth_seed, 2, p]))
              for p in (performer, performer % t.synth_performers + 1)]   # partner: the next one
    actions = target_actions(t)
    order = rng.permutation(len(actions))
    clips, rows, start = [], [], 0
    for k in order:
        action = ACTIONS[actions[k]]
        actors = perform(action, people, rng, synth.min_frames, synth.max_frames)
        R = yaw_matrix(np.radians(rng.normal(0, 10)))   # facing the middle camera
        clip = np.zeros((len(actors[0][0]), 2, V, 3))
        for m, (xyz, _) in enumerate(actors):
            clip[:, m] = xyz @ R.T
        pause = np.repeat(clip[-1:, :1], int(rng.integers(8, 25)), axis=0)   # actor 1 idles
        clips += [clip, np.concatenate([pause, np.zeros_like(pause)], axis=1)]
        rows.append((k + 1, start, start + len(clip)))
        start += len(clip) + len(pause)
    return np.concatenate(clips), rows


def _skeleton_text(frames: np.ndarray) -> str:
    """(T, M, V, 3) camera-space metres -> PKU lines; absent actors stay exact zeros."""
    flat = frames.reshape(len(frames), -1)
    return "".join(" " + " ".join(f"{v:.6f}" if v else "0" for v in row) + "\n" for row in flat)


def _split_text(train: list[str], test: list[str]) -> str:
    return f"Training videos:\n{', '.join(train)}\nTesting videos:\n{', '.join(test)}\n"


def generate_pku(synth: SynthConfig, t: TransferConfig, out_dir: Path) -> dict:
    """Write the target to `out_dir` (replaced whole, atomically); return a summary."""
    cams = {v: camera(dataclasses.replace(synth, seed=t.synth_seed), 1, c)
            for v, c in VIEWS.items()}
    videos, samples = [], 0
    with atomic_dir(out_dir) as tmp:
        (tmp / "skeleton").mkdir()
        (tmp / "label").mkdir()
        for p in range(1, t.synth_performers + 1):
            for n in range(1, t.synth_videos + 1):
                world, rows = record_video(synth, t, p, n)
                present = (world != 0).any(axis=(2, 3))                  # (T, M)
                for view, cam in cams.items():
                    rng = np.random.default_rng([t.synth_seed, 6, p, n, VIEWS[view]])
                    xyz = cam.to_camera(world) + rng.normal(0, synth.noise_std, world.shape)
                    xyz[~present] = 0.0
                    name = video_name(p, n, view)
                    (tmp / "skeleton" / f"{name}.txt").write_text(_skeleton_text(xyz))
                    (tmp / "label" / f"{name}.txt").write_text(
                        "".join(f"{lab},{s},{e},{int(rng.integers(1, 3))}\n"
                                for lab, s, e in rows))
                    videos.append((p, view, name))
                    samples += len(rows)
        for file, is_test in (("cross_subject_v2.txt", lambda p, v: p % 3 == 0),
                              ("cross_view_v2.txt", lambda p, v: v == "M")):
            train = [name for p, v, name in videos if not is_test(p, v)]
            test = [name for p, v, name in videos if is_test(p, v)]
            (tmp / file).write_text(_split_text(train, test))
        atomic_write_json(tmp / "actions.json", {
            "labels": {k + 1: ACTIONS[i].name for k, i in enumerate(target_actions(t))},
            "seed": t.synth_seed})
    return {"videos": len(videos), "samples": samples, "classes": t.synth_classes}
