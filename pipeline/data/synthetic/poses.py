"""Performers and the pose builder that the action library writes into.

Used by `actions.py` and `actions_two_person.py`::

    pose = Pose(T, performer, rng)          # idle standing, layered with small drifts
    pose.arm("r", flex=90 * D * hold(u, 0.0, 0.3, 0.7, 1.0))
    # pose.angles (T, V, 3), pose.root (T, 3) -> skeleton_model.forward_kinematics

Style lives in the performer (speed, amplitude, handedness, posture, how sharply they move)
and is shared by all their samples; `vary` perturbs it a little for each repetition, so
cross-subject evaluation asks for generalisation to unseen styles. The envelopes (`rise`,
`hold`, `osc`) are functions of the normalised action time u in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.data.synthetic.skeleton_model import J, V, bone_lengths, leg_ik, pelvis_height

FPS = 30
D = np.pi / 180  # degrees -> radians


@dataclass(frozen=True)
class Style:
    """How one performer moves; every sample of the performer shares it."""

    speed: float          # > 1 is faster (shorter clips)
    amp: float            # scales action amplitudes
    right_handed: bool
    sharp: float          # 0 smooth .. 1 abrupt movement onsets
    lean: float           # spine forward lean (rad)
    head_tilt: float      # (rad)
    stance: float         # hip abduction (rad)
    arm_carry: float      # idle arm abduction (rad)
    elbow_carry: float    # idle elbow flexion (rad)
    sway: float           # idle sway amplitude (m)
    onset: float          # fraction of the clip before the action starts
    tail: float           # fraction of the clip after it ends


@dataclass(frozen=True)
class Performer:
    height: float
    lengths: np.ndarray   # (V,) segment lengths, see skeleton_model.bone_lengths
    style: Style


def sample_performer(rng: np.random.Generator) -> Performer:
    """A performer: height 1.5-1.95 m, slightly individual proportions, a movement style."""
    height = rng.uniform(1.5, 1.95)
    limb_scale = tuple(rng.normal(1.0, 0.03, 3).clip(0.92, 1.08))
    style = Style(speed=float(np.exp(rng.normal(0, 0.15)).clip(0.75, 1.35)),
                  amp=rng.uniform(0.8, 1.2), right_handed=bool(rng.random() < 0.85),
                  sharp=rng.uniform(0, 1), lean=rng.normal(4, 3) * D,
                  head_tilt=rng.normal(0, 4) * D, stance=rng.uniform(2, 8) * D,
                  arm_carry=rng.uniform(4, 12) * D, elbow_carry=rng.uniform(5, 20) * D,
                  sway=rng.uniform(0.005, 0.02), onset=rng.uniform(0.04, 0.15),
                  tail=rng.uniform(0.04, 0.15))
    return Performer(height=height, lengths=bone_lengths(height, limb_scale), style=style)


def vary(style: Style, rng: np.random.Generator) -> Style:
    """Per-repetition variation of a performer's style."""
    return replace(style, speed=style.speed * np.exp(rng.normal(0, 0.08)),
                   amp=style.amp * np.exp(rng.normal(0, 0.08)),
                   onset=float(np.clip(style.onset + rng.normal(0, 0.04), 0.02, 0.3)),
                   tail=float(np.clip(style.tail + rng.normal(0, 0.04), 0.02, 0.3)))


def hands(s: Style) -> tuple[str, str]:
    """(dominant, other) side."""
    return ("r", "l") if s.right_handed else ("l", "r")


# --------------------------------------------------------------------------- envelopes


def rise(u: np.ndarray, a: float, b: float, sharp: float = 0.0) -> np.ndarray:
    """0 before a, 1 after b; smoothstep, pushed towards a fast start by `sharp`."""
    x = np.clip((u - a) / max(b - a, 1e-6), 0, 1)
    x = x ** (1 - 0.5 * sharp)
    return x * x * (3 - 2 * x)


def hold(u: np.ndarray, a: float, b: float, c: float, d: float, sharp: float = 0.0
         ) -> np.ndarray:
    """Rises over [a, b], stays 1, falls over [c, d]."""
    return rise(u, a, b, sharp) * (1 - rise(u, c, d, sharp))


def osc(u: np.ndarray, cycles: float, a: float, b: float, phase: float = 0.0) -> np.ndarray:
    """sin oscillation with `cycles` periods over [a, b], 0 outside."""
    x = np.clip((u - a) / (b - a), 0, 1)
    return np.sin(2 * np.pi * cycles * x + phase) * ((u > a) & (u < b))


