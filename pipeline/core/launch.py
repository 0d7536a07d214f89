"""Re-launch a training stage under `torchrun` when `dist` asks for more than one process, so
`dvc repro` and a plain `python stages/pretrain.py ...` need no launcher of their own.

Usage (first thing in a stage, before any work)::

    maybe_relaunch(params.dist, sys.argv)   # returns at once alone or under torchrun
    dist.init(params.dist)

On each node run the same command with its own `dist.node_rank`; node 0 hosts the
rendezvous at `dist.rdzv_endpoint`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.config import DistConfig


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def _python_target(argv: list[str], module_flag: str) -> list[str]:
    """What to run again: the script, or the package for `python -m pkg` (which arrives as
    .../pkg/__main__.py; run as a module so the package folder is not first on sys.path)."""
    script = Path(argv[0])
    return [module_flag, script.parent.name] if script.name == "__main__.py" else [str(script)]


def torchrun_command(cfg: DistConfig, argv: list[str]) -> list[str]:
    """The `python -m torch.distributed.run ...` command line that re-runs `argv`."""
    target = _python_target(argv, "--module")
    return [sys.executable, "-m", "torch.distributed.run",
            "--nproc-per-node", str(cfg.nproc), "--nnodes", str(cfg.nnodes),
            "--node-rank", str(cfg.node_rank), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", cfg.rdzv_endpoint, *target, *argv[1:]]


def maybe_relaunch(cfg: DistConfig, argv: list[str]) -> None:
    """Alone (nproc x nnodes == 1) or already under torchrun: return. Otherwise run this
    same command under torchrun and exit with its status."""
    if cfg.nproc * cfg.nnodes == 1 or under_torchrun():
        return
    cmd = torchrun_command(cfg, argv)
    print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
    sys.exit(subprocess.run(cmd, check=False).returncode)


# glibc's allocator returns freed blocks to the OS and maps big ones afresh, so every training
# step page-faults its activations back in. Keeping freed memory was 5% faster at the paper
# size on the 2-core CPU (benchmarks/RESULTS.md, section 2) for ~7% more peak memory.
FAST_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def ensure_fast_allocator(argv: list[str]) -> None:
    """Re-exec this process once with FAST_ALLOCATOR set (glibc reads it only at start-up).

    A variable the user already set is left alone; STARS_DEFAULT_ALLOCATOR=1 opts out.
    """
    if not sys.platform.startswith("linux") or os.environ.get("STARS_DEFAULT_ALLOCATOR") == "1":
        return
    missing = {k: v for k, v in FAST_ALLOCATOR.items() if k not in os.environ}
    if not missing:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    target = _python_target(argv, "-m")
    os.execve(sys.executable, [sys.executable, *target, *argv[1:]], {**os.environ, **missing})
