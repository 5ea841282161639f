"""MMLU-Pro: prompt rendering against TIGER-Lab's text, answer extraction, scoring, aggregation.

The expected prompt below follows TIGER-Lab's ``evaluate_from_local.py`` (``generate_cot_prompt``/
``format_cot_example``) at TIGER-AI-Lab/MMLU-Pro commit ``f418b11``, with the bytes of its
``cot_prompt_lib/initial_prompt.txt`` at that commit copied below (sha256 pinned): the file read
whole (``readlines()``, nothing stripped: the header and ``.\\n\\n\\n``), ``{$}`` replaced by the
category, one ``\\n`` added, then ``Question:\\n{q}\\nOptions:\\n{A. ...\\n}`` blocks; an exemplar's
``A: Let's think step by step.`` becomes ``Answer: Let's think step by step.`` and ends with a
blank line; the question ends with ``Answer: Let's think step by step.``.
"""
from __future__ import annotations

import hashlib

import pytest

from evals.backend import GenerateResponse, LoglikelihoodResponse
from evals.metrics import aggregate
from evals.test_mmlu_pro import (
    COT_METRICS, build_prompt, extract, fit_cot_prompt, load, official_guess, render_direct, score_cot,
    score_direct,
)

# cot_prompt_lib/initial_prompt.txt at TIGER-AI-Lab/MMLU-Pro f418b116db00b065c2aea046518d8fcf74d39872, byte for byte
INITIAL_PROMPT_TXT = (b'The following are multiple choice questions (with answers) about {$}. Think step by step and '
                      b'then finish your answer with "the answer is (X)" where X is the correct letter choice.\n\n\n')
INITIAL_PROMPT_SHA256 = "d7337806b4d84eef7a86bcb20bf3d64b65e72736c1603e16d08cadebac436f0a"


def official_header(category: str) -> str:
    """generate_cot_prompt's opening: the file's lines concatenated, ``{$}`` replaced, then ``\\n``."""
    return INITIAL_PROMPT_TXT.decode("utf-8").replace("{$}", category) + "\n"


HEADER_MATH = official_header("math")
EXEMPLAR = {
    "question_id": 0, "category": "math", "answer": "A", "answer_index": 0,
    "question": "The symmetric group $S_n$ has $\nactorial{n}$ elements, hence it is not true that $S_{10}$ has "
                "10 elements.\nFind the characteristic of the ring 2Z.",
    "options": ["0", "30", "3", "10", "12", "50", "2", "100", "20", "5"],
    "cot_content": "A: Let's think step by step. A characteristic of a ring is R is $n$ if the statement $ka = 0$ "
                   "for all $a\\in 2Z$ implies that $k$ is a multiple of $n$. Assume that $ka = 0$ for all "
                   "$a\\in 2Z$ for some $k$. In particular $2k = 0$. Hence $k=0$ and $n=0$. The answer is (A).",
}
QUESTION = {"question_id": 8347, "question": "−4 +  ( −3 )=", "category": "math", "answer": "D", "answer_index": 3,
            "options": ["−4", "−10", "12", "−7", "4", "0", "1", "−1", "−12", "7"], "cot_content": ""}
EXEMPLAR_BLOCK = (
    "Question:\nThe symmetric group $S_n$ has $\nactorial{n}$ elements, hence it is not true that $S_{10}$ has 10 "
    "elements.\nFind the characteristic of the ring 2Z.\nOptions:\nA. 0\nB. 30\nC. 3\nD. 10\nE. 12\nF. 50\nG. 2\n"
    "H. 100\nI. 20\nJ. 5\n")
QUESTION_BLOCK = ("Question:\n−4 +  ( −3 )=\nOptions:\nA. −4\nB. −10\nC. 12\nD. −7\nE. 4\nF. 0\nG. 1\nH. −1\n"
                  "I. −12\nJ. 7\n")
COT_ANSWER = ("Answer: Let's think step by step. A characteristic of a ring is R is $n$ if the statement $ka = 0$ "
              "for all $a\\in 2Z$ implies that $k$ is a multiple of $n$. Assume that $ka = 0$ for all $a\\in 2Z$ for "
              "some $k$. In particular $2k = 0$. Hence $k=0$ and $n=0$. The answer is (A).\n\n")


def test_header_is_the_upstream_file_and_four_newlines():
    assert hashlib.sha256(INITIAL_PROMPT_TXT).hexdigest() == INITIAL_PROMPT_SHA256
    assert HEADER_MATH.endswith("letter choice.\n\n\n\n")
    prompt = build_prompt({**QUESTION, "category": "computer science"}, [EXEMPLAR], 0, cot=True)
    assert prompt.startswith(official_header("computer science") + "Question:\n")


def test_cot_prompt_matches_official_text():
    expected = HEADER_MATH + EXEMPLAR_BLOCK + COT_ANSWER + QUESTION_BLOCK + "Answer: Let's think step by step."
    assert build_prompt(QUESTION, [EXEMPLAR], 1, cot=True) == expected


def test_direct_prompt_ends_exemplars_with_letter_and_question_with_cue():
    expected = HEADER_MATH + EXEMPLAR_BLOCK + "Answer: A\n\n" + QUESTION_BLOCK + "Answer:"
    prompt = build_prompt(QUESTION, [EXEMPLAR], 1, cot=False)
    assert prompt == expected
    requests = render_direct(QUESTION, prompt, bos=True)
    assert [r.continuation for r in requests] == [" A", " B", " C", " D", " E", " F", " G", " H", " I", " J"]
    assert all(r.context == prompt and r.bos for r in requests)


