"""Root conftest: shared test helpers available to ``tests/`` and ``evals/``.

A test that needs shared data calls :func:`require_shared`; outside CI a missing file skips
with the reason, and in CI (``CI=true``) it fails, so a broken checkout never passes vacuously.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarkdata import SHARED_ENV, in_ci, shared_root, tiny_model_dir


def pytest_configure(config):
    # Under pytest-xdist every worker would start one torch (and OpenMP) thread per core: on a
    # 2-core machine with 2 workers that oversubscribes the cores, and OpenMP barriers then spin
    # for a descheduled thread (seen here: 3-6x slower). Each worker gets its share of the cores.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


def require_shared(path: Path) -> Path:
    """Return ``path`` if it exists; otherwise skip (or fail under CI) naming what is missing."""
    if path.exists():
        return path
    message = (
        f"shared data not found: {path} (set {SHARED_ENV} to the shared folder; "
        f"default is ../shared beside the repository)"
    )
    if in_ci():
        pytest.fail(message + " [CI=true: missing shared data is an error]", pytrace=False)
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
