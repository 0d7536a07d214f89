"""Why an input file (or part of one) was not stored: one line, one category from a fixed set.

Usage::

    raise BadFile(path, 12, "bad_token", "expected a number, got 'abc'")
    data = read_input(path)              # bytes of a regular file, else BadFile
    sniff(data, path)                    # gzip, byte-order mark, binary: BadFile naming it
    metrics["skipped"] = tally(issues)   # {"count": 3, "truncated": 1, ...}

A category is a short safe key (letters and underscores): it becomes an MLflow metric name
`skipped.<category>`, so a message never does. Messages quote at most a short printable token
of the file (`token`), never more of its content.
"""

from __future__ import annotations

import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.errors import DataError

CATEGORIES = {
    "empty": "the file holds nothing",
    "truncated": "the file ends in the middle of a frame",
    "bad_token": "a token that is not the number expected there",
    "bad_count": "a count outside its range (e.g. more than 6 bodies)",
    "too_large": "a count the file's size cannot hold",
    "wrong_joint_count": "a body with other than 25 joints",
    "wrong_value_count": "a PKU-MMD line without 150 numbers",
    "body_count_mismatch": "a frame lists another number of bodies than it holds",
    "trailing_data": "tokens after the last frame",
    "not_text": "a binary file",
    "compressed": "a gzip-compressed file",
    "byte_order_mark": "a text file starting with a UTF-8 byte-order mark",
    "not_a_file": "a directory, device or broken symbolic link",
    "unreadable": "the operating system refused to read it",
    "bad_name": "a file name not like S001C001P001R001A001.skeleton",
    "unknown_action": "an action outside the class list",
    "duplicate_body_id": "a body ID listed twice in one frame",
    "no_usable_body": "no body the denoiser can keep",
    "bad_label": "a PKU-MMD label row that names no valid sample",
    "missing_pair": "a PKU-MMD video without its skeleton or label file",
    "no_skeleton": "a PKU-MMD sample whose frames hold no skeleton",
    "bad_sample": "an imported sample that cannot be stored",
}
TOKEN_CHARS = 20  # at most this much of a file's content appears in a message


@dataclass(frozen=True)
class Issue:
    """One reported problem: the file, the 1-based line (None: the whole file), the category
    and the one-line message (`file:line: reason`)."""

    file: str
    line: int | None
    category: str
    reason: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown issue category {self.category!r}")

    @property
    def message(self) -> str:
        where = show_path(self.file) + ("" if self.line is None else f":{self.line}")
        return f"{where}: {self.reason}"

    def record(self) -> dict:
        """The entry of `metrics["issues"]`: file, line, category, message."""
        d = asdict(self)
        d["message"] = self.message
        del d["reason"]
        return d


class BadFile(DataError):
    """A DataError about one input file that carries its Issue for the skip report."""

    def __init__(self, file: str | Path, line: int | None, category: str, reason: str):
        self.issue = Issue(str(file), line, category, reason)
        super().__init__(self.issue.message)


def tally(issues: Iterable[Issue]) -> dict[str, int]:
    """{"count": n, <category>: n per category (only those that occur)}."""
    counts = Counter(i.category for i in issues)
    return {"count": sum(counts.values()), **dict(sorted(counts.items()))}


def show_path(path: str | Path) -> str:
    """A path as text on one line (a name holding control characters is escaped)."""
    text = str(path)
    return text if text.isprintable() else ascii(text)


def token(raw: bytes | str) -> str:
    """A short printable quote of a token of the file: 'abc', '0.123456789012345678...'."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if len(text) > TOKEN_CHARS:
        text = text[:TOKEN_CHARS - 3] + "..."
    return ascii(text)


def read_input(path: str | Path) -> bytes:
    """The bytes of a regular file; BadFile for a directory, device, FIFO (which would block),
    broken symbolic link, or a read the operating system refuses."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows symbolic links
    except FileNotFoundError as exc:
        what = ("a broken symbolic link; remove it or restore its target" if path.is_symlink()
                else f"cannot read ({exc.strerror}); check the path")
        raise BadFile(path, None, "not_a_file", what) from None
    except OSError as exc:
        raise BadFile(path, None, "unreadable", f"cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        link = "a symbolic link to " if path.is_symlink() else ""
        raise BadFile(path, None, "not_a_file", f"{link}{kind}; expected a skeleton text file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadFile(path, None, "unreadable", f"cannot read ({exc.strerror})") from None


def sniff(data: bytes, path: str | Path) -> None:
    """BadFile when `data` is not plain text: gzip-compressed, a UTF-8 byte-order mark,
    binary (a NUL or other control byte, or not UTF-8)."""
    if data.startswith(b"\x1f\x8b"):
        raise BadFile(path, None, "compressed", "gzip-compressed: decompress it first")
    if data.startswith(b"\xef\xbb\xbf"):
        raise BadFile(path, 1, "byte_order_mark", "starts with a UTF-8 byte-order mark; save "
                                                  "it as plain ASCII text")
    if data.isascii() and not data.translate(None, _TEXT_BYTES):
        return
    control = data.translate(None, _TEXT_BYTES + bytes(range(0x80, 0x100)))
    if control:
        at = data.index(control[:1])
        raise BadFile(path, None, "not_text", f"not a text file (byte {at} is control "
                                              f"character 0x{control[0]:02x})")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadFile(path, None, "not_text", f"not a text file (byte {exc.start} is not "
                                              f"UTF-8)") from None


_TEXT_BYTES = bytes(range(0x20, 0x7f)) + b"\t\n\v\f\r"
