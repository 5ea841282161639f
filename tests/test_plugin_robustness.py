"""The plugin when something is off, through in-process ``pytester`` runs of a toy benchmark whose
rows are fixed in the test (no data, no model):

- one bad case fails its test or the session with its reason, never an INTERNALERROR that loses
  the run: rows that are not JSON, numpy scores under xdist, a samples file that cannot be written, a result the controller
  cannot record;
- a failing gate on one record of a test keeps the test's later records (MMLU: subject, then group);
- ``-k`` selecting nothing writes no report and leaves ``latest`` alone; ``--clear-cache`` deletes
  nothing when the run stops at a check; two cases whose names differ only in characters a file
  name drops get a file each; ``--baseline`` folders that cannot be read are usage errors;
- a merged state-tuned checkpoint passes the checks before the work;
- under xdist the workers neither hash the checkpoint nor repeat the collection checks, and a
  checkpoint that fails to load stops the run with one line (exit 4);
- the gate shown for a metric with several gates, and gates merged by direction.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine  # noqa: F401  torch loaded here: an in-process pytester run drops what it imports, and torch cannot load twice
from evals.fakes import PLUGIN_CONFTEST

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent

TOY = '''
import pytest
from evals.suite import Declared

BENCHMARK = "toy"
CASE_PARAM = "case"
METRICS = {"acc": ("mean", "acc")}
CASES = __CASES__
MODE = __MODE__


def declare(config):
    return [Declared(BENCHMARK, CASES, tuple(METRICS)), Declared("toy_group", CASES, tuple(METRICS))]


@pytest.mark.parametrize("case", CASES)
def test_toy(case, evaluation):
    n = 10 + CASES.index(case)
    rows = [{"doc_id": i, "prompt": f"question {i} of {case}", "target": "A",
             "scores": {"acc": float(i < 3)}} for i in range(n)]
    if case == CASES[0]:
        if MODE == "set":
            rows[0]["extracted"] = {"A", "B"}
        elif MODE == "surrogate_target":
            rows[0]["target"] = "\\ud800"
        elif MODE == "surrogate_prompt":
            rows[0]["prompt"] = "\\ud800"
    if MODE == "numpy":  # a JSON number of another type: json takes it, xdist's channel does not
        import numpy
        for row in rows:
            row["scores"]["acc"] = numpy.float64(row["scores"]["acc"])
    if MODE == "load":
        evaluation.loglikelihood([])
    evaluation.record(BENCHMARK, case, rows, METRICS, {"name": "toy"})
    if MODE == "group":
        evaluation.record("toy_group", case, rows, METRICS, {"name": "toy"})
'''


@pytest.fixture
def toy(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # for xdist's workers
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST)
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")

    def make(mode: str = "", cases: tuple[str, ...] = ("alpha", "beta")) -> pytest.Pytester:
        pytester.makepyfile(test_toy=TOY.replace("__CASES__", repr(cases)).replace("__MODE__", repr(mode)))
        return pytester

    return make


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", *args)


def results(suite: pytest.Pytester) -> dict:
    (folder,) = [p for p in (suite.path / "reports").glob("2*") if p.is_dir()]
    return json.loads((folder / "results.json").read_text())


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + result.stderr.str()


# ---------------------------------------------------------------- one bad case

def assert_alpha_alone_failed(suite, line: str) -> None:
    """The run fails (no INTERNALERROR) with ``line`` for case alpha, and the report keeps beta only."""
    result = run(suite)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output(result)
    assert "INTERNALERROR" not in output(result)
    result.stdout.fnmatch_lines([line])
    report = results(suite)
    assert report["status"] == "failed" and list(report["benchmarks"]["toy"]["cases"]) == ["beta"]


def test_rows_that_are_not_json_fail_their_test_not_the_session(toy):
    assert_alpha_alone_failed(toy("set"), "*toy/alpha: the rows are not plain JSON values*set*")


def test_numpy_scores_reach_the_controller_under_xdist(toy):
    suite = toy("numpy")
    result = run(suite, "-n", "2", "--shards", "1")
    assert result.ret == 0, output(result)
    assert "INTERNALERROR" not in output(result)
    cases = results(suite)["benchmarks"]["toy"]["cases"]
    assert cases["alpha"]["metrics"]["acc"]["value"] == pytest.approx(0.3) and cases["beta"]["n"] == 11


def test_a_samples_file_that_cannot_be_written_is_named_and_the_run_goes_on(toy):
    suite = toy("surrogate_target")  # a lone surrogate: valid in a str, not in UTF-8
    result = run(suite)
    assert "INTERNALERROR" not in output(result)
    result.stdout.fnmatch_lines(["*could not write */samples/toy-alpha.jsonl: UnicodeEncodeError*"])
    assert set(results(suite)["benchmarks"]["toy"]["cases"]) == {"alpha", "beta"}


def test_a_result_the_controller_cannot_record_fails_the_session_with_its_reason(toy):
    # its sha256 cannot be taken: the controller's side fails
    assert_alpha_alone_failed(toy("surrogate_prompt"),
                              "*toy/alpha: its result could not be recorded (UnicodeEncodeError*")


def test_a_failing_gate_keeps_the_tests_later_records(toy):
    suite = toy("group")
    result = run(suite, "--threshold", "toy/alpha.acc>=0.9")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*threshold gate failed: toy/alpha.acc = 0.3 is below the bound >= 0.9*"])
    benchmarks = results(suite)["benchmarks"]
    assert benchmarks["toy_group"]["cases"]["alpha"]["n"] == 10  # recorded after the failing one
    assert benchmarks["toy_group"]["cases"]["alpha"]["outcome"] == "failed"
    assert benchmarks["toy"]["cases"]["alpha"]["outcome"] == "failed"


# ---------------------------------------------------------------- selection, cache, names

def test_selecting_no_case_writes_no_report_and_keeps_latest(toy):
    suite = toy()
    assert run(suite).ret == 0
    latest = (suite.path / "reports" / "latest").resolve()
    result = run(suite, "-k", "no_such_case")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(["*no case selected; no report written*"])
    assert [p for p in (suite.path / "reports").glob("2*")] == [latest]
    assert (suite.path / "reports" / "latest").resolve() == latest


def test_clear_cache_deletes_nothing_when_a_check_stops_the_run(toy):
    from evals.cache import ResponseCache

    suite = toy()
    cache = ResponseCache.open(suite.path / "kept")
    cache.register_model("an earlier model", {"info": {}})
    cache.close()

    def models() -> set[str]:
        cache = ResponseCache.open(suite.path / "kept", create=False)
        try:
            return set(cache.models())
        finally:
            cache.close()

    args = ("--cache-dir", "kept", "--clear-cache")
    result = run(suite, *args, "--threshold", "toy.no_such_metric>=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "an earlier model" in models()
    assert run(suite, *args).ret == 0
    assert "an earlier model" not in models() and models()  # cleared, then this run's model stored


def test_case_names_that_differ_only_in_dropped_characters_get_a_file_each(toy):
    suite = toy(cases=("a b", "a_b"))
    assert run(suite).ret == 0
    (folder,) = [p for p in (suite.path / "reports").glob("2*") if p.is_dir()]
    cases = json.loads((folder / "results.json").read_text())["benchmarks"]["toy"]["cases"]
    files = {case: entry["samples"] for case, entry in cases.items()}
    assert files["a_b"] == "samples/toy-a_b.jsonl" and files["a b"].startswith("samples/toy-a_b-")
    for case, n in (("a b", 10), ("a_b", 11)):
        assert len((folder / files[case]).read_text().splitlines()) == n


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe not text", "UnicodeDecodeError"),
    (b'["a list"]', "not an rwkveval results.json"),
    (b'{"benchmarks": {"toy": {"cases": {"alpha": {"samples": 5}}}}}', "benchmark 'toy' is not as rwkveval writes it"),
])
def test_a_baseline_that_cannot_be_read_is_a_usage_error(toy, content, message):
    suite = toy()
    (suite.path / "old").mkdir()
    (suite.path / "old" / "results.json").write_bytes(content)
    result = run(suite, "--baseline", "old")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert "Traceback" not in output(result)
    result.stderr.fnmatch_lines([f"ERROR: --baseline old: *{message}*"])


def test_sample_prompts_below_minus_one_is_a_usage_error(toy):
    result = run(toy(), "--sample-prompts", "-2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sample-prompts*an integer >= 0, or -1 for every row*-2*"])


def test_a_merged_state_tuned_checkpoint_passes_the_checks(pytester, monkeypatch, tiny_model_path):
    import torch

    from peft_reference import make_time_state

    monkeypatch.delenv("RWKV_MODEL", raising=False)
    sd = torch.load(tiny_model_path, map_location="cpu", weights_only=True)
    cfg = engine.checkpoint.infer_config(sd)
    torch.save({**sd, **make_time_state(cfg.n_layer, cfg.n_head, cfg.head_size, seed=3)}, pytester.path / "merged.pth")
    pytester.makeconftest('pytest_plugins = ["evals.plugin"]\n')
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--model", "merged.pth")
    assert result.ret == 0, output(result)  # it was refused: "unexpected keys blocks.0.att.time_state"


# ---------------------------------------------------------------- xdist

COUNTING = PLUGIN_CONFTEST + '''
import os
import evals.models
import evals.plugin.collection

LOG = os.path.join(os.path.dirname(__file__), "calls.log")


def counted(name, function):
    def wrapper(*args, **kwargs):
        with open(LOG, "a") as log:
            log.write(name + "\\n")
        return function(*args, **kwargs)
    return wrapper


ORIGINAL = (evals.models.checkpoint_sha256, evals.plugin.collection.fetch_data)


FAKE_CONFIGURE = pytest_configure


def pytest_configure(config):  # patched for this run only: an in-process run shares the modules
    FAKE_CONFIGURE(config)
    evals.models.checkpoint_sha256 = counted("sha256", ORIGINAL[0])
    evals.plugin.collection.fetch_data = counted("fetch_data", ORIGINAL[1])


def pytest_unconfigure(config):
    evals.models.checkpoint_sha256, evals.plugin.collection.fetch_data = ORIGINAL
'''


def test_xdist_workers_take_the_controllers_checks(toy):
    suite = toy()
    suite.makeconftest(COUNTING)
    result = run(suite, "-n", "2", "--shards", "1")
    assert result.ret == 0, output(result)
    assert sorted((suite.path / "calls.log").read_text().split()) == ["fetch_data", "sha256"]  # once each


FAILING_LOAD = '''
import engine
pytest_plugins = ["evals.plugin"]


ORIGINAL = engine.load_model


def refuse(*args, **kwargs):
    raise engine.EngineError("the weights are damaged")


def pytest_configure(config):  # patched for this run only: an in-process run shares the modules
    from evals.plugin.keys import NO_CHECKPOINT_KEY
    config.stash[NO_CHECKPOINT_KEY] = "the load below fails"
    engine.load_model = refuse


def pytest_unconfigure(config):
    engine.load_model = ORIGINAL
'''


@pytest.mark.parametrize("workers", [[], ["-n", "2", "--shards", "1"]], ids=["serial", "xdist"])
def test_a_checkpoint_that_fails_to_load_stops_the_run_with_one_line(toy, workers):
    suite = toy("load")
    suite.makeconftest(FAILING_LOAD)
    result = run(suite, *workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)
    assert "INTERNALERROR" not in output(result)
    assert output(result).count("--model fake.pth: the weights are damaged") == 1  # one line, from the controller
    assert results(suite)["status"] == "failed"


# ---------------------------------------------------------------- gates shown and merged

def test_the_gate_shown_for_a_metric_is_a_failing_one():
    from evals.plugin.display import gate_status

    case_gate = {"metric": "acc", "passed": False, "op": ">=", "bound": 0.9}
    overall_gate = {"metric": "acc", "passed": True, "op": ">=", "bound": 0.1}
    bench = {"overall": {"decided_in_test": True, "gates": [overall_gate]}}
    entry = {"gates": [case_gate]}
    assert gate_status(bench, entry, "acc") == "FAIL (>= 0.9)"
    assert gate_status(bench, {"gates": [{**case_gate, "passed": True}]}, "acc") == "pass (>= 0.9)"
    assert gate_status(bench, {"gates": []}, "ppl") == "ungated"


def test_a_lower_and_an_upper_bound_on_one_metric_are_both_kept():
    from evals.thresholds import Gate, merge

    file_gates = [Gate.parse("lambada.ppl >= 1", "file"), Gate.parse("lambada.ppl <= 20", "file")]
    merged = merge(file_gates, [Gate.parse("lambada.ppl<=30")])
    assert sorted((g.op, g.bound, g.source) for g in merged) == [("<=", 30.0, "cli"), (">=", 1.0, "file")]
