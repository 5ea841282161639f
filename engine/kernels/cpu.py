"""The CPU fast path: compiled kernels, the product forms, and ``linear`` / ``lora`` that route each
product to the form measured fastest on this machine.

Kernels (``wkv7_cpu.c``, ``matvec_cpu.c``, ``block_cpu.c``) are compiled on first use and called
via ctypes. The readable reference of the WKV-7 recurrence (:func:`engine.model.wkv7_reference`)
runs one torch call per step, five small ops each costing ~20-200 us of dispatch and memory passes; the WKV
kernel keeps each state row in registers for the whole sequence (5-50x faster on the 2-core
reference machine), and :func:`wkv7_output` runs it together with the elementwise math around it
(the key's normalisation, the value residual, the decay, the group norm, the bonus and the gate:
~35 torch calls per layer), as :func:`token_shift_mix` runs the token shift. The matvec kernel
runs a decode step's products over a few rows in one pass over each weight, float32 or bf16 (half
the bytes), accumulating in float32, prefetching the rows ahead, and writing bf16 results where
the model is bf16 (:func:`matvec`); it also runs the LoRA pairs of a decode step. ``block_cpu.c``
runs a decode step's block in one call through those kernels (:class:`BlockStep`).
All are built with the system C compiler (``$CC`` or ``cc``) into one library in a cache folder
keyed by the sources, the flags and the CPU (:func:`cpu_signature`: the architecture, the CPU's
model, or on ARM its implementer and part, and its feature flags), so a shared home folder across
different machines never runs foreign machine code (``-march=native`` code on another CPU can die
of SIGILL). Where no compiler works, :func:`load` returns None and the model
uses the reference; the reason is kept in :data:`UNAVAILABLE_REASON` and reported by ``model.info()``.

Products: a linear weight W [out, in] (the checkpoint's layout) times activations x [..., in]
can run as the matvec kernel, as ``W @ x^T`` (BLAS; the result is a transposed view), as
``x @ W^T`` (``F.linear``), as oneDNN's linear where torch has it (:func:`onednn_linear`: for
float32 torch's own F.linear calls MKL, which on an AVX-512 EPYC ran 136-174 GFLOP/s where oneDNN
ran 191-200), or, for bf16/fp16 weights, as ``W @ x^T`` in float32 (the weight widened, which is
what a half-precision GEMM computes anyway: half-precision operands, float32 accumulation).
Which form is fastest depends on the CPU (bf16 units or not), the BLAS, the row count and the
thread count, so :class:`CPUPath` follows a :class:`Plan` measured once per machine
by :mod:`engine.kernels.tuning`. Every form equals ``F.linear`` within its dtype's rounding
(tests/test_cpu_products.py).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

SOURCES = tuple(Path(__file__).with_name(n) for n in ("wkv7_cpu.c", "matvec_cpu.c", "block_cpu.c"))
HEADERS = (Path(__file__).with_name("bf16_cpu.h"),)  # included by the sources: part of the library's key
CPUINFO = Path("/proc/cpuinfo")


def is_x86() -> bool:
    """Whether this machine is x86 (read at each call: tests fake ``platform.machine``)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


