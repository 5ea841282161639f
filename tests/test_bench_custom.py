"""The custom data module: row checking (errors name file and line: bad bytes, lone surrogates, ids),
metric choice, file discovery, the context budget (checked before any model work)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarkdata.loader import DataError, iter_jsonl
from evals.fakes import PLUGIN_CONFTEST
from evals.test_custom import check_budget, data_files, load, render_prompt
from evals.text_metrics import rouge

pytest_plugins = ["pytester"]


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_generation_rows_and_auto_metric(tmp_path):
    path = write(tmp_path / "qa.jsonl", {"id": "a", "prompt": "2+2=", "answer": "4"}, "", {"prompt": "x", "answer": "y"})
    docs, metric = load(path, None)
    assert metric == "exact_match"
    keep = ("prompt", "answer", "target", "doc_id", "line")
    assert [{k: d[k] for k in keep} for d in docs] == [
        {"prompt": "2+2=", "answer": "4", "target": "4", "doc_id": "a", "line": 1},
        {"prompt": "x", "answer": "y", "target": "y", "doc_id": 3, "line": 3}]
    assert {d["checker"].text for d in docs} == {"exact_match"} and docs[0]["row"] == {"id": "a", "prompt": "2+2=",
                                                                                      "answer": "4"}


def test_multiple_choice_rows(tmp_path):
    path = write(tmp_path / "mc.jsonl", {"prompt": "p", "choices": ["a", "b", "c"], "answer": 2},
                 {"prompt": "q", "choices": ["a", "b"], "answer": "b"})
    docs, metric = load(path, None)
    assert metric == "multiple_choice" and [d["gold"] for d in docs] == [2, 1]


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "p", "answer": ', "malformed JSON"),
    ('[1, 2]', "expected a JSON object"),
    ({"answer": "x"}, "'prompt' must be a non-empty string"),
    ({"prompt": "  ", "answer": "x"}, "'prompt' must be a non-empty string"),
    ({"prompt": "p", "answer": 3}, "'answer' must be the reference text"),
])
def test_malformed_generation_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", {"prompt": "ok", "answer": "fine"}, row)
    with pytest.raises(DataError, match=message) as error:
        load(path, "exact_match")
    assert f"{path}:2:" in str(error.value)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "choices": ["a"], "answer": 0}, "two or more non-empty strings"),
    ({"prompt": "p", "choices": ["a", ""], "answer": 0}, "two or more non-empty strings"),
    ({"prompt": "p", "choices": ["a", "b"], "answer": 2}, "choice index 0..1"),
    ({"prompt": "p", "choices": ["a", "b"], "answer": "c"}, "choice index 0..1"),
    ({"prompt": "p", "choices": ["a", "b"], "answer": True}, "choice index 0..1"),
    ({"prompt": "p", "answer": "a"}, "needs 'choices'"),
])
def test_malformed_choice_rows_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path / "bad.jsonl", {"prompt": "ok", "choices": ["x", "y"], "answer": 0}, "", row)
    with pytest.raises(DataError, match=message) as error:
        load(path, None)
    assert f"{path}:3:" in str(error.value)


def test_empty_file_and_folders(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        load(write(tmp_path / "empty.jsonl", ""), None)
    folder = tmp_path / "set"
    folder.mkdir()
    with pytest.raises(DataError, match="no \\*.jsonl"):
        data_files(folder)
    write(folder / "b.jsonl", {"prompt": "p", "answer": "a"})
    write(folder / "a.jsonl", {"prompt": "p", "answer": "a"})
    (folder / "notes.txt").write_text("ignored")
    assert list(data_files(folder)) == ["a", "b"]
    assert data_files(folder / "a.jsonl") == {"a": folder / "a.jsonl"}


def test_templates_and_rouge():
    assert render_prompt("Hi\n\nthere", "completion") == "Hi\n\nthere"
    assert render_prompt("Hi\n\nthere", "rwkv") == "User: Hi\nthere\n\nAssistant:"
    scores = rouge("the cat sat on the mat", "the cat sat on a mat")
    assert scores["rouge1"] == pytest.approx(5 / 6) and scores["rouge2"] == pytest.approx(0.6)
    assert rouge("completely different", "nothing shared")["rougeL"] == 0.0


def test_bytes_that_are_not_utf8_name_file_line_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok", "answer": "fine"}\n{"prompt": "caf\xe9", "answer": "x"}\n')
    for read in (lambda: load(path, None), lambda: list(iter_jsonl(path))):
        with pytest.raises(DataError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
            read()


def test_a_lone_surrogate_names_file_and_line(tmp_path):
    path = write(tmp_path / "s.jsonl", {"prompt": "ok", "answer": "fine"}, '{"prompt": "a\\ud800b", "answer": "x"}',
                 '{"prompt": "a pair \\ud83d\\ude00 is fine", "answer": "x"}')
    for read in (lambda: load(path, None), lambda: list(iter_jsonl(path))):
        with pytest.raises(DataError, match=rf"{path}:2: a string holds a lone surrogate escape"):
            read()
    path.write_text(path.read_text().replace("a\\ud800b", "no surrogate"), encoding="utf-8")
    assert load(path, None)[0][2]["prompt"] == "a pair \U0001f600 is fine"


@pytest.mark.parametrize("rows, message", [
    ([{"id": {"a": 1}, "prompt": "p", "answer": "a"}], r":1: 'id' must be a string or an integer, found \{'a': 1\}"),
    ([{"id": [1], "prompt": "p", "answer": "a"}], r":1: 'id' must be a string or an integer, found \[1\]"),
    ([{"id": 1.5, "prompt": "p", "answer": "a"}], r":1: 'id' must be a string or an integer, found 1.5"),
    ([{"id": True, "prompt": "p", "answer": "a"}], r":1: 'id' must be a string or an integer, found True"),
    ([{"id": None, "prompt": "p", "answer": "a"}], r":1: 'id' must be a string or an integer, found None"),
    ([{"id": "q", "prompt": "p", "answer": "a"}, {"id": "q", "prompt": "p", "answer": "a"}],
     r":2: id 'q' repeats the id of line 1; ids must be unique"),
    ([{"id": 2, "prompt": "p", "answer": "a"}, {"prompt": "p", "answer": "a"}],
     r":2: id 2 \(the line number, as the row has no id\) repeats the id of line 1"),
])
def test_ids_must_be_strings_or_integers_and_unique(tmp_path, rows, message):
    path = write(tmp_path / "ids.jsonl", *rows)
    with pytest.raises(DataError, match=str(path) + message):
        load(path, None)


def counting(calls: list):
    """count_tokens of a byte tokenizer (one token a byte, + token 0), recording what it was asked."""
    def count(text: str, bos: bool) -> int:
        calls.append(text)
        return len(text.encode("utf-8")) + bos
    return count


def test_context_budget_names_file_line_count_and_budget(tmp_path):
    path = write(tmp_path / "long.jsonl", {"prompt": "short", "answer": "a"}, {"prompt": "x" * 5000, "answer": "a"})
    docs, _ = load(path, None)
    calls: list = []
    with pytest.raises(DataError, match=rf"{path}:2: the prompt is 5001 tokens, over the context budget "
                                        r"\(--context-budget 4096 less --max-new-tokens 2048 for the answer leaves "
                                        r"2048\); shorten the row or raise --context-budget"):
        check_budget(path, docs, [d["prompt"] for d in docs], counting(calls), True, 4096, 2048)
    assert calls == ["x" * 5000]  # the short row was never tokenized: it cannot be over
    check_budget(path, docs, [d["prompt"] for d in docs], counting([]), True, 8000, 2048)

    mc = write(tmp_path / "mc.jsonl", {"prompt": "p" * 90, "choices": ["a", "b" * 20], "answer": 0})
    docs, _ = load(mc, None)
    with pytest.raises(DataError, match=rf"{mc}:1: the prompt with its longest choice is 112 tokens, over the context "
                                        r"budget \(--context-budget 100 leaves 100\)"):
        check_budget(mc, docs, [d["prompt"] for d in docs], counting([]), True, 100, 0)
    check_budget(mc, docs, [d["prompt"] for d in docs], counting([]), True, 112, 0)


NO_MODEL_CONFTEST = PLUGIN_CONFTEST.replace("return FakeBackend()", "return NoModelWork()") + \
    """
