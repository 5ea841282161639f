"""Multiple-choice benchmarks (MMLU, CMMLU, ARC, PIQA, WinoGrande): prompts against the published
protocol text for known documents of the real files, and the acc / acc_norm scoring table.

The expected prompts are written out by hand from lm-evaluation-harness's task definitions
(``mmlu/default/_default_template_yaml``, ``arc_easy.yaml``, ``piqa.yaml``, ``winogrande``'s
``preprocess_winogrande.py``) and CMMLU's ``src/mp_utils.py``.
"""
from __future__ import annotations

import pytest

from evals import test_arc, test_cmmlu, test_mmlu, test_piqa, test_winogrande
from evals.backend import LoglikelihoodResponse
from evals.multiple_choice import argmax, choose, lettered, split_flat


@pytest.mark.parametrize("logprobs, gold, texts, expected", [
    ([-1.0, -2.0, -3.0], 0, None, {"acc": 1.0}),
    ([-2.0, -2.0, -3.0], 1, None, {"acc": 0.0}),                      # tie: the first wins, as np.argmax
    ([-4.0, -6.0], 1, ["ab", "abcdef"], {"acc": 0.0, "acc_norm": 1.0}),  # -2/char vs -1/char
    ([-4.0, -6.0], 0, ["abcd", "ab"], {"acc": 1.0, "acc_norm": 1.0}),    # -1/char vs -3/char
])
def test_choose_table(logprobs, gold, texts, expected):
    assert choose(logprobs, gold, texts)["scores"] == expected


def test_argmax_and_split():
    assert argmax([0.0, 1.0, 1.0]) == 1
    flat = [LoglikelihoodResponse(float(-i), False, 1, 1) for i in range(5)]
    assert split_flat(flat, [2, 3]) == [[0.0, -1.0], [-2.0, -3.0, -4.0]]
    with pytest.raises(RuntimeError):
        split_flat(flat, [2, 2])
    with pytest.raises(ValueError, match="non-empty"):
        choose([-1.0, -2.0], 0, ["a", ""])


def test_lettered():
    assert lettered("Q?", ["x", "y"], "Answer:") == "Q?\nA. x\nB. y\nAnswer:"


def test_mmlu_prompt_for_a_known_question(shared_dir):
    test, dev = test_mmlu.load()
    assert sum(map(len, test.values())) == 14042 and all(len(v) == 5 for v in dev.values())
    doc = test["abstract_algebra"][0]
    expected = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
                "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    prompt = test_mmlu.build_prompt(doc, dev["abstract_algebra"], 1)
    assert prompt == expected
    assert [r.continuation for r in test_mmlu.render(doc, prompt, True)] == [" A", " B", " C", " D"]
    full = test_mmlu.build_prompt(doc, dev["abstract_algebra"], 5)
    assert full.count("\nAnswer: ") == 5 and full.endswith(expected.split("\n\n")[-1])
    row = test_mmlu.score(doc, prompt, [-3.0, -1.0, -2.0, -4.0])
    assert row["extracted"] == "B" and row["scores"] == {"acc": 1.0} and row["target"] == "B"


def test_mmlu_groups_cover_57_subjects():
    assert len(test_mmlu.SUBJECTS) == 57
    assert {g: len(s) for g, s in test_mmlu.GROUPS.items()} == {"stem": 19, "humanities": 13,
                                                                 "social_sciences": 12, "other": 13}


def test_cmmlu_prompt_for_a_known_question(shared_dir):
    test = test_cmmlu.read_csv("cmmlu/test/agronomy.csv")
    dev = test_cmmlu.read_csv("cmmlu/dev/agronomy.csv")
    expected = ("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
                "题目：肉牛屠宰后，胴体的哪个部位肉质较好\nA. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案是：C\n\n"
                "题目：在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是\n"
                "A. 农业生产工具\nB. 土地\nC. 劳动力\nD. 资金\n答案是：")
    prompt = test_cmmlu.build_prompt("agronomy", test[0], dev, 1)
    assert prompt == expected and test[0]["answer"] == "B"
    assert [r.continuation for r in test_cmmlu.render(prompt, True)] == ["A", "B", "C", "D"]


