"""The machine's own ceiling: a large matrix product, float32 on the CPU, bf16 on a GPU."""

from __future__ import annotations

import torch

from benchmarks.common import bf16_measurable, cuda_sync, machine, median_time


def matmul_gflops(n: int, dtype: torch.dtype, device: str, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n product (2 n^3 FLOPs), median of `repeats`."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    sec, _ = median_time(lambda: a @ b, repeats, warmup=2, sync=cuda_sync)
    return 2 * n**3 / sec / 1e9


def run(quick: bool = False) -> dict:
    n = 512 if quick else 4096
    # bf16 on the CPU: what CPU autocast can reach. Without native kernels (AVX512-BF16 or
    # AMX) it is a scalar loop: a 256^3 product tells that in a fraction of a second.
    n_bf16 = n if bf16_measurable(quick) else 256
    out = {"cpu_fp32_gflops": matmul_gflops(n, torch.float32, "cpu"), "cpu_matmul_n": n,
           "cpu_bf16_gflops": matmul_gflops(n_bf16, torch.bfloat16, "cpu"),
           "cpu_bf16_matmul_n": n_bf16, "machine": machine()}
    if torch.cuda.is_available():
        out["gpu_bf16_gflops"] = matmul_gflops(8192, torch.bfloat16, "cuda", repeats=20)
        out["gpu_fp32_gflops"] = matmul_gflops(8192, torch.float32, "cuda", repeats=20)
    return out
