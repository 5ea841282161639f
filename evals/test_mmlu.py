"""MMLU (Hendrycks et al. 2021), 57 subjects, 5-shot, by lm-evaluation-harness's ``mmlu`` protocol.

Data: ``mmlu/test-00000-of-00001.parquet`` (14,042 questions) and ``mmlu/dev-00000-of-00001.parquet``
(5 exemplars per subject), ``cais/mmlu`` without ``auxiliary_train`` (= HF ``hails/mmlu_no_train``,
lm-eval's source). A raw record::

    {"question": "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.", "subject": "abstract_algebra",
     "choices": ["0", "1", "2", "3"], "answer": 1}

Protocol (lm-eval ``mmlu``, ``default/_default_template_yaml``): the description ``The following
are multiple choice questions (with answers) about {subject with spaces}.\\n\\n``, then the
subject's first k dev questions (k = 5, ``first_n``), each ``{question.strip()}\\nA. ..\\nB. ..\\n
C. ..\\nD. ..\\nAnswer: X\\n\\n``, then the question ending ``Answer:``; the prediction is the letter
continuation (`` A``..`` D``) of highest log-likelihood. Reported per subject and pooled as lm-eval
does (weighted by size): benchmark ``mmlu`` over all 57, and the four category groups of lm-eval
(``mmlu_stem`` 19 subjects, ``mmlu_humanities`` 13, ``mmlu_social_sciences`` 12, ``mmlu_other``
13), each a benchmark of its own in the report whose ``overall`` is the group's score (its sample
files repeat the subject rows without prompts).

Reference scores (5-shot): GPT-3 175B 0.439 (Hendrycks et al. 2021, Table 1); LLaMA-2 7B 0.453
(Touvron et al. 2023, Table 3); chance 0.25.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, read_parquet
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC, LETTERS, choose, lettered, record_with_groups, requests_for, split_flat
from evals.suite import Declared

BENCHMARK = "mmlu"
TEST_FILE = "mmlu/test-00000-of-00001.parquet"
DEV_FILE = "mmlu/dev-00000-of-00001.parquet"
DEFAULT_FEWSHOT = 5
DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
GROUPS = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
              "professional_accounting", "professional_medicine", "virology"),
}
GROUP_OF = {subject: group for group, subjects in GROUPS.items() for subject in subjects}
SUBJECTS = tuple(sorted(GROUP_OF))
CASE_PARAM = "subject"


def declare(config) -> list[Declared]:
    """MMLU, and one benchmark per subject group (its overall row is the group's score)."""
    files = (TEST_FILE, DEV_FILE)
    return [Declared(BENCHMARK, SUBJECTS, tuple(ACC), files, chance=tuple(ACC))] + [
        Declared(f"{BENCHMARK}_{group}", tuple(sorted(subjects)), tuple(ACC), files, chance=tuple(ACC)) for group, subjects in GROUPS.items()]


def load(data_dir: Path | None = None) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(test, dev) questions grouped by subject, in file order."""
    out = []
    for name in (TEST_FILE, DEV_FILE):
        by_subject: dict[str, list[dict]] = {s: [] for s in SUBJECTS}
        for index, row in enumerate(read_parquet(name, data_dir)):
            if row.get("subject") not in by_subject:
                raise ValueError(f"{name} row {index}: unknown subject {row.get('subject')!r}")
            if len(row["choices"]) != 4 or row["answer"] not in range(4):
                raise ValueError(f"{name} row {index}: expected 4 choices and answer 0-3, found {row!r:.120}")
            by_subject[row["subject"]].append({**row, "doc_id": index})
        out.append(by_subject)
    return out[0], out[1]


def format_question(doc: dict[str, Any]) -> str:
    return lettered(doc["question"].strip(), doc["choices"], "Answer:")


def build_prompt(doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int) -> str:
    if k > len(exemplars):
        raise ValueError(f"MMLU has {len(exemplars)} dev exemplars for {doc['subject']!r}; --num-fewshot {k} asks for more")
    shots = "".join(format_question(e) + " " + LETTERS[e["answer"]] + "\n\n" for e in exemplars[:k])
    return DESCRIPTION.format(subject=doc["subject"].replace("_", " ")) + shots + format_question(doc)


def render(doc: dict[str, Any], prompt: str, bos: bool) -> list[LoglikelihoodRequest]:
    return requests_for(prompt, [" " + letter for letter in LETTERS[:4]], bos)


def score(doc: dict[str, Any], prompt: str, logprobs: Sequence[float]) -> dict[str, Any]:
    chosen = choose(logprobs, doc["answer"])
    return {"doc_id": doc["doc_id"], "prompt": prompt, "target": LETTERS[doc["answer"]],
            "choice_logprobs": dict(zip(LETTERS, logprobs)), "extracted": LETTERS[chosen["extracted"]],
            "n_options": len(logprobs), "scores": chosen["scores"]}


def protocol(k: int, bos: bool) -> dict[str, Any]:
    return {"name": "lm-eval mmlu (default template)", "num_fewshot": k, "fewshot_source": "dev split, same subject, first_n",
            "description": DESCRIPTION, "answer_cue": "Answer:", "choices": "' A' .. ' D'",
            "context_starts_with_token0": bos, "groups": {g: list(s) for g, s in GROUPS.items()},
            "average": "micro over questions (lm-eval weight_by_size) for mmlu and each group"}


@pytest.fixture(scope="module")
def mmlu_data(eval_config, eval_select):
    test, dev = load(eval_config.data_dir)
    chosen = eval_select(BENCHMARK, {s: len(test[s]) for s in SUBJECTS})
    return {s: [test[s][i] for i in chosen[s]] for s in SUBJECTS}, dev


@pytest.mark.parametrize("subject", SUBJECTS)
def test_mmlu(subject, mmlu_data, evaluation, eval_config):
    docs, dev = mmlu_data[0][subject], mmlu_data[1][subject]
    k = DEFAULT_FEWSHOT if eval_config.num_fewshot is None else eval_config.num_fewshot
    prompts = [build_prompt(d, dev, k) for d in docs]
    per_doc = [render(d, p, eval_config.bos) for d, p in zip(docs, prompts)]
    flat = evaluation.loglikelihood([r for requests in per_doc for r in requests])
    rows = [score(d, p, lps) for d, p, lps in zip(docs, prompts, split_flat(flat, [len(r) for r in per_doc]))]
    data = [describe(TEST_FILE, eval_config.data_dir), describe(DEV_FILE, eval_config.data_dir)]
    record_with_groups(evaluation, BENCHMARK, subject, [GROUP_OF[subject]], rows, ACC, protocol(k, eval_config.bos),
                       data)
