"""Atomic file output: write to a temporary sibling, then rename, so a killed stage leaves
either the old file or the new one, never half of one.

Temporaries are hidden siblings named `.<name>.<random>.stars-tmp`: beside the target, so the
rename never crosses a filesystem, and matched by `.dvcignore`/`.gitignore`, so one left by a
`kill -9` inside an output folder is never hashed or recorded as an output. A stage removes
the leftovers of its outputs at start (`sweep_temps`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".stars-tmp"   # keep in sync with .dvcignore and .gitignore


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give outputs the usual umask-based mode."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _publish_mode(tmp_path, is_dir=False)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, is_dir=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old{TEMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_temps(outputs: Iterable[str | Path]) -> list[Path]:
    """Delete what killed atomic writes left of `outputs`: their hidden temporary siblings
    and, inside a folder output, every temporary. Returns what was removed."""
    removed = []
    for out in map(Path, outputs):
        found = list(out.parent.glob(f".{glob.escape(out.name)}.*{TEMP_SUFFIX}"))
        if out.is_dir():
            found += out.rglob(f"*{TEMP_SUFFIX}")
        for tmp in found:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, streamed (checkpoints, datasets and stores can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