# On x86, 512-bit vectors where -march=native has AVX-512 (gcc prefers 256-bit ones there): the WKV
# recurrence over 512 tokens of a 0.1B layer took 1.6 ms against 1.9 on a Xeon with AMX (2026-12-02)
FLAGS = ["-O3", "-march=native", *(["-mprefer-vector-width=512"] if is_x86() else []),
         "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
LIBS = ["-lm"]  # after the sources: linkers that drop unneeded libraries read left to right
MAX_N = 128
UNAVAILABLE_REASON: str | None = None
_lib = None
_lib_key: str | None = None
_tried = False
_bf16_dot = False  # the loaded library has the AVX512_BF16 matvec (asked once, at load)
# /proc/cpuinfo fields naming an ARM core (per processor): ARM kernels often print no "model name"
# (or a generic one), so the core is told by its implementer, variant, part and revision
_ARM_FIELDS = ("CPU implementer", "CPU variant", "CPU part", "CPU revision")


def cache_dir() -> Path:
    root = os.environ.get("RWKVEVAL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rwkveval")
    return Path(root) / "kernels"


def cpu_info() -> tuple[str, str]:
    """(model, flags) of this machine's CPUs from /proc/cpuinfo: the model as every distinct
    ``model name`` and ARM ``CPU implementer``/``variant``/``part``/``revision`` among the
    processors (big.LITTLE has several parts), the flags as the union of their ``flags`` (x86)
    or ``Features`` (ARM) words, sorted. Without /proc/cpuinfo: platform's processor name."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU", ""
    models: list[str] = []
    flags: set[str] = set()
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
        arm = ", ".join(f"{k.removeprefix('CPU ')} {fields[k]}" for k in _ARM_FIELDS if k in fields)
        name = fields.get("model name", "ARM CPU" if arm else "")
        model = f"{name} ({arm})" if arm else name
        if model and model not in models:
            models.append(model)
        flags.update(fields.get("flags", fields.get("Features", "")).split())
    return "; ".join(models) or "unknown CPU", " ".join(sorted(flags))


def cpu_signature() -> dict[str, str]:
    """What compiled ``-march=native`` code and measured timings are valid for: the architecture
    (``platform.machine()``), the CPU model and a digest of its flags (:func:`cpu_info`)."""
    model, flags = cpu_info()
    return {"machine": platform.machine(), "cpu": model,
            "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def library_key(sources: Sequence[Path] = SOURCES, cc: str = "") -> str:
    """The compiled library's key: a digest of the sources and the headers they include, the
    compiler and flags, and the CPU."""
    text = b"".join(s.name.encode() + b"\0" + s.read_bytes() for s in (*sources, *HEADERS))
    setup = json.dumps({"cc": cc, "flags": FLAGS, "libs": LIBS, "cpu": cpu_signature()}, sort_keys=True)
    return hashlib.sha256(text + setup.encode()).hexdigest()[:16]


def loaded_key() -> str | None:
    """The key of the library :func:`load` loaded (None when none is loaded)."""
    return _lib_key if _lib is not None else None


def build(sources: Path | Sequence[Path] = SOURCES, out_dir: Path | None = None) -> Path:
    """Compile ``sources`` into one shared library (cached); raises RuntimeError with the compiler's output."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler found (set $CC or install gcc)")
    sources = [sources] if isinstance(sources, Path) else list(sources)
    key = library_key(sources, cc)
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"rwkveval_cpu-{key}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / lib.name
        proc = subprocess.run([cc, *FLAGS, *map(str, sources), *LIBS, "-o", str(tmp_lib)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            names = ", ".join(s.name for s in sources)
            raise RuntimeError(f"compiling {names} with {cc} failed:\n{proc.stderr.strip()}")
        os.replace(tmp_lib, lib)  # atomic: concurrent builders (xdist workers) never see half a file
    return lib


def load():
    """The compiled kernels' library, or None (with :data:`UNAVAILABLE_REASON` set) if it cannot be built."""
    global _lib, _lib_key, _tried, _bf16_dot, UNAVAILABLE_REASON
    if not _tried:
        _tried = True
        if os.environ.get("RWKVEVAL_CPU_KERNEL", "1") == "0":
            UNAVAILABLE_REASON = "disabled by RWKVEVAL_CPU_KERNEL=0"
            return None
        try:
            path = build()
            lib = ctypes.CDLL(str(path))
        except (RuntimeError, OSError) as e:
            UNAVAILABLE_REASON = str(e)
            return None
        fn = lib.wkv7_forward_f32
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] + [ctypes.c_void_p] * 9
        fn = lib.wkv7_output
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] * 2 + [ctypes.c_float] + [ctypes.c_void_p] * 18
        fn = lib.token_shift_mix
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] * 2 + [ctypes.c_void_p] * 4 + [ctypes.c_int64,
                                                                                             ctypes.c_void_p]
        fn = lib.lora_rows
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int] * 3 + [ctypes.c_void_p] * 4 + [ctypes.c_int]
        for name in ("matvec_f32", "matvec_bf16", "matvec_bf16_dot"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
        lib.matvec_bf16_dot_available.restype = ctypes.c_int
        lib.matvec_bf16_dot_available.argtypes = []
        fn = lib.block_step
        fn.restype = ctypes.c_int
        fn.argtypes = ([ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int] * 3 + [ctypes.c_float]
                       + [ctypes.c_void_p] * 9)
        lib.block_step_work_floats.restype = ctypes.c_int64
        lib.block_step_work_floats.argtypes = [ctypes.c_int64, ctypes.c_void_p]
        _bf16_dot = bool(lib.matvec_bf16_dot_available())
        _lib, _lib_key = lib, path.stem.rsplit("-", 1)[-1]
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
                              *[x.data_ptr() for x in xs], y.data_ptr(), None)
    if rc != 0:
        raise ValueError(f"wkv7_cpu: head size {N} exceeds the kernel's limit {MAX_N}")
    return y


