"""Python wrappers for the CUDA kernels: validate, then launch on torch's current CUDA stream.

One wrapper per kernel. CuPy checks nothing about a launch and ignores strides, so every
wrapper checks dtype, contiguity, device, shape and limits first and raises ``ValueError`` naming
what it expected and what it found. The checks are pure functions (``check_*``) that run on any
torch tensors, CPU included, so they are tested without a GPU.

Tensors reach the kernels as raw device pointers (``tensor.data_ptr()``): no copy, no DLPack
round trip per call, which matters for decode where every layer launches a few small kernels.
Each launch names torch's current stream (``stream=``, see ``loader.launch_stream``), so kernels
order with torch's work and are recorded by a CUDA graph captured on that stream.

Shapes (C-contiguous): state [B, H, N, N] float32; r w k v a b [B, T, H, N] (or [B, H, N] for
a single step) in float32 / float16 / bfloat16; WKV outputs y are float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from engine.kernels import loader

HEAD_SIZES = (32, 64, 96, 128)  # common.cuh: a multiple of 32, at most 128
DEFAULT_HEAD_SIZE = 64
KERNEL_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}

# Launch geometry; these must equal the #defines of the same name in the .cu files
# (tests/test_kernels_validation.py reads the sources to check).
WKV7_STEP_ROWS = 4
WKV7_STEP_WARPS = 8
GROUPNORM_BLOCK = 256
TOKEN_SHIFT_BLOCK = 256
TOKEN_SHIFT_MAX_BLOCKS = 65536  # grid-stride loop beyond this

INT32_MAX = 2**31 - 1
WARP_SIZE = 32

WKV7_SOURCE = "wkv7.cu"
FUSED_SOURCE = "fused.cu"


# ---------------------------------------------------------------------------------------------
# Validation (pure; works on CPU tensors)


@dataclass(frozen=True)
class WkvDims:
    """Sizes of one WKV call: batch B, length T (1 for a step), heads H, head size N."""

    B: int
    T: int
    H: int
    N: int
    dtype: torch.dtype


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_KERNEL_DTYPE_NAMES = ", ".join(_dtype_name(d) for d in KERNEL_DTYPES)


def _check_tensors(op: str, tensors: dict[str, object], device_type: str) -> torch.device:
    """Every value a tensor, all on one device of type ``device_type``; return that device."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: expected {name} to be a torch.Tensor, found {type(t).__name__}")
    first_name, first = next(iter(tensors.items()))
    for name, t in tensors.items():
        if t.device.type != device_type:
            raise ValueError(
                f"{op}: expected every tensor on a {device_type} device, found {name} on {t.device}"
            )
        if t.device != first.device:
            raise ValueError(
                f"{op}: expected every tensor on one device, found {first_name} on "
                f"{first.device} and {name} on {t.device}"
            )
    return first.device


def _check_dtype(op: str, name: str, t: torch.Tensor, expected: torch.dtype | None) -> None:
    if expected is None:  # any storage type the kernels were built for
        if t.dtype not in KERNEL_DTYPES:
            raise ValueError(
                f"{op}: expected {name} of dtype {_KERNEL_DTYPE_NAMES}, found {_dtype_name(t.dtype)}"
            )
    elif t.dtype != expected:
        raise ValueError(
            f"{op}: expected {name} of dtype {_dtype_name(expected)}, found {_dtype_name(t.dtype)}"
        )


def _check_same_dtype(op: str, tensors: dict[str, torch.Tensor]) -> torch.dtype:
    first_name, first = next(iter(tensors.items()))
    _check_dtype(op, first_name, first, None)
    for name, t in tensors.items():
        if t.dtype != first.dtype:
            raise ValueError(
                f"{op}: expected {', '.join(tensors)} to share one dtype, found {first_name} "
                f"{_dtype_name(first.dtype)} and {name} {_dtype_name(t.dtype)}"
            )
    return first.dtype


def _check_contiguous(op: str, tensors: dict[str, torch.Tensor]) -> None:
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(
                f"{op}: expected {name} C-contiguous (the kernel ignores strides), found shape "
                f"{tuple(t.shape)} with strides {t.stride()}; pass {name}.contiguous()"
            )


