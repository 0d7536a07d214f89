"""Training throughput: the MAMP pretraining step and the STARS tuning step on random inputs.

Each function is one benchmark job; `benchmarks.run` calls it in a subprocess of its own (so
its peak RSS is its own, and the allocator variant is set in that subprocess's environment).
A step is what `pipeline.training.loop.fit` runs per batch: forward under the loop's
`autocast(device, precision)`, zero_grad, backward, optional clipping, optimizer step, under
the deterministic-kernels flag `fit` sets on CPU (its per-step lr assignment is left out).
`device="cuda"` runs the same step on a GPU (`make gpu-check`). The data loader is left out
too: it runs in its own worker process during training.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.ceiling import matmul_gflops
from benchmarks.common import (
    cuda_sync,
    encoder_flops,
    mamp_flops_per_sample,
    paper_model,
    tiny_model,
)
from pipeline.core.config import ModelConfig, TuneConfig, load_params, to_dict
from pipeline.models.mamp import MAMP
from pipeline.models.stars import STARS
from pipeline.training.groups import MAMP_NO_DECAY, decay_groups, tuning_param_groups
from pipeline.training.loop import LoopConfig, autocast, build_optimizer

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _timed_steps(forward: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
                 clip_grad: float, repeats: int, warmup: int, device: str = "cpu",
                 precision: str = "fp32") -> dict[str, float | list]:
    """Run warmup + repeats full steps; median wall time of the step and of its phases."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    phases: dict[str, list[float]] = {"step_s": [], "forward_s": [], "backward_s": [],
                                      "optimizer_s": []}
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)   # as pipeline.training.loop.fit on CPU
    try:
        for i in range(warmup + repeats):
            cuda_sync()
            t0 = time.perf_counter()
            with autocast(device, precision):
                loss = forward(i)
            cuda_sync()
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            cuda_sync()
            t2 = time.perf_counter()
            optimizer.step()
            cuda_sync()
            t3 = time.perf_counter()
            if i >= warmup:
                for key, sec in zip(phases, (t3 - t0, t1 - t0, t2 - t1, t3 - t2)):
                    phases[key].append(sec)
    finally:
        torch.use_deterministic_algorithms(before)
    out = {**{k: statistics.median(v) for k, v in phases.items()}, "times": phases["step_s"],
           "precision": precision, "device": device}
    if device == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _ceiling_here(quick: bool, device: str = "cpu") -> float:
    """A short matmul ceiling inside this job, to show how busy the machine was meanwhile."""
    return matmul_gflops(512 if quick else 2048, torch.float32, device, repeats=3)


def pretrain(size: str, repeats: int, warmup: int = 1, quick: bool = False,
             precision: str = "fp32", device: str = "cpu") -> dict:
    """MAMP step throughput at `size` "paper" (batch 8) or "default" (params.yaml)."""
    params = load_params(PARAMS)
    mask_ratio, tau = params.pretrain.mask_ratio, params.pretrain.tau
    if size == "paper":
        cfg, batch, mask_ratio, tau = paper_model(), 8, 0.9, 0.8
    elif size == "default":
        cfg, batch = params.model, params.pretrain.batch_size
    else:
        raise ValueError(f"size must be 'paper' or 'default', got {size!r}")
    if quick:
        cfg, batch = tiny_model(), 2
    torch.manual_seed(0)
    model = MAMP(cfg, mask_ratio, tau).train().to(device)
    loop = LoopConfig(epochs=1, lr=params.pretrain.lr, betas=(0.9, 0.95))
    optimizer = build_optimizer(
        decay_groups(model, params.pretrain.weight_decay, skip=MAMP_NO_DECAY),
        loop, torch.device(device))
    x = torch.randn(batch, cfg.actors, cfg.frames, cfg.joints, 3, device=device)  # N M T V C

    def forward(i: int) -> torch.Tensor:
        return model(x, torch.arange(batch) + i * batch)            # fresh masks every step

    ceiling_before = _ceiling_here(quick, device)
    timing = _timed_steps(forward, optimizer, 0.0, repeats, warmup, device, precision)
    flops = mamp_flops_per_sample(cfg, mask_ratio)
    return {"size": size, "model": to_dict(cfg), "batch": batch, "mask_ratio": mask_ratio,
            "train_gflop_per_sample": flops["train"] / 1e9,
            "decoder_fraction": flops["decoder_fraction"], **timing,
            "ceiling_here_gflops": [ceiling_before, _ceiling_here(quick, device)]}


def tune_flops(cfg: ModelConfig, tune: TuneConfig, tuned_blocks: int) -> dict[str, float]:
    """Matmul FLOPs per sample of one STARS step: the whole encoder forward, the backward
    (2 x forward) of the tuned blocks only (nothing below them needs a gradient), the head
    forward + backward, and the queue similarity (2 K D, no gradient)."""
    enc = encoder_flops(cfg)
    head = 2 * cfg.dim * tune.predictor_dim * 2                     # two predictor linears
    forward = enc["forward"] + head + 2 * tune.queue_size * cfg.dim
    backward = 2 * (tuned_blocks * enc["block"] + head)
    return {"forward": forward, "train": forward + backward}


def tune(batch: int, repeats: int, warmup: int = 1, quick: bool = False,
         precision: str = "fp32", device: str = "cpu") -> dict:
    """STARS step throughput at paper size: frozen first half, one encoder forward for both
    views, NNCLR head with a 4096 predictor, queue 32768, clipping 3 (DESIGN.md section 3)."""
    cfg, tcfg = paper_model(), TuneConfig(batch_size=max(batch, 2))
    if quick:
        cfg, tcfg, batch = tiny_model(), TuneConfig(batch_size=2, queue_size=256,
                                                    predictor_dim=64), 2
    torch.manual_seed(0)
    model = STARS(cfg, tcfg).train().to(device)
    groups = tuning_param_groups(model, tcfg, cfg.depth)
    loop = LoopConfig(epochs=1, lr=tcfg.lr, schedule="constant", betas=(0.9, 0.95),
                      clip_grad=tcfg.clip_grad)
    optimizer = build_optimizer(groups, loop, torch.device(device))
    x = torch.randn(batch, cfg.actors, cfg.frames, cfg.joints, 3, device=device)  # N M T V C

    def forward(i: int) -> torch.Tensor:
        return model(x, torch.arange(batch, device=device) + i * batch)  # distinct rows

    ceiling_before = _ceiling_here(quick, device)
    timing = _timed_steps(forward, optimizer, tcfg.clip_grad, repeats, warmup, device,
                          precision)
    tuned = sum(any(p.requires_grad for p in b.parameters()) for b in model.blocks)
    return {"model": to_dict(cfg), "batch": batch, "queue_size": tcfg.queue_size,
            "predictor_dim": tcfg.predictor_dim, "tuned_blocks": tuned,
            "train_gflop_per_sample": tune_flops(cfg, tcfg, tuned)["train"] / 1e9, **timing,
            "ceiling_here_gflops": [ceiling_before, _ceiling_here(quick, device)]}