def wkv7_output(state: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                a: torch.Tensor, g: torch.Tensor, v_first: torch.Tensor | None, v_gate: torch.Tensor | None,
                w0: torch.Tensor, r_k: torch.Tensor, k_k: torch.Tensor, k_a: torch.Tensor, v0: torch.Tensor | None,
                ln_x_w: torch.Tensor, ln_x_b: torch.Tensor, eps: float, starts: torch.Tensor | None = None
                ) -> torch.Tensor:
    """A layer's time mix from its products to the output product's input, in one pass
    (``wkv7_output`` in wkv7_cpu.c; :meth:`engine.model.RWKV7._mix_products` and
    :meth:`~engine.model.RWKV7._wkv_output` are the same math in torch): state [B, H, N, N]
    float32, updated in place; r w k v a g (and in layers after the first v_first, v_gate) [B, T, C]
    and w0 r_k k_k k_a ln_x_w ln_x_b (and v0) [C] in one dtype (float32 or bfloat16); w is the
    decay's LoRA output before w0, k and v the products before their mixing, a after its sigmoid,
    v_gate the value residual's LoRA output (v_gate, v0 None in layer 0). ``starts`` [B + 1]
    int64 (:func:`check_starts`): a ragged batch of B rows, its tokens one after another as one
    row of n = starts[B] (r ... [1, n, C]), row b's from starts[b] on; None: B rows of T tokens.
    Returns [B, T, C] (ragged: [1, n, C]) in that dtype (computed in float32, rounded once).
    Raises ValueError naming a wrong input."""
    lib = _loaded("WKV")
    if state.dtype != torch.float32 or not state.is_cpu or not state.is_contiguous() or state.dim() != 4:
        raise ValueError(f"state: expected a contiguous float32 CPU tensor [B, H, N, N], found "
                         f"{state.dtype} on {state.device}, shape {tuple(state.shape)}, contiguous={state.is_contiguous()}")
    state_rows, H, N, _ = state.shape
    if state.shape[3] != N or N > MAX_N:
        raise ValueError(f"state: expected [B, H, N, N] with N <= {MAX_N}, found {tuple(state.shape)}")
    C, dtype, T = H * N, r.dtype, r.shape[1] if r.dim() == 3 else -1
    B = state_rows if starts is None else 1  # a ragged batch is one row of all its tokens
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"r: expected float32 or bfloat16, found {dtype}")
    if (v_gate is None) != (v0 is None) or (v_gate is not None and v_first is None):
        raise ValueError("v_gate, v0 and v_first: expected all three (layers after the first) or v_gate and v0 "
                         f"None (layer 0), found v_gate {'given' if v_gate is not None else None}, "
                         f"v0 {'given' if v0 is not None else None}, v_first {'given' if v_first is not None else None}")
    rows = {"r": r, "w": w, "k": k, "v": v, "a": a, "g": g}
    if v_gate is not None:
        rows.update(v_first=v_first, v_gate=v_gate)
    xs = []
    for name, x in rows.items():
        if x.dtype != dtype or not x.is_cpu or x.dim() != 3 or x.shape[0] != B or x.shape[1] != T or x.shape[2] != C:
            raise ValueError(f"{name}: expected a {dtype} CPU tensor [B={B}, T={T}, C={C}], "
                             f"found {x.dtype} on {x.device}, shape {tuple(x.shape)}")
        xs.append(x.contiguous())
    if starts is not None:  # after the rows: T is r's own length there
        starts = check_starts(starts, state_rows, T)
    vectors = {"w0": w0, "r_k": r_k, "k_k": k_k, "k_a": k_a, "ln_x_w": ln_x_w, "ln_x_b": ln_x_b}
    if v0 is not None:
        vectors["v0"] = v0
    vecs = {}
    for name, x in vectors.items():
        if x.dtype != dtype or not x.is_cpu or x.numel() != C:
            raise ValueError(f"{name}: expected a {dtype} CPU tensor of {C} numbers, found {x.dtype} on {x.device}, "
                             f"shape {tuple(x.shape)}")
        vecs[name] = x.contiguous()
    if v_gate is None:
        xs += [None, None]
        vecs["v0"] = None
    ptr = [x.data_ptr() if x is not None else None for x in xs]  # r w k v a g v_first v_gate
    out = torch.empty(B, T, C, dtype=dtype)
    bf16 = dtype == torch.bfloat16
    rc = lib.wkv7_output(state_rows, T, H, N, torch.get_num_threads(), bf16, eps, state.data_ptr(), *ptr,
                         *[vecs[n].data_ptr() if vecs[n] is not None else None
                           for n in ("w0", "r_k", "k_k", "k_a", "v0", "ln_x_w", "ln_x_b")],
                         starts.data_ptr() if starts is not None else None, out.data_ptr())
    if rc == 2:
        raise MemoryError(f"wkv7_output: no memory for its float32 scratch (7 x {B} x {T} x {C} numbers)")
    if rc != 0:
        raise ValueError(f"wkv7_output: head size {N} exceeds the kernel's limit {MAX_N}")
    return out


def token_shift_mix(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor,
                    starts: torch.Tensor | None = None) -> torch.Tensor:
    """The token shift's mixes in one pass (``token_shift_mix`` in wkv7_cpu.c;
    :meth:`engine.model.RWKV7._token_shift` is the same math in torch): x [B, T, C] float32 or
    bfloat16, x_prev [B, C] float32 (the token before x[:, 0]), mix [J, C] in x's dtype; returns
    [J, B, T, C] in x's dtype, x + (shifted - x) * mix[j] (float32 math, rounded once).
    ``starts`` [R + 1] int64 (:func:`check_starts`): a ragged batch of R rows as one row x [1, n, C],
    row b's tokens from starts[b] on, the token before each row's first in x_prev [R, C]. Raises
    ValueError naming a wrong input."""
    lib = _loaded("token shift")
    if x.dtype not in (torch.float32, torch.bfloat16) or not x.is_cpu or x.dim() != 3:
        raise ValueError(f"x: expected a float32 or bfloat16 CPU tensor [B, T, C], found {x.dtype} on {x.device}, "
                         f"shape {tuple(x.shape)}")
    B, T, C = x.shape
    rows = B
    if starts is not None:
        if B != 1:
            raise ValueError(f"x: a ragged batch (starts) is one row of all its tokens [1, n, C], found shape "
                             f"{tuple(x.shape)}")
        rows = starts.numel() - 1
        starts = check_starts(starts, rows, T)
    if x_prev.dtype != torch.float32 or not x_prev.is_cpu or tuple(x_prev.shape) != (rows, C):
        raise ValueError(f"x_prev: expected a float32 CPU tensor [B={rows}, C={C}], found {x_prev.dtype} on "
                         f"{x_prev.device}, shape {tuple(x_prev.shape)}")
    if mix.dtype != x.dtype or not mix.is_cpu or mix.dim() != 2 or mix.shape[1] != C:
        raise ValueError(f"mix: expected a {x.dtype} CPU tensor [J, C={C}], found {mix.dtype} on {mix.device}, "
                         f"shape {tuple(mix.shape)}")
    x, x_prev, mix = x.contiguous(), x_prev.contiguous(), mix.contiguous()
    out = torch.empty(mix.shape[0], B, T, C, dtype=x.dtype)
    lib.token_shift_mix(B, T, C, mix.shape[0], torch.get_num_threads(), x.dtype == torch.bfloat16, x.data_ptr(),
                        x_prev.data_ptr(), mix.data_ptr(), out.data_ptr(), rows,
                        starts.data_ptr() if starts is not None else None)
    return out


