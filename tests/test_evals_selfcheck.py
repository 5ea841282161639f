"""The chance self-check: a seeded random-weights model must score MMLU-Pro at chance.

A model that knows nothing gets question i right with probability 1/options_i; its number of
correct answers must fall inside the exact 99% interval of that Poisson-binomial distribution.
Scoring against the wrong field, an answer leaking into the prompt, or a scorer that favours one
letter would push a random model outside it. Runs the benchmark's own render/score functions
through :class:`evals.backend.LocalBackend` on a small model shape (one layer, byte vocabulary),
zero-shot to keep CI fast; the same check applies to any --num-fewshot.
"""
from __future__ import annotations

import pytest

from evals.backend import LocalBackend
from evals.metrics import aggregate, poisson_binomial_interval
from evals.sampling import Limit, select
from evals.test_mmlu_pro import BENCHMARK, CATEGORIES, DIRECT_METRICS, build_prompt, load, render_direct, score_direct

engine = pytest.importorskip("engine")


def test_random_model_scores_mmlu_pro_at_chance(shared_dir, seed=0):
    cfg = engine.ModelConfig(n_layer=1, n_embd=64, n_head=1, head_size=64, vocab_size=256, ffn_size=256,
                             rank_w=32, rank_a=32, rank_v=32, rank_g=32)
    backend = LocalBackend(engine.random_model(cfg, seed=seed), batch_size=32)
    test, validation = load()
    chosen = select({c: len(test[c]) for c in CATEGORIES}, Limit(count=56), seed=seed, benchmark=BENCHMARK)
    docs = [test[c][i] for c in CATEGORIES for i in chosen[c]]
    prompts = [build_prompt(d, validation[d["category"]], 0, cot=False) for d in docs]
    per_doc = [render_direct(d, p, bos=True) for d, p in zip(docs, prompts)]
    flat = backend.loglikelihood([r for requests in per_doc for r in requests])
    rows, at = [], 0
    for d, p, requests in zip(docs, prompts, per_doc):
        rows.append(score_direct(d, p, flat[at:at + len(requests)]))
        at += len(requests)
    correct = sum(r["scores"]["acc"] for r in rows)
    low, high = poisson_binomial_interval([1 / len(d["options"]) for d in docs], level=0.99)
    acc = aggregate(rows, DIRECT_METRICS)["acc"]
    assert low <= correct <= high, (f"random model got {correct:.0f}/{len(rows)} right (acc {acc.value:.3f}); "
                                    f"chance allows {low}..{high} at 99%: an answer may be leaking into the prompt")
