"""Evaluation throughput: documents/s through the suite's own path, beside the official package's
per-document loop, on the same documents in the same run.

    pytest --benchmark-only tests/test_eval_throughput.py -p no:randomly                          # 0.1B shape
    pytest --benchmark-only tests/test_eval_throughput.py -p no:randomly --throughput-shape tiny   # smoke run

Seeded random weights (``engine.random_state_dict(engine.official_config("0.1B"))``, float32, the
suite's default dtype). Documents: the first N of LAMBADA (``lambada_openai``); MMLU-Pro direct
5-shot, the first N/2 questions of each of its first two categories (biology, business), so the
shared few-shot header counts as it does in a full run, where every category's header is shared
by hundreds of questions only if the questions batch together; ARC-Easy test, zero-shot.

- ours: the benchmark module's own rendering, then ``LocalBackend(model).loglikelihood`` (what
  ``pytest evals`` runs: tokenizing, batching, shared prefixes, scoring), then its ``score``;
  with ``--batch-size auto`` (the default) and with one document per call (``batch_size=1``).
- official: the ``rwkv`` package (RWKV_V7_ON=1, ``cpu fp32``) in the loop of RWKV's own LAMBADA
  script: per document, the context in one call, then each continuation's tokens one at a time
  (scored from the logits before it, then fed); the options of a question each continue from a
  copy of the context's state. The same token ids (the suite's tokenizer, tested equal to the
  official one) and the per-document log-likelihoods are checked equal to ours.

Timing: ours three rounds after an unmeasured one, their median; the official loop one round right
before ours and one right after, its documents/s from the two rounds' mean time, so that a machine
drifting by 10-15% from minute to minute moves both sides alike (the round after a benchmark is the
next one's "before" when both run the same documents back to back).

Each benchmark's ``extra_info``: documents/s (and per round), tokens, the official loop's documents/s
(and per round) and the ratio (target: >= 4x), for ``auto`` the ratio to one document per call, the
CPU's flags and the product forms the engine measured for it. Timings on a shared machine are not
final figures.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import pytest
import torch

import engine
from evals.backend import LocalBackend
from helpers import skip_unless_benchmark_only, throughput_config
from oracle import load_official
from roofline import machine

TARGET = 4.0  # documents/s against the official per-document loop
ROUNDS = 3  # timed rounds of ours per benchmark (the median counts)
DOCS = {"0.1B": {"lambada": 64, "mmlu_pro": 20, "arc_easy": 64}, "tiny": {"lambada": 6, "mmlu_pro": 4, "arc_easy": 6}}
_official: dict = {}
_ours: dict = {}


@pytest.fixture(scope="session", autouse=True)
def _only_with_benchmark_only(request):
    skip_unless_benchmark_only(request, "pytest --benchmark-only tests/test_eval_throughput.py")


@pytest.fixture(scope="session")
def shape(request) -> str:
    name = request.config.getoption("throughput_shape")
    if name not in DOCS:
        pytest.skip(f"evaluation throughput is measured on the tiny and 0.1B shapes, not {name}")
    return name


@pytest.fixture(scope="session")
def weights(shape):
    return engine.random_state_dict(throughput_config(shape), seed=0)


@pytest.fixture(scope="session")
def model(weights):
    return engine.from_state_dict(weights)


@pytest.fixture(scope="session")
def official(weights, tmp_path_factory):
    return load_official(weights, tmp_path_factory.mktemp("official"), "cpu fp32")


# ---------------------------------------------------------------------------------------------
# the documents, rendered by each benchmark module: (requests per document, score the responses)


def _lambada(n: int, bos: bool = True):
    from evals import test_lambada as m

    docs = m.load()[:n]
    requests = [[m.render(d, bos)] for d in docs]
    return docs, requests, lambda docs, reqs, resps: [m.score(d, q[0], r[0]) for d, q, r in zip(docs, reqs, resps)]


def _mmlu_pro(n: int, bos: bool = True):
    from evals import test_mmlu_pro as m

    test, validation = m.load()
    docs, prompts = [], []
    for category in m.CATEGORIES[:2]:
        for doc in test[category][:n // 2]:
            docs.append(doc)
            prompts.append(m.build_prompt(doc, validation[category], m.DEFAULT_FEWSHOT, cot=False))
    requests = [m.render_direct(d, p, bos) for d, p in zip(docs, prompts)]
    return docs, requests, lambda docs, reqs, resps: [m.score_direct(d, p, r) for d, p, r in zip(docs, prompts, resps)]


def _arc_easy(n: int, bos: bool = True):
    from evals import test_arc as m

    docs = m.load(m.FILES["easy"][0])[:n]
    prompts = [m.build_prompt(d, [], 0) for d in docs]
    requests = [m.render(d, p, bos) for d, p in zip(docs, prompts)]
    return docs, requests, lambda docs, reqs, resps: [
        m.score(d, p, [r.logprob for r in rs]) for d, p, rs in zip(docs, prompts, resps)]


BENCHMARKS: dict[str, Callable] = {"lambada": _lambada, "mmlu_pro": _mmlu_pro, "arc_easy": _arc_easy}


@pytest.fixture(scope="session")
def documents(shape, shared_dir):
    return {name: load(DOCS[shape][name]) for name, load in BENCHMARKS.items()}


# ---------------------------------------------------------------------------------------------
# the two loops


def run_ours(model, docs, requests, score, batch_size):
    """The suite's path: every request of every document in one backend call, then the rows."""
    flat = [r for per_doc in requests for r in per_doc]
    responses = LocalBackend(model, batch_size=batch_size).loglikelihood(flat)
    per_doc, at = [], 0
    for rs in requests:
        per_doc.append(responses[at:at + len(rs)])
        at += len(rs)
    rows = score(docs, requests, per_doc)
    assert len(rows) == len(docs)
    return [[r.logprob for r in rs] for rs in per_doc]