def check_starts(starts: torch.Tensor, rows: int, n: int) -> torch.Tensor:
    """A ragged batch's row offsets, checked: int64 CPU [rows + 1], from 0 to n, each row at least
    one token (strictly increasing); returned contiguous. Raises ValueError naming what is wrong."""
    ok = (isinstance(starts, torch.Tensor) and starts.dtype == torch.int64 and starts.is_cpu
          and tuple(starts.shape) == (rows + 1,))
    if ok:
        ok = int(starts[0]) == 0 and int(starts[-1]) == n and bool((starts[1:] > starts[:-1]).all())
    if not ok:
        shown = starts.tolist()[:9] if isinstance(starts, torch.Tensor) and starts.dim() == 1 else starts
        raise ValueError(f"starts: expected int64 CPU row offsets [{rows + 1}] rising from 0 to n={n} (each row "
                         f"at least one token), found {shown!r:.120}")
    return starts.contiguous()


def bf16_dot_available() -> bool:
    """Whether the compiled kernels multiply bf16 by bf16 in hardware (AVX512_BF16's vdpbf16ps)."""
    return load() is not None and _bf16_dot


def matvec(x: torch.Tensor, W: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``F.linear(x, W)`` for a few rows: x [M, C] float32 (or bfloat16 with a bfloat16 W), W [R, C]
    float32 or bfloat16, contiguous (a linear weight, [out, in]); returns y [M, R] in ``out_dtype``
    (float32, or bfloat16 rounded to nearest even like ``.to(torch.bfloat16)``; float32
    accumulation in every case). One pass over W serves all M rows, so it is meant for a few rows
    (decode steps). bf16 times bf16 runs the AVX512_BF16 kernel where it is built
    (:func:`bf16_dot_available`), else x is widened: the products are exact either way, only the
    order of the float32 additions differs (and the AVX512_BF16 kernel takes denormals as zero).
    Raises ValueError naming a wrong input."""
    lib = _loaded("matvec")
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"out_dtype: expected torch.float32 or torch.bfloat16, found {out_dtype}")
    # is_cpu, not device.type: this runs for every product of a decode step, and device.type costs more
    if W.dtype not in (torch.float32, torch.bfloat16) or not W.is_cpu or W.dim() != 2:
        raise ValueError(f"W: expected a 2-D float32 or bfloat16 CPU tensor, found {W.dtype} on {W.device}, "
                         f"shape {tuple(W.shape)}")
    x_types = (torch.float32, torch.bfloat16) if W.dtype == torch.bfloat16 else (torch.float32,)
    if x.dtype not in x_types or not x.is_cpu or x.dim() != 2:
        wanted = "float32 or bfloat16" if W.dtype == torch.bfloat16 else "float32"
        raise ValueError(f"x: expected a 2-D {wanted} CPU tensor for a {W.dtype} W, found {x.dtype} on {x.device}, "
                         f"shape {tuple(x.shape)}")
    if not W.is_contiguous():
        raise ValueError(f"W: expected a contiguous [out, in] weight, found strides {W.stride()}")
    if x.shape[1] != W.shape[1]:
        raise ValueError(f"x: expected [M, {W.shape[1]}] to match W {tuple(W.shape)}, found {tuple(x.shape)}")
    if x.dtype == torch.bfloat16 and not _bf16_dot:
        x = x.float()
    x = x.contiguous()
    M, R = x.shape[0], W.shape[0]
    y = torch.empty(M, R, dtype=out_dtype)
    if M and R:
        kernel = (lib.matvec_f32 if W.dtype == torch.float32
                  else lib.matvec_bf16_dot if x.dtype == torch.bfloat16 else lib.matvec_bf16)
        kernel(R, W.shape[1], M, torch.get_num_threads(), W.data_ptr(), x.data_ptr(), y.data_ptr(),
               out_dtype == torch.bfloat16)
    return y


# ---------------------------------------------------------------------------------------------
# The product forms, and the plan that picks one per row count

# Rows of the products the plan is measured at, and the row counts each one stands for:
# rows <= 2 use the form measured at 1, <= 8 at 4, <= 32 at 16, <= 128 at 64, <= 512 at 256, more
# at 1024. A prefill chunk or a scoring batch runs hundreds of rows, where the best form can differ
# from 256 rows': W @ x^T's transposing copy of its result grows past L2 (on a 2-core AVX-512 EPYC,
# 2026-12-02: W @ x^T with its copy 168 GFLOP/s at 256 rows against F.linear's 164, but 118
# against 174 at 768 rows).
POINTS = (1, 4, 16, 64, 256, 1024)
_BOUNDS = (2, 8, 32, 128, 512)
# the matvec kernel makes one pass over W per call: a candidate up to the point at 16 rows
MATVEC_MAX_ROWS = 32
LINEAR_FORMS = {
    "matvec": "engine/kernels/matvec_cpu.c: one pass over W, float32 accumulation",
    "wxt": "W @ x^T in the weight's dtype (BLAS; the result is a transposed view)",
    "xwt": "x @ W^T in the weight's dtype (F.linear)",
    "onednn": "x @ W^T in the weight's dtype by oneDNN's linear (torch.ops.mkldnn._linear_pointwise)",
    "packed": "x @ W^T by oneDNN's linear on W reordered once into oneDNN's own layout (a second copy of W)",
    "upcast": "W @ x^T in float32, the half-precision weight widened (float32 accumulation)",
}
LORA_FORMS = {"native": "x @ A, then @ B, in the weight's dtype", "upcast": "both products in float32",
              "matvec": "both products by the matvec kernel, over A and B transposed ([out, in], kept once)",
              "onednn": "both products by oneDNN's linear, over A and B transposed ([out, in], kept once)",
              "packed": "both products by oneDNN's linear, over A and B transposed and reordered (kept once)"}
# the forms that read LoRA's matrices transposed, as a linear weight [out, in]
_TRANSPOSED_LORA = ("matvec", "onednn", "packed")
# the head's logits come back row-major, built in blocks of W's rows whose float32 result (block x
# rows) stays in L2: a transposing copy of 64 x 65536 logits alone took ~24 ms
_BLOCK_FLOATS = 2**18


_onednn: bool | None = None  # whether oneDNN's linear runs here and equals F.linear (asked once)


def _onednn_op():
    """oneDNN's linear as torch exposes it (``torch.ops.mkldnn._linear_pointwise``, the op torch's
    own compiler emits for CPU linears), or None where this torch has no oneDNN."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


