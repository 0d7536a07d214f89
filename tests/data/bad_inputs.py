"""Generator of malformed (and tricky but valid) raw files, for the bad-input tests.

    cases = write_corpus(tmp_path)      # writes tmp_path/ntu/*.skeleton, tmp_path/pku/{skeleton,label}/
    for case in cases: case.path, case.valid, case.line, case.reason, case.category

Each `Case` states the documented outcome: valid files must parse; for a malformed one, the
one-line error must name `case.path` (and `case.line` when not None) and contain `case.reason`,
and a skipped one is counted under `case.category` (`pipeline.data.issues.CATEGORIES`).
PKU video names are phase I training videos of the official cross-subject split, so a corpus
converts with `data.source: pku1`, `benchmark: xsub`.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

T_NTU = 16  # frames per NTU file: > 11, so the reference denoiser keeps the body track
T_PKU = 40  # frames per PKU video
NTU_BODY_ID = 72057594037931101


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str  # "ntu" | "pku_skeleton" | "pku_label"
    path: Path
    valid: bool
    line: int | None = None  # line the error names, when it names one
    reason: str = ""  # substring of the error (or of the reported reason)
    category: str = ""  # the skip category of a malformed case


def standing_pose(rng: np.random.Generator) -> np.ndarray:
    """(25, 3) plausible Kinect joints: 1.6 m tall, narrow in x, 3 m from the sensor."""
    y = np.linspace(-0.8, 0.8, 25)
    x = rng.uniform(-0.2, 0.2, 25)
    z = 3.0 + rng.uniform(-0.1, 0.1, 25)
    return np.stack([x, y, z], axis=1)


def ntu_lines(frames: np.ndarray) -> list[str]:
    """NTU `.skeleton` text lines for joints (T, B, 25, 3); bodies keep their IDs."""
    lines = [str(len(frames))]
    for frame in frames:
        lines.append(str(len(frame)))
        for b, joints in enumerate(frame):
            lines.append(f"{NTU_BODY_ID + b} 0 1 2 1 2 0 -0.2034 0.1081 2")
            lines.append(str(len(joints)))
            lines += [f"{x:.7g} {y:.7g} {z:.7g} 250.51 200.12 1000.2 500.33 0.1 0.2 0.3 0.9 2"
                      for x, y, z in joints]
    return lines


def pku_frames(rng: np.random.Generator, actors: int = 1) -> np.ndarray:
    """(T_PKU, 2, 25, 3) moving skeletons; absent actor slots are zero."""
    out = np.zeros((T_PKU, 2, 25, 3))
    for m in range(actors):
        pose = standing_pose(rng) + [m * 1.0, 0, 0]
        drift = np.linspace(0, 0.3, T_PKU)[:, None, None] * rng.normal(size=3)
        out[:, m] = pose + drift + rng.normal(0, 0.01, (T_PKU, 25, 3))
    return out


def pku_lines(frames: np.ndarray, indent: str = "") -> list[str]:
    return [indent + " ".join(f"{v:.6f}" for v in f.ravel()) for f in frames]


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def write_corpus(root: Path, seed: int = 0) -> list[Case]:
    """Write every case under root; returns them in a fixed order."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []

    # ---- NTU .skeleton
    ntu = root / "ntu"
    good = ntu_lines(standing_pose(rng)[None, None] + np.zeros((T_NTU, 1, 1, 1)))
    body_at = 2  # line index (0-based) of the first body line in frame 1
    joint_at = 4  # first joint line of frame 1

    def ntu_case(action: int, name: str, lines: list[str] | bytes, valid: bool,
                 line: int | None = None, reason: str = "", category: str = "",
                 sep: str = "\n", suffix: str = "") -> None:
        data = lines if isinstance(lines, bytes) else sep.join(lines) + sep
        path = _write(ntu / f"S001C001P001R001A{action:03d}.skeleton{suffix}", data)
        cases.append(Case(name, "ntu", path, valid, line, reason, category))

    ntu_case(1, "ntu_valid", good, True)
    ntu_case(2, "ntu_crlf", good, True, sep="\r\n")
    ntu_case(3, "ntu_leading_spaces", ["  " + s for s in good], True)
    nan = good.copy()
    nan[joint_at + 3] = " ".join(["NaN", "NaN", "NaN"] + good[joint_at + 3].split()[3:])
    ntu_case(4, "ntu_nan_tokens", nan, True)
    cut = len(good) - 10  # inside the last frame's joints
    ntu_case(5, "ntu_truncated_mid_frame", good[:cut], False, cut, "end of file", "truncated")
    text = good.copy()
    text[joint_at + 7] = " ".join(["0.1", "abc"] + good[joint_at + 7].split()[2:])
    ntu_case(6, "ntu_non_numeric_token", text, False, joint_at + 8, "'abc'", "bad_token")
    joints = good.copy()
    joints[body_at + 1] = "24"
    ntu_case(7, "ntu_wrong_joint_count", joints, False, body_at + 2, "joint count 25",
             "wrong_joint_count")
    bodies = good.copy()
    bodies[1] = "2"  # frame 1 claims two bodies but lists one: reported at that count
    ntu_case(8, "ntu_body_count_mismatch", bodies, False, 2, "expected body count 1",
             "body_count_mismatch")
    ntu_case(9, "ntu_binary_garbage", bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
             False, None, "not a text file", "not_text")
    ntu_case(10, "ntu_empty", b"", False, 1, "got an empty file", "empty")
    ntu_case(11, "ntu_gzip", gzip.compress(("\n".join(good) + "\n").encode(), mtime=0), False,
             None, "gzip-compressed: decompress it first", "compressed")
    ntu_case(12, "ntu_byte_order_mark", b"\xef\xbb\xbf" + ("\n".join(good) + "\n").encode(),
             False, 1, "starts with a UTF-8 byte-order mark", "byte_order_mark")
    ntu_case(13, "ntu_frame_count_too_large", ["10000000000"] + good[1:40], False, 1,
             "'10000000000'", "too_large")
    comma = good.copy()  # a comma merges two numbers; every count after it shifts
    comma[joint_at + 3] = comma[joint_at + 3].replace(" ", ",", 1)
    ntu_case(14, "ntu_comma_between_numbers", comma, False, joint_at + 4, "expected a number",
             "bad_token")
    ntu_case(15, "ntu_compressed_name", gzip.compress(("\n".join(good) + "\n").encode(),
                                                      mtime=0),
             False, None, "gzip-compressed: decompress it first", "compressed", suffix=".gz")
    link = ntu / "S001C001P001R001A016.skeleton"
    link.symlink_to(root)  # a symbolic link to a directory
    cases.append(Case("ntu_symlink_to_directory", "ntu", link, False, None,
                      "a symbolic link to a directory", "not_a_file"))

    # ---- PKU-MMD skeleton and label files (phase I cross-subject training videos)
    skel, label = root / "pku" / "skeleton", root / "pku" / "label"
    rows = "1,0,10,1\n7,10,25,2\n33,25,40,1\n"

    def pku_case(video: str, name: str, skeleton: list[str] | bytes, labels: str, valid: bool,
                 fmt: str = "pku_skeleton", line: int | None = None, reason: str = "",
                 category: str = "", sep: str = "\n") -> None:
        data = skeleton if isinstance(skeleton, bytes) else sep.join(skeleton) + sep
        s = _write(skel / f"{video}.txt", data)
        lab = _write(label / f"{video}.txt", labels)
        cases.append(Case(name, fmt, s if fmt == "pku_skeleton" else lab, valid, line, reason,
                          category))

    frames = pku_frames(rng, actors=2)
    lines = pku_lines(frames)
    pku_case("0002-L", "pku_valid", lines, rows, True)
    pku_case("0002-M", "pku_crlf", lines, rows.replace("\n", "\r\n"), True, sep="\r\n")
    pku_case("0002-R", "pku_leading_spaces", pku_lines(frames, indent=" "), rows, True)
    nan = lines.copy()
    nan[5] = " ".join(["nan"] * 3 + lines[5].split()[3:])
    pku_case("0003-L", "pku_nan_tokens", nan, rows, True, reason="nonfinite")
    pku_case("0003-M", "pku_wrong_float_count", lines[:7] + [lines[7].rsplit(" ", 1)[0]]
             + lines[8:], rows, False, line=8, reason="got 149", category="wrong_value_count")
    pku_case("0003-R", "pku_truncated_mid_line", lines[:-1] + [lines[-1][:200]], rows, False,
             line=T_PKU, reason="expected 150 numbers", category="truncated")
    text = lines.copy()
    text[11] = " ".join(["0.5", "x1.2"] + lines[11].split()[2:])
    pku_case("0004-L", "pku_non_numeric_token", text, rows, False, line=12, reason="'x1.2'",
             category="bad_token")
    pku_case("0004-M", "pku_binary_garbage", b"\xff\xfe\x00" + bytes(rng.integers(
        0, 256, 2048, dtype=np.uint8)), rows, False, reason="not a text file",
        category="not_text")
    pku_case("0004-R", "pku_empty", b"", rows, False, reason="empty skeleton file",
             category="empty")
    label_case = {"fmt": "pku_label", "category": "bad_label"}
    pku_case("0005-L", "pku_label_out_of_range", lines, "1,0,10,1\n52,10,20,1\n0,20,30,1\n",
             False, line=2, reason="label 52 out of range 1..51", **label_case)
    pku_case("0005-M", "pku_label_start_after_end", lines, "1,0,10,1\n4,30,20,1\n", False,
             line=2, reason="start 30, end 20", **label_case)
    pku_case("0005-R", "pku_label_outside_video", lines, "1,0,10,1\n4,30,41,1\n", False,
             line=2, reason=f"outside the video ({T_PKU} frames)", **label_case)
    pku_case("0006-L", "pku_label_duplicate", lines, "1,0,10,1\n6,10,20,1\n6,10,20,3\n",
             False, line=3, reason="duplicate of line 2", **label_case)
    pku_case("0006-M", "pku_label_not_numeric", lines, "1,0,10,1\nbow,10,20,1\n", False,
             line=2, reason="must be integers", **label_case)
    comma = lines.copy()  # a comma merges two numbers: the line has 149 tokens, one not a number
    comma[4] = comma[4].replace(" ", ",", 1)
    pku_case("0006-R", "pku_comma_between_numbers", comma, rows, False, line=5,
             reason="non-numeric token", category="bad_token")
    pku_case("0007-L", "pku_gzip", gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0),
             rows, False, reason="gzip-compressed: decompress it first", category="compressed")
    pku_case("0007-M", "pku_byte_order_mark", b"\xef\xbb\xbf" + ("\n".join(lines) + "\n")
             .encode(), rows, False, line=1, reason="starts with a UTF-8 byte-order mark",
             category="byte_order_mark")
    return cases
