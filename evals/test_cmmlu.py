"""CMMLU (Li et al. 2023), Chinese multiple choice, 67 subjects, 5-shot, by the official protocol.

Data: ``cmmlu/test/<subject>.csv`` (11,582 questions) and ``cmmlu/dev/<subject>.csv`` (5 exemplars
per subject), the official release (haonan-li/CMMLU), licence CC BY-NC-SA 4.0 (non-commercial).
Columns ``,Question,A,B,C,D,Answer`` (the first an unnamed row index). A raw record
(``test/agronomy.csv``)::

    0,在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是,农业生产工具,土地,劳动力,资金,B

Protocol (the official ``src/mp_utils.py`` few-shot prompt): ``以下是关于{科目}的单项选择题，请直接
给出正确答案的选项。\\n\\n``, then the subject's k dev questions (k = 5, file order), each
``题目：{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\n答案是：X\\n\\n``, then the question ending
``答案是：``; the prediction is the option letter (``A``..``D``, no space, as the official code
compares the next-token logits of the four letters) of highest log-likelihood. ``acc`` per
subject and pooled over questions.

Reference scores (5-shot, CMMLU paper Table 2, average over subjects): GPT-4 0.7095, ChatGPT
0.5551; chance 0.25.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.loader import describe, locate
from evals.backend import LoglikelihoodRequest
from evals.multiple_choice import ACC, LETTERS, letter_row, lettered, requests_for, split_flat
from evals.suite import Declared

BENCHMARK = "cmmlu"
DEFAULT_FEWSHOT = 5
HEADER = "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"
CUE = "答案是："
SUBJECT_NAMES = {  # the official subject names, as in the paper and the repository
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试", "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
    "computer_security": "计算机安全", "conceptual_physics": "概念物理学", "construction_project_management": "建设工程管理",
    "economics": "经济学", "education": "教育学", "electrical_engineering": "电气工程", "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识", "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学", "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学",
    "global_facts": "全球事实", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理", "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学",
    "high_school_politics": "高中政治", "human_sexuality": "人类性行为", "international_law": "国际法学",
    "journalism": "新闻学", "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学",
    "machine_learning": "机器学习", "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论",
    "modern_chinese": "现代汉语", "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计",
    "professional_law": "专业法学", "professional_medicine": "专业医学", "professional_psychology": "专业心理学",
    "public_relations": "公共关系", "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "world_history": "世界历史",
    "world_religions": "世界宗教",
}
SUBJECTS = tuple(sorted(SUBJECT_NAMES))
COLUMNS = ["", "Question", "A", "B", "C", "D", "Answer"]
CASE_PARAM = "subject"


def declare(config) -> list[Declared]:
    files = tuple(f"cmmlu/{split}/{s}.csv" for s in SUBJECTS for split in ("test", "dev"))
    return [Declared(BENCHMARK, SUBJECTS, tuple(ACC), files, chance=tuple(ACC))]


def read_csv(name: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    path = locate(name, data_dir)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if header != COLUMNS:
            raise ValueError(f"{path}:1: expected the columns {COLUMNS}, found {header}")
        docs = []
        for line, fields in enumerate(reader, start=2):
            if len(fields) != 7 or fields[6] not in ("A", "B", "C", "D"):
                raise ValueError(f"{path}:{line}: expected 7 fields ending in an answer A-D, found {fields}")
            docs.append({"doc_id": int(fields[0]), "question": fields[1], "options": fields[2:6],
                         "answer": fields[6]})
    return docs


def format_question(doc: dict[str, Any]) -> str:
    return lettered("题目：" + doc["question"], doc["options"], CUE)


def build_prompt(subject: str, doc: dict[str, Any], exemplars: Sequence[dict[str, Any]], k: int) -> str:
    if k > len(exemplars):
        raise ValueError(f"CMMLU has {len(exemplars)} dev exemplars for {subject!r}; --num-fewshot {k} asks for more")
    shots = "".join(format_question(e) + e["answer"] + "\n\n" for e in exemplars[:k])
    return HEADER.format(subject=SUBJECT_NAMES[subject]) + shots + format_question(doc)


def render(prompt: str, bos: bool) -> list[LoglikelihoodRequest]:
    return requests_for(prompt, list(LETTERS[:4]), bos)


def score(doc: dict[str, Any], prompt: str, logprobs: Sequence[float]) -> dict[str, Any]:
    return letter_row(doc, prompt, logprobs)


@pytest.fixture(scope="module")
def cmmlu_data(eval_config, eval_select):
    tests = {s: read_csv(f"cmmlu/test/{s}.csv", eval_config.data_dir) for s in SUBJECTS}
    chosen = eval_select(BENCHMARK, {s: len(docs) for s, docs in tests.items()})
    return {s: [tests[s][i] for i in chosen[s]] for s in SUBJECTS}


@pytest.mark.parametrize("subject", SUBJECTS)
def test_cmmlu(subject, cmmlu_data, evaluation, eval_config):
    docs = cmmlu_data[subject]
    k = DEFAULT_FEWSHOT if eval_config.num_fewshot is None else eval_config.num_fewshot
    dev = read_csv(f"cmmlu/dev/{subject}.csv", eval_config.data_dir)
    prompts = [build_prompt(subject, d, dev, k) for d in docs]
    per_doc = [render(p, eval_config.bos) for p in prompts]
    flat = evaluation.loglikelihood([r for requests in per_doc for r in requests])
    rows = [score(d, p, lps) for d, p, lps in zip(docs, prompts, split_flat(flat, [len(r) for r in per_doc]))]
    protocol = {"name": "CMMLU official few-shot (src/mp_utils.py)", "num_fewshot": k,
                "fewshot_source": "dev split, same subject, file order", "header": HEADER, "answer_cue": CUE,
                "choices": "'A' .. 'D' (no leading space: the next token after the cue)",
                "context_starts_with_token0": eval_config.bos, "average": "micro over questions"}
    data = [describe(f"cmmlu/test/{subject}.csv", eval_config.data_dir),
            describe(f"cmmlu/dev/{subject}.csv", eval_config.data_dir)]
    evaluation.record(BENCHMARK, subject, rows, ACC, protocol, data)
