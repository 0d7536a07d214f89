"""Atomic file output: write to a temporary sibling, then rename, so a killed stage leaves
either the old file or the new one, never half of one. A write that fails for lack of space
(ENOSPC, a quota, the file-size limit) becomes one line naming the output and the free space,
with the partial output removed.

Temporaries are hidden siblings named `.<name>.<random>.stars-tmp`: beside the target, so the
rename never crosses a filesystem, and matched by `.dvcignore`/`.gitignore`, so one left by a
`kill -9` inside an output folder is never hashed or recorded as an output. A stage removes
the leftovers of its outputs at start (`sweep_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NEARLY_FULL = 1 << 20  # bytes: below this a failed torch.save is taken for a full disk
TEMP_SUFFIX = ".stars-tmp"   # keep in sync with .dvcignore and .gitignore


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give outputs the usual umask-based mode."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _size(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units, k = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while n >= 1024 and k < len(units) - 1:
        n, k = n / 1024, k + 1
    return f"{n:.0f} B" if k == 0 else f"{n:.1f} {units[k]}"


@contextlib.contextmanager
def _no_space_in_one_line(path: Path, tmp: Path, remove: Callable[[], None]) -> Iterator[None]:
    """Turn a write that failed for lack of space into one UserError naming `path` and the
    space free when it failed; the partial output is removed. torch.save reports such a
    failure as a RuntimeError without the errno: it counts when the file system is full."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        free = shutil.disk_usage(tmp.parent).free
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            why = exc.strerror
        elif isinstance(exc, RuntimeError) and free < _NEARLY_FULL:
            why = os.strerror(errno.ENOSPC)
        else:
            raise
        remove()
        raise UserError(f"{path}: cannot write it ({why}; {_size(free)} free on its file "
                        f"system when it failed); free some space or write the output "
                        f"elsewhere") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _no_space_in_one_line(path, tmp_path, lambda: tmp_path.unlink(missing_ok=True)):
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
        with _no_space_in_one_line(path, tmp, lambda: shutil.rmtree(tmp, ignore_errors=True)):
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
