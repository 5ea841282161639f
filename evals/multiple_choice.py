"""Multiple choice by log-likelihood: the requests, the argmax and the length-normalised argmax.

Shared by MMLU, CMMLU, C-Eval, ARC, PIQA, WinoGrande and the custom data module. A question with choices
becomes one :class:`LoglikelihoodRequest` per choice (the leading space belongs to the
continuation); the prediction is the choice of highest log-likelihood (``acc``) and, as in
lm-evaluation-harness, the one of highest log-likelihood per character of the choice text without
the delimiter (``acc_norm``). Ties go to the first choice, as ``numpy.argmax`` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evals.backend import LoglikelihoodRequest, LoglikelihoodResponse

LETTERS = "ABCDEFGHIJ"
ACC = {"acc": ("mean", "acc")}
ACC_AND_NORM = {"acc": ("mean", "acc"), "acc_norm": ("mean", "acc_norm")}


def lettered(question: str, options: Sequence[str], cue: str) -> str:
    """``question\\nA. o1\\nB. o2\\n...cue`` (the MMLU layout; CMMLU has the same shape)."""
    return question + "".join(f"\n{LETTERS[i]}. {option}" for i, option in enumerate(options)) + "\n" + cue


def requests_for(context: str, continuations: Sequence[str], bos: bool) -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(context, continuation, bos) for continuation in continuations]


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first on ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choose(logprobs: Sequence[float], gold: int, texts: Sequence[str] | None = None) -> dict[str, Any]:
    """``extracted`` (the argmax), ``scores`` {acc[, acc_norm]}; ``texts`` (the choices without
    the delimiter) turn on lm-eval's length normalisation: log-likelihood / len(text) in characters."""
    best = argmax(logprobs)
    out: dict[str, Any] = {"extracted": best, "scores": {"acc": float(best == gold)}}
    if texts is not None:
        if any(len(t) == 0 for t in texts):
            raise ValueError(f"acc_norm needs non-empty choice texts, found {list(texts)!r}")
        best_norm = argmax([lp / len(t) for lp, t in zip(logprobs, texts)])
        out["extracted_norm"] = best_norm
        out["scores"]["acc_norm"] = float(best_norm == gold)
    return out


def letter_row(doc: dict[str, Any], prompt: str, logprobs: Sequence[float]) -> dict[str, Any]:
    """The sample row of a question answered by a letter ``doc["answer"]`` (CMMLU, C-Eval): the
    letter of highest log-likelihood among ``LETTERS[:len(logprobs)]``."""
    chosen = choose(logprobs, LETTERS.index(doc["answer"]))
    return {"doc_id": doc["doc_id"], "prompt": prompt, "target": doc["answer"],
            "choice_logprobs": dict(zip(LETTERS, logprobs)), "extracted": LETTERS[chosen["extracted"]],
            "n_options": len(logprobs), "scores": chosen["scores"]}


def record_with_groups(evaluation: Any, benchmark: str, case: str, groups: Sequence[str], rows: Sequence[dict],
                       metrics: dict[str, tuple[str, str]], protocol: dict[str, Any], data: list) -> None:
    """Record a case under ``benchmark`` and again under ``{benchmark}_{group}`` for each of its
    groups (MMLU's and C-Eval's subject groups): a group's pooled score is the overall row of a
    benchmark of its own, which works across xdist workers. Group rows keep only what scoring and
    the chance level read (no prompts twice)."""
    evaluation.record(benchmark, case, rows, metrics, protocol, data)
    slim = [{key: row[key] for key in ("doc_id", "target", "extracted", "n_options", "scores")} for row in rows]
    for group in groups:
        evaluation.record(f"{benchmark}_{group}", case, slim, metrics, {**protocol, "group_of": benchmark}, data)


def split_flat(flat: Sequence[LoglikelihoodResponse], sizes: Sequence[int]) -> list[list[float]]:
    """The flat response list cut back into one list of log-likelihoods per document."""
    out, at = [], 0
    for size in sizes:
        out.append([r.logprob for r in flat[at:at + size]])
        at += size
    if at != len(flat):
        raise RuntimeError(f"expected {at} responses, got {len(flat)}")
    return out
