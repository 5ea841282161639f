"""Benchmarks of step-level search: prefill tokens and wall time with state forking against
re-running each node's whole prefix (``fork=False``), for beam search and MCTS.

    pytest --benchmark-only tests/test_search_benchmark.py                          # 0.1B shape
    pytest --benchmark-only tests/test_search_benchmark.py --throughput-shape tiny   # a quick smoke run

Seeded random weights of the shape (as tests/test_throughput.py), one 512-token question (a
few-shot prompt's length), sampled steps ended by a space, a deterministic stand-in reward (so
the reward model's cost is not measured). Each benchmark's ``extra_info`` holds the prefill and
generated tokens the engine ran, the reward calls, and for the re-running variant the ratios to
forking (prefill tokens, median wall time). Timings on a shared machine are not final figures.
"""
from __future__ import annotations

import pytest
import torch

import engine
from engine.search import SearchSettings, beam_search, mcts
from helpers import skip_unless_benchmark_only, throughput_config

PROMPT = 512
SETTINGS = {
    "beam": SearchSettings("beam", 48, delimiter=" ", max_steps=4, expand=4, beam_width=4, temperature=1.0, seed=1),
    "mcts": SearchSettings("mcts", 48, delimiter=" ", max_steps=4, expand=4, simulations=8, temperature=1.0, seed=1),
}
_measured: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _only_with_benchmark_only(request):
    skip_unless_benchmark_only(request, "pytest --benchmark-only tests/test_search_benchmark.py")


@pytest.fixture(scope="session")
def model(request):
    return engine.random_model(throughput_config(request.config.getoption("throughput_shape")), seed=0)


def _reward(items):
    return [(len("".join(steps)) * 37 % 11) / 10 for _, steps in items]


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "rerun"])
@pytest.mark.parametrize("strategy", ["beam", "mcts"])
def test_search(benchmark, model, strategy, fork):
    benchmark.group = f"search-{strategy}"
    V = model.config.vocab_size
    prompt = [0] + torch.randint(1, V, (PROMPT - 1,), generator=torch.Generator().manual_seed(3)).tolist()
    counted = {"prefill": 0, "generated": 0}

    def on_tokens(prefill, generated):
        counted["prefill"] += prefill
        counted["generated"] += generated

    search = beam_search if strategy == "beam" else mcts
    results = []

    def run():
        counted.update(prefill=0, generated=0)
        results[:] = search(model, [prompt], SETTINGS[strategy], _reward, fork=fork, on_tokens=on_tokens)

    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    (result,) = results
    assert counted["prefill"] == result.prefill_tokens and counted["generated"] == result.generated_tokens
    if fork:
        assert result.prefill_tokens == PROMPT  # the question's prompt, once
    info = {"strategy": strategy, "fork": fork, "shape": model.config.to_dict(), "prompt_tokens": PROMPT,
            "prefill_tokens": result.prefill_tokens, "generated_tokens": result.generated_tokens,
            "reward_calls": result.reward_calls, "nodes": len(result.tree), "median_s": benchmark.stats.stats.median}
    _measured[(strategy, fork)] = info
    base = _measured.get((strategy, True))
    if not fork and base is not None:
        info["prefill_ratio_to_fork"] = round(result.prefill_tokens / base["prefill_tokens"], 2)
        info["time_ratio_to_fork"] = round(info["median_s"] / base["median_s"], 2)
    benchmark.extra_info.update(info)
