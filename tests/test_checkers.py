"""Answer checkers and task files (issue 17): spec parsing, every built-in on hand-built outputs
(boxed_any against boxed_last among them), user functions in their worker process (exceptions,
bad return values, timeouts, a dying worker), sidecars, field maps, per-row checkers, and MATH-500's
``--boxed`` rule. No model: outputs are written by hand."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarkdata.loader import DataError
from evals import test_math500
from evals.answer_checking import boxed_answers, last_boxed
from evals.checkers import CheckerError, CheckOptions, Checkers, check_one, extract_letter, parse_checker, target_text
from evals.task_files import TaskFileError, load_task, parse_field_map, task_file
from evals.user_checkers import UserChecker, UserCheckerError

VERIFIERS = r'''
import time

def right_length(output, row):
    """(score, extracted); raises on the rows whose target says so."""
    if row.get("explode"):
        raise ValueError(f"cannot judge {row['target']!r}")
    return float(len(output) == row["target"]), len(output)

def plain(output, row):
    print("a checker may print")       # must not corrupt the protocol
    return output == "yes"

def wrong_type(output, row):
    return "0.5"

def not_finite(output, row):
    return float("nan")

def forever(output, row):
    if output == "hang":
        while True:
            pass
    return 1.0

def dies(output, row):
    import os
    os._exit(7)

def unserialisable(output, row):
    return 1.0, {1, 2}

def stray_stdout(output, row):
    """Writes to file descriptor 1 behind Python's back, as C code or a child process would."""
    import os
    os.write(1, b'{"score": 0.0, "extracted": "forged"}\n{"n": 1, "score": 0.0}\n[1, 2]\nplain words\n')
    os.system("echo from a child process")
    return 1.0, output + " \u00e9\u4e2d"
'''

NOISY_IMPORT = r'''
import os
os.write(1, b'{"ready": false}\n')  # at import time, before the function exists
os.system("echo importing")

def half(output, row):
    return 0.5
