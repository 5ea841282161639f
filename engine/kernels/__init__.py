"""CUDA kernels of the GPU path: ``*.cu`` sources, their loader and their Python wrappers.

- ``wkv7.cu``   WKV-7 recurrence, sequence (prefill) and single-step (decode) kernels
- ``fused.cu``  group norm + bonus + gate after WKV; all token-shift mixes in one pass
- ``loader``    compiles a source with ``cupy.RawModule``, cached per (file, options, device)
- ``ops``       one validating wrapper per kernel (``ops.wkv7_forward`` and friends)
- ``reference`` plain-PyTorch twins of every kernel, the oracle for the GPU tests

This file imports nothing heavy and never CuPy: CuPy loads on the first kernel launch, so
everything except launching (validation, the twins, the sources) works without a GPU.
"""
from __future__ import annotations

import importlib.util

SOURCES = ("wkv7.cu", "fused.cu")


def cupy_available() -> bool:
    """True when ``cupy`` is importable (it is not imported here)."""
    return importlib.util.find_spec("cupy") is not None
