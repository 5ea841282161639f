"""MMLU-Pro (TIGER-Lab), 14 categories, by TIGER-Lab's prompt; direct (log-likelihood) or CoT.

Data: ``mmlu_pro/test-00000-of-00001.parquet`` and ``mmlu_pro/validation-00000-of-00001.parquet``
(5 exemplars per category, with chain-of-thought answers in ``cot_content``), in one of two known
revisions (``benchmarkdata/manifest.json``): ``2024`` (12,032 questions; the shared folder's copy)
or ``2026`` (hub commit ``b189ec76``; what a fresh machine fetches). The report names the one
scored. A raw record (truncated)::

    {"question_id": 70, "question": "Typical advertising regulatory bodies suggest, for example that advert...",
     "options": ["Safe practices, Fear, Jealousy, Trivial", ...], "answer": "I", "answer_index": 8,
     "cot_content": "", "category": "business", "src": "ori_mmlu-business_ethics"}

Prompt (TIGER-Lab ``evaluate_from_local.py`` with ``cot_prompt_lib/initial_prompt.txt``, both read
at TIGER-AI-Lab/MMLU-Pro commit ``f418b11``; the prompt file is unchanged since ``2ed4dfc``,
2024-05-23): the header line, then four newlines (the file ends in ``.\\n\\n\\n``, read whole by
``readlines()`` with nothing stripped, and ``generate_cot_prompt`` adds ``\\n``), then the
category's first k validation questions, each as ``Question:\\n...\\nOptions:\\nA. ...\\n``
followed by its answer and a blank line, then the question itself. lm-evaluation-harness's
``mmlu_pro`` task renders differently (its ``description`` ends in one newline, its exemplars join
the cue and the chain of thought with a space, options are stripped); this module follows
TIGER-Lab's script, the protocol it names.

- direct (default): each exemplar's answer is ``Answer: X``; the question ends with the cue
  ``Answer:`` and the prediction is the option letter (`` A``..) of highest log-likelihood.
- ``--cot``: each exemplar's answer is its ``cot_content`` with ``A: Let's think step by step.``
  read as ``Answer: Let's think step by step.``; the question ends with ``Answer: Let's think
  step by step.``; greedy generation stops at ``Question:`` or ``--max-new-tokens`` (2048);
  exemplars are dropped while the prompt has ``>= --context-budget - --max-new-tokens`` tokens.
  Extraction: ``answer is \\(?([A-J])\\)?``, else ``.*[aA]nswer:\\s*([A-J])``, else the last
  standalone letter ``\\b[A-J]\\b``; with none, the official guess ``random.seed(12345);
  random.randint(0, n_options - 1)``, reseeded before every guess, so a guess depends only on
  the question's option count (TIGER-Lab's rule until commit ``996df13``, 2025-02-23; since then
  its script seeds once per run, so a guess depends on the guesses before it; reseeding keeps a
  question's score the same however cases are split over workers or shards). Reported: ``acc``
  (that chain, TIGER-Lab's number), ``acc_first_pattern`` (first pattern only, no guess) and
  ``guessed`` (a count). ``--strategy`` adds votes over sampled or searched candidates
  (``evals/ttc``) on the extracted letters; a candidate without a letter does not vote (no guess).

Reference scores (TIGER-Lab leaderboard, 5-shot CoT): Llama-3-8B 0.354, Mistral-7B-v0.1 0.309;
chance is about 0.10 (most questions have ten options).
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_parquet
from evals.answer_checking import choice_patterns, extract_choice
from evals.backend import GenerateRequest, GenerateResponse, LoglikelihoodRequest, LoglikelihoodResponse
from evals.suite import Declared
from evals.ttc.run import Task, metric_names, run_strategy

BENCHMARK = "mmlu_pro"
TEST_FILE = "mmlu_pro/test-00000-of-00001.parquet"
VALIDATION_FILE = "mmlu_pro/validation-00000-of-00001.parquet"
CATEGORIES = ("biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
              "history", "law", "math", "other", "philosophy", "physics", "psychology")
CHOICES = "ABCDEFGHIJ"
HEADER = ('The following are multiple choice questions (with answers) about {category}. Think step by step and '
          'then finish your answer with "the answer is (X)" where X is the correct letter choice.')
# initial_prompt.txt ends in three newlines after the header and generate_cot_prompt adds one more
HEADER_SEPARATOR = "\n\n\n\n"
COT_CUE = "Answer: Let's think step by step."
DIRECT_CUE = "Answer:"
STOP = ("Question:",)
GUESS_SEED = 12345
DEFAULT_FEWSHOT = 5
FIRST_PATTERN, SECOND_PATTERN, FINAL_PATTERN = choice_patterns(CHOICES)  # shared with the choice_letter checker
DIRECT_METRICS = {"acc": ("mean", "acc")}
COT_METRICS = {"acc": ("mean", "acc"), "acc_first_pattern": ("mean", "acc_first_pattern"),
               "guessed": ("sum", "guessed")}
# a case is named as its test id (computer_science); the prompt names the category as the data does
CASES = tuple(c.replace(" ", "_") for c in CATEGORIES)
CATEGORY_OF = dict(zip(CASES, CATEGORIES))
CASE_PARAM = "case"


def declare(config) -> list[Declared]:
    metrics = tuple(COT_METRICS) + metric_names(config.ttc) if config.cot else tuple(DIRECT_METRICS)
    chance = ("acc", "acc_first_pattern") if config.cot else ("acc",)  # a guess among the options
    return [Declared(BENCHMARK, CASES, metrics, (TEST_FILE, VALIDATION_FILE), chance=chance)]


def preprocess(row: dict[str, Any]) -> dict[str, Any]:
    """TIGER-Lab's only change to a record: drop "N/A" padding options."""
    return {**row, "options": [o for o in row["options"] if o != "N/A"]}


