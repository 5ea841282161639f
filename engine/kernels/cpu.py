"""The CPU fast paths: ``wkv7_cpu.c`` and ``matvec_cpu.c`` compiled on first use, called via ctypes.

The readable reference of the WKV-7 recurrence (:func:`engine.model.wkv7_reference`) runs one
torch call per step, five small ops each costing ~20-200 us of dispatch and memory passes; the
WKV kernel keeps each state row in registers for the whole sequence (5-50x faster on the 2-core
reference machine). The matvec kernel runs a decode step's products over a few rows in one pass
over each weight (:func:`matvec`; the reference is ``F.linear``). Both are built with the system C
compiler (``$CC`` or ``cc``) into one library in a cache folder keyed by the sources, the flags
and the CPU, so a shared home folder across different machines never runs foreign machine code.
Where no compiler works, :func:`load` returns None and the model uses the reference; the reason
is kept in :data:`UNAVAILABLE_REASON` and reported by ``model.info()``.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

import torch

SOURCES = (Path(__file__).with_name("wkv7_cpu.c"), Path(__file__).with_name("matvec_cpu.c"))
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
MAX_N = 128
UNAVAILABLE_REASON: str | None = None
_lib = None
_tried = False


def cache_dir() -> Path:
    root = os.environ.get("RWKVEVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rwkveval")
    return Path(root) / "kernels"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
        model = next((line for line in text.splitlines() if line.startswith("model name")), "")
        return model + flags
    except OSError:
        return platform.processor() + platform.machine()


def build(sources: Path | Sequence[Path] = SOURCES, out_dir: Path | None = None) -> Path:
    """Compile ``sources`` into one shared library (cached); raises RuntimeError with the compiler's output."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    sources = [sources] if isinstance(sources, Path) else list(sources)
    text = b"".join(s.name.encode() + b"\0" + s.read_bytes() for s in sources)
    key = hashlib.sha256(text + " ".join([cc, *FLAGS]).encode() + _cpu_id().encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"rwkveval_cpu-{key}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / lib.name
        proc = subprocess.run([cc, *FLAGS, *map(str, sources), "-o", str(tmp_lib)], capture_output=True, text=True)
        if proc.returncode != 0:
            names = ", ".join(s.name for s in sources)
            raise RuntimeError(f"compiling {names} with {cc} failed:\n{proc.stderr.strip()}")
        os.replace(tmp_lib, lib)  # atomic: concurrent builders (xdist workers) never see half a file
    return lib


def load():
    """The compiled kernels' library, or None (with :data:`UNAVAILABLE_REASON` set) if it cannot be built."""
    global _lib, _tried, UNAVAILABLE_REASON
    if not _tried:
        _tried = True
        if os.environ.get("RWKVEVAL_CPU_KERNEL", "1") == "0":
            UNAVAILABLE_REASON = "disabled by RWKVEVAL_CPU_KERNEL=0"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
        except (RuntimeError, OSError) as e:
            UNAVAILABLE_REASON = str(e)
            return None
        fn = lib.wkv7_forward_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] + [ctypes.c_void_p] * 8
        fn = lib.matvec_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 3
        _lib = lib
    return _lib


def _loaded(kernel: str):
    """The library for a kernel's call; RuntimeError saying why if it could not be built."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the CPU {kernel} kernel is unavailable: {UNAVAILABLE_REASON}")
    return lib


def check_inputs(state: torch.Tensor, *xs: torch.Tensor) -> tuple[int, int, int, int]:
    """Validate the kernel's inputs; returns (B, T, H, N). Raises ValueError naming what is wrong."""
    names = ("r", "w", "k", "v", "a", "b")
    if state.dtype != torch.float32 or state.device.type != "cpu" or not state.is_contiguous() or state.dim() != 4:
        raise ValueError(f"state: expected a contiguous float32 CPU tensor [B, H, N, N], found "
                         f"{state.dtype} on {state.device}, shape {tuple(state.shape)}, contiguous={state.is_contiguous()}")
    B, H, N, N2 = state.shape
    if N != N2 or N > MAX_N:
        raise ValueError(f"state: expected [B, H, N, N] with N <= {MAX_N}, found {tuple(state.shape)}")
    T = None
    for name, x in zip(names, xs):
        if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous float32 CPU tensor, found {x.dtype} on {x.device}, "
                             f"contiguous={x.is_contiguous()}")
        if x.dim() != 4 or x.shape[0] != B or x.shape[2:] != (H, N):
            raise ValueError(f"{name}: expected shape [B={B}, T, H={H}, N={N}], found {tuple(x.shape)}")
        T = x.shape[1] if T is None else T
        if x.shape[1] != T:
            raise ValueError(f"{name}: expected T={T} like r, found {x.shape[1]}")
    return B, T, H, N


def wkv7_cpu(state: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Same contract as :func:`engine.model.wkv7_reference`: state [B, H, N, N] updated in place,
    r w k v a b [B, T, H, N] float32, returns y [B, T, H, N] float32."""
    lib = _loaded("WKV")
    xs = [x.contiguous() for x in (r, w, k, v, a, b)]
    B, T, H, N = check_inputs(state, *xs)
    y = torch.empty_like(xs[0])
    rc = lib.wkv7_forward_f32(B, T, H, N, torch.get_num_threads(), state.data_ptr(),
                              *[x.data_ptr() for x in xs], y.data_ptr())
    if rc != 0:
        raise ValueError(f"wkv7_cpu: head size {N} exceeds the kernel's limit {MAX_N}")
    return y


def matvec(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, W)`` for a few rows: x [M, C] float32, W [R, C] float32 contiguous (a linear
    weight, [out, in]); returns y [M, R] float32. One pass over W serves all M rows, so it is
    meant for M up to ~8 (decode steps); raises ValueError naming a wrong input."""
    lib = _loaded("matvec")
    for name, t in (("x", x), ("W", W)):
        if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D float32 CPU tensor, found {t.dtype} on {t.device}, "
                             f"shape {tuple(t.shape)}")
    if not W.is_contiguous():
        raise ValueError(f"W: expected a contiguous [out, in] weight, found strides {W.stride()}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"x: expected [M, {W.shape[1]}] to match W {tuple(W.shape)}, found {tuple(x.shape)}")
    x = x.contiguous()
    M, R = x.shape[0], W.shape[0]
    y = torch.empty(M, R, dtype=torch.float32)
    if M and R:
        lib.matvec_f32(R, W.shape[1], M, torch.get_num_threads(), W.data_ptr(), x.data_ptr(), y.data_ptr())
    return y