def onednn_available() -> bool:
    """Whether the ``onednn`` form can run here. The op is not part of torch's public API, so it is
    asked for, tried once on a small product (plain, and with the tanh and sigmoid post-ops the
    LoRA forms use) and compared with F.linear; it is offered only when all of that holds."""
    global _onednn
    if _onednn is None:
        op, _onednn = _onednn_op(), False
        if op is not None:
            try:
                g = torch.Generator().manual_seed(0)
                x, W = torch.randn(3, 40, generator=g), torch.randn(24, 40, generator=g)
                ref = F.linear(x, W)
                _onednn = all(tuple(y.shape) == (3, 24) and bool(torch.allclose(y, want, rtol=1e-4, atol=1e-4))
                              for y, want in ((op(x, W, None, "none", [], ""), ref),
                                              (op(x, W, None, "tanh", [], ""), torch.tanh(ref)),
                                              (op(x, W, None, "sigmoid", [], ""), torch.sigmoid(ref))))
            except (RuntimeError, TypeError, NotImplementedError):
                _onednn = False
    return _onednn


def onednn_linear(x: torch.Tensor, W: torch.Tensor, act: str = "none") -> torch.Tensor:
    """``F.linear(x, W)`` by oneDNN: x [rows, in], W [out, in] in one dtype (or W from
    :func:`pack`) -> [rows, out] row-major; ``act`` (``"tanh"``, ``"sigmoid"``) applied to it by
    oneDNN as the result is written (a post-op), not in another pass."""
    return _onednn_op()(x.contiguous(), W, None, act, [], "")


# rows the reordered weights are laid out for (oneDNN picks its blocking from it; any row count runs)
PACK_ROWS = 1024
_packing: bool | None = None  # whether reordered weights run here and equal F.linear (asked once)


def pack(W: torch.Tensor) -> torch.Tensor:
    """W [out, in] reordered into oneDNN's layout for :func:`onednn_linear` (an opaque tensor as
    large as W): a 3072 x 768 float32 product over 682 rows ran 146-173 GFLOP/s from W as it is
    and 185-195 from the reordered copy, bf16 286 against 403 (2-core AVX-512 EPYC, 2026-12-02)."""
    return _reorder_op()(W, PACK_ROWS)


def _reorder_op():
    """oneDNN's weight reordering as torch exposes it, or None."""
    return getattr(getattr(torch.ops, "mkldnn", None), "_reorder_linear_weight", None)


def packing_available() -> bool:
    """Whether the ``packed`` form can run here: oneDNN's linear (:func:`onednn_available`) and its
    weight reordering (``torch.ops.mkldnn._reorder_linear_weight``, also not public API), tried once
    on a small product in float32 and bf16 and compared with F.linear."""
    global _packing
    if _packing is None:
        _packing = False
        if onednn_available() and _reorder_op() is not None:
            try:
                g = torch.Generator().manual_seed(1)
                x, W = torch.randn(3, 40, generator=g), torch.randn(24, 40, generator=g)
                _packing = all(bool(torch.allclose(onednn_linear(x.to(dt), pack(W.to(dt))).float(),
                                                   F.linear(x.to(dt), W.to(dt)).float(), rtol=tol, atol=tol))
                               for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)))
            except (RuntimeError, TypeError, NotImplementedError, AttributeError):
                _packing = False
    return _packing


def point_index(rows: int) -> int:
    """Which of :data:`POINTS` stands for a product over ``rows`` rows."""
    return bisect_left(_BOUNDS, rows)


def linear_candidates(dtype: torch.dtype, rows: int, kernel: bool) -> list[str]:
    """The forms that can compute a product of this dtype over ``rows`` rows here."""
    forms = ["wxt", "xwt"]
    if dtype in (torch.float32, torch.bfloat16) and onednn_available():
        forms.append("onednn")
        if rows > MATVEC_MAX_ROWS and packing_available():  # the few-row points time slices of many weights
            forms.append("packed")
    if dtype != torch.float32:
        forms.append("upcast")
    if kernel and dtype in (torch.float32, torch.bfloat16) and rows <= MATVEC_MAX_ROWS:
        forms.insert(0, "matvec")
    return forms


def lora_candidates(dtype: torch.dtype, rows: int, kernel: bool) -> list[str]:
    """The forms that can compute a LoRA pair of this dtype over ``rows`` rows here. A LoRA's
    matrices are small (768 x 64 on the 0.1B shape), so a GEMM call's fixed cost dominates a decode
    step's pair (a bf16 ``x @ A`` over one row took ~18 us on an AVX-512 EPYC, the matvec kernel ~3)."""
    forms = ["native"] if dtype == torch.float32 else ["native", "upcast"]
    if kernel and dtype in (torch.float32, torch.bfloat16) and rows <= MATVEC_MAX_ROWS:
        forms.append("matvec")
    if dtype in (torch.float32, torch.bfloat16) and onednn_available():
        forms.append("onednn")
        if rows > MATVEC_MAX_ROWS and packing_available():
            forms.append("packed")
    return forms


