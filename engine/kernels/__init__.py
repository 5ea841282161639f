"""Kernels: the CPU fast path (``cpu``, ``tuning``) and the CUDA kernels of the GPU path (the rest).

- ``cpu``       the compiled CPU kernels (``wkv7_cpu.c``, ``matvec_cpu.c``), the product forms and
                ``CPUPath`` (``linear``, ``lora``, ``wkv``) that the model's fast path runs
- ``tuning``    which product form runs at which row count: measured once per machine, cached

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


# CuPy ships one wheel per CUDA major version; the one to install is the one matching the CUDA
# that torch was built with (torch.version.cuda), since both load the same driver and libraries.
CUPY_WHEELS = {11: "cupy-cuda11x", 12: "cupy-cuda12x", 13: "cupy-cuda13x"}


def cupy_wheel(cuda_version: str | None) -> str:
    """The CuPy wheel for a CUDA version such as ``torch.version.cuda`` ("13.0" -> "cupy-cuda13x").

    Raises ValueError for a torch without CUDA (``None``) or a CUDA major CuPy has no wheel for.
    """
    if not cuda_version:
        raise ValueError("this torch was built without CUDA (torch.version.cuda is None): install a "
                         "CUDA build of torch first; the CuPy wheel follows its CUDA version")
    try:
        major = int(str(cuda_version).split(".")[0])
    except ValueError:
        raise ValueError(f"expected a CUDA version such as '13.0', found {cuda_version!r}") from None
    if major not in CUPY_WHEELS:
        raise ValueError(f"no CuPy wheel for CUDA {cuda_version}: expected CUDA major "
                         f"{', '.join(map(str, CUPY_WHEELS))}")
    return CUPY_WHEELS[major]


def cupy_install_hint() -> str:
    """How to install CuPy here: the wheel matching torch's CUDA, or why none fits."""
    import torch

    try:
        wheel = cupy_wheel(torch.version.cuda)
    except ValueError as exc:
        return str(exc)
    extra = {"cupy-cuda12x": "cuda12", "cupy-cuda13x": "cuda13"}.get(wheel)
    via_extra = f" (or pip install 'rwkveval[{extra}]')" if extra else ""
    return f"pip install {wheel}{via_extra}: torch here was built with CUDA {torch.version.cuda}"