def _check_shape(op: str, name: str, t: torch.Tensor, layout: str, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{op}: expected {name} of shape {layout} = {expected}, found {tuple(t.shape)}")


def _check_ndim(op: str, name: str, t: torch.Tensor, layout: str) -> None:
    ndim = layout.count(",") + 1
    if t.dim() != ndim:
        raise ValueError(f"{op}: expected {name} with {ndim} dims {layout}, found shape {tuple(t.shape)}")


def _check_head_size(op: str, n: int) -> None:
    if n not in HEAD_SIZES:
        raise ValueError(
            f"{op}: expected head size N in {HEAD_SIZES} (the kernels keep N / 32 values per lane), "
            f"found N = {n}"
        )


def _check_limit(op: str, what: str, value: int, limit: int = INT32_MAX) -> None:
    if value > limit:
        raise ValueError(f"{op}: expected {what} <= {limit} (kernel index limit), found {value}")


def check_wkv7(
    op: str,
    state: torch.Tensor,
    vectors: dict[str, torch.Tensor],
    *,
    step: bool,
    out: torch.Tensor | None = None,
    device_type: str = "cuda",
) -> WkvDims:
    """Validate one WKV-7 call; ``vectors`` maps the names r w k v a b to tensors.

    Sequence (``step=False``): vectors [B, T, H, N]; step: vectors [B, H, N]. state
    [B, H, N, N] float32; ``out`` (if given) float32 shaped like the vectors.
    """
    tensors = {"state": state, **vectors}
    if out is not None:
        tensors["out"] = out
    _check_tensors(op, tensors, device_type)
    _check_dtype(op, "state", state, torch.float32)
    dtype = _check_same_dtype(op, vectors)
    if out is not None:
        _check_dtype(op, "out", out, torch.float32)
    _check_contiguous(op, tensors)

    layout = "[B, H, N]" if step else "[B, T, H, N]"
    first_name, first = next(iter(vectors.items()))
    _check_ndim(op, first_name, first, layout)
    shape = tuple(first.shape)
    for name, t in vectors.items():
        _check_shape(op, name, t, f"{layout} like {first_name}", shape)
    if step:
        (B, H, N), T = shape, 1
    else:
        B, T, H, N = shape
    _check_shape(op, "state", state, "[B, H, N, N]", (B, H, N, N))
    if out is not None:
        _check_shape(op, "out", out, layout, shape)
    _check_head_size(op, N)
    _check_limit(op, "T", T)
    _check_limit(op, "B * H", B * H)
    return WkvDims(B=B, T=T, H=H, N=N, dtype=dtype)


def check_groupnorm_bonus_gate(
    y: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    r_k: torch.Tensor,
    *,
    eps: float,
    out: torch.Tensor | None = None,
    device_type: str = "cuda",
) -> WkvDims:
    """Validate a group-norm + bonus + gate call: y float32 [B, T, H, N]; r k v g [B, T, H, N],
    ln_w ln_b [H * N], r_k [H, N] or [H * N] in one storage dtype; ``out`` like r."""
    op = "groupnorm_bonus_gate"
    vectors = {"r": r, "k": k, "v": v, "g": g}
    params = {"ln_w": ln_w, "ln_b": ln_b, "r_k": r_k}
    tensors = {"y": y, **vectors, **params}
    if out is not None:
        tensors["out"] = out
    _check_tensors(op, tensors, device_type)
    _check_dtype(op, "y", y, torch.float32)
    dtype = _check_same_dtype(op, {**vectors, **params, **({"out": out} if out is not None else {})})
    _check_contiguous(op, tensors)

    _check_ndim(op, "y", y, "[B, T, H, N]")
    B, T, H, N = y.shape
    for name, t in vectors.items():
        _check_shape(op, name, t, "[B, T, H, N] like y", (B, T, H, N))
    _check_shape(op, "ln_w", ln_w, "[H * N]", (H * N,))
    _check_shape(op, "ln_b", ln_b, "[H * N]", (H * N,))
    if tuple(r_k.shape) != (H * N,):  # [H * N] as a checkpoint loader may flatten it, same memory
        _check_shape(op, "r_k", r_k, "[H, N] (or [H * N])", (H, N))
    if out is not None:
        _check_shape(op, "out", out, "[B, T, H, N]", (B, T, H, N))
    _check_head_size(op, N)
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{op}: expected eps a positive float, found {eps!r}")
    _check_limit(op, "B * T * H", B * T * H)
    return WkvDims(B=B, T=T, H=H, N=N, dtype=dtype)


@dataclass(frozen=True)
class MixDims:
    """Sizes of one token-shift call: M mixes over x [B, T, C]."""

    M: int
    B: int
    T: int
    C: int
    dtype: torch.dtype


def check_token_shift_mix(
    x: torch.Tensor,
    x_prev: torch.Tensor,
    mix: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    device_type: str = "cuda",
) -> MixDims:
    """Validate a token-shift mix call: x [B, T, C], x_prev [B, C] float32, mix [M, C] like x;
    ``out`` [M, B, T, C] like x."""
    op = "token_shift_mix"
    tensors = {"x": x, "x_prev": x_prev, "mix": mix}
    if out is not None:
        tensors["out"] = out
    _check_tensors(op, tensors, device_type)
    dtype = _check_same_dtype(op, {"x": x, "mix": mix, **({"out": out} if out is not None else {})})
    _check_dtype(op, "x_prev", x_prev, torch.float32)
    _check_contiguous(op, tensors)

    _check_ndim(op, "x", x, "[B, T, C]")
    B, T, C = x.shape
    _check_shape(op, "x_prev", x_prev, "[B, C]", (B, C))
    _check_ndim(op, "mix", mix, "[M, C]")
    M = mix.shape[0]
    _check_shape(op, "mix", mix, "[M, C]", (M, C))
    if M < 1:
        raise ValueError(f"{op}: expected at least one mix (M >= 1), found mix of shape {tuple(mix.shape)}")
    if out is not None:
        _check_shape(op, "out", out, "[M, B, T, C]", (M, B, T, C))
    _check_limit(op, "T", T)
    _check_limit(op, "C", C)
    return MixDims(M=M, B=B, T=T, C=C, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Launching (needs CuPy and a CUDA device)


def compile_options(head_size: int = DEFAULT_HEAD_SIZE) -> tuple[str, ...]:
    """NVRTC options for a head size; part of the loader's cache key."""
    return (f"-DHEAD_SIZE={head_size}",)


def _ptr(t: torch.Tensor) -> np.uint64:
    return np.uint64(t.data_ptr())  # a pointer parameter is 8 bytes; CuPy passes numpy scalars as is


def current_stream_ptr(device: torch.device) -> int:
    """torch's current stream on ``device`` as a raw pointer (0: the legacy default stream)."""
    return torch.cuda.current_stream(device).cuda_stream


def _launch(source: str, function: str, head_size: int, device: torch.device,
            grid: int, block: int, args: tuple) -> None:
    cupy = loader.cupy_module()
    index = device.index  # a tensor's CUDA device always carries its index
    kernel = loader.get_kernel(source, function, compile_options(head_size), index)
    stream = loader.launch_stream(current_stream_ptr(device), index)
    with cupy.cuda.Device(index):  # the module was loaded in this device's context
        kernel((grid,), (block,), args, stream=stream)


def wkv7_forward(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    w_log: bool = False,
    out: torch.Tensor | None = None,
    kernel: Literal["auto", "sequence", "step"] = "auto",
) -> torch.Tensor:
    """WKV-7 over a sequence: r w k v a b [B, T, H, N] -> y [B, T, H, N] float32.

    ``state`` [B, H, N, N] float32 is read and updated in place. ``w`` is the decay in (0, 1),
    or its logarithm with ``w_log=True`` (exact near 1 in float16 / bfloat16). ``kernel="auto"``
    uses the coalesced step kernel for T = 1 and the sequence kernel otherwise.
    """
    op = "wkv7_forward"
    if kernel not in ("auto", "sequence", "step"):
        raise ValueError(f"{op}: expected kernel 'auto', 'sequence' or 'step', found {kernel!r}")
    dims = check_wkv7(op, state, {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b},
                      step=False, out=out)
    if kernel == "step" and dims.T != 1:
        raise ValueError(f"{op}: expected T = 1 for kernel='step', found T = {dims.T}")
    y = torch.empty(r.shape, dtype=torch.float32, device=r.device) if out is None else out
    if dims.B == 0 or dims.T == 0:
        return y
    if kernel == "step" or (kernel == "auto" and dims.T == 1):
        _launch_step(dims, state, r, w, k, v, a, b, y, w_log)  # [B, 1, H, N] is [B, H, N] in memory
        return y
    suffix = KERNEL_DTYPES[dims.dtype]
    args = (np.int32(dims.B), np.int32(dims.T), np.int32(dims.H), np.int32(bool(w_log)),
            _ptr(state), _ptr(r), _ptr(w), _ptr(k), _ptr(v), _ptr(a), _ptr(b), _ptr(y))
    _launch(WKV7_SOURCE, f"wkv7_forward_{suffix}", dims.N, r.device,
            grid=dims.B * dims.H, block=dims.N, args=args)
    return y


def wkv7_step(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    w_log: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One WKV-7 step (decode): r w k v a b [B, H, N] -> y [B, H, N] float32; state in place."""
    dims = check_wkv7("wkv7_step", state, {"r": r, "w": w, "k": k, "v": v, "a": a, "b": b},
                      step=True, out=out)
    y = torch.empty(r.shape, dtype=torch.float32, device=r.device) if out is None else out
    if dims.B > 0:
        _launch_step(dims, state, r, w, k, v, a, b, y, w_log)
    return y


def _launch_step(dims: WkvDims, state, r, w, k, v, a, b, y, w_log: bool) -> None:
    warps = dims.B * dims.H * (dims.N // WKV7_STEP_ROWS)
    block = WARP_SIZE * WKV7_STEP_WARPS
    grid = -(-warps // WKV7_STEP_WARPS)
    args = (np.int32(dims.B), np.int32(dims.H), np.int32(bool(w_log)),
            _ptr(state), _ptr(r), _ptr(w), _ptr(k), _ptr(v), _ptr(a), _ptr(b), _ptr(y))
    _launch(WKV7_SOURCE, f"wkv7_step_{KERNEL_DTYPES[dims.dtype]}", dims.N, r.device,
            grid=grid, block=block, args=args)


def groupnorm_bonus_gate(
    y: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    r_k: torch.Tensor,
    *,
    eps: float = 64e-5,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(group_norm(y) * ln_w + ln_b + sum_j(r * k * r_k) * v) * g`` per head.

    y [B, T, H, N] float32 (the WKV output); r k v g [B, T, H, N], ln_w ln_b [H * N] and
    r_k [H, N] (or [H * N]) in one storage dtype -> out [B, T, H, N] in that dtype (view it as [B, T, C]).
    """
    dims = check_groupnorm_bonus_gate(y, r, k, v, g, ln_w, ln_b, r_k, eps=eps, out=out)
    result = torch.empty(r.shape, dtype=r.dtype, device=r.device) if out is None else out
    groups = dims.B * dims.T * dims.H
    if groups == 0:
        return result
    grid = -(-groups * WARP_SIZE // GROUPNORM_BLOCK)
    args = (np.int64(groups), np.int32(dims.H), np.float32(eps), _ptr(y), _ptr(r), _ptr(k),
            _ptr(v), _ptr(g), _ptr(ln_w), _ptr(ln_b), _ptr(r_k), _ptr(result))
    _launch(FUSED_SOURCE, f"groupnorm_bonus_gate_{KERNEL_DTYPES[dims.dtype]}", dims.N, r.device,
            grid=grid, block=GROUPNORM_BLOCK, args=args)
    return result


def token_shift_mix(
    x: torch.Tensor,
    x_prev: torch.Tensor,
    mix: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """All token-shift mixes in one pass: ``out[m] = x + (shift(x) - x) * mix[m]``.

    x [B, T, C]; x_prev [B, C] float32, the token before x[:, 0] (from the state; the caller
    updates the state to x[:, -1] afterwards); mix [M, C] like x -> out [M, B, T, C] like x.
    Time mix: M = 6 (stack x_r x_w x_k x_v x_a x_g); channel mix: M = 1.
    """
    dims = check_token_shift_mix(x, x_prev, mix, out=out)
    result = (torch.empty((dims.M, dims.B, dims.T, dims.C), dtype=x.dtype, device=x.device)
              if out is None else out)
    n = dims.B * dims.T * dims.C
    if n == 0:
        return result
    grid = min(-(-n // TOKEN_SHIFT_BLOCK), TOKEN_SHIFT_MAX_BLOCKS)
    args = (np.int64(n), np.int32(dims.T), np.int32(dims.C), np.int32(dims.M),
            _ptr(x), _ptr(x_prev), _ptr(mix), _ptr(result))
    _launch(FUSED_SOURCE, f"token_shift_mix_{KERNEL_DTYPES[dims.dtype]}", DEFAULT_HEAD_SIZE,
            x.device, grid=grid, block=TOKEN_SHIFT_BLOCK, args=args)
    return result


# Every (source, function) a wrapper may launch; the compile test checks each is in the PTX.
KERNEL_FUNCTIONS = {
    WKV7_SOURCE: tuple(f"{name}_{s}" for name in ("wkv7_forward", "wkv7_step")
                       for s in KERNEL_DTYPES.values()),
    FUSED_SOURCE: tuple(f"{name}_{s}" for name in ("groupnorm_bonus_gate", "token_shift_mix")
                        for s in KERNEL_DTYPES.values()),
}
