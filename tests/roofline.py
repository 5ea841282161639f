"""This machine's measured ceilings: dense matmul FLOP/s per dtype and memory bandwidth.

Speed figures are reported as fractions of these, measured in the same run, never against
datasheet numbers or fixed wall-clock limits.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

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
    """FLOP/s of an n x n x n matrix product in ``dtype``: the faster of torch's ``a @ b`` and, where
    the engine can use it, oneDNN's linear (engine.kernels.cpu.onednn_linear; for float32 torch's
    ``@`` calls MKL, which ran ~170 GFLOP/s on a 2-core AVX-512 EPYC where oneDNN ran ~195), so
    the ceiling is this machine's best library product, not one library's."""
    from engine.kernels import cpu

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    best = _median_seconds(lambda: a @ b, repeats)
    if dtype in (torch.float32, torch.bfloat16) and cpu.onednn_available():
        best = min(best, _median_seconds(lambda: cpu.onednn_linear(a, b), repeats))  # a @ b^T: as many FLOPs
    return 2 * n**3 / best


_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The largest data cache of CPU 0 as Linux reports it (``index*/size``: "307200K"), or None."""
    sizes = []
    for index in sorted(root.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            text = (index / "size").read_text().strip()
            sizes.append(int(text[:-1]) * _SIZE_UNITS[text[-1]] if text[-1] in _SIZE_UNITS else int(text))
        except (OSError, ValueError):
            continue
    return max(sizes) if sizes else None


def read_buffer_bytes(minimum: int = 1 << 28, cache: int | None = None) -> int:
    """How much the read-bandwidth probe sums: at least ``minimum``, and twice the last-level cache
    (one Xeon VM reports a 300 MiB L3, more than a 256 MiB probe)."""
    cache = last_level_cache_bytes() if cache is None else cache
    return max(minimum, 2 * (cache or 0))


def read_bandwidth(nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes/s read from memory: a sum over a buffer far larger than any cache (what a decode step
    over every weight does); by default :func:`read_buffer_bytes`."""
    nbytes = read_buffer_bytes() if nbytes is None else nbytes
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