def test_cmmlu_has_67_subjects_and_11582_questions(shared_dir):
    assert len(test_cmmlu.SUBJECTS) == 67
    assert sum(len(test_cmmlu.read_csv(f"cmmlu/test/{s}.csv")) for s in test_cmmlu.SUBJECTS) == 11582


def test_arc_prompt_and_numeric_labels(shared_dir):
    docs = test_arc.load("arc/ARC-Challenge-test.jsonl")
    doc = next(d for d in docs if d["doc_id"] == "Mercury_7175875")
    prompt = test_arc.build_prompt(doc, [], 0)
    assert prompt == ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                      "Which is the most likely effect of this increase in rotation?\nAnswer:")
    assert [r.continuation for r in test_arc.render(doc, prompt, True)] == [
        " Planetary density will decrease.", " Planetary years will become longer.",
        " Planetary days will become shorter.", " Planetary gravity will become stronger."]
    assert doc["gold"] == 2
    easy = test_arc.load("arc/ARC-Easy-test.jsonl")
    numeric = next(d for d in easy if d["doc_id"] == "NYSEDREGENTS_2015_8_28")
    assert numeric["labels"] == ["1", "2", "3", "4"] and numeric["gold"] == 1
    row = test_arc.score(numeric, "p", [-9.0, -2.0, -8.0, -7.0])
    assert row["target"] == "2" and row["extracted"] == "2" and row["scores"] == {"acc": 1.0, "acc_norm": 1.0}
    assert len(easy) == 2376 and len(docs) == 1172
    assert {len(d["choices"]) for d in easy} == {3, 4, 5}


def test_arc_fewshot_uses_the_correct_text():
    shot = {"question": "Q1?", "choices": ["a", "b"], "gold": 1}
    doc = {"question": "Q2?", "choices": ["c", "d"], "gold": 0}
    assert test_arc.build_prompt(doc, [shot], 1) == "Question: Q1?\nAnswer: b\n\nQuestion: Q2?\nAnswer:"


def test_piqa_prompt_for_the_first_goal(shared_dir):
    docs = test_piqa.load()
    assert len(docs) == 1838 and docs[0]["gold"] == 0
    requests = test_piqa.render(docs[0], True)
    assert requests[0].context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert requests[0].continuation.startswith(" Provide the guinea pig with a cage full of a few inches of bedding "
                                               "made of ripped paper strips")
    assert docs[1]["choices"][0] == "replace drawer with bobby pin "  # trailing space kept, as in the file


def test_winogrande_partial_scoring_for_the_first_sentence(shared_dir):
    docs = test_winogrande.load()
    assert len(docs) == 1267
    requests = test_winogrande.render(docs[0], True)
    # "Sarah was a much better surgeon than Maria so _ always got the easier cases." -> Maria (option 2)
    assert [(r.context, r.continuation) for r in requests] == [
        ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
        ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert docs[0]["gold"] == 1 and docs[1]["gold"] == 0
    assert test_winogrande.score(docs[0], [-5.0, -4.0])["scores"] == {"acc": 1.0}


def test_record_with_groups_records_the_case_and_slim_rows_per_group():
    from evals.multiple_choice import record_with_groups

    recorded = []

    class Evaluation:
        def record(self, benchmark, case, rows, metrics, protocol, data):
            recorded.append((benchmark, case, rows, metrics, protocol, data))

    rows = [{"doc_id": 1, "prompt": "long", "target": "A", "extracted": "B", "n_options": 4, "scores": {"acc": 0.0},
             "choice_logprobs": {"A": -2.0}}]
    record_with_groups(Evaluation(), "ceval", "college_physics", ["stem", "hard"], rows, {"acc": ("mean", "acc")},
                       {"name": "p"}, ["d"])
    assert [(b, c) for b, c, *_ in recorded] == [("ceval", "college_physics"), ("ceval_stem", "college_physics"),
                                                ("ceval_hard", "college_physics")]
    assert recorded[0][2] is rows and recorded[0][4] == {"name": "p"}
    slim = {"doc_id": 1, "target": "A", "extracted": "B", "n_options": 4, "scores": {"acc": 0.0}}
    assert all(r[2] == [slim] and r[4] == {"name": "p", "group_of": "ceval"} and r[5] == ["d"] for r in recorded[1:])
