"""NTU RGB+D `.skeleton` reader and file-name parser (format: DESIGN.md section 2).

Usage::

    raw = read_skeleton("S001C002P003R002A013.skeleton")   # RawSkeleton, x/y/z only
    name = parse_name(path)                                 # SampleName(setup=1, camera=2, ...)

The file is tokenised on whitespace (LF or CRLF, any indentation), the count structure is walked
with integer index arithmetic, and the x, y, z tokens of every joint of every body are converted
in one numpy call. That runs at a few hundred MB/s of text per core, where the line-by-line
reference reader (CTR-GCN `get_raw_skes_data.py`) manages about 24 MB/s.

What is validated: that the bytes are plain text (not gzip-compressed, no byte-order mark,
not binary), that every token is made of number characters (checked first, so a stray
character is reported on its own line rather than as the structural mismatch it causes),
frame, body and joint counts (integers; 25 joints; at most 6 bodies, the Kinect v2 limit; a
frame count the file's size cannot hold is rejected before anything is allocated), body IDs
(exact integers, parsed as Python ints, never through a float), the x, y, z floats, and the
token count (no missing or trailing tokens). A frame whose body count disagrees with the
body records that follow is reported at that count. `NaN` (and `inf`) coordinates are kept
as they are; `denoise` decides what to do with them. Every failure is a `BadFile` (a
`DataError`) with one line, ``<path>:<line>: expected <what>, got <token>``, and a category
(`pipeline.data.issues`); the line number is computed only then.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.issues import BadFile, read_input, sniff, token

JOINTS = 25
MAX_BODIES = 6  # Kinect v2 tracks at most six bodies
BODY_FIELDS = 10  # bodyID clippedEdges handLeftConfidence ... trackingState
JOINT_FIELDS = 12  # x y z depthX depthY colorX colorY oriW oriX oriY oriZ trackingState
BODY_TOKENS = BODY_FIELDS + 1 + JOINTS * JOINT_FIELDS

_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
# Characters a numeric token may contain; anything else is a malformed file.
_NUMBER_CHARS = b"0123456789.+-eE \t\r\n\v\fNnAaIiFfTtYy"
# Offsets of x, y, z inside one body record, relative to its first token: (V, C).
_XYZ = (BODY_FIELDS + 1 + JOINT_FIELDS * np.arange(JOINTS))[:, None] + np.arange(3)


@dataclass(frozen=True)
class SampleName:
    """The fields of `SsssCcccPpppRrrrAaaa` (all 1-based, as in the name)."""

    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @property
    def name(self) -> str:
        return (f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}"
                f"R{self.replication:03d}A{self.action:03d}")


@dataclass
class RawSkeleton:
    """One parsed file: every body record in file order, x/y/z only."""

    path: str
    body_counts: np.ndarray  # (F,) int64, bodies listed in each frame (0 allowed)
    body_frame: np.ndarray  # (B,) int64, frame index of each body record
    body_ids: list[int]  # (B,) exact 64-bit Kinect body IDs
    joints: np.ndarray  # (B, V=25, C=3) float32, camera-space metres

    @property
    def frames(self) -> int:
        return len(self.body_counts)


def parse_name(path: str | Path) -> SampleName:
    """`.../S001C002P003R002A013.skeleton` -> SampleName; BadFile for any other name."""
    stem = Path(path).name.removesuffix(".skeleton")
    m = _NAME.fullmatch(stem)
    if m is None:
        raise BadFile(path, None, "bad_name", f"expected a file name like "
                      f"S001C001P001R001A001.skeleton, got {Path(path).name!a}")
    return SampleName(*(int(g) for g in m.groups()))


def read_skeleton(path: str | Path) -> RawSkeleton:
    """Read and parse one `.skeleton` file (BadFile if it is not a regular file)."""
    return parse_skeleton(read_input(path), str(path))


def parse_skeleton(data: bytes, path: str = "<bytes>") -> RawSkeleton:
    """Parse the text of a `.skeleton` file (see module docstring for what is checked)."""
    sniff(data, path)
    _check_lexically(data, path)  # before the structure: a bad character is the real error
    toks = data.split()
    n = len(toks)
    if not n:
        raise BadFile(path, 1, "empty", "expected a frame count, got an empty file")

    def fail(k: int, what: str, category: str) -> BadFile:
        return _error(data, path, k, what, category)

    def count(k: int, what: str, lo: int, hi: int | None, out_of_range: str) -> int:
        if k >= n:
            raise fail(k, what, "truncated")
        try:
            v = int(toks[k])
        except ValueError:
            raise fail(k, what, "bad_token") from None
        if v < lo or (hi is not None and v > hi):
            raise fail(k, what, out_of_range)
        return v

    num_frames = count(0, "frame count (integer >= 0)", 0, None, "bad_count")
    if num_frames > n - 1:  # every frame holds at least its body count: check before allocating
        raise fail(0, f"a frame count the file can hold (its {len(data)} bytes hold at most "
                      f"{n - 1} frames)", "too_large")
    body_counts = np.empty(num_frames, dtype=np.int64)
    body_frame: list[int] = []
    body_ids: list[int] = []
    starts: list[int] = []  # token index of each body record
    k, kc, claimed, held = 1, None, 0, 0  # kc: token of the last body count read
    try:
        for f in range(num_frames):
            nb = count(k, f"body count (integer 0-{MAX_BODIES})", 0, MAX_BODIES, "bad_count")
            body_counts[f] = nb
            kc, claimed, held, k = k, nb, 0, k + 1
            for _ in range(nb):
                body_ids.append(count(k, "body ID (integer)", -2**63, 2**64 - 1, "bad_token"))
                count(k + BODY_FIELDS, f"joint count {JOINTS}", JOINTS, JOINTS,
                      "wrong_joint_count")
                if k + BODY_TOKENS > n:
                    raise fail(n, f"{JOINTS} joints of {JOINT_FIELDS} numbers", "truncated")
                starts.append(k)
                body_frame.append(f)
                k += BODY_TOKENS
                held += 1
        if k != n:
            raise fail(k, "end of file", "trailing_data")
    except BadFile:
        holds = None if kc is None else _bodies_held(toks, k, claimed, held)
        if holds is None:
            raise
        records = "body record" if holds == 1 else "body records"
        raise fail(kc, f"body count {holds} (the frame holds {holds} {records})",
                   "body_count_mismatch") from None

    B = len(starts)
    if B:
        # token index of every x, y, z: (B, V, C) -> flat
        pick = (np.asarray(starts)[:, None, None] + _XYZ).ravel().tolist()
        picked = operator.itemgetter(*pick)(toks)
        if B * JOINTS * 3 == 1:  # itemgetter returns a bare item for one index
            picked = (picked,)
        try:
            xyz = np.array(picked, dtype=np.float32)
        except ValueError:
            bad = next(i for i, t in enumerate(picked) if not _is_float(t))
            raise fail(pick[bad], "a number (joint x, y or z)", "bad_token") from None
        joints = xyz.reshape(B, JOINTS, 3)
    else:
        joints = np.zeros((0, JOINTS, 3), dtype=np.float32)
    return RawSkeleton(path=path, body_counts=body_counts,
                       body_frame=np.asarray(body_frame, dtype=np.int64),
                       body_ids=body_ids, joints=joints)


def _is_float(tok: bytes) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _bodies_held(toks: list[bytes], k: int, claimed: int, held: int) -> int | None:
    """Explain a failure at token `k` by a wrong body count: the number of body records the
    frame really holds when the tokens there fit that story, else None. A frame that claims
    more bodies than it holds runs into the next frame's body count; one that claims fewer
    leaves a body record where the next frame's body count belongs."""
    def body_at(i: int) -> bool:  # a body record (10 fields, then joint count 25) starts at i
        return i + BODY_FIELDS < len(toks) and toks[i + BODY_FIELDS] == b"%d" % JOINTS

    if held < claimed:
        try:
            nb = int(toks[k]) if k < len(toks) else -1
        except ValueError:
            return None
        return held if 0 <= nb <= MAX_BODIES and (nb == 0 or body_at(k + 1)) else None
    more = 0
    while body_at(k + more * BODY_TOKENS) and more <= MAX_BODIES:
        more += 1
    return held + more if more else None


def _check_lexically(data: bytes, path: str) -> None:
    """Every token must be made of number characters (catches text in the wrong place)."""
    if not data.translate(None, _NUMBER_CHARS):
        return
    bad = next(i for i, c in enumerate(data) if c not in _NUMBER_CHARS)
    start = max(data.rfind(sep, 0, bad) for sep in (b" ", b"\t", b"\n", b"\r")) + 1
    line = data.count(b"\n", 0, start) + 1
    raise BadFile(path, line, "bad_token",
                  f"expected a number, got {token(data[start:].split(None, 1)[0])}")


def _error(data: bytes, path: str, k: int, what: str, category: str) -> BadFile:
    """BadFile for token number `k` (k past the end: end of file). Only on the error path."""
    for i, m in enumerate(re.finditer(rb"\S+", data)):
        if i == k:
            line = data.count(b"\n", 0, m.start()) + 1
            return BadFile(path, line, category, f"expected {what}, got {token(m.group())}")
    line = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    return BadFile(path, max(line, 1), category, f"expected {what}, got end of file")
