"""What a person reads after a run: the terminal table, the chance levels in results.json, the
workbook (read back with openpyxl) and report.html, from an in-process pytester run of a toy
benchmark whose rows are fixed in the test, so every number below is known by hand.

toy/alpha: 10 documents, 3 right (4 options each), log-likelihoods -24/-26 alternating, 2 guessed.
toy/beta:  10 documents, 5 right (2 or 10 options, alternating), the same log-likelihoods, none guessed.
"""
from __future__ import annotations

import json
import math

import pytest

import engine  # noqa: F401  torch loaded here: an in-process pytester run drops what it imports, and torch cannot load twice
from evals.fakes import PLUGIN_CONFTEST

pytest_plugins = ["pytester"]

TOY = '''
import pytest
from evals.suite import Declared

BENCHMARK = "toy"
CASE_PARAM = "case"
METRICS = {"acc": ("mean", "acc"), "ppl": ("perplexity", "logprob"), "guessed": ("sum", "guessed")}
RIGHT = {"alpha": 3, "beta": 5}


def declare(config):
    return [Declared(BENCHMARK, ("alpha", "beta"), tuple(METRICS), chance=("acc",))]


def options(case, i):
    if BROKEN and i == 7:
        return None
    return 4 if case == "alpha" else (2 if i % 2 == 0 else 10)


BROKEN = False


@pytest.mark.parametrize("case", ["alpha", "beta"])
def test_toy(case, evaluation):
    rows = [{"doc_id": i, "prompt": f"question {i} of {case}", "target": "A", "output": "B" * (i * 100),
             "n_options": options(case, i),
             "scores": {"acc": float(i < RIGHT[case]), "logprob": -24.0 if i % 2 == 0 else -26.0,
                        "guessed": float(case == "alpha" and i in (8, 9))}}
            for i in range(10)]
    evaluation.record(BENCHMARK, case, rows, METRICS, {"name": "toy protocol", "num_fewshot": 0})
'''


@pytest.fixture
def toy(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST)
    pytester.makepyfile(test_toy=TOY)
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    return pytester


def run(toy: pytest.Pytester, *args: str) -> pytest.RunResult:
    return toy.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "--threshold", "toy/alpha.acc>=0.2",
                         "--threshold", "toy.acc>=0.9", *args)


def table(result: pytest.RunResult) -> dict[tuple[str, str], list[str]]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "rwkveval results" in line)
    assert lines[start + 1].split() == ["benchmark", "case", "metric", "value", "95%", "CI", "n", "chance", "gate"]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("toy "):
            break
        cells = line.split()
        out[(cells[1], cells[2])] = cells[3:]
    return out


def test_terminal_table_formats_and_results_json_chance(toy):
    result = run(toy)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the pooled gate toy.acc >= 0.9 fails the session
    rows = table(result)
    # ppl = exp(25); its interval exp(25 -+ 1.96 * se), se = sd(-24, -26, ...) / sqrt(10) = sqrt(10/9) / sqrt(10)
    se = math.sqrt(10 / 9) / math.sqrt(10)
    low, high = math.exp(25 - 1.959963984540054 * se), math.exp(25 + 1.959963984540054 * se)
    assert f"{low:.2e}" == "3.75e+10" and f"{high:.2e}" == "1.38e+11"  # what the row must show
    assert rows[("alpha", "acc")] == ["0.3000", "[0.108,", "0.603]", "10", "0.25", "pass", "(>=", "0.2)"]
    assert rows[("alpha", "ppl")] == ["7.200e+10", "[3.75e+10,", "1.38e+11]", "10", "-", "ungated"]
    assert rows[("alpha", "guessed")] == ["2", "-", "10", "-", "ungated"]
    assert rows[("beta", "acc")] == ["0.5000", "[0.237,", "0.763]", "10", "0.3", "ungated"]
    assert rows[("all", "acc")] == ["0.4000", "[0.219,", "0.613]", "20", "0.275", "FAIL", "(>=", "0.9)"]
    assert rows[("all", "guessed")][:3] == ["2", "-", "20"]

    run_dir = (toy.path / "reports" / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    bench = results["benchmarks"]["toy"]
    assert bench["cases"]["alpha"]["metrics"]["acc"]["chance"] == 0.25
    assert bench["cases"]["beta"]["metrics"]["acc"]["chance"] == pytest.approx(0.3)
    assert bench["overall"]["metrics"]["acc"]["chance"] == pytest.approx(0.275)
    assert bench["cases"]["alpha"]["metrics"]["ppl"]["chance"] is None
    assert (run_dir / "report.html").stat().st_size > 0


def test_a_row_without_its_option_count_is_named(toy):
    toy.makepyfile(test_toy=TOY.replace("BROKEN = False", "BROKEN = True"))
    result = run(toy)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*row 7: n_options must be the number of answer options*found None*"])


def test_workbook_reads_well(toy):
    from openpyxl import load_workbook

    run(toy, "--limit", "20")
    run_dir = (toy.path / "reports" / "latest").resolve()
    results = json.loads((run_dir / "results.json").read_text())
    book = load_workbook(run_dir / "summary.xlsx")
    assert book.sheetnames == ["run", "summary", "toy"]

    cells = [row for row in book["run"].iter_rows(values_only=True)]
    split = cells.index(("option", "value"))
    header, options = dict(cells[1:split - 1]), dict(cells[split + 1:])
    assert header["model"] == results["model"]["name"] == "fake" and header["status"] == "complete"
    assert header["date"] == results["datetime"]["start"] and header["sha256"] == results["model"]["sha256"]
    assert options["model"] == "fake.pth" and options["limit"] == 20 and options["num_fewshot"] is None
    assert header["gates"] == "1 passed, 1 failed, 0 undecided"
    assert book["run"]["A1"].font.b and book["run"].freeze_panes == "A2"

    summary = book["summary"]
    assert [c.value for c in summary[1]] == ["benchmark", "case", "metric", "value", "stderr", "n", "ci95_low",
                                             "ci95_high", "chance"]
    assert summary["A1"].font.b and summary.freeze_panes == "D2"
    assert summary.column_dimensions["C"].width >= len("guessed")
    by_key = {(r[0].value, r[1].value, r[2].value): r for r in summary.iter_rows(min_row=2)}
    acc, ppl, guessed = (by_key[("toy", "alpha", m)] for m in ("acc", "ppl", "guessed"))
    assert acc[3].value == pytest.approx(0.3) and acc[3].number_format == "0.0%"
    assert acc[8].value == 0.25 and acc[8].number_format == "0.0%"
    assert ppl[3].value == pytest.approx(math.exp(25)) and ppl[3].number_format == "0.000E+00"
    assert guessed[3].value == 2 and guessed[3].number_format == "0" and acc[5].number_format == "0"

    sheet = book["toy"]
    assert [c.value for c in sheet[1]][:6] == ["case", "n", "acc", "acc 95% low", "acc 95% high", "acc chance"]
    assert [sheet.cell(r, 1).value for r in range(2, 5)] == ["alpha", "beta", "all"]
    assert sheet.freeze_panes == "B2"
    [chart] = sheet._charts  # openpyxl reads charts back
    assert type(chart).__name__ == "BarChart" and chart.series[0].errBars is not None
    assert [type(c).__name__ for c in chart._charts] == ["BarChart", "LineChart"]  # bars + the chance line
    assert chart.series[0].val.numRef.f == "'toy'!$C$2:$C$4"
