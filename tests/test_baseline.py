"""``--baseline RUN_DIR`` in a pytest run: equal runs pass; a baseline made better on known documents
fails the case with the drop and the hand-computed McNemar p-value; unshared documents are
reported; a sharded run (``-n 2``) reaches the same verdict at the controller."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from evals.fakes import PLUGIN_CONFTEST

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
CONFTEST = PLUGIN_CONFTEST


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded")
    return pytester


def run(suite: pytest.Pytester, *args: str) -> pytest.RunResult:
    return suite.runpytest_subprocess("-p", "no:cacheprovider", "--model", "fake.pth", "-k", "lambada",
                                      "--limit", "40", *args)


def improved_baseline(suite: pytest.Pytester) -> tuple[Path, int]:
    """A copy of the latest run where every document is right, plus one document only there.
    Returns (folder, number of documents this run gets wrong)."""
    source = (suite.path / "reports" / "latest").resolve()
    target = suite.path / "baseline"
    shutil.copytree(source, target)
    samples = target / "samples" / "lambada-openai.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    wrong = sum(r["scores"]["acc"] == 0.0 for r in rows)
    rows = [{**r, "scores": {**r["scores"], "acc": 1.0}} for r in rows]
    rows.append({**rows[0], "doc_id": 999999})
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return target, wrong


def test_same_run_as_baseline_passes(suite):
    assert run(suite).ret == 0
    baseline = (suite.path / "reports" / "latest").resolve()
    result = run(suite, "--baseline", str(baseline))
    assert result.ret == 0, result.stdout.str()
    case = json.loads(((suite.path / "reports" / "latest") / "results.json").read_text())[
        "benchmarks"]["lambada"]["cases"]["openai"]
    assert case["baseline"]["shared"] == 40 and case["baseline"]["metrics"]["acc"]["worse"] is False


def test_significantly_worse_case_fails_with_drop_and_p_value(suite):
    assert run(suite).ret == 0
    baseline, wrong = improved_baseline(suite)
    assert wrong >= 6  # the fake gets ~70% wrong, so the test has power
    result = run(suite, "--baseline", str(baseline), "--baseline-min-effect", "0.05")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    p = 0.5**wrong  # McNemar one-sided: all `wrong` discordant documents went against this run
    drop = wrong / 40
    result.stdout.fnmatch_lines([f"*baseline: lambada/openai.acc is worse than the baseline by {drop:.4f} in "
                                 f"per-document acc ({1 - drop:.4f} now vs 1.0000 on 40 shared documents*"
                                 f"McNemar exact one-sided p = {p:.4g} < 0.05, minimum effect 0.05, {wrong} right "
                                 f"only in the baseline, 0 right only now; 0 documents only in this run, 1 only in "
                                 f"the baseline*"])
    verdict = json.loads(((suite.path / "reports" / "latest") / "results.json").read_text())[
        "benchmarks"]["lambada"]["cases"]["openai"]["baseline"]
    assert verdict["only_baseline"] == [999999] and verdict["metrics"]["acc"]["p_worse"] == p
    assert verdict["metrics"]["ppl"]["worse"] is False  # log-likelihoods unchanged


def test_minimum_effect_and_level_are_respected(suite):
    assert run(suite).ret == 0
    baseline, wrong = improved_baseline(suite)
    assert run(suite, "--baseline", str(baseline), "--baseline-min-effect", str(wrong / 40 + 0.01)).ret == 0
    assert run(suite, "--baseline", str(baseline), "--baseline-alpha", str(0.5**wrong)).ret == 0  # p < alpha fails only


def test_sharded_run_fails_at_the_controller(suite):
    assert run(suite).ret == 0
    baseline, wrong = improved_baseline(suite)
    result = run(suite, "--baseline", str(baseline), "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*baseline: lambada/openai.acc is worse than the baseline by {wrong / 40:.4f}*"
                                 f"p = {0.5**wrong:.4g} < 0.05*"])


def test_bad_baseline_folder_is_a_usage_error(suite):
    result = run(suite, "--baseline", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--baseline nowhere: no results.json there*"])
