"""Load benchmark on loopback: 64 concurrent clients against one server, bounded in count and time.

Every client sends a greedy completion and an echo-scoring request for its own prompt; every
answer is checked against the engine run in-process (the text exactly, the log-likelihood to
1e-4), so batching under load can never trade correctness for speed. Throughput and latency
percentiles are printed and attached to the test's report (``record_property``; they appear in
``--junitxml`` output).
"""
from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads

CLIENTS = 64
REQUESTS_PER_CLIENT = 2  # one generation, one scoring
MAX_TOKENS = 8
TIME_LIMIT_S = 120.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@pytest.mark.slow
def test_64_concurrent_clients(tiny_model_path, record_property, capsys):
    model = engine.load_model(tiny_model_path)
    prompts = [f"Client {i} asks: what comes after {i * 7 % 50}?" for i in range(CLIENTS)]
    ids = [model.tokenizer.encode(p) for p in prompts]
    pairs = [([0] + x[:-4], x[-4:]) for x in ids]
    with torch_threads(1):
        expected_text = [g.text for g in model.generate(ids, MAX_TOKENS, batch_size=CLIENTS)]
        expected_ll = [lp for lp, _ in model.loglikelihood(pairs)]

    latencies: list[float] = []
    errors: list[str] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        for kind in ("generate", "score"):
            started = time.perf_counter()
            if kind == "generate":
                body = {"prompt": prompts[i], "max_tokens": MAX_TOKENS, "temperature": 0}
            else:
                body = {"prompt": pairs[i][0] + pairs[i][1], "max_tokens": 0, "echo": True, "logprobs": 1}
            response = await http.post("/v1/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(f"client {i} {kind}: HTTP {response.status_code} {response.text[:100]}")
                continue
            choice = response.json()["choices"][0]
            if kind == "generate" and choice["text"] != expected_text[i]:
                errors.append(f"client {i}: text {choice['text']!r} != engine's {expected_text[i]!r}")
            if kind == "score":
                got = sum(choice["logprobs"]["token_logprobs"][len(pairs[i][0]):])
                if abs(got - expected_ll[i]) > 1e-4:
                    errors.append(f"client {i}: loglikelihood {got} != engine's {expected_ll[i]}")

    async def run(url: str) -> float:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=url, timeout=TIME_LIMIT_S, limits=limits) as http:
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(client(i, http) for i in range(CLIENTS))), TIME_LIMIT_S)
            return time.perf_counter() - started

    config = ServerConfig(model_name="tiny", max_batch=64, max_queue=256)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        wall = asyncio.run(run(url))
        stats = httpx.get(f"{url}/stats").json()

    assert not errors, "\n".join(errors[:20])
    n = CLIENTS * REQUESTS_PER_CLIENT
    assert len(latencies) == n
    report = {
        "clients": CLIENTS, "requests": n, "wall_s": round(wall, 3), "requests_per_s": round(n / wall, 2),
        "generated_tokens_per_s": round(CLIENTS * MAX_TOKENS / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 3), "latency_p90_s": round(percentile(latencies, 0.9), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3), "latency_max_s": round(max(latencies), 3),
        "mean_decode_batch": round(stats["mean_decode_batch"], 1),
    }
    for key, value in report.items():
        record_property(key, value)
    with capsys.disabled():
        print("\nserver load:", ", ".join(f"{k}={v}" for k, v in report.items()))
    assert stats["mean_decode_batch"] > 4, "concurrent requests were not batched together"
    assert "500" not in stats["responses_by_status"]