'''


@pytest.fixture(scope="module")
def checker_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkers")
    (folder / "verifiers.py").write_text(VERIFIERS)
    return folder


def write(path: Path, *rows: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- specs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, bench_name, metrics", [
    ("exact_match", "exact_match", "custom_exact_match", {"exact_match", "checker_errors"}),
    ("numeric", "numeric", "custom_numeric", {"numeric", "checker_errors"}),
    ("boxed_any", "boxed_any", "custom_boxed_any", {"boxed_any", "checker_errors"}),
    ("rouge", "rouge", "custom_rouge", {"rouge1", "rouge2", "rougeL", "checker_errors"} | {f"rouge{k}_{part}" for k in ("1", "2", "L")
                                                                           for part in ("precision", "recall")}),
    ("semantic", "semantic", "custom_semantic", {"semantic_similarity", "checker_errors"}),
    ("multiple_choice", "multiple_choice", "custom_multiple_choice", {"acc", "acc_norm"}),
    (r"regex:answer: (\d+)", "regex", "custom_regex", {"regex", "checker_errors"}),
    ("my_pkg.verify:check_sum", "function", "custom_fn_check_sum", {"score", "checker_errors"}),
])
def test_checker_specs(text, kind, bench_name, metrics):
    spec = parse_checker(text)
    assert (spec.kind, spec.benchmark, set(spec.metrics())) == (kind, bench_name, metrics)


@pytest.mark.parametrize("text, message", [
    ("exact", "unknown checker 'exact'"),
    ("regex:(", "the pattern does not compile"),
    ("regex:", "needs a pattern"),
    ("my-module:f", "unknown checker"),
    ("mod:", "unknown checker"),
])
def test_bad_specs_say_what_is_accepted(text, message):
    with pytest.raises(CheckerError, match=message):
        parse_checker(text)


# ---- built-ins on hand-built outputs -------------------------------------------------------------

def check(spec: str, output: str, answer, choices=None, normalize=("strip",)):
    parsed = parse_checker(spec)
    return check_one(parsed, output, target_text(parsed, answer, choices), choices, CheckOptions(normalize))


BOXES = "First \\boxed{3}, then I corrected it: \\boxed{\\frac{1}{2}}."


@pytest.mark.parametrize("output, answer, last, any_", [
    (BOXES, "0.5", 1.0, 1.0),                                   # the last box is right
    (BOXES, "3", 0.0, 1.0),                                     # only an earlier box is right
    ("\\boxed{2} or \\boxed{7}", "5", 0.0, 0.0),                # no box is right
    ("no box, just 5", "5", 0.0, 0.0),
    ("\\boxed{x^2} \\boxed{\\text{??}}", "x^2", 0.0, 1.0),      # the last box cannot be parsed
])
def test_boxed_any_against_boxed_last(output, answer, last, any_):
    assert check("boxed_last", output, answer)[0] == last
    assert check("boxed_any", output, answer)[0] == any_


def test_boxed_extractions():
    assert boxed_answers(BOXES) == ["3", "\\frac{1}{2}"] and last_boxed(BOXES) == "\\frac{1}{2}"
    assert check("boxed_last", BOXES, "3") == (0.0, "\\frac{1}{2}")
    assert check("boxed_any", BOXES, "3") == (1.0, "3")          # the right box is the one extracted
    assert check("boxed_any", "\\boxed{1} \\boxed{2}", "9") == (0.0, "2")
    assert boxed_answers("\\boxed{1} \\boxed{open") == ["1"]    # a box that never closes is left out


def test_math500_boxed_option_any_against_last():
    last = test_math500.judge(BOXES, "3", "last")
    anyb = test_math500.judge(BOXES, "3", "any")
    assert (last["scores"]["acc"], last["extracted"]) == (0.0, "\\frac{1}{2}")
    assert (anyb["scores"]["acc"], anyb["extracted"], anyb["boxes"]) == (1.0, "3", ["3", "\\frac{1}{2}"])
    assert test_math500.judge("none", "3", "any")["scores"] == {"acc": 0.0, "no_boxed": 1.0, "unparsable": 0.0}


@pytest.mark.parametrize("spec, output, answer, expected", [
    ("numeric", "so 3 + 4 = 7, and the total is $1,234.50.", "1234.5", (1.0, "$1,234.50")),
    ("numeric", "the total is 12", 12, (1.0, "12")),              # a JSON number as the answer
    ("numeric", "no number", "3", (0.0, None)),
    ("math_equiv", "The answer is $\\frac{1}{2}$.", "0.5", (1.0, "\\frac{1}{2}")),
    ("math_equiv", "so x = 3/4", "0.75", (1.0, "3/4")),
    ("math_equiv", "so x = 3/5", "0.75", (0.0, "3/5")),
    ("contains", "I think the capital is PARIS, France", "paris", (0.0, None)),
    ("regex:answer: (\\w+)", "reasoning... answer: Paris", "Paris", (1.0, "Paris")),
    ("regex:answer: \\w+", "answer: Paris", "answer: Paris", (1.0, "answer: Paris")),  # no group: the whole match
    ("regex:answer: (\\w+)", "I do not know", "Paris", (0.0, None)),
    ("exact_match", "  Paris ", "Paris", (1.0, "Paris")),
])
def test_builtin_checkers(spec, output, answer, expected):
    assert check(spec, output, answer) == expected


def test_normalisations_apply_to_contains_and_regex():
    assert check("contains", "The capital is PARIS, France", "paris", normalize=("lower",)) == (1.0, "paris")
    assert check("regex:is (\\w+)", "it is PARIS", "paris", normalize=("lower",))[0] == 1.0


@pytest.mark.parametrize("output, choices, letter", [
    ("The answer is (C).", None, "C"),
    ("Answer: B because ...", None, "B"),
    ("D. whale", ["a", "b", "c", "d"], "D"),
    ("I pick A, no wait, B", ["x", "y", "z"], "B"),
    ("Not sure, maybe E", ["x", "y", "z"], None),                  # E is not one of three choices
])
def test_choice_letter_extraction(output, choices, letter):
    assert extract_letter(output, choices) == letter


@pytest.mark.parametrize("output", [
    "Answer: A at first; on reflection, Answer: C",    # the second pattern takes the last Answer: of the line
    "answer:(B)? no. Answer: D", "The answer is (J), not Answer: B", "A\nB\nC", "It must be D.\nDefinitely.",
    "Answer: E\nAnswer: F", "(B) Paris, because of A", "nothing here",
])
def test_choice_letter_is_mmlu_pros_extraction(output):
    from evals.test_mmlu_pro import extract

    assert extract_letter(output, None) == extract(output)[0]
    assert extract_letter("Answer: A at first; on reflection, Answer: C", ["w", "x", "y", "z"]) == "C"


def test_choice_letter_targets():
    choices = ["trout", "whale", "gull"]
    assert [target_text(parse_checker("choice_letter"), a, choices) for a in (1, "B", "(B)", "whale")] == ["B"] * 4
    with pytest.raises(ValueError, match="must be a choice letter A-C"):
        target_text(parse_checker("choice_letter"), "D", choices)
    assert check("choice_letter", "The answer is (B)", 1, choices) == (1.0, "B")


# ---- user functions in their worker --------------------------------------------------------------

def test_user_function_scores_extracts_and_reports_exceptions_per_item(checker_dir):
    spec = parse_checker("verifiers:right_length")
    with Checkers(CheckOptions(checker_path=(checker_dir,), timeout=20)) as checkers:
        rows = [{"target": 3}, {"target": 9, "explode": True}, {"target": 5}]
        out = checkers.check(spec, ["abc", "abcdefghi", "abc"], [r["target"] for r in rows], rows, [None] * 3)
    assert [(c.scores, c.extracted, c.error) for c in out] == [
        ({"score": 1.0}, 3, None), ({}, None, "ValueError: cannot judge 9"), ({"score": 0.0}, 3, None)]


@pytest.mark.parametrize("function, message", [
    ("wrong_type", "returned '0.5' (str); expected a number or (number, extracted)"),
    ("not_finite", "returned nan; expected a finite number"),
    ("dies", "the checker's worker process ended (exit code 7)"),
])
def test_bad_user_functions_fail_their_item_with_the_reason(checker_dir, function, message):
    checker = UserChecker("verifiers", function, [checker_dir], timeout=20)
    try:
        assert checker.call("x", {}) == (None, None, message)
        assert checker.call("y", {}) == (None, None, message)  # and again: a dead worker is restarted
    finally:
        checker.close()


def test_prints_and_unserialisable_extractions(checker_dir):
    checker = UserChecker("verifiers", "plain", [checker_dir], timeout=20)
    try:
        assert checker.call("yes", {}) == (1.0, None, None) and checker.call("no", {}) == (0.0, None, None)
    finally:
        checker.close()
    checker = UserChecker("verifiers", "unserialisable", [checker_dir], timeout=20)
    try:
        assert checker.call("x", {}) == (1.0, "{1, 2}", None)  # sent as its str
    finally:
        checker.close()


def test_a_hanging_function_times_out_and_the_next_item_gets_a_fresh_worker(checker_dir):
    checker = UserChecker("verifiers", "forever", [checker_dir], timeout=1.0)
    try:
        assert checker.call("warm", {}) == (1.0, None, None)  # the worker is up: the next wait is the item's own
        started = time.monotonic()
        assert checker.call("hang", {}) == (None, None, "TimeoutError: no answer within 1 s (--checker-timeout)")
        assert time.monotonic() - started < 10
        assert checker.call("fine", {}) == (1.0, None, None)
    finally:
        checker.close()


def test_stray_stdout_never_reaches_the_protocol(checker_dir):
    (checker_dir / "noisy_import.py").write_text(NOISY_IMPORT)
    checker = UserChecker("verifiers", "stray_stdout", [checker_dir], timeout=20)
    try:
        for output in ("a", "b"):  # request numbers 1 and 2: the forged "n": 1 line is never an answer
            assert checker.call(output, {"x": "\u00e9"}) == (1.0, output + " \u00e9\u4e2d", None)
    finally:
        checker.close()
    checker = UserChecker("noisy_import", "half", [checker_dir], timeout=20)
    try:
        assert checker.call("x", {}) == (0.5, None, None)  # '{"ready": false}' at import is not ready
    finally:
        checker.close()


def test_a_worker_that_cannot_be_restarted_fails_its_item_not_the_case(tmp_path):
    (tmp_path / "flaky.py").write_text("def check(output, row):\n    while output == 'hang':\n        pass\n"
                                       "    return 1.0\n")
    checker = UserChecker("flaky", "check", [tmp_path], timeout=1.0)
    try:
        assert checker.call("warm", {}) == (1.0, None, None)
        (tmp_path / "flaky.py").write_text("raise ImportError('broken since')\n")  # edited during the run
        assert checker.call("hang", {})[2].startswith("TimeoutError")
        score, _, error = checker.call("next", {})  # the restart fails: this item's error, no exception
        assert score is None and "could not be restarted" in error and "ImportError: broken since" in error
    finally:
        checker.close()


@pytest.mark.parametrize("module, function, message", [
    ("verifiers", "missing", "AttributeError: module 'verifiers' has no attribute 'missing'"),
    ("no_such_module", "f", "ModuleNotFoundError: No module named 'no_such_module'"),
])
def test_a_function_that_cannot_be_imported_stops_its_case(checker_dir, module, function, message):
    checker = UserChecker(module, function, [checker_dir], timeout=20)
    with pytest.raises(UserCheckerError, match=f"checker '{module}:{function}': cannot import it .*{message}"):
        checker.call("x", {})


# ---- task files: sidecars, field maps, per-row checkers ------------------------------------------

def test_sidecar_names_checker_normalisations_and_fields(tmp_path):
    path = write(tmp_path / "arith.jsonl", {"index": 7, "question": "1+1?", "gold": 2},
                 {"index": 8, "question": "2+2?", "gold": "4"})
    (tmp_path / "arith.task.toml").write_text('checker = "numeric"\nnormalize = ["strip", "lower"]\n'
                                              '[fields]\nprompt = "question"\nanswer = "gold"\nid = "index"\n')
    task = task_file("arith", path, "exact_match")  # the sidecar's checker wins over --custom-metric
    assert (task.benchmark, task.normalize, task.sidecar.name) == ("custom_numeric", ("strip", "lower"),
                                                                   "arith.task.toml")
    docs = load_task(task)
    assert [(d["doc_id"], d["prompt"], d["target"]) for d in docs] == [(7, "1+1?", "2"), (8, "2+2?", "4")]
    assert task.describe()["fields"] == {"answer": "gold", "id": "index", "prompt": "question"}


def test_field_map_option_and_its_errors(tmp_path):
    assert parse_field_map("prompt=input, answer=target,id=index") == (
        ("answer", "target"), ("id", "index"), ("prompt", "input"))
    for text, message in (("prompt", "expected FIELD=NAME"), ("question=input", "unknown field question"),
                          ("prompt=x,answer=x", "two fields read the same name")):
        with pytest.raises(ValueError, match=message):
            parse_field_map(text)
    path = write(tmp_path / "t.jsonl", {"input": "Q?", "target": "A"}, {"input": "Q2?"})
    task = task_file("t", path, None, parse_field_map("prompt=input,answer=target"))
    with pytest.raises(DataError, match=rf"{path}:2: 'answer' \(the file's 'target'\) must be the reference text"):
        load_task(task)


def test_rows_naming_their_own_checkers_make_a_mixed_case(tmp_path):
    path = write(tmp_path / "mixed.jsonl", {"prompt": "p1", "answer": "7", "checker": "numeric"},
                 {"prompt": "p2", "answer": "Paris"}, {"prompt": "p3", "answer": "B", "checker": "choice_letter"})
    task = task_file("mixed", path)
    assert task.benchmark == "custom_mixed" and set(task.metrics()) == {"score", "checker_errors"}
    assert [c.text for c in task.checkers] == ["exact_match", "numeric", "choice_letter"]
    docs = load_task(task)
    with Checkers() as checkers:
        from evals.test_custom import check_outputs

        verdicts = check_outputs(checkers, docs, ["it is 7", "Paris", "The answer is (B)"])
    assert [(v.scores, v.extracted) for v in verdicts] == [
        ({"numeric": 1.0}, "7"), ({"exact_match": 1.0}, "Paris"), ({"choice_letter": 1.0}, "B")]


@pytest.mark.parametrize("rows, sidecar, message", [
    ([{"prompt": "p", "answer": "a", "checker": "nope"}], None, r":1: unknown checker 'nope'"),
    ([{"prompt": "p", "answer": "a"}, {"prompt": "p", "choices": ["a", "b"], "answer": 0,
                                        "checker": "multiple_choice"}], None, "multiple_choice cannot share a file"),
    ([{"prompt": "p", "answer": "a"}], 'checker = "regex:("', "the pattern does not compile"),
    ([{"prompt": "p", "answer": "a"}], 'checkr = "numeric"', "unknown key checkr"),
    ([{"prompt": "p", "answer": "a"}], 'normalize = ["loud"]', "normalize must be a list of"),
    ([{"prompt": "p", "answer": "a"}], '[fields]\nquestion = "q"', "unknown field question"),
])
def test_task_file_errors_name_the_file(tmp_path, rows, sidecar, message):
    path = write(tmp_path / "t.jsonl", *rows)
    if sidecar is not None:
        (tmp_path / "t.task.toml").write_text(sidecar)
    with pytest.raises(TaskFileError, match=message) as error:
        task_file("t", path)
    assert str(tmp_path / "t.") in str(error.value)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "answer": "seven", "checker": "numeric"}, "'answer' must be a number for checker 'numeric'"),
    ({"prompt": "p", "answer": "Z", "checker": "choice_letter"}, "'answer' must be a choice letter A-J"),
    ({"prompt": "p", "answer": 3}, "'answer' must be the reference text for checker 'exact_match'"),
])
def test_answers_a_checker_cannot_use_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "t.jsonl", {"prompt": "ok", "answer": "1"}, row)
    with pytest.raises(DataError, match=rf"{path}:2: {message}"):
        load_task(task_file("t", path))


def test_user_function_rows_may_hold_any_answer(tmp_path):
    path = write(tmp_path / "t.jsonl", {"prompt": "p", "answer": {"n": 1}}, {"prompt": "q"})
    (tmp_path / "t.task.toml").write_text('checker = "verifiers:right_length"\n')
    docs = load_task(task_file("t", path))
    assert [d["target"] for d in docs] == [{"n": 1}, None]


def test_task_file_follows_edits(tmp_path):
    path = write(tmp_path / "t.jsonl", {"prompt": "p", "answer": "1"})
    assert task_file("t", path).benchmark == "custom_exact_match"
    (tmp_path / "t.jsonl.task.toml").write_text('checker = "numeric"\n')  # the <file>.task.toml spelling
    assert task_file("t", path).benchmark == "custom_numeric"
    (tmp_path / "t.task.toml").write_text('checker = "contains"\n')
    with pytest.raises(TaskFileError, match="two sidecars"):
        task_file("t", path)
