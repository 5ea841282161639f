"""Root conftest: shared test helpers available to ``tests/`` and ``evals/``.

A test that needs shared data calls :func:`require_shared`; outside CI a missing file skips
with the reason, and in CI (``CI=true``) it fails, so a broken checkout never passes vacuously.
GPU tests use the ``cuda_ready`` fixture: without a GPU or CuPy they skip, except in the GPU run
(``RWKVEVAL_REQUIRE_GPU=1``, set by docs/perf/run_gpu.sh), where that and missing shared data
fail, so the one run on a lent GPU cannot pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarkdata import SHARED_ENV, in_ci, shared_root, tiny_model_dir

# `pytest --benchmark-only`: tokens/s, ratio to the official package and roofline fraction per scenario
pytest_plugins = ["evals.benchmark_table"]


def pytest_configure(config):
    # Under pytest-xdist every worker would start one torch (and OpenMP) thread per core: on a
    # 2-core machine with 2 workers that oversubscribes the cores, and OpenMP barriers then spin
    # for a descheduled thread (seen here: 3-6x slower). Each worker gets its share of the cores.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


REQUIRE_GPU_ENV = "RWKVEVAL_REQUIRE_GPU"


def gpu_run() -> bool:
    """True in the GPU run (``RWKVEVAL_REQUIRE_GPU=1``): GPU tests and their data must be there."""
    return os.environ.get(REQUIRE_GPU_ENV) == "1"


def require_shared(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip (or fail under CI or the GPU run) naming what is missing."""
    if path.exists():
        return path
    message = (
        f"shared data not found: {path} (set {SHARED_ENV} to the shared folder; "
        f"default is ../shared beside the repository)"
    )
    if in_ci():
        pytest.fail(message + " [CI=true: missing shared data is an error]", pytrace=False)
    if gpu_run():
        pytest.fail(message + f" [{REQUIRE_GPU_ENV}=1: the GPU run must have it]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def cuda_ready() -> None:
    """A CUDA GPU and CuPy, or a skip naming what is missing (a failure in the GPU run)."""
    import torch

    from engine.kernels import cupy_available, cupy_install_hint

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if not cupy_available():
        missing.append(f"CuPy ({cupy_install_hint()})" if torch.version.cuda else "CuPy")
    if not missing:
        return
    message = "needs " + " and ".join(missing)
    if gpu_run():
        pytest.fail(message + f" [{REQUIRE_GPU_ENV}=1: GPU tests must run, not skip]", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared(shared_root())


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    return require_shared(tiny_model_dir() / "tiny-rwkv7-834K.pth")


@pytest.fixture(scope="session")
def tiny_expected_logits() -> Path:
    return require_shared(tiny_model_dir() / "expected-logits-7v0-834K.bin")


def pytest_addoption(parser):
    group = parser.getgroup("rwkveval-throughput", "rwkveval throughput benchmarks")
    group.addoption(
        "--throughput-shape", default="0.1B", choices=["tiny", "0.1B", "0.4B", "1.5B", "2.9B", "7.2B"],
        help="model shape of the CPU throughput benchmarks (random seeded weights; default: %(default)s)",
    )
    group.addoption(
        "--gpu-shapes", default="0.1B",
        help="official shapes of the GPU throughput benchmarks, comma-separated from 0.1B,0.4B,1.5B,2.9B,7.2B, "
             "or 'all' (random seeded weights, float16; default: %(default)s)",
    )
    group.addoption(
        "--gpu-bench-log", default=None, metavar="FILE",
        help="append each GPU benchmark's extra_info to FILE as one JSON line the moment it ends "
             "(a run killed part way keeps what ran; docs/perf/gpu_tasks.py table reads it)",
    )
