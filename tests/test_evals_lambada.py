"""LAMBADA: the lm-eval ``lambada_openai`` split, rendering with and without token 0, scoring."""
from __future__ import annotations

import pytest

from evals.backend import LoglikelihoodResponse
from evals.metrics import aggregate
from evals.test_lambada import METRICS, load, render, score, split


@pytest.mark.parametrize("text, context, continuation", [
    ("the cat sat on the mat", "the cat sat on the", " mat"),
    ("He said “go.” She left", "He said “go.” She", " left"),
    ("two  spaces  here", "two  spaces ", " here"),  # split(" ")[:-1] joined, exactly as lm-eval
    ("a\nb c", "a\nb", " c"),
    ("ends with space ", "ends with space", " "),
])
def test_split(text, context, continuation):
    assert split(text) == (context, continuation)
    assert context + continuation == text


def test_render_records_token0_choice():
    doc = {"doc_id": 3, "text": "the cat sat on the mat"}
    assert render(doc).bos is True
    request = render(doc, bos=False)
    assert (request.context, request.continuation, request.bos) == ("the cat sat on the", " mat", False)


def test_score_and_aggregate():
    doc = {"doc_id": 0, "text": "a b"}
    rows = [score(doc, render(doc), LoglikelihoodResponse(lp, greedy, 3, 2))
            for lp, greedy in ((-1.0, True), (-3.0, False))]
    assert rows[0]["scores"] == {"acc": 1.0, "logprob": -1.0} and rows[0]["target"] == " b"
    metrics = aggregate(rows, METRICS)
    assert metrics["acc"].value == 0.5
    assert metrics["ppl"].value == pytest.approx(2.718281828 ** 2)


def test_real_file_has_5153_documents(shared_dir):
    docs = load()
    assert len(docs) == 5153 and docs[0]["doc_id"] == 0
    assert all(split(d["text"])[1].startswith(" ") for d in docs)