def linear_form(form: str, x: torch.Tensor, W: torch.Tensor, contiguous: bool = False,
                packed: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W)`` for x [rows, in], W [out, in], computed in ``form`` (one of
    :data:`LINEAR_FORMS`); returns [rows, out] in x's dtype. ``wxt`` and ``upcast`` return a
    transposed view (strides (1, rows)), which callers read through elementwise ops or reshape;
    ``contiguous`` asks for row-major output, built block by block. ``packed``: W reordered by
    :func:`pack`, for the ``packed`` form (reordered here when not given)."""
    if form == "matvec":  # a bf16 x stays bf16 for a bf16 W (exact products either way)
        if x.dtype == torch.bfloat16:  # the kernel rounds to bf16 as it writes
            return matvec(x if W.dtype == torch.bfloat16 else x.float(), W, torch.bfloat16)
        return matvec(x.float(), W).to(x.dtype)
    if form == "xwt":
        return F.linear(x, W)
    if form == "onednn":
        return onednn_linear(x, W)
    if form == "packed":
        return onednn_linear(x, packed if packed is not None else pack(W))
    if form not in ("wxt", "upcast"):
        raise ValueError(f"unknown product form {form!r}: expected one of {sorted(LINEAR_FORMS)}")
    upcast = form == "upcast"
    xt = (x.float() if upcast else x).t()  # (in, rows)

    def product(w: torch.Tensor) -> torch.Tensor:  # (out, rows) in x's dtype
        return (w.float() @ xt).to(x.dtype) if upcast else w @ xt

    if not contiguous:
        return product(W).t()
    rows = x.shape[0]
    out = torch.empty(rows, W.shape[0], dtype=x.dtype, device=x.device)
    block = min(4096, max(256, _BLOCK_FLOATS // max(rows, 1)))
    for i in range(0, W.shape[0], block):
        out[:, i:i + block] = product(W[i:i + block]).t()
    return out


# the activations lora_rows applies itself (its act codes)
_LORA_ACTS: dict = {None: 0, torch.tanh: 1, torch.sigmoid: 2}
# ... and those oneDNN's linear applies as it writes its result (its post-op names)
_ONEDNN_ACTS: dict = {torch.tanh: "tanh", torch.sigmoid: "sigmoid"}


def _lora_rows(x: torch.Tensor, At: torch.Tensor, Bt: torch.Tensor, act: int) -> torch.Tensor:
    """act(x A) B by the kernel: x [M, in] in A's dtype or float32, At [rank, in] and Bt [out, rank]
    contiguous, float32 or bfloat16 alike; returns [M, out] in x's dtype."""
    lib = _loaded("matvec")
    if At.dim() != 2 or Bt.dim() != 2 or x.shape[1] != At.shape[1] or Bt.shape[1] != At.shape[0] \
            or not At.is_contiguous() or not Bt.is_contiguous():
        raise ValueError(f"LoRA: expected x [M, in], A^T [rank, in], B^T [out, rank] (contiguous), found "
                         f"{tuple(x.shape)}, {tuple(At.shape)}, {tuple(Bt.shape)}")
    out_dtype = x.dtype
    if At.dtype == torch.float32:
        kind, x = 0, x.float()
    elif x.dtype == torch.bfloat16 and _bf16_dot:
        kind = 2
    else:
        kind, x = 1, x.float()
    x = x.contiguous()
    M = x.shape[0]
    y = torch.empty(M, Bt.shape[0], dtype=torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32)
    rc = lib.lora_rows(At.shape[1], At.shape[0], Bt.shape[0], M, torch.get_num_threads(), kind, act,
                       At.data_ptr(), Bt.data_ptr(), x.data_ptr(), y.data_ptr(), out_dtype == torch.bfloat16)
    if rc == -2:
        raise MemoryError(f"lora_rows: no memory for its {M} x {At.shape[0]} float32 intermediate")
    if rc != 0:
        raise RuntimeError(f"lora_rows: kind {kind} is not built into this library")
    return y if y.dtype == out_dtype else y.to(out_dtype)


