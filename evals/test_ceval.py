"""C-Eval (Huang et al. 2023), Chinese multiple choice, 52 subjects, 5-shot answer-only, by the
official protocol.

Data: ``ceval/ceval-exam.zip``, the hub dataset ``ceval/ceval-exam``'s zip (the download the
official README names), licence CC BY-NC-SA 4.0 (non-commercial). It holds ``dev/``, ``val/`` and
``test/``, one CSV per subject and split (``val/computer_network_val.csv``), columns
``id,question,A,B,C,D,answer`` and, in ``dev``, ``explanation``. A raw ``val`` record (from the
official README)::

    0,使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____,1,2,3,4,C

Counts (README): 13,948 questions: dev 260 (5 per subject), val 1,346, test 12,342. **The real
data was not available when this module was written** (no network): it is checked on synthetic
files in the official layout (``tests/test_bench_ceval.py``), the manifest pins no sha256 for the
zip yet, and a first fetch needs ``--accept-new-revision`` (see the README's Data section).

Protocol (README "answer-only prompt", ``code/evaluator_series/evaluators/llama.py``): the header
``以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n`` with the subject's Chinese name
(``subject_mapping.json``; the official scripts pass the English handle, which the README's
``{科目}`` and lm-evaluation-harness's ``ceval-valid`` replace by the Chinese name), then the
subject's k dev questions (k = 5, file order), each ``{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..
\\n答案：X\\n\\n``, then the ``val`` question ending ``答案：``; the prediction is the letter
(``A``..``D``, no space: the official code compares the next-token logits of the four letters) of
highest log-likelihood. ``val`` is evaluated because it has answers (the test answers were
withheld for the leaderboard until the authors announced the full test set in July 2025).
Option text is taken as the CSV writes it; the official scripts read the files with pandas, which
turns an all-numeric option column into numbers (``01`` -> ``1``), so such prompts can differ.

Reported per subject (``acc``), pooled over questions for ``ceval`` and for each group, a
benchmark of its own like MMLU's: ``ceval_stem`` (20 subjects), ``ceval_social_science`` (10),
``ceval_humanities`` (11), ``ceval_other`` (11; ``subject_mapping.json`` omits clinical
medicine's category, the paper puts it in Other) and ``ceval_hard`` (the 8 math, physics and
chemistry subjects of C-Eval Hard).

Reference scores (README, val, 5-shot answer-only, average over subjects): GPT-4 0.699, ChatGPT
0.535, LLaMA-65B 0.398, ChatGLM-6B 0.371; chance 0.25.
"""
from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import DataError, describe, locate
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC, LETTERS, letter_row, lettered, record_with_groups, requests_for, split_flat
from evals.suite import Declared

