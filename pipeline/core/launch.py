"""Re-launch a training stage under `torchrun` when `dist` asks for more than one process, so
`dvc repro` and a plain `python stages/pretrain.py ...` need no launcher of their own.

Usage (first thing in a stage, before any work)::

    maybe_relaunch(params.dist, sys.argv, "pretrain")   # returns at once alone or under torchrun
    dist.init(params.dist, agree_on=run_identity("pretrain", params))

Several nodes: DVC runs on node 0 only, which holds every output and hosts the rendezvous at
`dist.rdzv_endpoint`; every other node runs `python -m pipeline worker <stage> --node-rank N`
(`pipeline/__main__.py`) with node 0's params.yaml and data/processed. The rendezvous is
torchrun's static one, so node 0's first process is global rank 0, the one that writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.config import DistConfig, Params, to_dict
from pipeline.core.errors import ConfigError

# Each distributed stage rendezvous on its own port (dist.rdzv_endpoint's port + index): a
# worker that starts the next stage early then waits for node 0 to open it, instead of joining
# the store of the stage node 0 is still finishing.
DISTRIBUTED_STAGES = ("pretrain", "tune", "finetune")   # append only: ports are by index


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


def _python_target(argv: list[str], module_flag: str) -> list[str]:
    """What to run again: the script, or the package for `python -m pkg` (which arrives as
    .../pkg/__main__.py; run as a module so the package folder is not first on sys.path)."""
    script = Path(argv[0])
    return [module_flag, script.parent.name] if script.name == "__main__.py" else [str(script)]


def rendezvous_endpoint(cfg: DistConfig, stage: str) -> str:
    """`host:port` of `stage`'s rendezvous: `dist.rdzv_endpoint` shifted by the stage index."""
    host, _, port = cfg.rdzv_endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 - len(DISTRIBUTED_STAGES):
        raise ConfigError(f"dist.rdzv_endpoint: {cfg.rdzv_endpoint!r} is invalid: must be "
                          f"host:port with port below {65536 - len(DISTRIBUTED_STAGES)}")
    return f"{host}:{int(port) + DISTRIBUTED_STAGES.index(stage)}"


def torchrun_command(cfg: DistConfig, argv: list[str], stage: str,
                     node_rank: int = 0) -> list[str]:
    """The `python -m torch.distributed.run ...` command line that re-runs `argv` as node
    `node_rank` (static rendezvous: global rank = node_rank * nproc + local rank)."""
    target = _python_target(argv, "--module")
    return [sys.executable, "-m", "torch.distributed.run",
            "--nproc-per-node", str(cfg.nproc), "--nnodes", str(cfg.nnodes),
            "--node-rank", str(node_rank), "--rdzv-backend", "static",
            "--rdzv-endpoint", rendezvous_endpoint(cfg, stage), *target, *argv[1:]]


def run_identity(stage: str, params: Params) -> dict[str, str]:
    """What every node of a run must agree on (`dist.agree`): the stage and a digest of the
    parameters (`tracking` left out: where a node would log does not change results)."""
    values = {k: v for k, v in to_dict(params).items() if k != "tracking"}
    blob = json.dumps(values, sort_keys=True, default=str).encode()
    return {"stage": stage, "params.yaml": hashlib.sha256(blob).hexdigest()}


def maybe_relaunch(cfg: DistConfig, argv: list[str], stage: str, node_rank: int = 0) -> None:
    """Alone (nproc x nnodes == 1) or already under torchrun: return. Otherwise run this
    same command under torchrun as node `node_rank` and exit with its status."""
    if cfg.nproc * cfg.nnodes == 1 or under_torchrun():
        return
    cmd = torchrun_command(cfg, argv, stage, node_rank)
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