def drift(rng: np.random.Generator, T: int, n: int = 3) -> np.ndarray:
    """Smooth random signal (T,) in about [-1, 1]: a few slow sinusoids (0.1-0.7 Hz)."""
    t = np.arange(T) / FPS
    f = rng.uniform(0.1, 0.7, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    return np.sin(2 * np.pi * f[:, None] * t + ph[:, None]).sum(0) / np.sqrt(n)


# --------------------------------------------------------------------------- pose builder


class Pose:
    """Angles (T, V, 3) and root (T, 3) of one actor in its body frame (x left, y up,
    z forward). Every method adds to what is there, so idle motion and actions layer."""

    def __init__(self, T: int, performer: Performer, rng: np.random.Generator):
        self.T, self.lengths, self.style = T, performer.lengths, performer.style
        self.angles = np.zeros((T, V, 3))
        self.root = np.zeros((T, 3))
        self.root[:, 1] = pelvis_height(self.lengths)
        self._idle(rng)

    def _idle(self, rng: np.random.Generator) -> None:
        s, T = self.style, self.T
        self.root[:, 0] += s.sway * drift(rng, T)
        self.root[:, 2] += 0.5 * s.sway * drift(rng, T)
        self.spine(bend=s.lean + 0.02 * drift(rng, T), side=0.02 * drift(rng, T))
        self.head(nod=s.head_tilt + 0.05 * drift(rng, T), turn=0.08 * drift(rng, T))
        for side in "lr":
            self.arm(side, abd=s.arm_carry + 0.03 * drift(rng, T),
                     flex=0.05 * drift(rng, T), elbow=s.elbow_carry)
            self.leg(side, abd=s.stance)

    @staticmethod
    def _sign(side: str) -> float:
        return 1.0 if side == "l" else -1.0

    def _add(self, joint: str, x=0.0, y=0.0, z=0.0) -> None:
        self.angles[:, J[joint], 0] += x
        self.angles[:, J[joint], 1] += y
        self.angles[:, J[joint], 2] += z

    def arm(self, side: str, flex=0.0, abd=0.0, swing=0.0, elbow=0.0, wrist=0.0) -> None:
        """flex: raise forward; abd: raise sideways; swing: rotate outward about the vertical
        after flexing (a twist when the arm hangs); elbow: flexion; wrist: hand flexion."""
        s = self._sign(side)
        self._add(f"elbow_{side}", x=-flex, y=s * swing, z=s * abd)
        self._add(f"wrist_{side}", x=-elbow)
        self._add(f"hand_{side}", x=-wrist)

    def leg(self, side: str, flex=0.0, knee=0.0, abd=0.0, ankle=0.0) -> None:
        """flex: hip flexion (thigh forward); knee: flexion (shin back); abd: outward."""
        s = self._sign(side)
        self._add(f"knee_{side}", x=-flex, z=s * abd)
        self._add(f"ankle_{side}", x=knee)
        self._add(f"foot_{side}", x=ankle)

    def spine(self, bend=0.0, side=0.0, twist=0.0) -> None:
        """bend: forward (negative leans back); side: towards the left; twist: to the left."""
        for joint in ("spine_mid", "spine_shoulder"):
            self._add(joint, x=bend / 2, y=twist / 2, z=-side / 2)

    def head(self, nod=0.0, turn=0.0, tilt=0.0) -> None:
        self._add("neck", x=0.3 * nod, y=0.5 * turn)
        self._add("head", x=0.7 * nod, y=0.5 * turn, z=-tilt)

    def body(self, pitch=0.0, yaw=0.0, dx=0.0, dy=0.0, dz=0.0) -> None:
        """Whole-body rotation (pitch forward, yaw left) and translation of the pelvis."""
        self._add("spine_base", x=pitch, y=yaw)
        self.root[:, 0] += dx
        self.root[:, 1] += dy
        self.root[:, 2] += dz

    def crouch(self, drop, back=0.0, pitch=0.0) -> None:
        """Lower the pelvis by `drop` and move it `back` with the feet kept flat where they
        stand (leg IK); `pitch` tilts the trunk forward around the hips."""
        drop, back, pitch = (np.broadcast_to(a, (self.T,)).astype(float)
                             for a in (drop, back, pitch))
        thigh, shin = self.lengths[J["knee_l"]], self.lengths[J["ankle_l"]]
        hip, knee = leg_ik(back, thigh + shin - drop, thigh, shin)
        self.body(pitch=pitch, dy=-drop, dz=-back)
        for side in "lr":
            self.leg(side, flex=hip + pitch, knee=knee, ankle=hip - knee)

    def step(self, side: str, lift) -> None:
        """Lift one foot (0..1): hip and knee flex, like marching."""
        self.leg(side, flex=50 * D * lift, knee=85 * D * lift, ankle=-20 * D * lift)
