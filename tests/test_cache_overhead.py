"""What storing every answer as it arrives costs: a 1,000-request case with and without the response
cache, in one run on the same model.

    pytest --benchmark-only tests/test_cache_overhead.py
    pytest --benchmark-only tests/test_cache_overhead.py --throughput-shape tiny   # CI's smoke run: 100 requests

The case is 1,000 log-likelihood requests, the first 1,000 LAMBADA documents with their contexts
cut to the last 128 characters (short requests make the per-answer cost weigh more, so the
figure is an upper bound for real cases), on the tiny real model from the shared folder, scored through :class:`evals.backend.LocalBackend`, once
bare and once behind :class:`evals.cache.CachedBackend` on an empty cache file (every answer
committed in its own transaction). ``extra_info`` holds both times and the overhead; the target
(issue 11) is under 5% of the uncached time.
"""
from __future__ import annotations

import statistics
import time

import pytest

import engine
from benchmarkdata.loader import read_jsonl
from evals.backend import LocalBackend, LoglikelihoodRequest
from evals.cache import CachedBackend, ResponseCache
from evals.test_lambada import render

REQUESTS = 1000
SMOKE_REQUESTS = 100  # proves the code runs; the 5% target is judged on the full case only
CONTEXT_CHARS = 128
TARGET = 0.05


@pytest.fixture(scope="session", autouse=True)
def _only_with_benchmark_only(request):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("the cache overhead benchmark runs with `pytest --benchmark-only tests/test_cache_overhead.py`")


@pytest.fixture(scope="module")
def requests_count(request) -> int:
    return SMOKE_REQUESTS if request.config.getoption("throughput_shape") == "tiny" else REQUESTS


@pytest.fixture(scope="module")
def case(shared_dir, requests_count) -> list[LoglikelihoodRequest]:
    docs = read_jsonl("lambada_openai/lambada_test.jsonl")[:requests_count]
    requests = [render({"doc_id": i, "text": d["text"]}) for i, d in enumerate(docs)]
    return [LoglikelihoodRequest(r.context[-CONTEXT_CHARS:], r.continuation, r.bos) for r in requests]


def test_cache_overhead_on_a_1000_request_case(benchmark, tiny_model_path, case, requests_count, tmp_path):
    backend = LocalBackend(engine.load_model(tiny_model_path), batch_size=16)
    backend.loglikelihood(case[:32])  # warm-up: kernels built, allocator primed
    bare, cached, stored = [], [], []
    for round_ in range(3):  # interleaved, so drift of a shared machine hits both alike
        started = time.perf_counter()
        expected = backend.loglikelihood(case)
        bare.append(time.perf_counter() - started)
        cache = ResponseCache.open(tmp_path / f"round{round_}")
        started = time.perf_counter()
        answers = CachedBackend(backend, cache).loglikelihood(case)
        cached.append(time.perf_counter() - started)
        stored.append(cache.count())
        assert answers == expected
    # paired by round (interleaved, so a drift of the shared machine hits both sides of a pair alike)
    overhead = statistics.median(c / b for c, b in zip(cached, bare)) - 1
    benchmark.extra_info.update({"requests": requests_count, "bare_s": bare, "cached_s": cached, "stored": stored,
                                 "overhead": overhead, "target": TARGET})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures above are the result
    print(f"\ncache overhead on {requests_count} requests: bare {statistics.median(bare):.2f} s, "
          f"cached {statistics.median(cached):.2f} s, {overhead:+.1%} (target < {TARGET:.0%})")
    assert stored == [requests_count] * 3
    if requests_count == REQUESTS:
        assert overhead < TARGET, f"storing each answer cost {overhead:.1%} of the case's time"
