"""The rwkveval plugin through ``pytester``: options and their errors, report files and their
contents, gates, and an xdist run (``-n 2``) writing the same report as a serial one.

The inner runs use the real benchmark modules with :class:`evals.fakes.FakeBackend` in place of the
engine (a conftest overrides ``eval_backend``), so they need the shared data but no weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from evals.fakes import PLUGIN_CONFTEST

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

CONFTEST = PLUGIN_CONFTEST
BENCHMARKS = {
    "test_lambada_suite.py": "from evals.test_lambada import lambada_docs, test_lambada\n",
    "test_mmlu_pro_suite.py": "from evals.test_mmlu_pro import mmlu_pro_data, test_mmlu_pro\n",
}


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(CONFTEST)
    for name, text in BENCHMARKS.items():
        pytester.makepyfile(**{name[:-3]: text})
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess("-p", "no:cacheprovider", "--model", "fake.pth", *args)


def latest(suite: pytest.Pytester) -> Path:
    return (suite.path / "reports" / "latest").resolve()


# ---------------------------------------------------------------- options and their errors

def test_no_model_is_a_usage_error_that_says_how_to_get_one(suite):
    result = suite.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no model given*--model PATH*RWKV_MODEL*rwkv7-g1-0.1b*tiny-rwkv7-834K.pth*"])


def test_model_from_environment(suite, monkeypatch):
    monkeypatch.setenv("RWKV_MODEL", "fake.pth")
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-k", "lambada", "--limit", "3")
    assert result.ret == 0, result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--limit", "abc"], "*--limit*positive integer*fraction*"),
    (["--limit", "0"], "*--limit*"),
    (["--batch-size", "0"], "*--batch-size*positive integer*"),
    (["--threshold", "lambada.acc=0.4"], "*--threshold*cannot read threshold*lambada.acc>=0.45*"),
    (["--device", "tpu"], "*--device*cpu, cuda or cuda:N*"),
    (["--dtype", "int8"], "*--dtype*invalid choice*"),
    (["--data-dir", "no/such/dir"], "*--data-dir*no such directory*"),
])
def test_bad_option_values_are_usage_errors(suite, args, message):
    result = run(suite, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_unknown_model_lists_official_names(suite):
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--model", "nonexistent.pth")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*nonexistent.pth*not a known official name*rwkv7-g1-0.1b*"])


def test_help_shows_options_with_defaults(suite):
    result = suite.runpytest_subprocess("--help")
    assert result.ret == 0
    text = result.stdout.str()
    for needle in ("rwkveval evaluation suite", "--model=PATH|NAME", "--limit=N|FRACTION", "--cot",
                   "(default: 16)", "(default: reports)", "(default: float32)", "--no-bos", "--threshold=GATE"):
        assert needle in text, needle


def test_collect_only_needs_no_model(suite):
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*test_lambada*", "*test_mmlu_pro?computer_science?*"])


# ---------------------------------------------------------------- report files and contents

def test_report_files_and_contents(suite):
    result = run(suite, "-k", "lambada", "--limit", "20", "--sample-prompts", "2")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*rwkveval results*", "lambada*openai*acc*20*ungated*", "*report: *"])
    run_dir = latest(suite)
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("options", "model", "commit", "machine", "versions", "datetime", "benchmarks", "gates", "command"):
        assert key in results, key
    assert results["options"]["limit"] == 20 and results["options"]["bos"] is True
    case = results["benchmarks"]["lambada"]["cases"]["openai"]
    assert case["n"] == 20 and set(case["metrics"]) == {"acc", "ppl"}
    for key in ("stderr", "n", "ci95", "value"):
        assert key in case["metrics"]["acc"]
    for key in ("wall_s", "requests", "prompt_tokens", "generated_tokens", "documents_per_s", "prompt_tokens_per_s"):
        assert case[key] >= 0
    assert case["requests"] == 20 and case["prompt_tokens"] > 0 and case["generated_tokens"] == 0
    assert results["status"] == "complete" and "prompt_tokens" in results["counts_note"]
    assert case["outcome"] == "passed" and case["gated"] is False
    assert results["benchmarks"]["lambada"]["protocol"]["context_starts_with_token0"] is True
    assert results["benchmarks"]["lambada"]["data"][0]["sha256"].startswith("4aa8d02c")
    rows = [json.loads(line) for line in (run_dir / "samples" / "lambada-openai.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and [r["doc_id"] for r in rows] == sorted(r["doc_id"] for r in rows)
    assert all("prompt_sha256" in r and "target" in r and "scores" in r for r in rows)
    assert ["prompt" in r for r in rows[:3]] == [True, True, False]
    assert (run_dir / "progress.log").read_text().count("lambada/openai loglikelihood") >= 2

    from openpyxl import load_workbook

    book = load_workbook(run_dir / "summary.xlsx")
    assert book.sheetnames == ["run", "summary", "lambada"]
    summary = [list(r) for r in book["summary"].iter_rows(values_only=True)]
    assert summary[0] == ["benchmark", "case", "metric", "value", "stderr", "n", "ci95_low", "ci95_high", "chance"]
    acc_row = next(r for r in summary if r[:3] == ["lambada", "openai", "acc"])
    assert acc_row[3] == pytest.approx(case["metrics"]["acc"]["value"]) and acc_row[5] == 20
    per_case = [list(r) for r in book["lambada"].iter_rows(values_only=True)]
    assert per_case[1][:2] == ["openai", 20]
    page = (run_dir / "report.html").read_text()
    assert 'id="status" class="status status-complete"' in page and 'id="chart-lambada"' in page


def test_no_bos_is_recorded(suite):
    assert run(suite, "-k", "lambada", "--limit", "2", "--no-bos").ret == 0
    results = json.loads((latest(suite) / "results.json").read_text())
    assert results["benchmarks"]["lambada"]["protocol"]["context_starts_with_token0"] is False


def test_cot_protocol_report(suite):
    result = run(suite, "-k", "mmlu_pro", "--limit", "14", "--cot", "--max-new-tokens", "16")
    assert result.ret == 0, result.stdout.str()
    bench = json.loads((latest(suite) / "results.json").read_text())["benchmarks"]["mmlu_pro"]
    assert bench["protocol"]["stop"] == ["Question:"] and bench["protocol"]["max_new_tokens"] == 16
    assert set(bench["overall"]["metrics"]) == {"acc", "acc_first_pattern", "guessed"}
    assert len(bench["cases"]) == 14 and bench["overall"]["n"] == 14


# ---------------------------------------------------------------- gates

def test_failing_case_gate_gives_value_bound_n_and_interval(suite):
    result = run(suite, "-k", "lambada", "--limit", "20", "--threshold", "lambada.acc>=0.99")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*threshold gate failed: lambada.acc = * is below the bound >= 0.99 "
                                 "(n=20, 95% CI [[]*, *[]]; gate from cli)*"])
    assert json.loads((latest(suite) / "results.json").read_text())["gates"]["failed"] == 1


def test_failing_overall_gate_fails_the_session(suite):
    result = run(suite, "-k", "mmlu_pro", "--limit", "28", "--threshold", "mmlu_pro.acc>=0.9",
                 "--threshold", "mmlu_pro/math.acc>=0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*14 passed*"])
    result.stdout.fnmatch_lines(["*threshold gate failed: mmlu_pro.acc = * is below the bound >= 0.9 (n=28, 95% CI*"])
    gates = json.loads((latest(suite) / "results.json").read_text())["gates"]
    assert (gates["passed"], gates["failed"]) == (1, 1)


# ---------------------------------------------------------------- xdist

def _comparable(run_dir: Path) -> tuple[dict, dict]:
    results = json.loads((run_dir / "results.json").read_text())
    benchmarks = {}
    for name, bench in results["benchmarks"].items():
        # timings, and the work counts (the second run reuses the first one's cached answers)
        cases = {c: {k: v for k, v in e.items() if k not in ("wall_s", "documents_per_s", "prompt_tokens_per_s",
                                                              "generated_tokens_per_s", "cache", "prompt_tokens")}
                 for c, e in bench["cases"].items()}
        benchmarks[name] = {**bench, "cases": cases}
    samples = {p.name: p.read_text() for p in sorted((run_dir / "samples").iterdir())}
    return {"benchmarks": benchmarks, "gates": results["gates"], "options": results["options"]}, samples


def test_xdist_report_equals_serial_report(suite):
    args = ("--limit", "30", "--threshold", "mmlu_pro.acc>=0.0")
    assert run(suite, *args, "-n", "0").ret == 0
    serial = latest(suite)
    result = run(suite, *args, "-n", "2")
    assert result.ret == 0, result.stdout.str()
    parallel = latest(suite)
    assert parallel != serial
    assert _comparable(parallel) == _comparable(serial)
    assert len(list((parallel / "samples").iterdir())) == 15