def run_official(official, tokenizer, requests):
    """RWKV's LAMBADA loop: the context in one call, then each continuation token scored from the
    logits before it and fed; each option from a copy of the context's state. Returns the
    log-likelihoods per document and the tokens run."""
    out, tokens = [], 0
    for per_doc in requests:
        context = ([0] if per_doc[0].bos else []) + list(tokenizer.encode(per_doc[0].context))
        ctx_logits, ctx_state = official.forward(context, None)
        tokens += len(context)
        lps = []
        for request in per_doc:
            assert request.context == per_doc[0].context
            logits, state, total = ctx_logits, copy.deepcopy(ctx_state), 0.0
            for tok in tokenizer.encode(request.continuation):
                total += float(torch.log_softmax(logits.float(), dim=-1)[tok])
                logits, state = official.forward([tok], state)
                tokens += 1
            lps.append(total)
        out.append(lps)
    return out, tokens


def _official_round(name, official, tokenizer, requests) -> dict:
    """One timed round of the official loop on these documents, now. The first round per name runs a
    whole round unmeasured first, as ours does (see below)."""
    if name not in _official:
        run_official(official, tokenizer, requests)  # warm-up
    start = time.perf_counter()
    logprobs, tokens = run_official(official, tokenizer, requests)
    seconds = time.perf_counter() - start
    _official[name] = {"seconds": seconds, "tokens": tokens, "logprobs": logprobs}
    _official["last"] = name  # what the machine ran last, for the next benchmark's "before"
    return _official[name]


@pytest.mark.parametrize("batch", ["1", "auto"])
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_eval_throughput(benchmark, name, batch, model, official, documents, shape):
    benchmark.group = f"eval-{name}"
    docs, requests, score = documents[name]
    batch_size = None if batch == "auto" else int(batch)
    # the official loop right before and right after ours, its rate from the mean of the two rounds:
    # the VM's speed moves a round by 10-15% from minute to minute (64 LAMBADA documents took 27.7 s
    # and 33.2 s in one process, 2026-12-02), so one round beside ours made the ratio a draw. The round
    # after the previous benchmark of the same documents is this one's "before" when nothing ran between.
    if _official.get("last") == name:
        before = _official[name]
    else:
        before = _official_round(name, official, model.tokenizer, requests)
    # warm-up: a whole round on the same documents. A first round runs slower than the next ones
    # (6.98 s against 5.38 for 64 LAMBADA documents on a 2-core Xeon, 2026-12-02, in a process that
    # had loaded the official model; with only ours loaded the two rounds read alike), most likely
    # the first allocations of each batch shape. A real run pays that once over thousands of documents.
    run_ours(model, docs, requests, score, batch_size)
    counted = {"tokens": 0}
    real = model.forward

    def forward(tokens, *args, **kwargs):
        lengths = kwargs.get("lengths")  # a ragged batch runs its rows' own tokens (padded: all of them)
        counted["tokens"] += sum(lengths) if lengths is not None and model.ragged_rows else tokens.numel()
        return real(tokens, *args, **kwargs)

    results = []
    model.forward = forward
    try:  # three rounds, their median: ours is a few seconds a round, the official loop tens
        benchmark.pedantic(lambda: results.append(run_ours(model, docs, requests, score, batch_size)),
                           rounds=ROUNDS, warmup_rounds=0)
    finally:
        del model.forward
    after = _official_round(name, official, model.tokenizer, requests)
    reference = {"docs_per_s": 2 * len(requests) / (before["seconds"] + after["seconds"]),
                 "rounds_docs_per_s": [round(len(requests) / r["seconds"], 3) for r in (before, after)],
                 "tokens": after["tokens"], "logprobs": after["logprobs"]}
    # same documents, same numbers: the official loop's log-likelihoods within float32 rounding
    for ours, theirs in zip(results[-1], reference["logprobs"]):
        assert ours == pytest.approx(theirs, abs=2e-3, rel=1e-4)
    counted["tokens"] //= ROUNDS
    rate = len(docs) / benchmark.stats.stats.median
    info = {"benchmark": name, "batch_size": batch, "shape": shape, "documents": len(docs),
            "requests": sum(len(r) for r in requests), "docs_per_s": round(rate, 3),
            "rounds_docs_per_s": [round(len(docs) / t, 3) for t in benchmark.stats.stats.data],
            "tokens_run": counted["tokens"], "official_docs_per_s": round(reference["docs_per_s"], 3),
            "official_rounds_docs_per_s": reference["rounds_docs_per_s"],
            "official_tokens_run": reference["tokens"], "ratio_to_official": round(rate / reference["docs_per_s"], 3),
            "target_ratio": TARGET, "machine": machine(), "cpu_products": model.info().get("cpu_products")}
    info["meets_target"] = info["ratio_to_official"] >= TARGET
    _ours[(name, batch)] = rate
    if batch == "auto" and (name, "1") in _ours:
        info["ratio_to_one_document_per_call"] = round(rate / _ours[(name, "1")], 3)
    benchmark.extra_info.update(info)
    assert math.isfinite(rate) and rate > 0
