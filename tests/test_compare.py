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


def make_run(root: Path, name: str, acc: dict[int, float], logprob: dict[int, float] | None = None, *,
             more: dict[str, dict[int, float]] | None = None, protocol: dict | None = None) -> Path:
    """A report folder with one benchmark ``toy``: case ``main`` scored ``acc`` (and any ``more``
    cases), metrics acc and ppl."""
    run = root / name
    (run / "samples").mkdir(parents=True)
    cases = {}
    for case, scores in {"main": acc, **(more or {})}.items():
        lps = logprob if case == "main" and logprob else {d: -1.0 for d in scores}
        rows = [{"doc_id": d, "prompt": f"question {d}", "target": "A", "output": f"{name} says {v}",
                 "scores": {"acc": v, "logprob": lps[d]}} for d, v in scores.items()]
        (run / "samples" / f"toy-{case}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        mean = sum(scores.values()) / len(scores)
        cases[case] = {
            "metrics": {"acc": {"value": mean, "stderr": None, "n": len(scores), "ci95": None, "aggregation": "mean"},
                        "ppl": {"value": 1.0, "stderr": None, "n": len(scores), "ci95": None,
                                "aggregation": "perplexity"}},
            "spec": {"acc": ["mean", "acc"], "ppl": ["perplexity", "logprob"]}, "samples": f"samples/toy-{case}.jsonl"}
    results = {"status": "complete", "model": {"name": name},
               "benchmarks": {"toy": {"protocol": protocol or {"name": "toy"}, "cases": cases}}}
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


def test_compare_command_writes_table_json_xlsx_html_and_discordant_documents(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs[0]), str(two_runs[1]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "toy        main  acc" in text and "0.6875" in text and "mcnemar_exact" in text and "1/1" in text
    # A and B on the 10 shared documents (not 9/11 and 6/11 over each run's own documents)
    assert "toy        main  acc     0.8000  0.6000  -0.2000 [" in text
    saved = json.loads((out / "comparison.json").read_text())
    assert [r["label"] for r in saved["runs"]] == ["run_a", "run_b"]
    acc = saved["comparisons"][0]["cases"][0]["metrics"]["acc"]
    assert acc["mcnemar"]["a_only"] == 4 and (acc["shared_a"], acc["shared_b"]) == (0.8, 0.6)
    rows = [json.loads(line) for line in (out / "discordant" / "toy-main.jsonl").read_text().splitlines()]
    assert [(r["direction"], r["doc_id"]) for r in rows] == [("a_right_b_wrong", d) for d in (4, 5, 6, 7)] + \
        [("b_right_a_wrong", 8), ("b_right_a_wrong", 9)]
    assert rows[0]["prompt"] == "question 4" and rows[0]["a"]["output"] == "run_a says 1.0"
    assert rows[0]["b"]["output"] == "run_b says 0.0"
    assert not (out / "both_wrong").exists()  # no shared document is wrong in both runs
    assert (out / "comparison.html").read_text().count('class="row') == 2  # acc and ppl of toy/main

    from openpyxl import load_workbook

    sheet = [list(r) for r in load_workbook(out / "comparison.xlsx")["comparison"].iter_rows(values_only=True)]
    acc = next(r for r in sheet if r[2] == "acc")
    assert acc[:3] == ["toy", "main", "acc"] and acc[8] == 0.6875 and acc[10:13] == [4, 2, 10]
    assert acc[15:] == [0, 0.8, 0.6, "run_a", "run_b"]


@pytest.fixture
def two_case_runs(tmp_path) -> tuple[Path, Path]:
    """toy/main as in ``two_runs``; toy/extra: docs 0..5, A right on 0-2, B right on 0 and 3 (so 1, 2
    right only in A, 3 only in B, 4 and 5 wrong in both); A 5-shot, B zero-shot."""
    a = {**{d: 1.0 if d < 8 else 0.0 for d in range(10)}, 100: 1.0}
    b = {**{d: 1.0 if d < 4 or d >= 8 else 0.0 for d in range(10)}, 200: 0.0}
    extra_a = {d: 1.0 if d < 3 else 0.0 for d in range(6)}
    extra_b = {d: 1.0 if d in (0, 3) else 0.0 for d in range(6)}
    return (make_run(tmp_path, "run_a", a, more={"extra": extra_a}, protocol={"name": "toy", "num_fewshot": 5}),
            make_run(tmp_path, "run_b", b, more={"extra": extra_b}, protocol={"name": "toy", "num_fewshot": 0}))


def test_overall_row_both_wrong_and_protocol_warning(two_case_runs):
    comparison = compare_runs(load_run(two_case_runs[0]), load_run(two_case_runs[1]))
    extra = next(c for c in comparison["cases"] if c["case"] == "extra")["metrics"]["acc"]
    assert (extra["a_right_b_wrong"], extra["b_right_a_wrong"], extra["both_wrong"]) == ([1, 2], [3], [4, 5])
    [overall] = comparison["overall"]
    assert (overall["case"], overall["cases"], overall["shared"]) == ("all", ["extra", "main"], 16)
    assert (overall["only_a"], overall["only_b"]) == (1, 1)
    acc = overall["metrics"]["acc"]
    # 16 shared documents: A right on 8 + 3, B on 6 + 2; 6 right only in A, 3 only in B, 2 wrong in both
    assert acc["paired"]["diff"] == pytest.approx((8 - 11) / 16)
    assert (acc["mcnemar"]["a_only"], acc["mcnemar"]["b_only"], acc["both_wrong_count"]) == (6, 3, 2)
    assert acc["mcnemar"]["p_value"] == 2 * (1 + 9 + 36 + 84) / 512  # P(X <= 3), X ~ Bin(9, 1/2)
    assert "a_right_b_wrong" not in acc  # the documents are listed per case
    [warning] = comparison["protocol_warnings"]
    assert warning.startswith("toy: the protocols differ (num_fewshot: A 5, B 0)")


def test_compare_command_defaults_to_the_report_folder_and_warns(two_case_runs, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compare", str(two_case_runs[0]), str(two_case_runs[1])]) == 0
    text = capsys.readouterr().out
    out = tmp_path / "compare-run_a-vs-run_b"  # beside the runs, not in the current folder
    assert list(elsewhere.iterdir()) == [] and (out / "comparison.html").is_file()
    assert "warning: protocol differs: toy: the protocols differ (num_fewshot: A 5, B 0)" in text
    assert "toy        all    acc     0.6875  0.5000  -0.1875 [" in text
    both = [json.loads(line) for line in (out / "both_wrong" / "toy-extra.jsonl").read_text().splitlines()]
    assert [(r["direction"], r["doc_id"]) for r in both] == [("both_wrong", 4), ("both_wrong", 5)]
    assert both[0]["a"]["output"] == "run_a says 0.0" and both[0]["b"]["output"] == "run_b says 0.0"
    page = (out / "comparison.html").read_text()
    assert 'id="warnings"' in page and "num_fewshot: A 5, B 0" in page


def test_compare_three_runs_each_against_the_first(tmp_path, capsys):
    runs = [make_run(tmp_path, name, {d: float(d < right) for d in range(8)})
            for name, right in (("r1", 4), ("r2", 6), ("r3", 2))]
    out = tmp_path / "cmp3"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("benchmark"))
    assert header.split() == ["benchmark", "case", "metric", "r1", "r2", "r3"]
    acc = next(line for line in lines if line.startswith("toy") and " acc " in line)
    assert acc.split()[3] == "0.5000"
    assert "0.5000 -> 0.7500 (+0.2500, p 0.5)" in acc and "0.5000 -> 0.2500 (-0.2500, p 0.5)" in acc
    saved = json.loads((out / "comparison.json").read_text())
    assert [(c["a"]["label"], c["b"]["label"]) for c in saved["comparisons"]] == [("r1", "r2"), ("r1", "r3")]
    assert [json.loads(x)["doc_id"] for x in (out / "discordant" / "r2" / "toy-main.jsonl").read_text().splitlines()] \
        == [4, 5]
    assert (out / "both_wrong" / "r3" / "toy-main.jsonl").read_text().count("\n") == 4  # docs 4-7


def test_compare_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_a_metric_only_one_run_reports_is_listed_not_compared(two_runs, tmp_path, capsys):
    """Runs of other options (``--cot`` adds metrics) or versions: the shared metrics are compared,
    the others listed with the run that has them; the command writes every output."""
    b = two_runs[1]
    results = json.loads((b / "results.json").read_text())
    case = results["benchmarks"]["toy"]["cases"]["main"]
    case["spec"]["acc_cot"] = ["mean", "acc"]
    case["metrics"]["acc_cot"] = dict(case["metrics"]["acc"])
    case["spec"]["ppl"] = ["perplexity", "other_logprob"]  # both report it, from different scores
    (b / "results.json").write_text(json.dumps(results))
    comparison = compare_runs(load_run(two_runs[0]), load_run(b))
    metrics = comparison["cases"][0]["metrics"]
    assert metrics["acc"]["test"] == "mcnemar_exact"  # still compared
    assert metrics["acc_cot"]["only_in"] == "b" and "paired" not in metrics["acc_cot"]
    assert metrics["ppl"]["differs"] == {"a": ["perplexity", "logprob"], "b": ["perplexity", "other_logprob"]}
    out = tmp_path / "cmp"
    assert main(["compare", str(two_runs[0]), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "only in run B" in printed and "not compared" in printed
    assert (out / "comparison.xlsx").is_file() and (out / "comparison.html").is_file()


def test_a_metric_scored_alike_in_one_case_but_not_another_is_listed_in_the_overall_row(two_case_runs):
    """The pooled row compares a metric only when every case scores it alike; one that does not is
    listed as not compared, never dropped."""
    b = two_case_runs[1]
    results = json.loads((b / "results.json").read_text())
    results["benchmarks"]["toy"]["cases"]["main"]["spec"]["ppl"] = ["perplexity", "other_logprob"]
    (b / "results.json").write_text(json.dumps(results))
    [overall] = compare_runs(load_run(two_case_runs[0]), load_run(b))["overall"]
    assert overall["metrics"]["acc"]["test"] == "mcnemar_exact"
    assert "differs" in overall["metrics"]["ppl"] and "paired" not in overall["metrics"]["ppl"]
