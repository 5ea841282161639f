"""Generation benchmarks: GSM8K's gsm8k_cot prompt and extraction, MATH-500's boxed extraction and
math-verify equivalence, the RWKV chat template, and maj@k / pass@k against hand-computed values."""
from __future__ import annotations

import math

import pytest

from evals import test_gsm8k, test_math500
from evals.answer_checking import exact_match, numbers_equal, parse_number
from evals.backend import GenerateResponse
from evals.generation import ks_for, majority, pass_at_k, sample_requests, sampling_scores
from engine.server.chat import fold, render
from evals.templates import CHAT_TEMPLATES, rwkv_chat

JANET = {"doc_id": 0, "target": "18", "question": (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?")}


def out(text: str) -> GenerateResponse:
    return GenerateResponse(text, 10, 5, "stop")


# ---- GSM8K -------------------------------------------------------------------------------------

def test_gsm8k_prompt_matches_lm_eval_gsm8k_cot(shared_dir):
    docs = test_gsm8k.load()
    assert len(docs) == 1319 and docs[0] == JANET
    prompt = test_gsm8k.build_prompt(docs[0], 8)
    assert prompt.startswith(
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?\nA: There are 15 trees originally. "
        "Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."
        "\n\nQ: If there are 3 cars in the parking lot")
    assert prompt.endswith("So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.\n\nQ: " +
                           JANET["question"] + "\nA:")
    assert prompt.count("\nA: ") == 8 and prompt.count("Q: ") == 9


def test_gsm8k_chat_template():
    prompt = test_gsm8k.build_prompt(JANET, 1, "rwkv")
    assert prompt.startswith("User: There are 15 trees in the grove.")
    assert "\n\nAssistant: There are 15 trees originally." in prompt
    assert prompt.endswith("\n\nUser: " + JANET["question"] + "\n\nAssistant:")
    # --system-prompt opens the chat with a System: turn (GSM8K and MATH-500 alike)
    assert test_gsm8k.build_prompt(JANET, 1, "rwkv", "Be exact.") == "System: Be exact.\n\n" + prompt
    problem = {"problem": "1+1?"}
    assert test_math500.build_prompt(problem, "rwkv", "S") == "System: S\n\n" + test_math500.build_prompt(problem, "rwkv")


# (output, target, strict extraction, flexible extraction, strict_match, flexible_extract, numeric_match):
# strict_match and flexible_extract as lm-eval scores gsm8k_cot (strings after its regexes_to_ignore),
# numeric_match the flexible extraction as a number
GSM8K_TABLE = [
    ("She makes 9 * 2 = 18. The answer is 18.", "18", "18", "18.", True, True, True),
    ("The answer is 18", "18", "1", "18", False, True, True),   # the published pattern's quirk: '.' eats a digit
    ("The answer is 18.00.", "18", "18.00", "18.00.", False, False, True),        # trailing zeros: a string
    ("Half a cup, so the answer is 0.50.", "0.5", None, "0.50.", False, False, True),
    ("It costs $18.00 in total.", "18", None, "$18.00", False, False, True),
    ("The answer is 018.", "18", "018", "018.", False, False, True),
    ("The answer is $18.00.", "18", None, "$18.00.", False, False, True),         # strict pattern has no '$'
    ("So 1,000 eggs. The answer is 1,000.\n", "1000", "1,000", "1,000.", True, True, True),  # ',' is ignored
    ("The answer is 17. No wait, the answer is 18. The answer is 18.", "18", "17.", "18.", False, True, True),
    ("It is 18 dollars.", "18", None, "18", False, True, True),
    ("no numbers here", "18", None, None, False, False, False),
    ("The answer is -3.", "-3", "-3", "-3.", True, True, True),
    ("The answer is 5.", "18", "5", "5.", False, False, False),
    ("Janet makes 9 * 2 = 18 dollars. The answer is 18.\n\nQ: next", "18", "18", "18.", True, True, True),
    ("The answer is 1,8.", "18", "1,8", "1,8.", True, True, True),     # both delete every comma
]


@pytest.mark.parametrize("text, target, strict, flexible, strict_ok, flexible_ok, numeric_ok", GSM8K_TABLE)
def test_gsm8k_extraction_table(text, target, strict, flexible, strict_ok, flexible_ok, numeric_ok):
    assert test_gsm8k.extract_strict(text) == strict
    assert test_gsm8k.extract_flexible(text) == flexible
    row = test_gsm8k.score({"doc_id": 0, "target": target}, "p", out(text))
    assert row["scores"]["strict_match"] == float(strict_ok)
    assert row["scores"]["flexible_extract"] == float(flexible_ok)
    assert row["scores"]["numeric_match"] == float(numeric_ok)
    assert row["scores"]["no_answer"] == float(strict is None)


def test_gsm8k_matches_lm_eval_filters_and_metric():
    """Every table row scored by lm-eval's own installed code: the gsm8k-cot.yaml task file's two
    filters (RegexFilter with its patterns and group_select) and its exact_match metric with the
    task's regexes_to_ignore and ignore_case."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter
    yaml = pytest.importorskip("yaml")

    from pathlib import Path

    task = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k-cot.yaml").read_text())
    filters = {f["name"]: f["filter"][0] for f in task["filter_list"]}
    metric = {k: v for k, v in task["metric_list"][0].items() if k not in ("metric", "aggregation", "higher_is_better")}
    assert filters["strict-match"]["regex_pattern"] == test_gsm8k.STRICT.pattern
    assert filters["flexible-extract"]["regex_pattern"] == test_gsm8k.FLEXIBLE.pattern
    assert metric["regexes_to_ignore"] == [p.pattern for p in test_gsm8k.IGNORED]
    for text, target, *_ in GSM8K_TABLE:
        row = test_gsm8k.score({"doc_id": 0, "target": target}, "p", out(text))
        for name, ours in (("strict-match", "strict_match"), ("flexible-extract", "flexible_extract")):
            spec = {k: v for k, v in filters[name].items() if k != "function"}
            (filtered,), = RegexFilter(**spec).apply([[text]], [{}])
            theirs = exact_match_hf_evaluate([filtered], [target], **metric)["exact_match"]
            assert row["scores"][ours] == theirs, (text, name, filtered)
    # the fidelity gap this closes: equal as numbers, not as strings, so lm-eval scores them wrong
    scores = {t: test_gsm8k.score({"doc_id": 0, "target": target}, "p", out(t))["scores"]
              for t, target, *_ in GSM8K_TABLE}
    assert {t for t, s in scores.items() if s["numeric_match"] and not s["flexible_extract"]} == {
        "The answer is 18.00.", "Half a cup, so the answer is 0.50.", "It costs $18.00 in total.",
        "The answer is 018.", "The answer is $18.00."}


@pytest.mark.parametrize("a, b, equal", [
    ("1,000", "1000", True), ("1000.00", "1000", True), ("$1,234.50.", "1234.5", True), ("18 dollars", "18", True),
    ("0.5", ".5", True), ("-0", "0", True), ("18", "18.01", False), ("abc", "abc", False), (None, "1", False),
])
def test_number_comparison_table(a, b, equal):
    assert numbers_equal(a, b) is equal


def test_gsm8k_score_row_with_samples():
    samples = [out("The answer is 18."), out("The answer is 7."), out("so 18"), out("nothing")]
    row = test_gsm8k.score(JANET, "p", out("The answer is 18."), samples)
    assert row["scores"]["strict_match"] == 1.0 and row["scores"]["no_answer"] == 0.0
    # flexible answers 18., 7., 18, None: 2 of 4 correct; maj@1 = 18 (right); maj@2 tie 18 vs 7 -> first (18)
    assert row["scores"]["pass@1"] == pytest.approx(0.5)
    assert row["scores"]["pass@2"] == pytest.approx(1 - 1 / 6)
    assert row["scores"]["maj@1"] == row["scores"]["maj@2"] == row["scores"]["maj@4"] == 1.0


# ---- maj@k / pass@k ----------------------------------------------------------------------------

@pytest.mark.parametrize("n, c, k, expected", [
    (1, 1, 1, 1.0), (1, 0, 1, 0.0), (4, 2, 1, 0.5),
    (4, 2, 2, 1 - 1 / 6),            # 1 - C(2,2)/C(4,2)
    (5, 1, 2, 1 - 6 / 10),           # 1 - C(4,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),        # 1 - C(7,5)/C(10,5)
    (4, 3, 2, 1.0),                  # n - c < k: every pair has a correct one
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_majority_and_maj_at_k():
    assert majority(["5", "7", "7", None, "5"]) == "5"        # tie 2-2: the first seen
    assert majority(["5", "7", "7"]) == "7"
    assert majority([None, None]) is None
    assert majority(["0.5", "1/2", "3"], same=lambda a, b: eval(a) == eval(b)) == "0.5"
    answers = ["3", "4", "4", None, "4", "3", "3", "3"]
    scores = sampling_scores(answers, [a == "3" for a in answers], lambda a: a == "3")
    assert ks_for(8) == [1, 2, 4, 8]
    # first 1: 3 (right); first 2: tie 3/4 -> 3; first 4: 4 twice; all 8: 3 four times
    assert [scores[f"maj@{k}"] for k in (1, 2, 4, 8)] == [1.0, 1.0, 0.0, 1.0]
    assert scores["pass@1"] == pytest.approx(4 / 8) and scores["pass@8"] == 1.0
    assert ks_for(1) == [1] and ks_for(6) == [1, 2, 4, 6]


def test_sample_requests_have_distinct_seeds():
    requests = sample_requests("ctx", ("Q:",), 32, 3, 0.7, 0.9, 100, True)
    assert [r.seed for r in requests] == [100, 101, 102] and {r.temperature for r in requests} == {0.7}


# ---- MATH-500 ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{5}.", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested \\boxed{\\frac{\\sqrt{3}}{2}} end", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),                           # the last box
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("$\\boxed 7$", "7"),
    ("\\fbox{x+1}", "x+1"),
    ("\\boxed{\\frac{1}{2}", None),                                       # never closed
    ("no box at all: 5", None),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
])
def test_boxed_extraction_table(text, expected):
    assert test_math500.last_boxed(text) == expected


@pytest.mark.parametrize("answer, reference, equal", [
    ("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac12", "\\frac{1}{2}", True),
    ("\\sqrt{18}", "3\\sqrt{2}", True),
    ("1+x^2", "x^2+1", True),
    ("\\{2,1\\}", "\\{1,2\\}", True),
    ("10.0", "10", True),
    ("7", "6", False),
    ("\\frac{1}{3}", "0.33", False),
])
def test_math_equivalence_table(answer, reference, equal):
    assert test_math500.equivalent(answer, reference) is equal


def test_math500_row_counts_unboxed_and_unparsable(shared_dir):
    docs = test_math500.load()
    assert len(docs) == 500 and docs[0]["doc_id"] == "test/precalculus/807.json"
    doc = docs[0]
    right = test_math500.score(doc, "p", out("r = 3 so \\boxed{(3, \\frac{\\pi}{2})}"))
    assert right["scores"] == {"acc": 1.0, "no_boxed": 0.0, "unparsable": 0.0}
    assert test_math500.score(doc, "p", out("I do not know"))["scores"] == {"acc": 0.0, "no_boxed": 1.0,
                                                                             "unparsable": 0.0}
    assert test_math500.score(doc, "p", out("\\boxed{}"))["scores"] == {"acc": 0.0, "no_boxed": 0.0, "unparsable": 1.0}
    samples = [out("\\boxed{(3,\\frac{\\pi}{2})}"), out("\\boxed{(3, \\pi/2)}"), out("\\boxed{(1,2)}")]
    scores = test_math500.score(doc, "p", out("x"), samples)["scores"]
    assert scores["pass@1"] == pytest.approx(2 / 3) and scores["maj@3"] == 1.0   # the two right ones vote together


def test_math500_prompts():
    doc = {"problem": "What is $1+1$?"}
    assert test_math500.build_prompt(doc) == ("Problem:\nWhat is $1+1$?\nPlease reason step by step, and put your "
                                              "final answer within \\boxed{}.\n\nSolution:")
    assert test_math500.build_prompt(doc, "rwkv") == ("User: What is $1+1$?\nPlease reason step by step, and put "
                                                      "your final answer within \\boxed{}.\n\nAssistant:")


# ---- templates and exact match ----------------------------------------------------------------

def test_rwkv_chat_collapses_blank_lines():
    assert fold("  a\r\n\r\nb\n \n c ") == "a\nb\n c"
    assert rwkv_chat([("q1", "a1")], "q2") == "User: q1\n\nAssistant: a1\n\nUser: q2\n\nAssistant:"
    assert rwkv_chat([("q\n\n1", "a1")], "q2", "S") == render([("system", "S"), ("user", "q\n\n1"), ("assistant", "a1"),
                                                           ("user", "q2")])


def test_chat_template_rwkv_is_template_rwkv():
    """--chat-template rwkv (an endpoint) and --template rwkv give the same text: the context is
    one user message, its blank lines folded like the server's chat rendering folds them."""
    context = "Question one\n\nwith a blank line\r\n\r\nand another"
    for system in (None, "Be\n\nterse."):
        sent = CHAT_TEMPLATES["rwkv"].render(context, system)
        assert sent == rwkv_chat((), context, system) == render(([("system", system)] if system else [])
                                                                 + [("user", context)])
        assert "\n\n" not in sent.split("User: ", 1)[1].removesuffix("\n\nAssistant:")


@pytest.mark.parametrize("prediction, reference, steps, equal", [
    (" Paris ", "Paris", ("strip",), True),
    ("paris", "Paris", ("strip",), False),
    ("paris", "Paris", ("strip", "lower"), True),
    ("The Eiffel tower!", "eiffel tower", ("lower", "punctuation", "articles", "whitespace"), True),
    ("1,000", "1000", ("strip", "numbers"), True),
    ("1,000", "1000", ("strip",), False),
    ("“quoted”。", "quoted", ("punctuation",), True),                     # Unicode punctuation
])
def test_exact_match_table(prediction, reference, steps, equal):
    assert exact_match(prediction, reference, steps) is equal


def test_parse_number_edge_cases():
    assert parse_number("1e3") == 1000 and parse_number("5%") == 5 and parse_number("") is None


def test_greedy_and_samples_one_call_each_cut_per_prompt():
    from types import SimpleNamespace

    from evals.backend import GenerateResponse
    from evals.generation import add_sampling, greedy_and_samples

    calls = []

    class Evaluation:
        def generate(self, requests):
            calls.append(requests)
            return [GenerateResponse(f"{r.context}|{r.seed}|{r.temperature}", 1, 1, "stop") for r in requests]

    cfg = SimpleNamespace(samples=3, temperature=0.7, top_p=0.9, sampling_seed=10, bos=True)
    greedy, sampled = greedy_and_samples(Evaluation(), cfg, ["p", "q"], ["\n"], 8)
    assert [g.text for g in greedy] == ["p|None|0.0", "q|None|0.0"] and len(calls) == 2
    assert [[s.text for s in group] for group in sampled] == [["p|10|0.7", "p|11|0.7", "p|12|0.7"],
                                                              ["q|10|0.7", "q|11|0.7", "q|12|0.7"]]
    assert all(r.stop == ("\n",) and r.max_new_tokens == 8 and r.bos for batch in calls for r in batch)
    metrics, protocol = {}, {}
    add_sampling(cfg, metrics, protocol, answers="x")
    assert set(metrics) == {"maj@1", "pass@1", "maj@2", "pass@2", "maj@3", "pass@3"}
    assert protocol["sampling"]["seeds"] == "10..12" and protocol["sampling"]["answers"] == "x"
    calls.clear()
    greedy, sampled = greedy_and_samples(Evaluation(), SimpleNamespace(**(vars(cfg) | {"samples": 0})), ["p"], [], 8)
    assert sampled == [[]] and len(calls) == 1  # no samples asked: no second call
    metrics, protocol = {}, {}
    add_sampling(SimpleNamespace(samples=0), metrics, protocol)
    assert metrics == {} and protocol == {}
