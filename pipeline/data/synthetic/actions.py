"""The procedural action library: joint-angle and root trajectories per action class.

Used by the synthetic generator::

    performer = sample_performer(np.random.default_rng(seed_of_performer))
    actors = perform(ACTIONS[k], [performer, partner], rng, min_frames=30, max_frames=120)
    # -> one (xyz (T, 25, 3), rot (T, 25, 3, 3)) per actor, world frame, floor at y = 0

Each action writes angles into a `Pose` (one per actor, see `poses.py`) as functions of the
normalised action time u in [0, 1]; u stays 0 before the performer's onset and 1 after the
action ends, so a sequence starts and ends with a stretch of idle standing, like NTU clips.
The single-person actions live here, the two-person interactions in `actions_two_person.py`.
Classes come in confusable groups (wave / point / punch, drink / touch head / phone call,
squat / sit down / pick up / bow, handshake / give object / high five) so that accuracy is
informative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pipeline.data.synthetic.actions_two_person import (
    give_object,
    handshake,
    high_five,
    hug,
    punch_other,
    push,
)
from pipeline.data.synthetic.poses import (
    FPS,
    D,
    Performer,
    Pose,
    Style,
    drift,
    hands,
    hold,
    osc,
    rise,
    sample_performer,
    vary,
)
from pipeline.data.synthetic.skeleton_model import forward_kinematics, yaw_matrix

__all__ = ["ACTIONS", "FPS", "Action", "Performer", "Pose", "Style", "perform",
           "sample_performer"]


# --------------------------------------------------------------------------- single-person


def wave(side: str) -> Callable:
    def act(p: list[Pose], u, rng) -> None:
        (a,), s = p, p[0].style
        env = hold(u, 0.0, 0.2, 0.8, 1.0, s.sharp)
        n = rng.uniform(2, 4.5) * s.speed
        a.arm(side, abd=(75 + 15 * s.amp) * D * env, flex=rng.uniform(0, 30) * D * env,
              swing=90 * D * env,
              elbow=(95 * D + 30 * D * s.amp * osc(u, n, 0.2, 0.8)) * env)
        a.head(turn=(10 if side == "l" else -10) * D * env)
    return act


def clap(p, u, rng) -> None:
    (a,), s = p, p[0].style
    env = hold(u, 0.0, 0.15, 0.85, 1.0, s.sharp)
    n = rng.uniform(3, 6)
    beat = 0.5 * (1 + osc(u, n, 0.15, 0.85, -np.pi / 2))       # 0 = hands apart, 1 = together
    for side in "lr":
        a.arm(side, flex=(55 + 15 * s.amp) * D * env, elbow=70 * D * env,
              swing=(25 - 55 * beat) * D * env - a.style.arm_carry * env)


def punch(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, oth = hands(s)
    guard = hold(u, 0.0, 0.2, 0.85, 1.0)
    hit = hold(u, 0.4, 0.48 - 0.04 * s.sharp, 0.56, 0.68)
    sgn = 1 if dom == "l" else -1
    for side in "lr":
        a.arm(side, flex=60 * D * guard, elbow=120 * D * guard, swing=-20 * D * guard)
    a.arm(dom, flex=30 * D * hit * s.amp, elbow=-115 * D * hit, swing=15 * D * hit)
    a.spine(twist=-sgn * 25 * D * hit, bend=5 * D * hit)
    a.leg(oth, flex=10 * D * guard, knee=10 * D * guard)


def kick(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, oth = hands(s)
    chamber = hold(u, 0.15, 0.35, 0.65, 0.85)
    extend = hold(u, 0.35, 0.45 - 0.05 * s.sharp, 0.5, 0.65)
    a.leg(dom, flex=(60 * chamber + 25 * extend * s.amp) * D, knee=(90 * chamber - 80 * extend) * D)
    a.leg(oth, knee=10 * D * chamber, flex=5 * D * chamber)
    a.spine(bend=-15 * D * chamber)
    for side in "lr":
        a.arm(side, abd=25 * D * chamber, elbow=40 * D * chamber)


def squat(p, u, rng) -> None:
    (a,), s = p, p[0].style
    n = 1 if rng.random() < 0.6 else 2
    depth = 0.5 - 0.5 * np.cos(2 * np.pi * n * np.clip(u, 0, 1))
    drop = (0.3 + 0.1 * s.amp) * a.root[0, 1] / 0.8 * depth
    a.crouch(drop=drop, back=0.6 * drop, pitch=40 * D * depth)
    for side in "lr":
        a.arm(side, flex=80 * D * depth * (rng.random() < 0.7))


def jump(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dip = hold(u, 0.1, 0.3, 0.32, 0.42) + hold(u, 0.65, 0.72, 0.75, 0.95) * 0.8
    air = hold(u, 0.38, 0.5, 0.52, 0.68)
    a.crouch(drop=0.15 * dip, back=0.05 * dip, pitch=20 * D * dip)
    a.body(dy=(0.15 + 0.1 * s.amp) * air)
    for side in "lr":
        a.arm(side, flex=(-30 * dip + 120 * air * s.amp) * D)
        a.leg(side, ankle=30 * D * air)


def bow(p, u, rng) -> None:
    (a,), s = p, p[0].style
    env = hold(u, 0.0, 0.35, 0.6, 1.0, s.sharp)
    a.body(pitch=(20 + 15 * s.amp) * D * env, dz=-0.05 * env)
    a.spine(bend=25 * D * env)
    a.head(nod=20 * D * env)
    for side in "lr":
        a.arm(side, flex=25 * D * env, swing=-10 * D * env)


def reach_up(p, u, rng) -> None:
    (a,), s = p, p[0].style
    env = hold(u, 0.0, 0.35, 0.65, 1.0, s.sharp)
    both = rng.random() < 0.7
    for side in ("lr" if both else hands(s)[0]):
        a.arm(side, flex=(150 + 20 * s.amp) * D * env, elbow=-s.elbow_carry * env)
    a.spine(bend=-10 * D * env)
    a.head(nod=-25 * D * env)
    for side in "lr":
        a.leg(side, ankle=20 * D * env)


def throw(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, oth = hands(s)
    sgn = 1 if dom == "l" else -1
    cock = hold(u, 0.0, 0.35, 0.4, 0.55)
    release = hold(u, 0.4, 0.5 - 0.05 * s.sharp, 0.6, 0.95)
    a.arm(dom, abd=80 * D * cock, swing=80 * D * cock, elbow=(100 * cock + 10 * release) * D,
          flex=(-30 * cock + 110 * release * s.amp) * D)
    a.arm(oth, flex=(60 * cock - 20 * release) * D)
    a.spine(twist=sgn * (35 * cock - 35 * release) * D, bend=(-10 * cock + 20 * release) * D)
    a.body(dz=0.1 * release)
    a.leg(oth, flex=20 * D * cock, knee=15 * D * cock)


def walk_in_place(p, u, rng) -> None:
    (a,), s = p, p[0].style
    n = rng.uniform(2, 4) * s.speed
    env = hold(u, 0.0, 0.08, 0.92, 1.0)
    ph = osc(u, n, 0.0, 1.0)
    a.step("l", np.maximum(ph, 0) * env * s.amp)
    a.step("r", np.maximum(-ph, 0) * env * s.amp)
    for side, sgn in (("l", -1), ("r", 1)):
        a.arm(side, flex=sgn * 30 * D * ph * env, elbow=20 * D * env)
    a.body(dy=0.02 * np.abs(ph) * env)


def _sit(a: Pose, seated, s: Style) -> None:
    """Lower onto a chair behind the performer; `seated` goes 0 (standing) .. 1 (sitting)."""
    drop = (a.root[0, 1] - 0.48) * seated
    lean = 35 * D * np.sin(np.pi * seated) * s.amp
    a.crouch(drop=drop, back=0.3 * seated, pitch=lean)
    for side in "lr":
        a.arm(side, flex=(25 * np.sin(np.pi * seated) + 30 * seated) * D, elbow=40 * D * seated)


def sit_down(p, u, rng) -> None:
    _sit(p[0], rise(u, 0.1, 0.8, p[0].style.sharp), p[0].style)


def stand_up(p, u, rng) -> None:
    # Not the exact reverse of sit_down: pushing up leans further forward first.
    s = p[0].style
    seated = 1 - rise(u, 0.25, 0.9, s.sharp)
    p[0].spine(bend=15 * D * hold(u, 0.0, 0.25, 0.35, 0.7))
    _sit(p[0], seated, s)


def point(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, _ = hands(s)
    env = hold(u, 0.0, 0.25, 0.75, 1.0, s.sharp)
    a.arm(dom, flex=rng.uniform(70, 100) * D * env, swing=rng.uniform(-20, 30) * D * env,
          elbow=-s.elbow_carry * env, wrist=-10 * D * env)
    a.head(nod=-5 * D * env)


def touch_head(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, _ = hands(s)
    env = hold(u, 0.0, 0.3, 0.7, 1.0, s.sharp)
    a.arm(dom, flex=120 * D * env, swing=-25 * D * env, elbow=135 * D * env)
    a.head(nod=15 * D * env, tilt=(8 if dom == "l" else -8) * D * env)


def drink(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, _ = hands(s)
    env = hold(u, 0.0, 0.3, 0.7, 1.0, s.sharp)
    a.arm(dom, flex=50 * D * env, swing=-35 * D * env, elbow=135 * D * env)
    a.head(nod=-20 * D * hold(u, 0.25, 0.4, 0.6, 0.75))


def phone_call(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, _ = hands(s)
    env = hold(u, 0.0, 0.25, 0.8, 1.0, s.sharp)
    a.arm(dom, flex=30 * D * env, abd=35 * D * env, swing=-20 * D * env, elbow=150 * D * env)
    a.head(tilt=(10 if dom == "l" else -10) * D * env, turn=0.1 * drift(rng, a.T) * env)


def jumping_jack(p, u, rng) -> None:
    (a,), s = p, p[0].style
    n = max(1, round(rng.uniform(1.5, 3.5) * s.speed))
    env = hold(u, 0.0, 0.05, 0.95, 1.0)
    open_ = 0.5 - 0.5 * np.cos(2 * np.pi * n * np.clip(u, 0, 1))
    for side in "lr":
        a.arm(side, abd=(150 + 20 * s.amp) * D * open_)
        a.leg(side, abd=15 * D * open_)
    a.body(dy=0.08 * np.abs(np.sin(2 * np.pi * n * np.clip(u, 0, 1))) * env)


def turn_around(p, u, rng) -> None:
    (a,) = p
    sgn = 1 if rng.random() < 0.5 else -1
    a.body(yaw=sgn * rng.uniform(150, 200) * D * rise(u, 0.05, 0.95))
    ph = osc(u, rng.uniform(2, 3), 0.05, 0.95)
    a.step("l", 0.4 * np.maximum(ph, 0))
    a.step("r", 0.4 * np.maximum(-ph, 0))


def pick_up(p, u, rng) -> None:
    (a,), s = p, p[0].style
    dom, _ = hands(s)
    env = hold(u, 0.0, 0.4, 0.55, 1.0, s.sharp)
    a.crouch(drop=0.2 * env, back=0.1 * env, pitch=45 * D * env)
    a.spine(bend=30 * D * env)
    a.arm(dom, flex=60 * D * env, elbow=-s.elbow_carry * env)
    a.arm(dom, elbow=60 * D * rise(u, 0.55, 1.0))            # brings the object up


def shake_head(p, u, rng) -> None:
    (a,), s = p, p[0].style
    n = rng.uniform(2, 4) * s.speed
    a.head(turn=40 * D * s.amp * osc(u, n, 0.1, 0.9) * hold(u, 0.1, 0.2, 0.8, 0.9))


def cross_arms(p, u, rng) -> None:
    (a,), s = p, p[0].style
    env = hold(u, 0.0, 0.25, 0.8, 1.0, s.sharp)
    for side in "lr":
        a.arm(side, flex=45 * D * env, swing=-60 * D * env, elbow=110 * D * env,
              abd=-s.arm_carry * env)


def hop(p, u, rng) -> None:
    (a,), s = p, p[0].style
    oth = hands(s)[1]                    # stand on the dominant leg
    env = hold(u, 0.0, 0.15, 0.85, 1.0)
    n = rng.uniform(2, 4) * s.speed
    a.leg(oth, knee=90 * D * env, flex=10 * D * env)
    a.body(dy=0.07 * s.amp * np.maximum(osc(u, n, 0.15, 0.85), 0))
    for side in "lr":
        a.arm(side, abd=30 * D * env, elbow=30 * D * env)


def stretch(p, u, rng) -> None:
    (a,), s = p, p[0].style
    env = hold(u, 0.0, 0.3, 0.7, 1.0, s.sharp)
    for side in "lr":
        a.arm(side, abd=(85 + 10 * s.amp) * D * env, elbow=-s.elbow_carry * env)
    a.spine(bend=-8 * D * env, side=10 * D * osc(u, 1, 0.3, 0.7))


# --------------------------------------------------------------------------- the library


@dataclass(frozen=True)
class Action:
    name: str
    fn: Callable                  # fn(poses, u, rng) adds the action to the poses
    seconds: float                # active duration at speed 1
    actors: int = 1
    gap: float = 1.2              # pelvis distance of the two actors (m)


# Order matters: a dataset uses the first `base_classes + novel_classes` entries, the last
# `novel_classes` of them novel. Two-person classes are spread out so that small prefixes
# (tests: 4 + 2) and the defaults (24 + 6) have some in both groups.
ACTIONS = (
    Action("wave right hand", wave("r"), 1.6),
    Action("handshake", handshake, 1.6, actors=2, gap=1.15),
    Action("squat", squat, 1.8),
    Action("point", point, 1.3),
    Action("punch other", punch_other, 1.3, actors=2, gap=1.0),
    Action("sit down", sit_down, 1.6),
    Action("wave left hand", wave("l"), 1.6),
    Action("clap", clap, 1.4),
    Action("punch", punch, 1.2),
    Action("kick", kick, 1.3),
    Action("jump", jump, 1.2),
    Action("bow", bow, 1.4),
    Action("reach up", reach_up, 1.4),
    Action("throw", throw, 1.3),
    Action("walk in place", walk_in_place, 1.8),
    Action("stand up", stand_up, 1.6),
    Action("touch head", touch_head, 1.4),
    Action("drink water", drink, 1.4),
    Action("jumping jack", jumping_jack, 1.8),
    Action("turn around", turn_around, 1.6),
    Action("pick up", pick_up, 1.6),
    Action("shake head", shake_head, 1.3),
    Action("push", push, 1.3, actors=2, gap=1.0),
    Action("hug", hug, 1.9, actors=2, gap=1.1),
    Action("phone call", phone_call, 1.6),
    Action("cross arms", cross_arms, 1.4),
    Action("give object", give_object, 1.6, actors=2, gap=1.15),
    Action("hop on one leg", hop, 1.4),
    Action("stretch arms", stretch, 1.4),
    Action("high five", high_five, 1.2, actors=2, gap=1.1),
)


def perform(action: Action, performers: list[Performer], rng: np.random.Generator,
            min_frames: int, max_frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One performance: per actor (xyz (T, V, 3), rot (T, V, 3, 3)) in a world frame with the
    floor at y = 0 and actor 0 facing +z at the origin, or for pairs, `gap` metres from actor 1,
    which faces it, with the origin between them."""
    styles = [vary(p.style, rng) for p in performers[:action.actors]]
    s = styles[0]
    active = action.seconds * FPS / s.speed
    T = int(np.clip(round(active / (1 - s.onset - s.tail)), min_frames, max_frames))
    u = np.clip((np.arange(T) / (T - 1) - s.onset) / (1 - s.onset - s.tail), 0, 1)
    poses = [Pose(T, replace(perf, style=st), rng)
             for perf, st in zip(performers, styles)]
    action.fn(poses, u, rng)
    gap = action.gap * rng.uniform(0.9, 1.1)
    out = []
    for i, pose in enumerate(poses):
        xyz, rot = forward_kinematics(pose.angles, pose.root, pose.lengths)
        if len(poses) == 2:             # face each other, `gap` apart, around the origin
            R = yaw_matrix(np.pi * i)
            xyz = xyz @ R.T + np.array([0.0, 0.0, gap * (i - 0.5)])
            rot = R @ rot
        out.append((xyz, rot))
    return out
