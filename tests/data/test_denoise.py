"""Reference denoising (DESIGN.md section 2, steps 1-6): one crafted sequence per rule."""

import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.data.denoise import NOISY_FRACTION, denoise, motion_of
from pipeline.data.ntu import parse_skeleton
from tests.data.test_ntu_reader import as_printed, skeleton_text, standing


def moving(rng, n, x0=0.0, amp=0.0):
    """(n, 25, 3) standing poses swaying along x with amplitude `amp` (metres)."""
    sway = amp * np.sin(np.linspace(0, 4 * np.pi, n))[:, None, None] * [1.0, 0.0, 0.3]
    return standing(rng, x0, n) + sway


def noisy(joints, frames):
    """Stretch x in `frames` so x-extent > 0.8 x y-extent (the reference's noisy frame)."""
    out = joints.copy()
    out[frames, :, 0] *= 8
    return out


def run(T, tracks):
    """tracks: [(body_id, first_frame, joints (n, 25, 3))]; record i of a track is at frame
    first_frame + i. Returns denoise() of the parsed file, and the tracks as printed."""
    frames = [[] for _ in range(T)]
    for body_id, first, joints in tracks:
        for i, j in enumerate(joints):
            frames[first + i].append((body_id, j))
    out, info = denoise(parse_skeleton(skeleton_text(frames).encode(), "t.skeleton"))
    return out, info, {body_id: as_printed(j) for body_id, _, j in tracks}


def fates(info):
    return {t["id"]: t["fate"] for t in info["tracks"]}


def test_single_body_skips_denoising_and_keeps_every_nonempty_frame():
    rng = np.random.default_rng(0)
    a = moving(rng, 5, amp=0.1)  # 5 frames: a second body this short would be dropped
    out, info, p = run(7, [(1, 2, a)])  # frames 0, 1 have no body
    assert out.shape == (5, 2, 25, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], p[1] - p[1][0, 1])
    assert not out[:, 1].any() and info["empty_frames"] == 2 and info["actors"] == 1


@pytest.mark.parametrize("length,kept", [(11, False), (12, True)])
def test_track_of_11_frames_or_fewer_is_dropped(length, kept):
    rng = np.random.default_rng(1)
    out, info, _ = run(30, [(1, 0, moving(rng, 30, amp=0.2)),
                            (2, 5, moving(rng, length, x0=1.0, amp=0.05))])
    assert fates(info)[2] == ("actor 2" if kept else "dropped: length 11 <= 11")
    assert out[:, 1].any() == kept


@pytest.mark.parametrize("noisy_frames,dropped", [(69, False), (70, True)])
def test_track_with_noisy_frame_ratio_from_0_69754_is_dropped(noisy_frames, dropped):
    assert 0.69 < NOISY_FRACTION <= 0.70
    rng = np.random.default_rng(2)
    b = noisy(moving(rng, 100, x0=1.0, amp=0.05), np.arange(noisy_frames))
    _, info, _ = run(100, [(1, 0, moving(rng, 100, amp=0.1)), (2, 0, b)])
    assert fates(info)[2].startswith("dropped: noisy-frame ratio") == dropped


def test_motion_becomes_variance_of_non_noisy_frames_when_lower():
    rng = np.random.default_rng(3)
    a = moving(rng, 60, amp=0.1)
    b = moving(rng, 60, x0=1.0, amp=0.0)
    b[:6] += [2.0, 0.0, 0.0]  # large motion, but only in the 6 frames about to be noisy
    b = noisy(b, np.arange(6))
    _, info, p = run(60, [(1, 0, a), (2, 0, b)])
    assert motion_of(p[2]) > motion_of(p[1])  # by raw motion, body 2 would be actor 1
    motion = {t["id"]: t["motion"] for t in info["tracks"]}
    assert motion[2] == pytest.approx(float(motion_of(p[2][6:])), rel=1e-6)
    assert fates(info) == {1: "actor 1", 2: "actor 2"}


def test_actor_one_is_the_track_with_most_motion():
    rng = np.random.default_rng(4)
    calm, lively = moving(rng, 40, amp=0.02), moving(rng, 40, x0=1.0, amp=0.3)
    out, info, p = run(40, [(1, 0, calm), (2, 0, lively)])  # body 1 is listed first
    assert fates(info) == {1: "actor 2", 2: "actor 1"}
    origin = p[2][0, 1]
    np.testing.assert_array_equal(out[:, 0], p[2] - origin)
    np.testing.assert_array_equal(out[:, 1], p[1] - origin)


def test_overlap_decides_actor_slots():
    rng = np.random.default_rng(5)
    a = moving(rng, 40, amp=0.4)  # frames 0-39, most motion
    b = moving(rng, 40, x0=0.5, amp=0.3)  # frames 40-79: no overlap with a -> actor 1
    c = moving(rng, 80, x0=1.0, amp=0.2)  # frames 0-79: overlaps actor 1 -> actor 2
    d = moving(rng, 41, x0=2.0, amp=0.1)  # frames 10-50: overlaps both -> dropped
    out, info, p = run(80, [(1, 0, a), (2, 40, b), (3, 0, c), (4, 10, d)])
    assert fates(info) == {1: "actor 1", 2: "actor 1", 3: "actor 2",
                           4: "dropped: overlaps both actors"}
    origin = p[1][0, 1]
    np.testing.assert_array_equal(out[:40, 0], p[1] - origin)
    np.testing.assert_array_equal(out[40:, 0], p[2] - origin)
    np.testing.assert_array_equal(out[:, 1], p[3] - origin)


