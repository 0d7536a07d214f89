"""Two-person interactions of the action library (`Action(..., actors=2)` in `actions.py`).

Each function adds one interaction to the poses [actor 0, actor 1] as functions of the
normalised action time u. Actor 0 initiates; `actions.perform` stands the two facing each
other, actor 1 `gap` metres away.
"""

from __future__ import annotations

from pipeline.data.synthetic.poses import D, hands, hold, osc, rise


def handshake(p, u, rng) -> None:
    env = hold(u, 0.0, 0.3, 0.75, 1.0, p[0].style.sharp)
    pump = osc(u, rng.uniform(2, 3.5), 0.3, 0.75)
    for a in p:
        a.arm("r", flex=(45 + 8 * pump) * D * env, swing=-12 * D * env, elbow=40 * D * env)
        a.body(dz=0.1 * env)


def push(p, u, rng) -> None:
    (a, b), s = p, p[0].style
    reach = hold(u, 0.0, 0.35, 0.5, 0.8)
    shove = hold(u, 0.35, 0.42 - 0.04 * s.sharp, 0.5, 0.8)
    for side in "lr":
        a.arm(side, flex=85 * D * reach, swing=-10 * D * reach, elbow=(90 * reach - 80 * shove) * D)
        b.arm(side, abd=35 * D * shove, elbow=30 * D * shove)
    a.body(dz=0.2 * reach + 0.1 * shove)
    a.spine(bend=10 * D * shove)
    back = rise(u, 0.4, 0.6)
    b.body(dz=-(0.2 + 0.15 * s.amp) * back)
    b.spine(bend=-15 * D * hold(u, 0.4, 0.5, 0.6, 0.8))
    b.step("l", hold(u, 0.42, 0.5, 0.52, 0.62))


def hug(p, u, rng) -> None:
    env = hold(u, 0.1, 0.4, 0.7, 0.95)
    for i, a in enumerate(p):
        a.body(dz=0.3 * env)
        a.spine(bend=10 * D * env)
        for side in "lr":
            a.arm(side, flex=(80 + (20 if (side == "l") == (i == 0) else -10)) * D * env,
                  swing=-35 * D * env, elbow=70 * D * env)


def give_object(p, u, rng) -> None:
    (a, b) = p
    give = hold(u, 0.0, 0.35, 0.6, 0.85)
    take = hold(u, 0.2, 0.45, 0.55, 1.0)
    dom_a, dom_b = hands(a.style)[0], hands(b.style)[0]
    a.arm(dom_a, flex=55 * D * give, elbow=45 * D * give, swing=-10 * D * give)
    b.arm(dom_b, flex=50 * D * take, elbow=(50 * take + 40 * rise(u, 0.6, 1.0)) * D)
    a.body(dz=0.08 * give)
    b.body(dz=0.08 * take)


def high_five(p, u, rng) -> None:
    env = hold(u, 0.0, 0.4, 0.55, 0.9, p[0].style.sharp)
    for a in p:
        a.arm("r", flex=(140 + 10 * a.style.amp) * D * env, swing=-15 * D * env,
              elbow=20 * D * env)
        a.body(dz=0.1 * env)


def punch_other(p, u, rng) -> None:
    (a, b), s = p, p[0].style
    dom, oth = hands(s)
    guard = hold(u, 0.0, 0.25, 0.75, 1.0)
    hit = hold(u, 0.4, 0.48 - 0.04 * s.sharp, 0.55, 0.7)
    a.arm(dom, flex=(60 * guard + 35 * hit) * D, elbow=(120 * guard - 115 * hit) * D,
          swing=-15 * D * guard)
    a.arm(oth, flex=60 * D * guard, elbow=120 * D * guard)
    a.body(dz=0.15 * hit)
    a.spine(twist=(20 if dom == "r" else -20) * D * hit)
    flinch = hold(u, 0.47, 0.55, 0.65, 0.85)
    b.spine(bend=-20 * D * flinch)
    b.head(nod=-20 * D * flinch)
    b.body(dz=-0.12 * flinch)
    for side in "lr":
        b.arm(side, flex=70 * D * flinch, elbow=100 * D * flinch)
