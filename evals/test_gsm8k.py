"""GSM8K (Cobbe et al. 2021), grade-school maths, test set, by lm-evaluation-harness's ``gsm8k_cot``.

Data: ``gsm8k/test.jsonl`` (1,319 problems), the official release (openai/grade-school-math). A raw
record::

    {"question": "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning ...",
     "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\\nShe makes 9 * 2 = $<<9*2=18>>18 ... #### 18"}

Protocol (lm-eval ``gsm8k_cot``, version 3.0): the 8 chain-of-thought exemplars of Wei et al. 2022
(below, verbatim), each ``Q: {question}\\nA: {reasoning} The answer is N.\\n\\n``, then
``Q: {question}\\nA:``; greedy until ``Q:``, ``</s>`` or ``<|im_end|>`` with at most 256 new tokens
(``--max-new-tokens`` caps it lower). ``--template rwkv`` renders the same exemplars as RWKV chat
turns. The reference is the text after ``####``. Extraction, as published:

- ``strict_match``: the first ``The answer is (\\-?[0-9\\.\\,]+).`` (its unescaped final ``.``
  matches any character, so ``The answer is 18`` at the very end extracts ``1``: kept, as published);
- ``flexible_extract``: the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (its first non-empty group).

Both are scored as lm-eval scores them (``exact_match`` with the task's ``regexes_to_ignore``
``,``, ``\\$``, ``(?s).*#### ``, ``\\.$`` deleted from both sides, ``ignore_case``): strings, so
``18.00``, ``0.50`` for ``0.5`` and ``018`` are wrong, as in published lm-eval tables
(``tests/test_bench_generation.py`` checks a table of outputs against lm-eval's installed filter
and metric code). ``numeric_match`` compares the flexible extraction as a number instead (commas,
``$``, a trailing full stop and trailing zeros do not matter, so ``1,000.00`` equals ``1000``).
``no_answer`` counts outputs without a strict match. With ``--samples N``: ``maj@k``/``pass@k``
over the flexible extraction compared as numbers (see ``evals/generation.py``). ``--strategy`` adds
votes over sampled or searched candidates (``evals/ttc``), judged the same way.

Reference scores (8-shot CoT): PaLM 540B 0.569 (Wei et al. 2022, Table 1); LLaMA-2 7B 0.146
(Touvron et al. 2023, Table 3 "GSM8K (8-shot)").
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_jsonl
from evals.answer_checking import numbers_equal, parse_number
from evals.backend import GenerateResponse
from evals.generation import add_sampling, greedy_and_samples, sampling_metrics, sampling_scores
from evals.suite import Declared
from evals.templates import RWKV_STOP, rwkv_chat
from evals.ttc.run import Task, metric_names, run_strategy

BENCHMARK, CASE = "gsm8k", "test"
DATA_FILE = "gsm8k/test.jsonl"
STOP = ("Q:", "</s>", "<|im_end|>")
MAX_NEW_TOKENS = 256  # lm-eval's default max_gen_toks for generate_until
DEFAULT_FEWSHOT = 8
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-eval gsm8k-cot.yaml metric_list: exact_match with these deleted from prediction and reference
# (in this order), ignore_case; a filter that finds nothing yields its fallback "[invalid]"
IGNORED = tuple(re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$"))
INVALID = "[invalid]"
METRICS = {"strict_match": ("mean", "strict_match"), "flexible_extract": ("mean", "flexible_extract"),
           "numeric_match": ("mean", "numeric_match"), "no_answer": ("sum", "no_answer")}
EXEMPLARS = (  # lm-eval gsm8k-cot.yaml fewshot_config.samples (Wei et al. 2022, Table 20)
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
)



def declare(config) -> list[Declared]:
    metrics = {**METRICS, **(sampling_metrics(config.samples) if config.samples else {})}
    return [Declared(BENCHMARK, (CASE,), tuple(metrics) + metric_names(config.ttc), (DATA_FILE,))]


def load(data_dir: Path | None = None) -> list[dict[str, Any]]:
    docs = []
    for index, row in enumerate(read_jsonl(DATA_FILE, data_dir)):
        if "####" not in row.get("answer", ""):
            raise ValueError(f"{DATA_FILE} row {index + 1}: the answer has no '#### <number>' marker")
        docs.append({"doc_id": index, "question": row["question"],
                     "target": row["answer"].split("####")[-1].strip()})
    return docs


def build_prompt(doc: dict[str, Any], k: int, template: str = "completion", system: str | None = None) -> str:
    if k > len(EXEMPLARS):
        raise ValueError(f"gsm8k_cot has {len(EXEMPLARS)} exemplars; --num-fewshot {k} asks for more")
    if template == "rwkv":
        return rwkv_chat(EXEMPLARS[:k], doc["question"], system)
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in EXEMPLARS[:k])
    return shots + f"Q: {doc['question']}\nA:"


def extract_strict(text: str) -> str | None:
    """The first strict match's group, stripped (lm-eval's regex filter, group_select 0)."""
    match = STRICT.search(text)
    return match.group(1).strip() if match else None


def extract_flexible(text: str) -> str | None:
    """The last flexible match's first non-empty group, stripped (group_select -1)."""
    matches = FLEXIBLE.findall(text)
    if not matches:
        return None
    last = matches[-1]
    return (last[0] or last[1]).strip()


