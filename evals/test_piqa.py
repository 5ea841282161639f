"""PIQA (Bisk et al. 2020), physical commonsense, validation set, by lm-evaluation-harness's protocol.

Data: ``piqa/valid.jsonl`` (1,838 goals) with ``piqa/valid-labels.lst`` (one 0/1 label per line,
aligned with the questions), the authors' release. A raw record (label line ``0``)::

    {"goal": "How do I ready a guinea pig cage for it's new occupants?",
     "sol1": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, ...",
     "sol2": "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, ..."}

Protocol (lm-eval ``piqa``): zero-shot, context ``Question: {goal}\\nAnswer:``, continuations
`` {sol1}`` and `` {sol2}`` (texts as in the file, trailing spaces kept); ``acc`` and ``acc_norm``
(log-likelihood per character of the solution text).

Reference scores (zero-shot; LLaMA paper, Touvron et al. 2023, Table 3): LLaMA-7B 0.798; GPT-3
175B 0.810 (Brown et al. 2020). Chance 0.5.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, locate, read_jsonl
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC_AND_NORM, choose, requests_for
from evals.suite import Declared

BENCHMARK, CASE = "piqa", "validation"
QUESTIONS, LABELS = "piqa/valid.jsonl", "piqa/valid-labels.lst"



def declare(config) -> list[Declared]:
    return [Declared(BENCHMARK, (CASE,), tuple(ACC_AND_NORM), (QUESTIONS, LABELS), chance=tuple(ACC_AND_NORM))]


def load(data_dir: Path | None = None) -> list[dict[str, Any]]:
    rows = read_jsonl(QUESTIONS, data_dir)
    labels_path = locate(LABELS, data_dir)
    labels = labels_path.read_text(encoding="utf-8").split()
    if len(labels) != len(rows):
        raise ValueError(f"{labels_path}: {len(labels)} labels for {len(rows)} questions in {QUESTIONS}")
    docs = []
    for line, (row, label) in enumerate(zip(rows, labels), start=1):
        if label not in ("0", "1"):
            raise ValueError(f"{labels_path}:{line}: expected label 0 or 1, found {label!r}")
        docs.append({"doc_id": line - 1, "goal": row["goal"], "choices": [row["sol1"], row["sol2"]], "gold": int(label)})
    return docs


def context(doc: dict[str, Any]) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def render(doc: dict[str, Any], bos: bool) -> list[LoglikelihoodRequest]:
    return requests_for(context(doc), [" " + s for s in doc["choices"]], bos)


def score(doc: dict[str, Any], logprobs: Sequence[float]) -> dict[str, Any]:
    chosen = choose(logprobs, doc["gold"], doc["choices"])
    return {"doc_id": doc["doc_id"], "prompt": context(doc), "target": doc["gold"], "choice_logprobs": list(logprobs),
            "extracted": chosen["extracted"], "extracted_norm": chosen["extracted_norm"], "n_options": len(logprobs),
            "scores": chosen["scores"]}


@pytest.fixture(scope="module")
def piqa_docs(eval_config, eval_select):
    docs = load(eval_config.data_dir)
    return [docs[i] for i in eval_select(BENCHMARK, {CASE: len(docs)})[CASE]]


def test_piqa(piqa_docs, evaluation, eval_config):
    if eval_config.num_fewshot:
        raise ValueError("PIQA is evaluated zero-shot (lm-eval has no exemplar split for it); drop --num-fewshot")
    requests = [render(d, eval_config.bos) for d in piqa_docs]
    flat = evaluation.loglikelihood([r for pair in requests for r in pair])
    rows = [score(d, [flat[2 * i].logprob, flat[2 * i + 1].logprob]) for i, d in enumerate(piqa_docs)]
    protocol = {"name": "lm-eval piqa", "num_fewshot": 0, "context": "Question: {goal}\\nAnswer:",
                "continuation": "' ' + solution", "acc_norm": "loglikelihood / len(solution) in characters",
                "context_starts_with_token0": eval_config.bos}
    evaluation.record(BENCHMARK, CASE, rows, ACC_AND_NORM, protocol,
                      [describe(QUESTIONS, eval_config.data_dir), describe(LABELS, eval_config.data_dir)],
                      single_case=True)