BENCHMARK = "ceval"
DATA = "ceval/ceval-exam.zip"
DEFAULT_FEWSHOT = 5
HEADER = "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"
CUE = "答案："
COLUMNS = ["id", "question", "A", "B", "C", "D", "answer"]  # dev adds "explanation"
# handle -> (Chinese name, group), from the official subject_mapping.json
SUBJECT_INFO = {
    "computer_network": ("计算机网络", "stem"), "operating_system": ("操作系统", "stem"),
    "computer_architecture": ("计算机组成", "stem"), "college_programming": ("大学编程", "stem"),
    "college_physics": ("大学物理", "stem"), "college_chemistry": ("大学化学", "stem"),
    "advanced_mathematics": ("高等数学", "stem"), "probability_and_statistics": ("概率统计", "stem"),
    "discrete_mathematics": ("离散数学", "stem"), "electrical_engineer": ("注册电气工程师", "stem"),
    "metrology_engineer": ("注册计量师", "stem"), "high_school_mathematics": ("高中数学", "stem"),
    "high_school_physics": ("高中物理", "stem"), "high_school_chemistry": ("高中化学", "stem"),
    "high_school_biology": ("高中生物", "stem"), "middle_school_mathematics": ("初中数学", "stem"),
    "middle_school_biology": ("初中生物", "stem"), "middle_school_physics": ("初中物理", "stem"),
    "middle_school_chemistry": ("初中化学", "stem"), "veterinary_medicine": ("兽医学", "stem"),
    "college_economics": ("大学经济学", "social_science"), "business_administration": ("工商管理", "social_science"),
    "marxism": ("马克思主义基本原理", "social_science"),
    "mao_zedong_thought": ("毛泽东思想和中国特色社会主义理论体系概论", "social_science"),
    "education_science": ("教育学", "social_science"), "teacher_qualification": ("教师资格", "social_science"),
    "high_school_politics": ("高中政治", "social_science"), "high_school_geography": ("高中地理", "social_science"),
    "middle_school_politics": ("初中政治", "social_science"), "middle_school_geography": ("初中地理", "social_science"),
    "modern_chinese_history": ("近代史纲要", "humanities"),
    "ideological_and_moral_cultivation": ("思想道德修养与法律基础", "humanities"), "logic": ("逻辑学", "humanities"),
    "law": ("法学", "humanities"), "chinese_language_and_literature": ("中国语言文学", "humanities"),
    "art_studies": ("艺术学", "humanities"), "professional_tour_guide": ("导游资格", "humanities"),
    "legal_professional": ("法律职业资格", "humanities"), "high_school_chinese": ("高中语文", "humanities"),
    "high_school_history": ("高中历史", "humanities"), "middle_school_history": ("初中历史", "humanities"),
    "civil_servant": ("公务员", "other"), "sports_science": ("体育学", "other"), "plant_protection": ("植物保护", "other"),
    "basic_medicine": ("基础医学", "other"), "clinical_medicine": ("临床医学", "other"),
    "urban_and_rural_planner": ("注册城乡规划师", "other"), "accountant": ("注册会计师", "other"),
    "fire_engineer": ("注册消防工程师", "other"),
    "environmental_impact_assessment_engineer": ("环境影响评价工程师", "other"),
    "tax_accountant": ("税务师", "other"), "physician": ("医师资格", "other"),
}
SUBJECTS = tuple(sorted(SUBJECT_INFO))
HARD = ("advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
        "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics")
GROUPS = {group: tuple(sorted(s for s, (_, g) in SUBJECT_INFO.items() if g == group))
          for group in ("stem", "social_science", "humanities", "other")} | {"hard": tuple(sorted(HARD))}
CASE_PARAM = "subject"


def declare(config) -> list[Declared]:
    """C-Eval, and one benchmark per group (its overall row is the group's score)."""
    return [Declared(BENCHMARK, SUBJECTS, tuple(ACC), (DATA,), chance=tuple(ACC))] + [
        Declared(f"{BENCHMARK}_{group}", subjects, tuple(ACC), (DATA,), chance=tuple(ACC))
        for group, subjects in GROUPS.items()]


def groups_of(subject: str) -> list[str]:
    return [group for group, subjects in GROUPS.items() if subject in subjects]


def member_name(names: Sequence[str], split: str, subject: str) -> str:
    """The zip member holding ``split/{subject}_{split}.csv`` (at the top, or under one folder)."""
    wanted = f"{split}/{subject}_{split}.csv"
    found = [n for n in names if n == wanted or (n.endswith("/" + wanted) and n.count("/") == 2)]
    if len(found) != 1:
        raise DataError(f"{DATA}: expected one member {wanted} (or FOLDER/{wanted}), found {found or 'none'}")
    return found[0]


