"""A write that runs out of space (a really full file system, or the file-size limit) ends with
one line naming the output and the free space, and leaves no partial output behind. The
errors are real: a tiny tmpfs mounted in a private mount namespace, or RLIMIT_FSIZE."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 256 * 1024  # bytes: the tmpfs size and the file-size limit

# Writes a 1.2 MB store and (with "checkpoint") a 360 kB checkpoint into argv[1]; prints the
# one-line errors and what is left in the folder afterwards.
WRITER = """
import json, sys
from pathlib import Path
import numpy as np
from pipeline.core.errors import UserError
from pipeline.data.store import SampleMeta, StoreWriter

out, messages = Path(sys.argv[1]), {}

def store():
    with StoreWriter(out / "store", dataset="x", benchmark="xsub", class_names=["a"]) as w:
        for i in range(20):
            w.add(SampleMeta(f"s{i}", 0, 1, 1, 1, 1, "train"), np.ones((100, 2, 25, 3)))

def ckpt():
    import torch
    from pipeline.training import checkpoint
    checkpoint.save(out / "models" / "last.pt", checkpoint.make("mamp", torch.nn.Linear(300, 300)))

for name, write in [("store", store), ("checkpoint", ckpt)][:len(sys.argv) - 1]:
    try:
        write()
    except UserError as exc:
        messages[name] = str(exc)
left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
print(json.dumps({"messages": messages, "left": left}))
"""


def run_writer(cmd: list[str], **kw) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                          check=False, **kw)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_one_line(message: str, path: Path, why: str) -> None:
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot write it ({why}; "), message
    assert " free on its file system when it failed); free some space" in message, message


def test_file_size_limit_while_writing_the_store_is_one_line(tmp_path):
    def limit() -> None:  # in the child: the write fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    out = run_writer([sys.executable, "-c", WRITER, str(tmp_path)], preexec_fn=limit)
    assert_one_line(out["messages"]["store"], tmp_path / "store", "File too large")
    assert out["left"] == []


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d; rmdir $d"
    return subprocess.run(["unshare", "-Urm", "sh", "-c", probe],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace")
def test_full_file_system_while_writing_store_and_checkpoint_is_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    shell = (f'mount -t tmpfs -o size={LIMIT} tmpfs "$1" && '
             f'exec "{sys.executable}" "{script}" "$1" checkpoint')
    out = run_writer(["unshare", "-Urm", "sh", "-c", shell, "sh", str(disk)])
    full = os.strerror(28)  # ENOSPC
    assert_one_line(out["messages"]["store"], disk / "store", full)
    assert_one_line(out["messages"]["checkpoint"], disk / "models" / "last.pt", full)
    assert out["left"] == []