def test_intervals_sharing_one_frame_do_not_overlap_as_in_the_reference():
    rng = np.random.default_rng(6)
    a, b = moving(rng, 21, amp=0.3), moving(rng, 21, x0=1.0, amp=0.1)  # frames 0-20, 20-40
    out, info, p = run(41, [(1, 0, a), (2, 20, b)])
    assert fates(info) == {1: "actor 1", 2: "actor 1"}
    np.testing.assert_array_equal(out[20, 0], p[2][0] - p[1][0, 1])  # b overwrites frame 20
    assert not out[:, 1].any()


def test_frames_with_both_actors_absent_are_dropped():
    rng = np.random.default_rng(7)
    a, b = moving(rng, 25, amp=0.3), moving(rng, 25, x0=0.5, amp=0.2)
    short = moving(rng, 10, x0=1.0, amp=0.1)  # frames 25-34 only: dropped by length
    out, info, p = run(60, [(1, 0, a), (2, 35, b), (3, 25, short)])
    assert len(out) == 50 and info["missing_frames"] == 10 and info["frames"] == 50
    np.testing.assert_array_equal(out[25:, 0], p[2] - p[1][0, 1])


def test_centring_on_spine_mid_of_first_frame_of_actor_one_and_absent_actor_exactly_zero():
    rng = np.random.default_rng(8)
    lively = moving(rng, 30, amp=0.3)  # actor 1, frames 5-34
    calm = moving(rng, 20, x0=1.0, amp=0.02)  # actor 2, frames 0-19
    out, info, p = run(35, [(2, 0, calm), (1, 5, lively)])
    origin = p[1][0, 1]
    assert (out[5, 0, 1] == 0).all()  # joint 2 of actor 1's first frame is the origin
    np.testing.assert_array_equal(out[5:, 0], p[1] - origin)
    np.testing.assert_array_equal(out[:20, 1], p[2] - origin)
    assert (out[:5, 0] == 0).all() and (out[20:, 1] == 0).all()  # absent: exactly zero
    assert info["actors"] == 2


def test_track_that_disappears_is_packed_from_its_first_frame_as_in_the_reference():
    rng = np.random.default_rng(9)
    a = moving(rng, 30, amp=0.3)
    b = moving(rng, 20, x0=1.0, amp=0.05)
    frames = [[(1, a[t])] + ([(2, b[t if t < 10 else t - 10])] if t < 10 or t >= 20 else [])
              for t in range(30)]  # body 2 in frames 0-9 and 20-29
    out, _ = denoise(parse_skeleton(skeleton_text(frames).encode()))
    pb = as_printed(b)
    np.testing.assert_array_equal(out[:20, 1], pb - as_printed(a)[0, 1])
    assert not out[20:, 1].any()


def test_nan_frames_are_dropped_and_counted():
    rng = np.random.default_rng(10)
    a = moving(rng, 20, amp=0.2)
    a[7, 10, 0] = np.nan
    a[0, 1, 2] = np.nan  # spine mid of the first frame: the origin comes from frame 1
    out, info, p = run(20, [(1, 0, a)])
    assert info["nan_frames"] == 2 and len(out) == 18 and np.isfinite(out).all()
    np.testing.assert_array_equal(out[0, 0], p[1][1] - p[1][1, 1])


def test_no_track_longer_than_11_frames_is_a_data_error():
    rng = np.random.default_rng(11)
    with pytest.raises(DataError, match="t.skeleton: expected a body tracked for more than 11"):
        run(20, [(1, 0, moving(rng, 8)), (2, 10, moving(rng, 8, x0=1.0))])


def test_file_without_bodies_is_a_data_error():
    with pytest.raises(DataError, match="expected at least one frame with a body, got none"):
        denoise(parse_skeleton(b"3\n0\n0\n0\n"))


def test_inspect_summary_lists_name_bodies_fates_and_final_length(tmp_path):
    from pipeline.data.inspect import summarize

    rng = np.random.default_rng(12)
    frames = [[(7, p)] for p in moving(rng, 30, amp=0.2)]
    for t in range(5):
        frames[t].append((8, moving(rng, 1, x0=1.0)[0]))  # a 5-frame noise track
    path = tmp_path / "S002C003P004R001A055.skeleton"
    path.write_text(skeleton_text(frames + [[]]))
    text = summarize(path)
    assert "setup 2  camera 3  performer 4  replication 1  action 55 (label 54)" in text
    assert "frames in file: 31" in text and "0: 1 frames, 1: 25 frames, 2: 5 frames" in text
    assert "7: 0-29, 30" in text and "8: 0-4, 5" in text
    assert "-> actor 1" in text and "-> dropped: length 5 <= 11" in text
    assert "final: 30 frames, 1 actor(s)" in text
