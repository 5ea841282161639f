"""LAMBADA, OpenAI's detokenized test set, by lm-evaluation-harness's ``lambada_openai`` protocol.

Data: ``lambada_openai/lambada_test.jsonl`` (5,153 documents; sha256 = OpenAI's published one).
A raw record::

    {"text": "In my palm is a clear stone, and inside it is a small ivory statuette. ... "}

Protocol: the context is the text without its last space-separated word (``text.split(' ')[:-1]``
joined by spaces), the continuation is a space plus that word. ``acc``: every continuation token
is the model's greedy choice; ``ppl``: exp(-mean continuation log-likelihood). By default the
context starts with RWKV's token 0, as RWKV's own evaluation does; ``--no-bos`` matches lm-eval's
protocol for Hugging Face models. Both the split and the token-0 choice are in the report.

Reference scores (lm-evaluation-harness, ``lambada_openai``): GPT-2 124M acc 0.326, ppl 40.1.
The tiny 834K test model scores near zero accuracy with a perplexity in the thousands.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_jsonl
from evals.backend import LoglikelihoodRequest, LoglikelihoodResponse

BENCHMARK = "lambada"
CASE = "openai"
DATA_FILE = "lambada_openai/lambada_test.jsonl"
DATA_FILES = (DATA_FILE,)  # every manifest file the benchmark reads: ensure() before the first test
METRICS = {"acc": ("mean", "acc"), "ppl": ("perplexity", "logprob")}


def load(data_dir: Path | None = None) -> list[dict[str, Any]]:
    docs = []
    for index, row in enumerate(read_jsonl(DATA_FILE, data_dir)):
        if not isinstance(row.get("text"), str) or " " not in row["text"]:
            raise ValueError(f"{DATA_FILE} document {index}: expected a 'text' string with a space, found {row!r:.80}")
        docs.append({"doc_id": index, "text": row["text"]})
    return docs


def split(text: str) -> tuple[str, str]:
    """``("context", " lastword")``: the leading space belongs to the continuation."""
    context, _, word = text.rpartition(" ")
    return context, " " + word


def render(doc: dict[str, Any], bos: bool = True) -> LoglikelihoodRequest:
    context, continuation = split(doc["text"])
    return LoglikelihoodRequest(context, continuation, bos)


def score(doc: dict[str, Any], request: LoglikelihoodRequest, response: LoglikelihoodResponse) -> dict[str, Any]:
    return {
        "doc_id": doc["doc_id"], "prompt": request.context, "target": request.continuation,
        "logprob": response.logprob, "is_greedy": response.is_greedy,
        "continuation_tokens": response.continuation_tokens,
        "scores": {"acc": float(response.is_greedy), "logprob": response.logprob},
    }


def protocol(bos: bool) -> dict[str, Any]:
    return {"name": "lm-eval lambada_openai", "split": "text.rpartition(' '): context, ' ' + last word",
            "context_starts_with_token0": bos, "acc": "all continuation tokens greedy",
            "ppl": "exp(-mean continuation loglikelihood)", "stderr": "mean: sample sd/sqrt(n); ppl: delta method"}


@pytest.fixture(scope="module")
def lambada_docs(eval_config, eval_select) -> list[dict[str, Any]]:
    docs = load(eval_config.data_dir)
    return [docs[i] for i in eval_select(BENCHMARK, {CASE: len(docs)})[CASE]]


def test_lambada(evaluation, eval_config, lambada_docs):
    requests = [render(doc, eval_config.bos) for doc in lambada_docs]
    responses = evaluation.loglikelihood(requests)
    rows = [score(d, q, r) for d, q, r in zip(lambada_docs, requests, responses)]
    evaluation.record(BENCHMARK, CASE, rows, METRICS, protocol(eval_config.bos),
                      data=[describe(DATA_FILE, eval_config.data_dir)], single_case=True)
