"""ARC (AI2 Reasoning Challenge), Easy and Challenge test sets, by lm-evaluation-harness's protocol.

Data: ``arc/ARC-Easy-test.jsonl`` (2,376 questions) and ``arc/ARC-Challenge-test.jsonl`` (1,172),
the AI2 originals in the HF ``allenai/ai2_arc`` schema; validation files (570 / 299) give
exemplars for ``--num-fewshot``. A raw record::

    {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite impact. ...",
     "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
     "Planetary days will become shorter.", "Planetary gravity will become stronger."],
     "label": ["A", "B", "C", "D"]}, "answerKey": "C"}

Some items (97 in Easy, 22 in Challenge) label their choices ``"1"``..``"4"``; the gold is the
position of ``answerKey`` among the labels either way, and 3- and 5-choice items keep their count.

Protocol (lm-eval ``arc_easy``/``arc_challenge``): context ``Question: {question}\\nAnswer:``,
continuations `` {choice text}``; zero-shot by default (with ``--num-fewshot k`` the first k
validation items, each followed by its correct text and a blank line). ``acc``: highest
log-likelihood; ``acc_norm``: highest log-likelihood per character of the choice text.

Reference scores (zero-shot, lm-eval-style scoring; LLaMA paper, Touvron et al. 2023, Table 3):
LLaMA-7B ARC-e 0.728, ARC-c 0.476. Chance about 0.25.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_jsonl
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC_AND_NORM, choose, requests_for, split_flat
from evals.suite import Declared

BENCHMARK = "arc"
FILES = {"easy": ("arc/ARC-Easy-test.jsonl", "arc/ARC-Easy-validation.jsonl"),
         "challenge": ("arc/ARC-Challenge-test.jsonl", "arc/ARC-Challenge-validation.jsonl")}
CASE_PARAM = "case"


def declare(config) -> list[Declared]:
    return [Declared(BENCHMARK, tuple(FILES), tuple(ACC_AND_NORM), tuple(f for pair in FILES.values() for f in pair),
                     chance=tuple(ACC_AND_NORM))]


def preprocess(row: dict[str, Any], where: str) -> dict[str, Any]:
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    if len(labels) != len(texts) or row.get("answerKey") not in labels:
        raise ValueError(f"{where}: answerKey {row.get('answerKey')!r} is not one of the labels {labels}")
    return {"doc_id": row["id"], "question": row["question"], "choices": list(texts),
            "labels": list(labels), "gold": labels.index(row["answerKey"])}


def load(name: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    return [preprocess(row, f"{name} row {i}") for i, row in enumerate(read_jsonl(name, data_dir))]


def context(doc: dict[str, Any]) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def build_prompt(doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int) -> str:
    shots = "".join(context(e) + " " + e["choices"][e["gold"]] + "\n\n" for e in exemplars[:k])
    return shots + context(doc)


def render(doc: dict[str, Any], prompt: str, bos: bool) -> list[LoglikelihoodRequest]:
    return requests_for(prompt, [" " + text for text in doc["choices"]], bos)


def score(doc: dict[str, Any], prompt: str, logprobs: Sequence[float]) -> dict[str, Any]:
    chosen = choose(logprobs, doc["gold"], doc["choices"])
    return {"doc_id": doc["doc_id"], "prompt": prompt, "target": doc["labels"][doc["gold"]],
            "choice_logprobs": dict(zip(doc["labels"], logprobs)), "extracted": doc["labels"][chosen["extracted"]],
            "extracted_norm": doc["labels"][chosen["extracted_norm"]], "n_options": len(logprobs),
            "scores": chosen["scores"]}


def protocol(k: int, bos: bool) -> dict[str, Any]:
    return {"name": "lm-eval arc_easy / arc_challenge", "num_fewshot": k,
            "fewshot_source": "validation split, first_n" if k else None,
            "context": "Question: {question}\\nAnswer:", "continuation": "' ' + choice text",
            "acc_norm": "loglikelihood / len(choice text) in characters", "context_starts_with_token0": bos}


@pytest.fixture(scope="module")
def arc_data(eval_config, eval_select):
    tests = {case: load(test, eval_config.data_dir) for case, (test, _) in FILES.items()}
    chosen = eval_select(BENCHMARK, {case: len(docs) for case, docs in tests.items()})
    return {case: [tests[case][i] for i in chosen[case]] for case in FILES}


@pytest.mark.parametrize("case", FILES)
def test_arc(case, arc_data, evaluation, eval_config):
    docs, k = arc_data[case], eval_config.num_fewshot or 0
    exemplars = load(FILES[case][1], eval_config.data_dir) if k else []
    prompts = [build_prompt(d, exemplars, k) for d in docs]
    per_doc = [render(d, p, eval_config.bos) for d, p in zip(docs, prompts)]
    flat = evaluation.loglikelihood([r for requests in per_doc for r in requests])
    rows = [score(d, p, lps) for d, p, lps in zip(docs, prompts, split_flat(flat, [len(r) for r in per_doc]))]
    data = [describe(name, eval_config.data_dir) for name in FILES[case][: 2 if k else 1]]
    evaluation.record(BENCHMARK, case, rows, ACC_AND_NORM, protocol(k, eval_config.bos), data)