def test_zero_shot_prompt_is_header_and_question():
    assert build_prompt(QUESTION, [EXEMPLAR], 0, cot=True) == HEADER_MATH + QUESTION_BLOCK + \
        "Answer: Let's think step by step."


def test_real_data_prompt_for_a_known_question(shared_dir):
    test, validation = load()
    assert sum(map(len, test.values())) == 12032 and all(len(v) == 5 for v in validation.values())
    doc = next(d for d in test["math"] if d["question_id"] == 8347)
    assert doc == QUESTION | {"src": "ori_mmlu-elementary_mathematics"}
    assert validation["math"][0]["question"] == EXEMPLAR["question"]
    assert build_prompt(doc, validation["math"], 1, cot=True) == build_prompt(QUESTION, [EXEMPLAR], 1, cot=True)


def test_too_many_fewshot_is_an_error():
    with pytest.raises(ValueError, match="has 1 exemplars"):
        build_prompt(QUESTION, [EXEMPLAR], 2, cot=False)


def test_context_budget_drops_exemplars():
    shots = [EXEMPLAR] * 5
    full = len(build_prompt(QUESTION, shots, 5, cot=True))
    prompt, k = fit_cot_prompt(QUESTION, shots, 5, len, budget=full)  # needs < budget: one must go
    assert k == 4 and prompt == build_prompt(QUESTION, shots, 4, cot=True)
    assert fit_cot_prompt(QUESTION, shots, 5, len, budget=1) == (build_prompt(QUESTION, shots, 0, cot=True), 0)


@pytest.mark.parametrize("text, letter, stage", [
    ("so the answer is (C).", "C", "first"),
    ("the answer is C", "C", "first"),
    ("The answer is (J)", "J", "first"),
    ("answer is (B) but the answer is (D)", "B", "first"),  # first match wins
    ("The answer: (C)", "C", "final"),  # "answer:" needs the letter right after whitespace
    ("Answer: E", "E", "second"),
    ("answer:   G and more", "G", "second"),
    ("I pick A, then answer: B", "B", "second"),
    ("Options A or B; I think B is right", "B", "final"),
    ("It must be D.\nDefinitely.", "D", "final"),
    ("A\nB\nC", "C", "final"),  # the last standalone letter, across lines
    ("The ANSWER IS (K)", None, None),
    ("no letters here at all", None, None),
    ("", None, None),
])
def test_extraction_table(text, letter, stage):
    assert extract(text) == (letter, stage)


def test_official_guess_is_seeded_per_option_count():
    import random

    for n in (3, 4, 10):
        random.seed(12345)
        assert official_guess(n) == random.randint(0, n - 1)
    assert official_guess(10) == official_guess(10)


def test_protocol_names_the_separator_and_the_guess_rule():
    from evals.test_mmlu_pro import protocol

    described = protocol(True, 5, True, 2048, 4096)
    assert described["header_separator"] == "\n\n\n\n" and "f418b11" in described["prompt_source"]
    assert "reseeded before every guess" in described["guess"] and "996df13" in described["guess"]


def test_score_direct_picks_highest_loglikelihood_first_on_ties():
    responses = [LoglikelihoodResponse(lp, False, 10, 1) for lp in (-3, -1, -1, -5)]
    doc = {**QUESTION, "options": QUESTION["options"][:4], "answer": "B"}
    row = score_direct(doc, "p", responses)
    assert row["extracted"] == "B" and row["scores"] == {"acc": 1.0}
    assert row["choice_logprobs"] == {"A": -3, "B": -1, "C": -1, "D": -5}


def test_score_cot_and_aggregate():
    def gen(text):
        return GenerateResponse(text, 100, 5, "stop")

    guess = "ABCDEFGHIJ"[official_guess(10)]
    rows = [
        score_cot(QUESTION, "p", 5, gen("so the answer is (D).")),   # first pattern, right
        score_cot(QUESTION, "p", 5, gen("Answer: D")),               # second pattern, right
        score_cot(QUESTION, "p", 5, gen("the answer is (A)")),       # wrong
        score_cot({**QUESTION, "answer": guess, "answer_index": official_guess(10)}, "p", 5, gen("nothing")),
    ]
    assert [r["extracted_by"] for r in rows] == ["first", "second", "first", "guess"]
    assert [r["scores"]["acc"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    assert [r["scores"]["acc_first_pattern"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    metrics = aggregate(rows, COT_METRICS)
    assert metrics["acc"].value == 0.75 and metrics["acc"].n == 4
    assert metrics["acc_first_pattern"].value == 0.25
    assert metrics["guessed"].value == 1 and metrics["guessed"].stderr is None
    assert metrics["acc"].stderr == pytest.approx((0.75 * 0.25 / 3) ** 0.5)


def test_suite_docstring_names_the_real_case_parameters():
    from evals import suite, test_mmlu, test_mmlu_pro

    assert f'``"{test_mmlu_pro.CASE_PARAM}"`` for MMLU-Pro' in suite.__doc__
    assert f'``"{test_mmlu.CASE_PARAM}"`` for MMLU' in suite.__doc__