def load(data_dir: Path | None = None) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(test, validation) questions grouped by category, in file order."""
    groups: list[dict[str, list[dict]]] = []
    for name in (TEST_FILE, VALIDATION_FILE):
        by_category: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
        for row in read_parquet(name, data_dir):
            if row.get("category") not in by_category:
                raise ValueError(f"{name}: question {row.get('question_id')} has unknown category "
                                 f"{row.get('category')!r}; expected one of {CATEGORIES}")
            by_category[row["category"]].append(preprocess(row))
        groups.append(by_category)
    return groups[0], groups[1]


def format_question(doc: dict[str, Any]) -> str:
    options = "".join(f"{CHOICES[i]}. {option}\n" for i, option in enumerate(doc["options"]))
    return f"Question:\n{doc['question']}\nOptions:\n{options}"


def cot_exemplar(doc: dict[str, Any]) -> str:
    answer = doc["cot_content"].replace("A: Let's think step by step.", COT_CUE)
    return format_question(doc) + answer + "\n\n"


def direct_exemplar(doc: dict[str, Any]) -> str:
    return format_question(doc) + f"{DIRECT_CUE} {doc['answer']}\n\n"


def build_prompt(doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int, cot: bool) -> str:
    """The official prompt for ``doc`` with the first ``k`` of its category's ``exemplars``."""
    if k > len(exemplars):
        raise ValueError(f"MMLU-Pro has {len(exemplars)} exemplars for {doc['category']!r}; "
                         f"--num-fewshot {k} asks for more")
    shots = "".join((cot_exemplar if cot else direct_exemplar)(e) for e in exemplars[:k])
    cue = COT_CUE if cot else DIRECT_CUE
    return HEADER.format(category=doc["category"]) + HEADER_SEPARATOR + shots + format_question(doc) + cue


def fit_cot_prompt(doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int,
                   count_tokens: Callable[[str], int], budget: int) -> tuple[str, int]:
    """TIGER-Lab's budget rule: drop exemplars until the prompt has fewer than ``budget`` tokens
    (``budget`` = context budget - max new tokens). Stops at zero exemplars (the official loop
    would go on to slice ``[:-1]``)."""
    while True:
        prompt = build_prompt(doc, exemplars, k, cot=True)
        if k == 0 or count_tokens(prompt) < budget:
            return prompt, k
        k -= 1


def render_direct(doc: dict[str, Any], prompt: str, bos: bool) -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(prompt, " " + letter, bos) for letter in CHOICES[:len(doc["options"])]]


def extract(text: str) -> tuple[str | None, str | None]:
    """(letter, which pattern found it: "first" | "second" | "final"), or (None, None)."""
    return extract_choice(text, CHOICES)


def official_guess(n_options: int) -> int:
    """TIGER-Lab's fallback as its script had it before commit 996df13: reseed with 12345 before
    every guess, so it depends only on n (the script now seeds once per run)."""
    return random.Random(GUESS_SEED).randint(0, n_options - 1)


def score_direct(doc: dict[str, Any], prompt: str, responses: Sequence[LoglikelihoodResponse]) -> dict[str, Any]:
    logprobs = [r.logprob for r in responses]
    best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))  # ties: the first letter
    return {"doc_id": doc["question_id"], "prompt": prompt, "target": doc["answer"],
            "choice_logprobs": dict(zip(CHOICES, logprobs)), "extracted": CHOICES[best],
            "n_options": len(doc["options"]), "scores": {"acc": float(CHOICES[best] == doc["answer"])}}


