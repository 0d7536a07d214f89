"""Shared benchmark helpers: timing medians, peak memory, machine description, model sizes
and their analytical FLOP counts.

torch is imported inside the helpers that use it: the preprocessing jobs import this module
and must measure their own memory, not torch's (about 180 MB of RSS).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable

from pipeline.core.config import ModelConfig


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> tuple[float, list[float]]:
    """Median wall time of `fn` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bf16_measurable(quick: bool) -> bool:
    """Whether a benchmark runs its bf16 variants: where the CPU has native bf16 kernels (an
    AVX2 CPU's scalar bf16 loop would take hours at paper size), and always at --quick sizes."""
    import torch

    from pipeline.core.dist import native_bf16

    return quick or native_bf16(torch.device("cpu"))


def machine() -> dict:
    import torch

    from pipeline.core.dist import native_bf16

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "malloc": {k: os.environ[k] for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
                   if k in os.environ},
    }


def children_peak_rss_mb() -> float:
    """Largest peak resident memory among this process's finished children (MB), e.g. the
    workers of a multiprocessing pool that has been joined."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# --------------------------------------------------------------------------- sizes and FLOPs


def paper_model() -> ModelConfig:
    """The paper's NTU-60 size: depth 8, width 256, 8 heads, 120 frames, 2 actors, decoder
    depth 3 and width 256 (DESIGN.md section 3)."""
    return ModelConfig(depth=8, dim=256, heads=8, mlp_ratio=4.0, frames=120, t_patch=4,
                       actors=2, joints=25, decoder_depth=3, decoder_dim=256, decoder_heads=8)


def tiny_model() -> ModelConfig:
    """A model small enough for `--quick` (the smoke test), same code paths."""
    return ModelConfig(depth=2, dim=32, heads=2, mlp_ratio=4.0, frames=16, t_patch=4,
                       actors=2, joints=25, decoder_depth=1, decoder_dim=32, decoder_heads=2)


def block_flops(S: int, W: int, mlp_ratio: float) -> float:
    """Forward matmul FLOPs of one transformer block over S tokens of width W (2mkn per
    (m x k) @ (k x n)): qkv 6SW^2 + QK^T 2S^2W + AV 2S^2W + proj 2SW^2 + MLP 4SWH, H = rW."""
    H = int(W * mlp_ratio)
    return 6 * S * W * W + 4 * S * S * W + 2 * S * W * W + 4 * S * W * H


def encoder_flops(cfg: ModelConfig) -> dict[str, float]:
    """Forward matmul FLOPs per sample of the encoder over all L tokens of all actors:
    the embedding conv (2 L (t_patch 3) D) and each block, listed separately so a caller can
    count the frozen and the tuned blocks apart."""
    L = (cfg.frames // cfg.t_patch) * cfg.joints
    embed = cfg.actors * 2 * L * cfg.t_patch * 3 * cfg.dim
    block = cfg.actors * block_flops(L, cfg.dim, cfg.mlp_ratio)
    return {"embed": float(embed), "block": float(block),
            "forward": float(embed + cfg.depth * block), "tokens": L}


def mamp_flops_per_sample(cfg: ModelConfig, mask_ratio: float) -> dict[str, float]:
    """Analytical MAMP training FLOPs per sample (all `cfg.actors` sequences), matmuls only.

    Encoder: the embedding conv on all L tokens (2 L (t_patch 3) D; the release embeds before
    masking) + `depth` blocks over the K = int(L (1 - mask_ratio)) visible tokens.
    Decoder: decoder_embed 2 K D Dd + `decoder_depth` blocks over L tokens + decoder_pred
    2 L Dd (t_patch 3). Training = 3 x forward (backward ~ 2 x forward).
    At paper size (8 + 3 blocks, width 256, 120 frames, 2 actors, mask 0.9) the training cost is
    37.6 GFLOP per sample, 84% of it in the decoder (DESIGN.md section 7).
    """
    L = (cfg.frames // cfg.t_patch) * cfg.joints
    K = int(L * (1 - mask_ratio))
    patch = cfg.t_patch * 3
    D, Dd = cfg.dim, cfg.decoder_dim
    encoder = cfg.actors * (2 * L * patch * D + cfg.depth * block_flops(K, D, cfg.mlp_ratio))
    decoder = cfg.actors * (2 * K * D * Dd + cfg.decoder_depth * block_flops(L, Dd, cfg.mlp_ratio)
                            + 2 * L * Dd * patch)
    forward = encoder + decoder
    return {"encoder": float(encoder), "decoder": float(decoder), "forward": float(forward),
            "train": 3.0 * forward, "decoder_fraction": decoder / forward,
            "tokens": L, "kept": K}


def cpu_pressure() -> float | None:
    """Share of the last 60 s in which some runnable task waited for a CPU (Linux PSI),
    in percent: how contended the machine is; None where the kernel does not report it."""
    try:
        with open("/proc/pressure/cpu") as f:
            some = f.readline().split()                    # some avg10=.. avg60=.. ...
    except OSError:
        return None
    return float(dict(kv.split("=") for kv in some[1:])["avg60"])
