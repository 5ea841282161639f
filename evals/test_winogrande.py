"""WinoGrande (Sakaguchi et al. 2020), dev set, by lm-evaluation-harness's partial scoring.

Data: ``winogrande/dev_mosaicml_gauntlet.jsonl`` (1,267 sentences, the official dev size), MosaicML's
reformatted copy: the original ``sentence``/``option1``/``option2``/``answer`` fields are already
split at the blank into the two option-filled prefixes and the shared rest (``gold`` 0-based,
0 = option1). A raw record::

    {"context_options": ["Sarah was a much better surgeon than Maria so Sarah",
                         "Sarah was a much better surgeon than Maria so Maria"],
     "continuation": "always got the easier cases.", "gold": 1}

Protocol (lm-eval ``winogrande``, partial evaluation): for each option the context is the
sentence up to the blank with the option filled in (``sentence[:idx] + option``), and the SAME
continuation, a space plus the rest of the sentence stripped, is scored under each context;
``acc``: the option whose context gives the continuation the higher log-likelihood. Zero-shot.

Reference scores (zero-shot; LLaMA paper, Touvron et al. 2023, Table 3): LLaMA-7B 0.701; GPT-3
175B 0.702 (Brown et al. 2020). Chance 0.5.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_jsonl
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC, choose
from evals.suite import Declared

BENCHMARK, CASE = "winogrande", "dev"
DATA_FILE = "winogrande/dev_mosaicml_gauntlet.jsonl"



def declare(config) -> list[Declared]:
    return [Declared(BENCHMARK, (CASE,), tuple(ACC), (DATA_FILE,), chance=tuple(ACC))]


def load(data_dir: Path | None = None) -> list[dict[str, Any]]:
    docs = []
    for index, row in enumerate(read_jsonl(DATA_FILE, data_dir)):
        contexts, rest, gold = row.get("context_options"), row.get("continuation"), row.get("gold")
        if not (isinstance(contexts, list) and len(contexts) == 2 and isinstance(rest, str) and rest.strip()
                and gold in (0, 1)):
            raise ValueError(f"{DATA_FILE} row {index + 1}: expected 2 context_options, a continuation and "
                             f"gold 0/1, found {row!r:.160}")
        docs.append({"doc_id": index, "contexts": contexts, "continuation": rest, "gold": gold})
    return docs


def render(doc: dict[str, Any], bos: bool) -> list[LoglikelihoodRequest]:
    """One continuation, two contexts: lm-eval's target ``sentence[idx+1:].strip()`` after a space."""
    continuation = " " + doc["continuation"].strip()
    return [LoglikelihoodRequest(c, continuation, bos) for c in doc["contexts"]]


def score(doc: dict[str, Any], logprobs: Sequence[float]) -> dict[str, Any]:
    chosen = choose(logprobs, doc["gold"])
    return {"doc_id": doc["doc_id"], "prompt": " | ".join(doc["contexts"]) + " || " + doc["continuation"],
            "target": doc["gold"], "choice_logprobs": list(logprobs), "extracted": chosen["extracted"],
            "n_options": len(logprobs), "scores": chosen["scores"]}


@pytest.fixture(scope="module")
def winogrande_docs(eval_config, eval_select):
    docs = load(eval_config.data_dir)
    return [docs[i] for i in eval_select(BENCHMARK, {CASE: len(docs)})[CASE]]


def test_winogrande(winogrande_docs, evaluation, eval_config):
    if eval_config.num_fewshot:
        raise ValueError("WinoGrande is evaluated zero-shot here (partial scoring); drop --num-fewshot")
    requests = [render(d, eval_config.bos) for d in winogrande_docs]
    flat = evaluation.loglikelihood([r for pair in requests for r in pair])
    rows = [score(d, [flat[2 * i].logprob, flat[2 * i + 1].logprob]) for i, d in enumerate(winogrande_docs)]
    protocol = {"name": "lm-eval winogrande (partial evaluation)", "num_fewshot": 0,
                "contexts": "sentence[:blank] + option", "continuation": "' ' + sentence[blank+1:].strip()",
                "data_layout": "MosaicML gauntlet (context_options, continuation, gold 0-based)",
                "context_starts_with_token0": eval_config.bos}
    evaluation.record(BENCHMARK, CASE, rows, ACC, protocol, [describe(DATA_FILE, eval_config.data_dir)],
                      single_case=True)