def parse_csv(text: str, where: str) -> list[dict[str, Any]]:
    """The rows of one C-Eval CSV; every row needs an integer id and an answer A-D."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or header[:7] != COLUMNS or header[7:] not in ([], ["explanation"]):
        raise DataError(f"{where}:1: expected the columns {','.join(COLUMNS)}[,explanation], found {header}")
    docs = []
    for line, fields in enumerate(reader, start=2):
        if len(fields) != len(header) or not fields[0].isdigit() or fields[6] not in ("A", "B", "C", "D"):
            raise DataError(f"{where}:{line}: expected {len(header)} fields, an integer id and an answer A-D, "
                            f"found {fields!r:.200}")
        docs.append({"doc_id": int(fields[0]), "question": fields[1], "options": fields[2:6], "answer": fields[6]})
    if not docs:
        raise DataError(f"{where}: no questions")
    return docs


def load(path: Path) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """(val, dev) questions by subject from the zip at ``path``, in file order."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()

        def split(name: str) -> dict[str, list[dict]]:
            out = {}
            for subject in SUBJECTS:
                member = member_name(names, name, subject)
                try:
                    text = archive.read(member).decode("utf-8-sig")
                except UnicodeDecodeError as error:
                    raise DataError(f"{path}:{member}: not UTF-8 text ({error.reason} at byte {error.start})") from None
                out[subject] = parse_csv(text, f"{path}:{member}")
            return out

        return split("val"), split("dev")


def format_question(doc: dict[str, Any]) -> str:
    return lettered(doc["question"], doc["options"], CUE)


def build_prompt(subject: str, doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int) -> str:
    if k > len(exemplars):
        raise ValueError(f"C-Eval has {len(exemplars)} dev exemplars for {subject!r}; --num-fewshot {k} asks for more")
    shots = "".join(format_question(e) + e["answer"] + "\n\n" for e in exemplars[:k])
    return HEADER.format(subject=SUBJECT_INFO[subject][0]) + shots + format_question(doc)


def render(prompt: str, bos: bool) -> list[LoglikelihoodRequest]:
    return requests_for(prompt, list(LETTERS[:4]), bos)


def score(doc: dict[str, Any], prompt: str, logprobs: Sequence[float]) -> dict[str, Any]:
    return letter_row(doc, prompt, logprobs)


def protocol(k: int, bos: bool) -> dict[str, Any]:
    return {"name": "C-Eval official answer-only prompt (README; code/evaluator_series/evaluators/llama.py)",
            "split": "val", "num_fewshot": k, "fewshot_source": "dev split, same subject, file order",
            "header": HEADER, "subject_name": "Chinese name from subject_mapping.json", "answer_cue": CUE,
            "choices": "'A' .. 'D' (no leading space: the next token after the cue)",
            "context_starts_with_token0": bos, "groups": {g: list(s) for g, s in GROUPS.items()},
            "average": "micro over questions for ceval and each group (the README averages over subjects)"}


@pytest.fixture(scope="module")
def ceval_data(eval_config, eval_select):
    val, dev = load(locate(DATA, eval_config.data_dir))
    chosen = eval_select(BENCHMARK, {s: len(val[s]) for s in SUBJECTS})
    return {s: [val[s][i] for i in chosen[s]] for s in SUBJECTS}, dev


@pytest.mark.parametrize("subject", SUBJECTS)
def test_ceval(subject, ceval_data, evaluation, eval_config):
    docs, dev = ceval_data[0][subject], ceval_data[1][subject]
    k = DEFAULT_FEWSHOT if eval_config.num_fewshot is None else eval_config.num_fewshot
    prompts = [build_prompt(subject, d, dev, k) for d in docs]
    per_doc = [render(p, eval_config.bos) for p in prompts]
    flat = evaluation.loglikelihood([r for requests in per_doc for r in requests])
    rows = [score(d, p, lps) for d, p, lps in zip(docs, prompts, split_flat(flat, [len(r) for r in per_doc]))]
    data = [describe(DATA, eval_config.data_dir)]
    record_with_groups(evaluation, BENCHMARK, subject, groups_of(subject), rows, ACC, protocol(k, eval_config.bos),
                       data)
