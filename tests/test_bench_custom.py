"""The custom data module: row checking (errors name file and line), metric choice, file discovery."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarkdata.loader import DataError
from evals.test_custom import data_files, load, render_prompt, rouge


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_generation_rows_and_auto_metric(tmp_path):
    path = write(tmp_path / "qa.jsonl", {"id": "a", "prompt": "2+2=", "answer": "4"}, "", {"prompt": "x", "answer": "y"})
    docs, metric = load(path, None)
    assert metric == "exact_match"
    assert docs == [{"prompt": "2+2=", "answer": "4", "doc_id": "a"}, {"prompt": "x", "answer": "y", "doc_id": 3}]


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
