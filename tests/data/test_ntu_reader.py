"""NTU `.skeleton` reader: round trips, exact body IDs, NaN, one-line errors, file names."""

import gzip
import os
import re
import tracemalloc

import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.data.issues import BadFile
from pipeline.data.ntu import parse_name, parse_skeleton, read_skeleton

BIG_ID = 72057594037931101  # a real Kinect ID: not exactly representable as a float64


def skeleton_text(frames, newline="\n", indent="") -> str:
    """A tiny `.skeleton` writer for tests: frames = [[(body_id, joints (25, 3)), ...], ...]."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body_id, joints in bodies:
            lines.append(f"{body_id} 0 1 1 1 1 0 0.02764709 -0.2406684 2")
            lines.append(str(len(joints)))
            lines += [f"{x:.7G} {y:.7G} {z:.7G} 256.6035 208.12 1021.541 533.2 -0.2472025 "
                      f"0.01 0.9 -9.276937E-05 2" for x, y, z in joints]
    return "".join(indent + line + newline for line in lines)


def standing(rng, x0=0.0, frames=1):
    """(frames, 25, 3) standing poses: narrow in x, 1.6 m tall, 3 m away."""
    y = np.linspace(-0.8, 0.8, 25)
    x = x0 + rng.uniform(-0.2, 0.2, (frames, 25))
    z = 3.0 + rng.uniform(-0.1, 0.1, (frames, 25))
    return np.stack([x, np.broadcast_to(y, x.shape), z], axis=-1)


def as_printed(a):
    """What a float becomes after `%.7G` and float32 parsing."""
    return np.array([f"{v:.7G}" for v in np.ravel(a)], dtype=np.float32).reshape(np.shape(a))


@pytest.mark.parametrize("newline,indent", [("\n", ""), ("\r\n", ""), ("\n", "   "),
                                            ("\r\n", "\t ")])
def test_round_trip_keeps_xyz_bodies_and_empty_frames(newline, indent):
    rng = np.random.default_rng(0)
    a, b = standing(rng, 0.0, 3), standing(rng, 1.0, 3)
    frames = [[(BIG_ID, a[0])], [], [(BIG_ID, a[1]), (2**64 - 1, b[1])], [(BIG_ID + 1, b[2])]]
    raw = parse_skeleton(skeleton_text(frames, newline, indent).encode(), "x.skeleton")
    assert raw.body_counts.tolist() == [1, 0, 2, 1]
    assert raw.body_frame.tolist() == [0, 2, 2, 3]
    assert raw.body_ids == [BIG_ID, BIG_ID, 2**64 - 1, BIG_ID + 1]  # exact, not via float
    assert raw.joints.dtype == np.float32 and raw.joints.shape == (4, 25, 3)
    np.testing.assert_array_equal(raw.joints, as_printed(np.stack([a[0], a[1], b[1], b[2]])))


def test_round_trip_through_production_writer(tmp_path):
    ntu_writer = pytest.importorskip("pipeline.data.synthetic.ntu_writer")
    rng = np.random.default_rng(1)
    a = standing(rng, 0.0, 2)
    a[1, 3] = [-9.276937e-05, 0.0, 1026.0]
    frames = [[ntu_writer.Body(BIG_ID, a[0])], [], [ntu_writer.Body(BIG_ID, a[1])]]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(ntu_writer.format_skeleton(frames))
    raw = read_skeleton(path)
    assert raw.body_ids == [BIG_ID, BIG_ID] and raw.body_frame.tolist() == [0, 2]
    # The writer prints float32 values with 7 significant digits, as the Kinect SDK did.
    np.testing.assert_array_equal(raw.joints, as_printed(a.astype(np.float32)))


def test_nan_tokens_parse_as_nan():
    rng = np.random.default_rng(2)
    lines = skeleton_text([[(1, standing(rng)[0])]]).splitlines()
    lines[6] = "NaN" + lines[6][lines[6].index(" "):]  # joint 3's x (line 7)
    raw = parse_skeleton("\n".join(lines).encode())
    assert np.isnan(raw.joints[0, 2, 0]) and np.isfinite(np.delete(raw.joints.ravel(), 6)).all()


GOOD = skeleton_text([[(BIG_ID, np.full((25, 3), 0.5))]] * 2).splitlines()
# Line numbers (1-based) in GOOD: 1 frame count, 2 body count, 3 body line, 4 joint count,
# 5-29 joints of frame 1, 30 body count of frame 2, 31 body line, 32 joint count, 33-57 joints.


def _with(i, line):
    lines = list(GOOD)
    lines[i - 1] = line
    return "\n".join(lines) + "\n"


MALFORMED = {  # text, line, expected what, got token, category
    "empty file": ("", 1, "frame count", "an empty file", "empty"),
    "frame count not an integer": ("2.5\n", 1, "frame count", "'2.5'", "bad_token"),
    "truncated mid frame": ("\n".join(GOOD[:40]) + "\n", 40, "25 joints", "end of file",
                            "truncated"),
    "non-numeric x": (_with(7, "abc 0.5 0.5" + GOOD[6][11:]), 7, "a number", "'abc'",
                      "bad_token"),
    "non-numeric other field": (_with(8, GOOD[7][:12] + " depth?" + GOOD[7][20:]), 8,
                                "a number", "'depth?'", "bad_token"),
    "malformed number": (_with(9, "0.5.1" + GOOD[8][3:]), 9, "a number", "'0.5.1'",
                         "bad_token"),
    "joint count 24": (_with(4, "24"), 4, "joint count 25", "'24'", "wrong_joint_count"),
    "body count says 2, one body follows": (_with(2, "2"), 2, "body count 1", "'2'",
                                            "body_count_mismatch"),
    "body count says 0, one body follows": (_with(30, "0"), 30, "body count 1", "'0'",
                                            "body_count_mismatch"),
    "body count says 1, two bodies follow": (
        "\n".join(["2", "1", *GOOD[2:29], *GOOD[2:29], *GOOD[29:]]) + "\n", 2, "body count 2",
        "'1'", "body_count_mismatch"),
    "body count above 6": (_with(2, "7"), 2, "body count", "'7'", "bad_count"),
    "body ID not an integer": (_with(3, "1.5e16" + GOOD[2][17:]), 3, "body ID", "'1.5e16'",
                               "bad_token"),
    "trailing garbage": ("\n".join(GOOD) + "\n1 2\n", 58, "end of file", "'1'",
                         "trailing_data"),
    # a comma merges two tokens, shifting every count after it: the comma's line is reported
    "comma between numbers": (_with(9, GOOD[8].replace(" ", ",", 1)), 9, "a number",
                              "'0.5,0.5'", "bad_token"),
    "frame count the size cannot hold": ("10000000000\n0\n", 1,
                                         "a frame count the file can hold", "'10000000000'", "too_large"),
    "long token is cut short": (_with(7, "x" * 5000 + GOOD[6][3:]), 7, "a number",
                                "'" + "x" * 17 + "...'", "bad_token"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_file_raises_one_line_naming_file_line_expectation_and_token(case, tmp_path):
    text, line, what, got, category = MALFORMED[case]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(text.replace("\n", "\r\n").encode())  # line numbers hold with CRLF too
    with pytest.raises(BadFile) as err:
        read_skeleton(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: expected ") and what in msg, msg
    assert re.search(r", got .+$", msg) and got in msg.split(", got ")[-1], msg
    assert err.value.issue.category == category and len(msg) < len(str(path)) + 150


NOT_SKELETON_TEXT = {  # bytes, line, message, category
    "gzip": (gzip.compress("\n".join(GOOD).encode()), None,
             "gzip-compressed: decompress it first", "compressed"),
    "byte-order mark": (b"\xef\xbb\xbf" + "\n".join(GOOD).encode(), 1,
                        "starts with a UTF-8 byte-order mark", "byte_order_mark"),
    "binary": (bytes(range(256)) * 4, None,
               "not a text file (byte 0 is control character 0x00)", "not_text"),
    "not UTF-8": (b"2\n" + bytes(range(128, 256)), None,
                  "not a text file (byte 2 is not UTF-8)", "not_text"),
}


@pytest.mark.parametrize("case", NOT_SKELETON_TEXT, ids=list(NOT_SKELETON_TEXT))
def test_a_file_that_is_not_skeleton_text_is_named_as_such_in_one_line(case, tmp_path):
    data, line, message, category = NOT_SKELETON_TEXT[case]
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(data)
    with pytest.raises(BadFile) as err:
        read_skeleton(path)
    where = f"{path}:{line}" if line else f"{path}"
    assert str(err.value).startswith(f"{where}: {message}"), err.value
    assert "\n" not in str(err.value) and err.value.issue.category == category


def test_symlinks_to_other_things_and_fifos_are_named_without_reading(tmp_path):
    (tmp_path / "dir.skeleton").symlink_to(tmp_path)
    (tmp_path / "broken.skeleton").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo.skeleton")  # reading it would block forever
    expected = {"dir.skeleton": "a symbolic link to a directory",
                "broken.skeleton": "a broken symbolic link",
                "fifo.skeleton": "not a regular file"}
    for name, what in expected.items():
        with pytest.raises(BadFile) as err:
            read_skeleton(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {what}"), err.value
        assert err.value.issue.category == "not_a_file"


def test_parse_name_gives_one_based_fields():
    s = parse_name("/data/S017C003P040R002A120.skeleton")
    assert (s.setup, s.camera, s.performer, s.replication, s.action) == (17, 3, 40, 2, 120)
    assert s.name == "S017C003P040R002A120"


@pytest.mark.parametrize("name", ["S01C003P040R002A120.skeleton", "x.skeleton",
                                  "S017C003P040R002A120_rgb.skeleton"])
def test_bad_file_name_raises_one_line(name):
    with pytest.raises(DataError, match=re.escape(name) + r": expected a file name like"):
        parse_name(name)


@pytest.mark.parametrize("frames", [10**10, 10**19])
def test_a_count_the_file_cannot_hold_is_rejected_before_any_allocation(frames, tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(b"%d\n0\n" % frames)
    tracemalloc.start()
    try:
        with pytest.raises(BadFile) as err:
            read_skeleton(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == (f"{path}:1: expected a frame count the file can hold (its "
                              f"{len(str(frames)) + 3} bytes hold at most 1 frames), "
                              f"got '{frames}'")
    assert err.value.issue.category == "too_large" and peak < 1 << 20