class NoModelWork(FakeBackend):
    def generate(self, requests, progress=None):
        raise AssertionError("the model was asked to generate")
"""


def test_a_prompt_over_budget_stops_the_case_before_any_model_work(pytester, monkeypatch):
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(NO_MODEL_CONFTEST)
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    data = write(pytester.path / "big.jsonl", {"prompt": "short", "answer": "a"},
                 {"prompt": "word " * 200_000, "answer": "a"})  # a 1 MB prompt
    result = pytester.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "--data-file", str(data),
                                "--report-dir", str(pytester.path / "reports"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{data}:2: the prompt is 1000001 tokens, over the context budget*"])
    assert "the model was asked" not in result.stdout.str()


def test_votes_go_by_the_numbers_normalisation_and_empty_answers_do_not_vote():
    from evals.answer_checking import match_key
    from evals.test_custom import sample_scores, strategy_tasks

    steps = ("strip", "numbers")
    assert match_key("1,000.5", steps) == match_key("1000.50", steps) == "1000.5"
    assert match_key("", steps) is None and match_key("  ", ("whitespace",)) is None
    assert match_key("Paris.", ("strip", "lower", "punctuation")) == "paris" and match_key("Paris", ("strip",)) == "Paris"
    # two empty outputs first, then two spellings of the right number and a wrong one
    scores = sample_scores(["", "", "1,000.5", "1000.50", "7"], "1000.5", steps)
    assert scores["maj@1"] == 0.0 and scores["maj@2"] == 0.0  # no answer voted: nothing to judge
    assert scores["maj@4"] == 1.0 and scores["maj@5"] == 1.0  # 1000.5 has two votes, "" none
    [task] = strategy_tasks([{"prompt": "q", "target": "1000.5"}], ["ctx"], steps)
    assert task.answer(" 1,000.50 ") == "1000.5" and task.answer("") is None and task.check("$1,000.5")


def test_the_budget_counts_what_an_endpoint_is_sent(tmp_path):
    """--chat-template and --system-prompt add text on the way to an endpoint: the budget counts
    it (the bare prompt alone would fit)."""
    from types import SimpleNamespace

    from evals.remote import RemoteOptions
    from evals.test_custom import budget_text

    path = write(tmp_path / "q.jsonl", {"prompt": "p" * 60, "answer": "a"})
    docs, _ = load(path, None)
    system = "s" * 40
    local = SimpleNamespace(remote=None)
    templated = SimpleNamespace(remote=RemoteOptions("http://x", chat_template="chatml", system_prompt=system))
    chat = SimpleNamespace(remote=RemoteOptions("http://x", api_mode="chat", system_prompt=system))
    assert budget_text("p" * 60, local) == "p" * 60
    assert budget_text("p" * 60, templated) == ("<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n"
                                                + "p" * 60 + "<|im_end|>\n<|im_start|>assistant\n")
    assert budget_text("p" * 60, chat) == system + "\n\n" + "p" * 60
    check_budget(path, docs, [budget_text("p" * 60, local)], counting([]), True, 100, 0)  # 61 tokens fit
    for cfg in (templated, chat):
        tokens = len(budget_text("p" * 60, cfg)) + 1  # one token a byte (ASCII), + token 0
        assert tokens > 100
        with pytest.raises(DataError, match=f"the prompt is {tokens} tokens, over the context budget"):
            check_budget(path, docs, [budget_text("p" * 60, cfg)], counting([]), True, 100, 0)
