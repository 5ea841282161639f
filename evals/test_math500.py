"""MATH-500 (Lightman et al. 2023, "Let's Verify Step by Step"), final answers judged by math-verify.

Data: ``math500/test.jsonl`` (500 problems of the MATH test set, byte-identical to openai/prm800k's
``math_splits/test.jsonl``). A raw record (truncated)::

    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer ...",
     "solution": "We have that $r = \\\\sqrt{0^2 + 3^2} = 3.$ ... $\\\\boxed{\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)}.$",
     "answer": "\\\\left( 3, \\\\frac{\\\\pi}{2} \\\\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"}

Protocol: zero-shot, the instruction of the Qwen2.5-Math / DeepSeek-R1 evaluations,
``{problem}\\nPlease reason step by step, and put your final answer within \\boxed{}.``; as a
completion ``Problem:\\n{instruction}\\n\\nSolution:`` (stop at ``\\n\\nProblem:``), or with
``--template rwkv`` one chat turn; greedy, ``--max-new-tokens`` (2048). The answer is the content
of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) with nested braces matched;
it and the reference are parsed as LaTeX by math-verify (HF, ``parse``/``verify``: sympy
equivalence, so ``\\frac12`` = ``0.5``, ``(3,\\frac{\\pi}{2})`` = ``\\left( 3, \\frac{\\pi}{2}
\\right)``, ``\\{1,2\\}`` = ``\\{2,1\\}``), never compared as strings. ``--boxed any`` judges an
output right when ANY of its boxes is (recorded as ``protocol.boxed``; votes
still compare the last box). ``--system-prompt`` opens the ``--template rwkv`` chat. Reported: ``acc``,
``no_boxed`` (outputs without a boxed answer) and ``unparsable`` (a boxed answer math-verify
could not parse); both count as wrong. ``--samples N`` adds ``maj@k``/``pass@k`` (votes grouped
by math-verify equivalence); ``--strategy`` adds votes over sampled or searched candidates
(``evals/ttc``), grouped the same way.

Reference scores (MATH-500 pass@1, DeepSeek-R1 report, Guo et al. 2025, Table 4): GPT-4o-0513
0.746, Claude-3.5-Sonnet-1022 0.783, DeepSeek-R1 0.973.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_jsonl
from evals.answer_checking import boxed_answers, equivalent, last_boxed, parse_latex
from evals.backend import GenerateResponse
from evals.generation import add_sampling, greedy_and_samples, sampling_metrics, sampling_scores
from evals.suite import Declared
from evals.templates import RWKV_STOP, rwkv_chat
from evals.ttc.run import Task, metric_names, run_strategy

BENCHMARK, CASE = "math500", "test"
DATA_FILE = "math500/test.jsonl"
INSTRUCTION = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
COMPLETION = "Problem:\n{instruction}\n\nSolution:"
STOP = ("\n\nProblem:",)
METRICS = {"acc": ("mean", "acc"), "no_boxed": ("sum", "no_boxed"), "unparsable": ("sum", "unparsable")}



def declare(config) -> list[Declared]:
    metrics = {**METRICS, **(sampling_metrics(config.samples) if config.samples else {})}
    return [Declared(BENCHMARK, (CASE,), tuple(metrics) + metric_names(config.ttc), (DATA_FILE,))]


def load(data_dir: Path | None = None) -> list[dict[str, Any]]:
    docs = []
    for index, row in enumerate(read_jsonl(DATA_FILE, data_dir)):
        if not all(isinstance(row.get(key), str) for key in ("problem", "answer", "unique_id")):
            raise ValueError(f"{DATA_FILE} row {index + 1}: expected problem, answer and unique_id strings")
        docs.append({"doc_id": row["unique_id"], "problem": row["problem"], "target": row["answer"],
                     "subject": row["subject"], "level": row["level"]})
    return docs


def build_prompt(doc: dict[str, Any], template: str = "completion", system: str | None = None) -> str:
    instruction = INSTRUCTION.format(problem=doc["problem"])
    return rwkv_chat((), instruction, system) if template == "rwkv" else COMPLETION.format(instruction=instruction)


def judge(text: str, reference: str, boxed: str = "last") -> dict[str, Any]:
    """``boxed="last"``: the last box is the answer (the published protocol); ``"any"``: right when
    any box is, ``extracted`` the first right box, else the last."""
    if boxed == "any":
        boxes = boxed_answers(text)
        readable = [b for b in boxes if parse_latex(b)]
        right = next((b for b in readable if equivalent(b, reference)), None)
        return {"extracted": right if right is not None else (boxes[-1] if boxes else None), "boxes": boxes,
                "scores": {"acc": float(right is not None), "no_boxed": float(not boxes),
                           "unparsable": float(bool(boxes) and not readable)}}
    answer = last_boxed(text)
    parsed = answer is not None and bool(parse_latex(answer))
    correct = parsed and equivalent(answer, reference)
    return {"extracted": answer, "scores": {"acc": float(correct), "no_boxed": float(answer is None),
                                            "unparsable": float(answer is not None and not parsed)}}


def answer_key(text: str) -> str | None:
    """The last boxed answer when math-verify can read it (what votes compare), else None."""
    answer = last_boxed(text)
    return answer if answer is not None and parse_latex(answer) else None


def score(doc: dict[str, Any], prompt: str, response: GenerateResponse,
          samples: list[GenerateResponse] = (), boxed: str = "last") -> dict[str, Any]:
    judged = judge(response.text, doc["target"], boxed)
    row = {"doc_id": doc["doc_id"], "prompt": prompt, "target": doc["target"], "output": response.text,
           "finish_reason": response.finish_reason, "subject": doc["subject"], "level": doc["level"], **judged}
    if samples:
        answers = [answer_key(s.text) for s in samples]
        row["sample_outputs"] = [s.text for s in samples]
        row["sample_answers"] = answers
        row["scores"].update(sampling_scores(
            answers, [a is not None and equivalent(a, doc["target"]) for a in answers],
            lambda a: equivalent(a, doc["target"]), same=equivalent))
    return row


@pytest.fixture(scope="module")
def math500_docs(eval_config, eval_select):
    docs = load(eval_config.data_dir)
    return [docs[i] for i in eval_select(BENCHMARK, {CASE: len(docs)})[CASE]]


def test_math500(math500_docs, evaluation, eval_config):
    cfg = eval_config
    if cfg.num_fewshot:
        raise ValueError("MATH-500 is evaluated zero-shot here; drop --num-fewshot")
    stop = RWKV_STOP if cfg.template == "rwkv" else STOP
    prompts = [build_prompt(d, cfg.template, cfg.system_prompt) for d in math500_docs]
    greedy, sampled = greedy_and_samples(evaluation, cfg, prompts, stop, cfg.max_new_tokens)
    rows = [score(d, p, g, s, cfg.boxed) for d, p, g, s in zip(math500_docs, prompts, greedy, sampled)]
    protocol = {"name": "MATH-500 zero-shot, boxed answer, math-verify equivalence", "template": cfg.template,
                "instruction": INSTRUCTION, "completion_format": COMPLETION, "stop": list(stop), "greedy": True,
                "max_new_tokens": cfg.max_new_tokens, "boxed": cfg.boxed,
                "extraction": ("last" if cfg.boxed == "last" else "any") + " \\boxed{...} / \\fbox{...}, nested braces",
                "judge": "math_verify.verify(parse(reference), parse(answer)), LaTeX extraction",
                "context_starts_with_token0": cfg.bos}
    if cfg.system_prompt is not None and cfg.template == "rwkv":
        protocol["system_prompt"] = cfg.system_prompt
    metrics = dict(METRICS)
    add_sampling(cfg, metrics, protocol)
    tasks = [Task(d["problem"], p, answer_key, lambda a, t=d["target"]: equivalent(a, t))
             for d, p in zip(math500_docs, prompts)]
    outcome = run_strategy(evaluation, cfg, tasks, stop, cfg.max_new_tokens, same=equivalent, samples=sampled)
    if outcome:  # --strategy: votes over candidates beside greedy (evals/ttc), grouped by math-verify
        outcome.merge(rows, metrics, protocol)
    evaluation.record(BENCHMARK, CASE, rows, metrics, protocol, [describe(DATA_FILE, cfg.data_dir)], single_case=True)
