"""Load the CUDA sources in this folder with ``cupy.RawModule``, once per (file, options, device),
and hand CuPy torch's streams to launch on.

CuPy is imported only when a kernel is first needed, so the rest of the engine (and this module)
imports on machines without it. Sources are read relative to this file, and local
``#include "x.cuh"`` lines are pasted in before compiling: NVRTC gets one self-contained string,
and CuPy's on-disk kernel cache, which is keyed on that string and the options, sees a change to a
header as a change to the program.

Streams: a kernel runs on torch's current stream, passed to each launch as ``stream=``. CuPy 14
deprecated ``cupy.cuda.ExternalStream`` (it warns on every construction) in favour of
``cupy.cuda.Stream.from_external(obj)``, which reads the CUDA stream protocol
(``obj.__cuda_stream__() -> (0, pointer)``); :func:`launch_stream` builds that object once per
(pointer, device) and CuPy 13, which lacks it, gets its ``ExternalStream``.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

KERNEL_DIR = Path(__file__).resolve().parent
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')
_PRAGMA_ONCE = re.compile(r"^\s*#\s*pragma\s+once\s*$")


def cupy_module() -> Any:
    """Return the ``cupy`` module, or raise ImportError saying how to install it."""
    try:
        import cupy
    except ImportError as exc:
        from . import cupy_install_hint

        raise ImportError(
            f"the GPU kernels need CuPy: expected an importable `cupy`, found none ({cupy_install_hint()})"
        ) from exc
    return cupy


def read_source(name: str) -> str:
    """The source of ``name`` (a file in this folder) with its local includes pasted in.

    Each header is pasted once, without its ``#pragma once`` (a warning in a main file);
    ``#include <...>`` lines are left alone, though the kernels use none (NVRTC has no system
    headers to offer).
    """
    return _expand(KERNEL_DIR / name, seen=set())


def _expand(path: Path, seen: set[Path]) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"kernel source not found: expected {path}")
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _PRAGMA_ONCE.match(line):
            continue
        match = _LOCAL_INCLUDE.match(line)
        if match is None:
            lines.append(line)
            continue
        header = (path.parent / match.group(1)).resolve()
        if not header.is_file():
            raise FileNotFoundError(
                f"{path.name}:{number}: #include \"{match.group(1)}\" expected a file at {header}"
            )
        if header not in seen:
            seen.add(header)
            lines.append(f"// ---- begin {header.name} ----")
            lines.append(_expand(header, seen))
            lines.append(f"// ---- end {header.name} ----")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def load_module(name: str, options: tuple[str, ...], device: int) -> Any:
    """A compiled ``cupy.RawModule`` for source ``name`` with compile ``options`` on ``device``.

    Cached: the first call per key compiles (NVRTC, or CuPy's disk cache), later calls are free.
    """
    cupy = cupy_module()
    with cupy.cuda.Device(device):
        module = cupy.RawModule(code=read_source(name), options=options)
        module.compile()  # compile now, so a source error surfaces here and not mid-model
    return module


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, function: str, options: tuple[str, ...], device: int) -> Any:
    """The ``cupy.RawKernel`` ``function`` from source ``name`` (see :func:`load_module`)."""
    cupy = cupy_module()
    module = load_module(name, options, device)
    with cupy.cuda.Device(device):
        return module.get_function(function)


class StreamHandle:
    """A raw ``cudaStream_t`` as an object of the CUDA stream protocol (what
    ``cupy.cuda.Stream.from_external`` reads); torch's streams are never destroyed, so the
    pointer stays valid."""

    __slots__ = ("ptr",)

    def __init__(self, ptr: int):
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


@functools.lru_cache(maxsize=64)
def launch_stream(ptr: int, device: int) -> Any:
    """The CuPy stream object for torch's stream ``ptr`` on ``device``, built once per pair
    (the same pointer value on two devices is two streams; torch's stream pool bounds the pairs)."""
    cupy = cupy_module()
    stream_class = cupy.cuda.Stream
    if hasattr(stream_class, "from_external"):  # CuPy >= 14: the supported API
        return stream_class.from_external(StreamHandle(ptr))
    return cupy.cuda.ExternalStream(ptr, device)  # CuPy 13: no from_external, not deprecated there


def clear_cache() -> None:
    """Forget every loaded module and stream object (tests use it; kernels compile again on next use)."""
    get_kernel.cache_clear()
    load_module.cache_clear()
    launch_stream.cache_clear()