def lora_form(form: str, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              act: Callable[[torch.Tensor], torch.Tensor] | None = None,
              transposed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``act(x @ A) @ B`` for x [..., in], A [in, rank], B [rank, out] (LoRA matrices are stored
    [in, out]), computed in ``form`` (one of :data:`LORA_FORMS`); returns [..., out] in x's dtype.
    ``transposed``: (A^T, B^T) contiguous (for ``packed``: reordered by :func:`pack`), for the
    matvec and oneDNN forms (made here when not given)."""
    if form in ("onednn", "packed"):
        At, Bt = transposed if transposed is not None else (A.t().contiguous(), B.t().contiguous())
        if form == "packed" and not (At.is_mkldnn and Bt.is_mkldnn):
            At, Bt = pack(At), pack(Bt)
        post = _ONEDNN_ACTS.get(act)  # tanh and sigmoid as oneDNN's post-ops
        h = onednn_linear(x.reshape(-1, x.shape[-1]), At, post or "none")  # (rows, rank)
        y = onednn_linear(act(h) if act is not None and post is None else h, Bt)  # (rows, out)
        return y.view(*x.shape[:-1], Bt.shape[0])
    if form == "matvec":
        At, Bt = transposed if transposed is not None else (A.t().contiguous(), B.t().contiguous())
        x2 = x.reshape(-1, x.shape[-1])  # (rows, in)
        code = _LORA_ACTS.get(act)
        if code is None or At.dtype not in (torch.float32, torch.bfloat16) or Bt.dtype != At.dtype:
            h = linear_form("matvec", x2, At)  # (rows, rank)
            y = linear_form("matvec", act(h) if act is not None else h, Bt)  # (rows, out)
        else:  # both products and the activation in one call (lora_rows in matvec_cpu.c)
            y = _lora_rows(x2, At, Bt, code)
        return y.view(*x.shape[:-1], Bt.shape[0])
    if form == "upcast":
        h = x.float() @ A.float()  # (..., rank)
        return ((act(h) if act is not None else h) @ B.float()).to(x.dtype)
    if form != "native":
        raise ValueError(f"unknown LoRA form {form!r}: expected one of {sorted(LORA_FORMS)}")
    h = x @ A  # (..., rank)
    return (act(h) if act is not None else h) @ B


@dataclass(frozen=True)
class Plan:
    """The product form for each of :data:`POINTS` (``linear`` and ``lora``, one form per point),
    and where it came from (``source``: measured, or read from the decision cache)."""

    linear: tuple[str, ...]
    lora: tuple[str, ...]
    source: str = "measured"
    info: dict | None = None  # machine, timings and selection time, for model.info()

    def __post_init__(self) -> None:
        for name, forms, known in (("linear", self.linear, LINEAR_FORMS), ("lora", self.lora, LORA_FORMS)):
            if len(forms) != len(POINTS) or any(f not in known for f in forms):
                raise ValueError(f"plan: expected {len(POINTS)} {name} forms from {sorted(known)}, found {forms!r}")

    def to_json(self) -> dict:
        return {"linear": list(self.linear), "lora": list(self.lora)}

    def describe(self) -> dict:
        """Plain JSON for model.info(): the form per row range, its source, and the measurement."""
        ranges = [f"{lo}-{hi}" for lo, hi in zip((1, *(b + 1 for b in _BOUNDS)), _BOUNDS)] + [f">{_BOUNDS[-1]}"]
        return {"source": self.source, "linear": dict(zip(ranges, self.linear)),
                "lora": dict(zip(ranges, self.lora)), **(self.info or {})}


class CPUPath:
    """The fast CPU path of the model: ``linear``, ``lora`` and ``wkv`` (the same contracts as
    :class:`engine.model.TorchPath`), each product in the form the plan measured fastest.
    ``packing``: whether the ``packed`` form may keep its reordered copy of each weight it serves
    (the model allows it where its weights fit the memory twice over; else that form runs as
    ``onednn``, on the weights as they are)."""

    def __init__(self, plan: Plan, wkv: Callable[..., torch.Tensor], wkv_name: str, fused: bool = False,
                 packing: bool = True):
        self.plan = plan
        self.wkv = wkv
        # the time mix from its projections to the output product in one kernel (:func:`wkv7_output`)
        self.wkv_output = wkv7_output if fused else None
        self.token_shift = token_shift_mix if fused else None  # the token shift's mixes in one kernel
        self.packing = packing
        self.name = f"CPU kernels (products: {plan.source}; WKV: {wkv_name})"
        # weights kept in another layout, made at first use: LoRA pairs transposed for the matvec and
        # oneDNN forms, (id(A), form) -> (A, B, A^T, B^T), and weights reordered for the packed form,
        # id(W) -> (W, packed W); the originals are held, so an id is never reused while its entry lives
        self._transposed: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # a block's weight pointers for block_cpu.c, id(layer) -> (the layer's fields as read then,
        # pointer array, tensors it points to)
        self._blocks: dict[int, tuple] = {}

    def linear(self, x: torch.Tensor, W: torch.Tensor, contiguous: bool = False) -> torch.Tensor:
        """``F.linear(x, W)``: x [..., in], W [out, in] -> [..., out] in x's dtype; a transposed
        view unless ``contiguous`` (see :func:`linear_form`)."""
        rows = x.numel() // x.shape[-1]
        form = self.plan.linear[point_index(rows)]
        packed = None
        if form == "packed":
            if not self.packing:
                form = "onednn"
            else:
                entry = self._packed.get(id(W))
                if entry is None or entry[0] is not W:
                    entry = self._packed[id(W)] = (W, pack(W))
                packed = entry[1]
        y = linear_form(form, x.reshape(rows, x.shape[-1]), W, contiguous, packed)
        return y.view(*x.shape[:-1], W.shape[0])

    def lora(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             act: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``act(x @ A) @ B``: x [..., in], A [in, rank], B [rank, out] -> [..., out]."""
        rows = x.numel() // x.shape[-1]
        form = self.plan.lora[point_index(rows)]
        if form == "packed" and not self.packing:
            form = "onednn"
        transposed = self._lora_transposed(A, B, form) if form in _TRANSPOSED_LORA else None
        return lora_form(form, x, A, B, act, transposed)

    def _lora_transposed(self, A: torch.Tensor, B: torch.Tensor, form: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A^T, B^T) contiguous for ``form`` (reordered for ``packed``), made once per pair."""
        entry = self._transposed.get((id(A), form))
        if entry is None or entry[0] is not A or entry[1] is not B:
            At, Bt = A.t().contiguous(), B.t().contiguous()
            if form == "packed":
                At, Bt = pack(At), pack(Bt)
            entry = self._transposed[(id(A), form)] = (A, B, At, Bt)
        return entry[2], entry[3]

    def block_step_rows(self) -> str:
        """For model.info(): the decode steps whose blocks run as one call each (block_step)."""
        if self.wkv_output is None or load() is None:
            return "none (no fused time mix or no compiled kernels)"
        ranges = [r for r, form in self.plan.describe()["linear"].items() if form == "matvec"]
        return f"one call per block at {', '.join(ranges)} rows" if ranges else "none (no row count runs matvec)"

    def block_step(self, model, x: torch.Tensor, state, new, ln_x_eps: float) -> "BlockStep | None":
        """A decode step's blocks as one kernel call each (:class:`BlockStep`, block_cpu.c) for
        x [rows, 1, C] (one token per row), where the plan runs those rows' linear products by the matvec
        kernel (the block calls it for them, and lora_rows for the LoRA pairs), with the fused
        time mix, in float32 or bf16. None elsewhere (the model then runs its lines one call each).
        The LoRA pairs run by the kernel even where the plan timed another form a few microseconds
        faster as a call of its own (torch's at 4 rows, on the AVX-512 EPYC): in the block, the
        ~25 calls' dispatch it saves is more (a float32 0.1B step at 4 rows: see BlockStep)."""
        if (self.wkv_output is None or x.shape[1] != 1 or self.plan.linear[point_index(x.shape[0])] != "matvec"
                or model.dtype not in (torch.float32, torch.bfloat16) or load() is None
                or not BlockStep.fits(x, state, new)):
            return None
        return BlockStep(self, model, x, state, new, ln_x_eps)


# the LayerWeights fields a block step reads, in block_cpu.c's order (the LoRA matrices, _LORA_FIELDS,
# through their transposed copies)
_BLOCK_FIELDS = ("ln1_w", "ln1_b", "mix", "W_r", "W_k", "W_v", "w1", "w2", "a1", "a2", "a0", "v1", "v2", "g1",
                 "g2", "w0", "r_k", "k_k", "k_a", "v0", "ln_x_w", "ln_x_b", "W_o", "ln2_w", "ln2_b", "ffn_x_k",
                 "ffn_key", "ffn_value")
_LORA_FIELDS = ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2")


class BlockStep:
    """One decode step's blocks, each in one call of ``block_step`` (block_cpu.c): the lines of
    :meth:`engine.model.RWKV7.forward`'s loop for one token per row, through the same kernels
    the per-call path runs for these rows (the matvec products and LoRA pairs, the token shift,
    the fused time mix), so a block costs its products and not ~25 Python calls around them (a
    0.1B decode step on the 2-core AVX-512 EPYC, 2026-12-02, same process turn about: bf16 at one
    row 12.0 ms against 14.9, float32 23.2 against 29.0, float32 at 4 rows 28.1 against 35.5;
    docs/perf/cpu-0.1B-decode-block-ab-2026-12-02-epyc.txt).
    Made per forward call by :meth:`CPUPath.block_step` for x [rows, 1, C] (updated in place),
    reading ``state``'s rows and writing ``new``'s (the same State when in place);
    ``step(i, p, v_first)`` runs block ``i`` (weights ``p``) and returns v_first."""

    def __init__(self, path: CPUPath, model, x: torch.Tensor, state, new, ln_x_eps: float):
        cfg = model.config
        self.path, self.rows, self.eps = path, x.shape[0], ln_x_eps
        self.kind = 0 if model.dtype == torch.float32 else (2 if _bf16_dot else 1)
        self.dims = torch.tensor([cfg.n_embd, cfg.n_head, cfg.head_size, cfg.ffn_size, cfg.rank_w, cfg.rank_a,
                                  cfg.rank_v, cfg.rank_g], dtype=torch.int64)
        self.lib = _loaded("block step")
        self.work = torch.empty(int(self.lib.block_step_work_floats(self.rows, self.dims.data_ptr())),
                                dtype=torch.float32)
        self.v_first = torch.empty(self.rows, cfg.n_embd, dtype=model.dtype)
        self.threads = torch.get_num_threads()
        self.x = x
        # each layer's rows of the state: its first element's address, and the bytes between layers
        self.bases = [(t.data_ptr(), t.stride(0) * t.element_size())
                      for t in (state.att_x, new.att_x, state.ffn_x, new.ffn_x, new.wkv)]

    @staticmethod
    def fits(x: torch.Tensor, state, new) -> bool:
        """Whether the kernel can read and write these in place: x [rows, 1, C] and each layer's rows
        of both states contiguous (every layer's slice has the same strides, so layer 0 speaks for all)."""
        return x.is_contiguous() and all(t[0].is_contiguous() for s in (state, new) for t in (s.att_x, s.wkv, s.ffn_x))

    def _pointers(self, p) -> int:
        """The address of block ``p``'s weight pointers (block_cpu.c's order), built once per block."""
        fields = [getattr(p, f) for f in _BLOCK_FIELDS]
        entry = self.path._blocks.get(id(p))
        if entry is None or any(a is not b for a, b in zip(fields, entry[0])):  # new, or a weight replaced
            lora = {n: self.path._lora_transposed(getattr(p, n + "1"), getattr(p, n + "2"), "matvec")
                    if getattr(p, n + "1") is not None else (None, None) for n in "wavg"}
            held = [lora[f[0]][int(f[1]) - 1] if f in _LORA_FIELDS else t for f, t in zip(_BLOCK_FIELDS, fields)]
            for t in held:
                if t is not None and not t.is_contiguous():
                    raise ValueError(f"block step: expected contiguous weights, found strides {t.stride()}")
            array = (ctypes.c_void_p * len(held))(*[t.data_ptr() if t is not None else None for t in held])
            entry = self.path._blocks[id(p)] = (fields, array, held)
        return ctypes.addressof(entry[1])

    def __call__(self, i: int, p, v_first: torch.Tensor | None) -> torch.Tensor:
        rc = self.lib.block_step(self.rows, self.dims.data_ptr(), self.threads, self.kind, i == 0, self.eps,
                                 self._pointers(p), self.x.data_ptr(), *[b + i * step for b, step in self.bases],
                                 self.v_first.data_ptr(), self.work.data_ptr())
        if rc != 0:
            raise RuntimeError(f"block_step: a kernel it calls failed with code {rc} (kind {self.kind})")
        return self.v_first
