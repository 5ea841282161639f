"""Compile every CUDA source with nvcc for sm_90 at each supported head size; no GPU needed.

Compiles the exact string the loader hands to NVRTC (local headers pasted in) with
``nvcc -ptx`` (what NVRTC produces for CuPy), then assembles that PTX with ``ptxas``, which
reports register spills and local memory (the WKV state row must stay in registers).
Front-end warnings are errors (``-Werror all-warnings``), and any ``warning`` on stderr fails
the test. Variants build in parallel in one session fixture. Without nvcc the tests skip,
except under CI=true, where CI machines have nvcc and its absence is an error.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarkdata import in_ci
from engine.kernels import SOURCES, loader, ops

ARCH = "sm_90"
COMPILED_HEAD_SIZES = (32, 64, 128)
NVCC_FLAGS = ("-ptx", f"-arch={ARCH}", "-Werror", "all-warnings")
PTXAS_FLAGS = (f"-arch={ARCH}", "-warn-spills", "-warn-lmem-usage")


@dataclass(frozen=True)
class Build:
    commands: list[str]
    returncode: int
    log: str
    ptx: Path


def nvcc_path() -> str:
    path = shutil.which("nvcc")
    if path is None:
        message = "nvcc not found on PATH: cannot compile the CUDA kernels"
        if in_ci():
            pytest.fail(message + " [CI=true: CI machines have nvcc, so this is an error]", pytrace=False)
        pytest.skip(message)
    return path


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _build(nvcc: str, src: Path, head_size: int) -> Build:
    """nvcc -ptx, then ptxas on that PTX (cheaper than a second front-end pass for -cubin)."""
    ptx = src.with_name(f"{src.stem}-N{head_size}.ptx")
    to_ptx = [nvcc, *NVCC_FLAGS, f"-DHEAD_SIZE={head_size}", str(src), "-o", str(ptx)]
    done = _run(to_ptx)
    commands, log = [" ".join(to_ptx)], done.stderr + done.stdout
    if done.returncode == 0:
        ptxas = str(Path(nvcc).with_name("ptxas"))
        to_cubin = [ptxas, *PTXAS_FLAGS, str(ptx), "-o", str(ptx.with_suffix(".cubin"))]
        done = _run(to_cubin)
        commands.append(" ".join(to_cubin))
        log += done.stderr + done.stdout
    return Build(commands, done.returncode, log, ptx)


VARIANTS = [(s, n) for s in SOURCES for n in COMPILED_HEAD_SIZES]


def _variant_id(source: str, head_size: int) -> str:
    return f"{source}-N{head_size}"


@pytest.fixture(scope="session")
def builds(tmp_path_factory) -> dict[str, Build]:
    nvcc = nvcc_path()
    root = tmp_path_factory.mktemp("nvcc")
    for source in SOURCES:
        (root / source).write_text(loader.read_source(source), encoding="utf-8")  # what NVRTC gets
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        jobs = {_variant_id(s, n): pool.submit(_build, nvcc, root / s, n) for s, n in VARIANTS}
        return {key: job.result() for key, job in jobs.items()}


@pytest.mark.parametrize("source, head_size", VARIANTS, ids=[_variant_id(*v) for v in VARIANTS])
def test_compiles_cleanly(builds, source, head_size):
    build = builds[_variant_id(source, head_size)]
    shown = "\n".join(build.commands)
    assert build.returncode == 0, f"compile failed ({build.returncode}):\n{shown}\n{build.log}"
    warnings = [line for line in build.log.splitlines() if re.search(r"warning", line, re.I)]
    assert not warnings, f"compiler warned:\n{shown}\n" + "\n".join(warnings)
    entries = set(re.findall(r"\.entry\s+(\w+)", build.ptx.read_text()))
    missing = set(ops.KERNEL_FUNCTIONS[source]) - entries
    assert not missing, f"{source}: ops launches {sorted(missing)}, not in the PTX {sorted(entries)}"


def test_unsupported_head_size_is_a_compile_error(tmp_path):
    nvcc = nvcc_path()
    src = tmp_path / "wkv7.cu"
    src.write_text(loader.read_source("wkv7.cu"), encoding="utf-8")
    build = _build(nvcc, src, 48)
    assert build.returncode != 0
    assert "HEAD_SIZE must be 32, 64, 96 or 128" in build.log
