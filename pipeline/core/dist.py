"""Distributed helpers that fall back to one process, so the same code runs alone or under
`torchrun` (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment).

Usage::

    dist.init(params.dist, agree_on={"stage": "pretrain"})  # no-op without torchrun
    device = dist.device()                 # cuda:<local rank> when present, else cpu
    if dist.is_main(): ...                 # rank 0 alone logs and checkpoints
    z_all = dist.all_gather_with_grad(z)   # (world * N, D); identity in one process
    state = dist.broadcast_object(load() if dist.is_main() else None)  # only node 0 reads
    dist.teardown()
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as tdist

from pipeline.core.config import DistConfig
from pipeline.core.errors import UserError


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's LOCAL_RANK; 0 alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """The accelerator of this process: cuda:<local rank> when CUDA is present, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix products run on native kernels on `device`, so bf16 pays: a CUDA
    GPU with bf16 support, or a CPU where oneDNN has bf16 kernels (AVX512-BF16 or AMX).
    Elsewhere (an AVX2 CPU) torch falls back to a scalar loop, about 100x slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def init(cfg: DistConfig | None = None, agree_on: Mapping[str, str] | None = None) -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); returns whether
    distributed. Backend: nccl on CUDA, gloo on CPU, unless `cfg.backend` names one.
    `agree_on` is checked with `agree` once joined (e.g. stage name and params digest)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return is_initialized()
    backend = cfg.backend if cfg is not None else "auto"
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend)
    agree(agree_on or {})
    return True


def teardown() -> None:
    if is_initialized():
        tdist.destroy_process_group()


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world * N, ...) in rank order; gradients flow back to every
    rank's slice (needed when a loss compares a rank's samples with all others)."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def all_gather_no_grad(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) per rank -> (world * N, ...) in rank order, detached (e.g. queue updates)."""
    if world_size() == 1:
        return t.detach()
    parts = [torch.empty_like(t) for _ in range(world_size())]
    tdist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (a new detached tensor; `t` itself is left alone)."""
    out = t.detach().clone()
    if world_size() > 1:
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a new detached tensor)."""
    return all_reduce_sum(t) / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (pickled), e.g. a checkpoint only node 0 holds."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def agree(values: Mapping[str, str]) -> None:
    """Raise a UserError naming the first of `values` (name -> value) in which some node
    differs from rank 0, and those nodes (torchrun's GROUP_RANK)."""
    if world_size() == 1 or not values:
        return
    mine = (int(os.environ.get("GROUP_RANK", "0")), dict(values))
    gathered: list[Any] = [None] * world_size()
    tdist.all_gather_object(gathered, mine)
    for name in values:
        odd = sorted({node for node, v in gathered if v.get(name) != gathered[0][1].get(name)})
        if odd:
            raise UserError(f"node(s) {odd} differ from node 0 in {name}: every node must run "
                            "the same stage with a copy of node 0's params.yaml and data "
                            "(README, Scaling out)")