def score_cot(doc: dict[str, Any], prompt: str, shots: int, response: GenerateResponse) -> dict[str, Any]:
    letter, stage = extract(response.text)
    first = FIRST_PATTERN.search(response.text)
    if letter is None:
        correct = official_guess(len(doc["options"])) == doc["answer_index"]
    else:
        correct = letter == doc["answer"]
    return {"doc_id": doc["question_id"], "prompt": prompt, "target": doc["answer"], "shots": shots,
            "output": response.text, "finish_reason": response.finish_reason, "extracted": letter,
            "extracted_by": stage or "guess", "n_options": len(doc["options"]),
            "scores": {"acc": float(correct), "acc_first_pattern": float(bool(first) and first.group(1) == doc["answer"]),
                       "guessed": float(letter is None)}}


def protocol(cot: bool, k: int, bos: bool, max_new_tokens: int, context_budget: int) -> dict[str, Any]:
    base = {"name": "TIGER-Lab MMLU-Pro " + ("CoT (evaluate_from_local.py)" if cot else "direct log-likelihood"),
            "num_fewshot": k, "fewshot_source": "validation split, same category, file order",
            "header": HEADER, "header_separator": HEADER_SEPARATOR,
            "prompt_source": "TIGER-AI-Lab/MMLU-Pro f418b11 evaluate_from_local.py, cot_prompt_lib/initial_prompt.txt",
            "context_starts_with_token0": bos, "average": "micro over questions"}
    if not cot:
        return {**base, "answer_cue": DIRECT_CUE, "choices": "' A' .. ' J' (as many as options)"}
    return {**base, "answer_cue": COT_CUE, "stop": list(STOP), "max_new_tokens": max_new_tokens, "greedy": True,
            "context_budget": context_budget, "extraction": [p.pattern for p in (FIRST_PATTERN, SECOND_PATTERN,
                                                                                   FINAL_PATTERN)],
            "guess": f"random.seed({GUESS_SEED}); randint(0, n_options - 1), reseeded before every guess "
                     "(TIGER-Lab's rule before commit 996df13, which seeds once per run)"}


@pytest.fixture(scope="module")
def mmlu_pro_data(eval_config, eval_select):
    test, validation = load(eval_config.data_dir)
    chosen = eval_select(BENCHMARK, {case: len(test[CATEGORY_OF[case]]) for case in CASES})
    return {case: [test[CATEGORY_OF[case]][i] for i in chosen[case]] for case in CASES}, validation


@pytest.mark.parametrize("case", CASES)
def test_mmlu_pro(case, mmlu_pro_data, evaluation, eval_config):
    docs, validation = mmlu_pro_data[0][case], mmlu_pro_data[1][CATEGORY_OF[case]]
    cfg = eval_config
    k = DEFAULT_FEWSHOT if cfg.num_fewshot is None else cfg.num_fewshot
    if cfg.cot:
        budget = cfg.context_budget - cfg.max_new_tokens
        fitted = [fit_cot_prompt(d, validation, k, lambda t: evaluation.backend.count_tokens(t, cfg.bos), budget)
                  for d in docs]
        requests = [GenerateRequest(prompt, STOP, cfg.max_new_tokens, bos=cfg.bos) for prompt, _ in fitted]
        responses = evaluation.generate(requests)
        rows = [score_cot(d, p, shots, r) for d, (p, shots), r in zip(docs, fitted, responses)]
        metrics = dict(COT_METRICS)
        tasks = [Task(format_question(d), p, lambda text: extract(text)[0], lambda letter, a=d["answer"]: letter == a)
                 for d, (p, _) in zip(docs, fitted)]
        outcome = run_strategy(evaluation, cfg, tasks, STOP, cfg.max_new_tokens)
    else:
        prompts = [build_prompt(d, validation, k, cot=False) for d in docs]
        per_doc = [render_direct(d, p, cfg.bos) for d, p in zip(docs, prompts)]
        flat = evaluation.loglikelihood([r for requests in per_doc for r in requests])
        rows, at = [], 0
        for d, p, requests in zip(docs, prompts, per_doc):
            rows.append(score_direct(d, p, flat[at:at + len(requests)]))
            at += len(requests)
        metrics, outcome = DIRECT_METRICS, None
    data = [describe(TEST_FILE, cfg.data_dir), describe(VALIDATION_FILE, cfg.data_dir)]
    described = protocol(cfg.cot, k, cfg.bos, cfg.max_new_tokens, cfg.context_budget)
    if cfg.cot and outcome:  # --strategy: votes over the extracted letters (evals/ttc); no guessing
        outcome.merge(rows, metrics, described)
    evaluation.record(BENCHMARK, case, rows, metrics, described, data)
