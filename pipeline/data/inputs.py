"""What the optional input folders hold: the record DVC tracks for stage `preprocess`.

DVC 3 cannot depend on a path given by a parameter that may be empty: `data.novel_dir` and
`data.pku_split_dir` default to "", an empty dependency path is an error, and lists are not
interpolated into `deps`. So the always-run stage `inputs` writes this record (one digest per
folder over its files' names, sizes and modification times: what DVC itself compares to
skip re-hashing) and `preprocess` depends on it. A changed, added or removed file re-runs
preprocess; unset folders give a constant record, so nothing re-runs.

Usage::

    atomic_write_json("data/inputs.json", input_record(params.data))
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pipeline.core.config import DataConfig
from pipeline.core.errors import DataError

OPTIONAL_DIRS = ("novel_dir", "pku_split_dir")


def folder_digest(path: Path, key: str) -> dict[str, Any]:
    """Files, bytes and a sha256 over (relative name, size, mtime_ns) of every file under
    `path` (or of `path` itself when it is a file), in name order."""
    if not path.exists():
        raise DataError(f"{key}: {str(path)!r} not found; set it to an existing folder, or to "
                        "\"\" to leave it out")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h, total = hashlib.sha256(), 0
    for f in files:
        st = f.stat()
        total += st.st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path), "files": len(files), "bytes": total, "stat_sha256": h.hexdigest()}


def input_record(data: DataConfig) -> dict[str, Any]:
    """{"data.<key>": digest or None} for each optional input folder."""
    return {f"data.{key}": folder_digest(Path(value), f"data.{key}") if value else None
            for key in OPTIONAL_DIRS for value in [getattr(data, key)]}