def lm_eval_match(answer: str | None, target: str) -> bool:
    """lm-eval's exact match of gsm8k_cot: the ignored patterns deleted from both sides, case folded,
    then the strings compared; no extraction counts as its fallback ``[invalid]``."""
    prediction = INVALID if answer is None else answer
    for pattern in IGNORED:
        prediction, target = pattern.sub("", prediction), pattern.sub("", target)
    return prediction.lower() == target.lower()


def judge(answer: str | None, target: str) -> bool:
    """Numeric equivalence (``numeric_match``, votes, maj@k and pass@k)."""
    return numbers_equal(answer, target)


def answer_key(text: str) -> str | None:
    """The flexible extraction as a canonical number (what votes compare), or None."""
    number = parse_number(extract_flexible(text))
    return None if number is None else str(number)


def score(doc: dict[str, Any], prompt: str, response: GenerateResponse,
          samples: list[GenerateResponse] = ()) -> dict[str, Any]:
    strict, flexible = extract_strict(response.text), extract_flexible(response.text)
    row = {"doc_id": doc["doc_id"], "prompt": prompt, "target": doc["target"], "output": response.text,
           "finish_reason": response.finish_reason, "extracted": strict, "extracted_flexible": flexible,
           "scores": {"strict_match": float(lm_eval_match(strict, doc["target"])),
                      "flexible_extract": float(lm_eval_match(flexible, doc["target"])),
                      "numeric_match": float(judge(flexible, doc["target"])),
                      "no_answer": float(strict is None)}}
    if samples:
        answers = [extract_flexible(s.text) for s in samples]
        keys = [answer_key(s.text) for s in samples]
        row["sample_outputs"] = [s.text for s in samples]
        row["sample_answers"] = answers
        row["scores"].update(sampling_scores(keys, [judge(a, doc["target"]) for a in answers],
                                             lambda key: judge(key, doc["target"])))
    return row


@pytest.fixture(scope="module")
def gsm8k_docs(eval_config, eval_select):
    docs = load(eval_config.data_dir)
    return [docs[i] for i in eval_select(BENCHMARK, {CASE: len(docs)})[CASE]]


def test_gsm8k(gsm8k_docs, evaluation, eval_config):
    cfg = eval_config
    k = DEFAULT_FEWSHOT if cfg.num_fewshot is None else cfg.num_fewshot
    budget = min(MAX_NEW_TOKENS, cfg.max_new_tokens)
    stop = STOP + (RWKV_STOP if cfg.template == "rwkv" else ())
    prompts = [build_prompt(d, k, cfg.template, cfg.system_prompt) for d in gsm8k_docs]
    greedy, sampled = greedy_and_samples(evaluation, cfg, prompts, stop, budget)
    rows = [score(d, p, g, s) for d, p, g, s in zip(gsm8k_docs, prompts, greedy, sampled)]
    protocol = {"name": "lm-eval gsm8k_cot (v3.0)", "num_fewshot": k, "template": cfg.template,
                "fewshot": "Wei et al. 2022 CoT exemplars, first_n", "stop": list(stop), "greedy": True,
                "max_new_tokens": budget, "strict_match": STRICT.pattern, "flexible_extract": FLEXIBLE.pattern,
                "comparison": {"strict_match, flexible_extract": "lm-eval exact_match, ignore_case, regexes_to_ignore "
                                                                 + str([p.pattern for p in IGNORED]),
                               "numeric_match, votes": "the flexible extraction as a number (Decimal; commas, $, "
                                                       "trailing '.' and zeros ignored)"},
                "context_starts_with_token0": cfg.bos}
    if cfg.system_prompt is not None and cfg.template == "rwkv":
        protocol["system_prompt"] = cfg.system_prompt
    metrics = dict(METRICS)
    add_sampling(cfg, metrics, protocol, answers="flexible_extract")
    tasks = [Task(d["question"], p, answer_key, lambda key, t=d["target"]: judge(key, t))
             for d, p in zip(gsm8k_docs, prompts)]
    outcome = run_strategy(evaluation, cfg, tasks, stop, budget, samples=sampled)
    if outcome:  # --strategy: votes over candidates beside greedy (evals/ttc), on the flexible extraction
        outcome.merge(rows, metrics, protocol)
    evaluation.record(BENCHMARK, CASE, rows, metrics, protocol, [describe(DATA_FILE, cfg.data_dir)], single_case=True)
