"""Paired statistics against hand computations, and ``rwkveval compare`` on two constructed runs
whose right and wrong documents are known."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evals.cli import main
from evals.compare import compare_runs, load_run
from evals.paired import binomial_cdf_half, mcnemar_exact, paired_difference


def test_binomial_cdf_by_hand():
    assert binomial_cdf_half(2, 6) == (1 + 6 + 15) / 64
    assert binomial_cdf_half(0, 7) == 1 / 128
    assert binomial_cdf_half(-1, 5) == 0.0 and binomial_cdf_half(5, 5) == 1.0
    assert binomial_cdf_half(1000, 2001) == 0.5  # symmetric: exactly half below the middle


def test_mcnemar_by_hand():
    m = mcnemar_exact(4, 2)  # 6 discordant documents: 4 right only in A, 2 only in B
    assert m.p_value == 2 * (1 + 6 + 15) / 64 == 0.6875
    assert m.p_worse == (15 + 6 + 1) / 64  # P(X >= 4), X ~ Bin(6, 1/2)
    m = mcnemar_exact(7, 0)
    assert (m.p_value, m.p_worse) == (2 / 128, 1 / 128)
    assert mcnemar_exact(0, 0).p_value == 1.0 and mcnemar_exact(3, 3).p_value == 1.0


def test_paired_difference_by_hand():
    a = [1.0] * 20
    b = [0.0] * 7 + [1.0] * 13
    d = paired_difference(a, b)
    se = math.sqrt((7 * 0.65**2 + 13 * 0.35**2) / 19 / 20)
    assert d.diff == pytest.approx(-0.35) and d.stderr == pytest.approx(se)
    assert d.ci95 == pytest.approx((-0.35 - 1.959963984540054 * se, -0.35 + 1.959963984540054 * se))
    assert d.p_value == pytest.approx(math.erfc(0.35 / se / math.sqrt(2)))
    assert d.p_worse == pytest.approx(0.5 * math.erfc(0.35 / se / math.sqrt(2)))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 0.0])


def make_run(root: Path, name: str, acc: dict[int, float], logprob: dict[int, float] | None = None) -> Path:
    """A report folder with one benchmark ``toy``, case ``main``, metrics acc and ppl."""
    run = root / name
    (run / "samples").mkdir(parents=True)
    logprob = logprob or {d: -1.0 for d in acc}
    rows = [{"doc_id": d, "prompt": f"question {d}", "target": "A", "output": f"{name} says {v}",
             "scores": {"acc": v, "logprob": logprob[d]}} for d, v in acc.items()]
    (run / "samples" / "toy-main.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = sum(acc.values()) / len(acc)
    results = {"model": {"name": name}, "benchmarks": {"toy": {"cases": {"main": {
        "metrics": {"acc": {"value": mean, "stderr": None, "n": len(acc), "ci95": None, "aggregation": "mean"},
                    "ppl": {"value": 1.0, "stderr": None, "n": len(acc), "ci95": None, "aggregation": "perplexity"}},
        "spec": {"acc": ["mean", "acc"], "ppl": ["perplexity", "logprob"]},
        "samples": "samples/toy-main.jsonl"}}}}}
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    # docs 0..9 shared; A right on 0..7; B right on 0..3 and 8, 9; doc 100 only in A, 200 only in B
    a = {**{d: 1.0 if d < 8 else 0.0 for d in range(10)}, 100: 1.0}
    b = {**{d: 1.0 if d < 4 or d >= 8 else 0.0 for d in range(10)}, 200: 0.0}
    return make_run(tmp_path, "run_a", a), make_run(tmp_path, "run_b", b)


def test_compare_lists_the_right_documents_and_hand_p_value(two_runs):
    comparison = compare_runs(load_run(two_runs[0]), load_run(two_runs[1]))
    case = comparison["cases"][0]
    assert (case["benchmark"], case["case"], case["shared"]) == ("toy", "main", 10)
    assert case["only_a"] == [100] and case["only_b"] == [200]
    acc = case["metrics"]["acc"]
    assert acc["a_right_b_wrong"] == [4, 5, 6, 7] and acc["b_right_a_wrong"] == [8, 9]
    assert acc["mcnemar"]["p_value"] == 0.6875 and acc["test"] == "mcnemar_exact"
    assert acc["paired"]["diff"] == pytest.approx(-0.2) and acc["value_a"] == pytest.approx(9 / 11)
    assert case["metrics"]["ppl"]["test"] == "paired_z" and case["metrics"]["ppl"]["paired"]["diff"] == 0


def test_compare_command_writes_table_json_xlsx_and_discordant_documents(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "toy        main  acc" in text and "0.6875" in text and "mcnemar_exact" in text and "1/1" in text
    saved = json.loads((out / "comparison.json").read_text())
    assert saved["cases"][0]["metrics"]["acc"]["mcnemar"]["a_only"] == 4
    rows = [json.loads(line) for line in (out / "discordant" / "toy-main.jsonl").read_text().splitlines()]
    assert [(r["direction"], r["doc_id"]) for r in rows] == [("a_right_b_wrong", d) for d in (4, 5, 6, 7)] + \
        [("b_right_a_wrong", 8), ("b_right_a_wrong", 9)]
    assert rows[0]["prompt"] == "question 4" and rows[0]["a"]["output"] == "run_a says 1.0"
    assert rows[0]["b"]["output"] == "run_b says 0.0"

    from openpyxl import load_workbook

    sheet = [list(r) for r in load_workbook(out / "comparison.xlsx")["comparison"].iter_rows(values_only=True)]
    acc = next(r for r in sheet if r[2] == "acc")
    assert acc[:3] == ["toy", "main", "acc"] and acc[8] == 0.6875 and acc[10:13] == [4, 2, 10]


def test_compare_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err
