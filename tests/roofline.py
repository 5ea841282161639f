"""This machine's measured ceilings: dense matmul FLOP/s per dtype and memory bandwidth.

Speed figures are reported as fractions of these, measured in the same run, never against
datasheet numbers or fixed wall-clock limits.
"""
from __future__ import annotations

import statistics
import time

import torch


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch allocation, library dispatch
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_flops(dtype: torch.dtype, n: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype`` (the library's best case)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: a @ b, repeats)


def read_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s read from memory: a sum over a buffer far larger than any cache (what a decode step
    over every weight does)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / _median_seconds(lambda: src.sum(), repeats)


def machine() -> dict:
    """The CPU this ran on: its name, the flags that decide the product forms, torch's view of it."""
    from engine.kernels import tuning

    model, flags = tuning.cpu_info()
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "neon", "asimd")
    return {"cpu": model, "flags": sorted(f for f in flags.split() if f in wanted), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def copy_bandwidth(nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes/s of a large device-memory copy, counting bytes read plus bytes written."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_seconds(lambda: dst.copy_(src), repeats)
