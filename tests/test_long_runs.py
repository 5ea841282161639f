"""What a run of hours needs, checked on small runs through in-process ``pytester``:

- everything that can be checked before a model loads stops the run at once: one usage error
  (exit 4, one message naming the option and what to do), no model loaded, in seconds;
- ``--limit`` is drawn over the cases ``-k`` left selected;
- ``progress.log`` lines carry a rate and an ETA that is a time;
- the prompt tokens a case reports are the tokens the engine ran (a shared 5-shot prefix once).

Kill, Ctrl-C and resume are in ``tests/test_resume.py``; the cache's cost in
``tests/test_cache_overhead.py`` (a benchmark).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import engine
from evals.fakes import PLUGIN_CONFTEST

pytest_plugins = ["pytester"]

LAMBADA = "from evals.test_lambada import lambada_docs, test_lambada\n"
MMLU_PRO = "from evals.test_mmlu_pro import mmlu_pro_data, test_mmlu_pro\n"
MMLU = "from evals.test_mmlu import mmlu_data, test_mmlu\n"

# A conftest that loads the plugin and the real engine path, and notes every model load.
ENGINE_CONFTEST = '''
pytest_plugins = ["evals.plugin"]
'''


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fails the test if anything builds a model (the checks must come before)."""
    loads = []

    def refuse(*args, **kwargs):
        loads.append(args)
        raise AssertionError("a model was loaded before the run's checks failed")

    monkeypatch.setattr(engine, "load_model", refuse)
    monkeypatch.setattr("engine.model.load_model", refuse)
    return loads


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makepyfile(test_lambada_suite=LAMBADA, test_mmlu_pro_suite=MMLU_PRO)
    return pytester


def usage_error(suite: pytest.Pytester, *args: str) -> str:
    """Run in-process, expect exit 4 in under 5 s; the one error message."""
    started = time.monotonic()
    result = suite.runpytest("-p", "no:cacheprovider", *args)
    elapsed = time.monotonic() - started
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.stderr.str()  # one message, no traceback
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert elapsed < 5.0, f"the usage error took {elapsed:.1f} s"
    assert not list((suite.path / "reports").glob("2*")), "a run folder was left behind"
    return result.stderr.str()


# ---------------------------------------------------------------- fail before the work

@pytest.mark.parametrize("gate, message", [
    ("mmlu_pro.accuracy>=0.5", "mmlu_pro does not report 'accuracy' with these options; it reports acc"),
    ("mmlu_pro/maths.acc>=0.5", "mmlu_pro has no case 'maths'"),
    ("mmlu_pr.acc>=0.5", "no collected benchmark is named 'mmlu_pr'; known: lambada, mmlu_pro"),
    ("lambada.acc_first_pattern>=0.5", "lambada does not report 'acc_first_pattern'"),
])
def test_a_gate_naming_what_no_benchmark_reports_stops_the_run(suite, no_model_loads, tiny_model_path, gate, message):
    suite.makeconftest(ENGINE_CONFTEST)
    text = usage_error(suite, f"--model={tiny_model_path}", "--threshold", gate, "--limit", "2")
    assert message in text and not no_model_loads


def test_a_cot_metric_is_known_with_cot_only(suite, no_model_loads, tiny_model_path):
    suite.makeconftest(ENGINE_CONFTEST)
    assert "does not report 'guessed'" in usage_error(suite, f"--model={tiny_model_path}",
                                                      "--threshold", "mmlu_pro.guessed<=3")


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01garbage" * 64, "bad.pth"),  # the engine names what it found (tests/test_engine_errors.py)
    (b"PK\x03\x04" + b"\x00" * 200, "truncated or corrupt"),
    (b"", "checkpoint file is empty"),
])
def test_a_bad_checkpoint_is_one_usage_error(suite, no_model_loads, content, message):
    suite.makeconftest(ENGINE_CONFTEST)
    (suite.path / "bad.pth").write_bytes(content)
    text = usage_error(suite, "--model", "bad.pth", "-k", "lambada")
    assert "--model bad.pth" in text and message in text and not no_model_loads


def test_a_checkpoint_of_the_wrong_shape_is_one_usage_error(suite, no_model_loads, tmp_path):
    import torch

    suite.makeconftest(ENGINE_CONFTEST)
    sd = engine.random_state_dict(engine.ModelConfig(2, 64, 2, 32, 256, 128, 32, 32, 32, 32))
    sd["blocks.1.ffn.key.weight"] = torch.zeros(100, 64)
    torch.save(sd, suite.path / "shape.pth")
    text = usage_error(suite, "--model", "shape.pth", "-k", "lambada")
    assert "blocks.1.ffn.key.weight" in text and "expected (128, 64), found (100, 64)" in text


def test_cuda_without_a_gpu_says_to_use_the_cpu(suite, no_model_loads, tiny_model_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    suite.makeconftest(ENGINE_CONFTEST)
    text = usage_error(suite, f"--model={tiny_model_path}", "--device", "cuda", "-k", "lambada")
    assert "--device cuda: torch sees no CUDA GPU" in text and "run with --device cpu" in text


def test_an_altered_data_file_is_one_usage_error(suite, no_model_loads, tiny_model_path, shared_dir):
    suite.makeconftest(ENGINE_CONFTEST)
    data = suite.path / "data" / "lambada_openai"
    data.mkdir(parents=True)
    original = (shared_dir / "benchmarkdata" / "lambada_openai" / "lambada_test.jsonl").read_bytes()
    (data / "lambada_test.jsonl").write_bytes(original.replace(b"the", b"teh", 1))
    text = usage_error(suite, f"--model={tiny_model_path}", "--data-dir", "data", "-k", "lambada")
    assert "lambada_openai/lambada_test.jsonl" in text and "sha256" in text


def test_offline_with_a_missing_data_file_is_one_usage_error(suite, no_model_loads, tiny_model_path, monkeypatch,
                                                             tmp_path):
    monkeypatch.setenv("RWKVEVAL_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("RWKVEVAL_DATA_CACHE", str(tmp_path / "empty-cache"))
    suite.makeconftest(ENGINE_CONFTEST)
    text = usage_error(suite, f"--model={tiny_model_path}", "--offline", "-k", "lambada")
    assert "lambada_openai/lambada_test.jsonl" in text and "--data-dir" in text


def test_an_unreadable_baseline_is_one_usage_error(suite, no_model_loads, tiny_model_path):
    suite.makeconftest(ENGINE_CONFTEST)
    (suite.path / "old").mkdir()
    (suite.path / "old" / "results.json").write_text("{not json")
    text = usage_error(suite, f"--model={tiny_model_path}", "--baseline", "old", "-k", "lambada")
    assert "--baseline old" in text


def test_a_checkpoint_that_fails_at_load_stops_the_run_with_one_line(suite, tiny_model_path, monkeypatch):
    """The header was fine, the load is not (a truncated tensor, say): one line, not one error per test."""
    def broken(*args, **kwargs):
        raise engine.CheckpointError("the tensor data of blocks.3.att.key.weight is truncated")

    monkeypatch.setattr(engine, "load_model", broken)
    suite.makeconftest(ENGINE_CONFTEST)
    result = suite.runpytest("-p", "no:cacheprovider", f"--model={tiny_model_path}", "-k", "mmlu_pro",
                             "--limit", "14")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert output.count("blocks.3.att.key.weight is truncated") == 1 and "Traceback" not in output


# ---------------------------------------------------------------- --limit over the selected cases

def test_limit_goes_to_the_cases_left_after_k(suite):
    suite.makeconftest(PLUGIN_CONFTEST)
    suite.makepyfile(test_mmlu_suite=MMLU)
    (suite.path / "fake.pth").write_bytes(b"not loaded")
    result = suite.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "-k", "abstract_algebra",
                             "--limit", "10")
    assert result.ret == 0, result.stdout.str()
    results = json.loads((suite.path / "reports" / "latest" / "results.json").read_text())
    assert results["benchmarks"]["mmlu"]["cases"]["abstract_algebra"]["n"] == 10
    assert results["benchmarks"]["mmlu_stem"]["overall"]["complete"] is True  # its one selected case


# ---------------------------------------------------------------- progress

def slow_conftest(sleep: float, tokens: int) -> str:
    """A conftest whose fake backend answers one request every ``sleep`` seconds, reporting
    ``tokens`` prompt tokens for each (so progress lines have something to count)."""
    return PLUGIN_CONFTEST + f'''
import time
from evals.backend import SILENT

class Slow(FakeBackend):
    def loglikelihood(self, requests, listener=SILENT):
        answers = super().loglikelihood(requests)
        for i, answer in enumerate(answers):
            time.sleep({sleep})
            listener.on_tokens({tokens}, 0)
            listener.on_result(i, answer)
        return answers

@pytest.fixture(scope="session")
def eval_backend():
    return Slow()
'''


def test_progress_log_has_rates_and_an_eta(suite, monkeypatch):
    suite.makeconftest(slow_conftest(sleep=0.02, tokens=12))
    (suite.path / "fake.pth").write_bytes(b"not loaded")
    result = suite.runpytest("-p", "no:cacheprovider", "--model", "fake.pth", "-k", "lambada", "--limit", "60",
                             "--progress-interval", "0.1", "--no-cache")
    assert result.ret == 0, result.stdout.str()
    lines = [x for x in (suite.path / "reports" / "latest" / "progress.log").read_text().splitlines()
             if "lambada/openai" in x]
    assert len(lines) >= 3
    middle = [x for x in lines if re.search(r" (\d+)/60 requests", x) and not re.search(r" (0|60)/60 requests", x)]
    assert middle, lines
    for line in middle:
        assert re.search(r"ETA \d+m\d\ds$", line), line  # a time, not "-"
        docs = float(re.search(r", ([\d.e+]+) docs/s", line).group(1))
        tokens = float(re.search(r", ([\d.e+]+) tokens/s", line).group(1))
        assert docs > 0 and tokens > 0, line


# ---------------------------------------------------------------- honest counts

def test_prompt_tokens_counted_are_the_tokens_the_engine_ran(suite, tiny_model_path):
    """MMLU-Pro direct, 5-shot: the shared exemplars run once per batch of contexts, so the engine
    runs far fewer tokens than the requests hold; the report counts what it ran."""
    suite.makeconftest(ENGINE_CONFTEST + '''
import json, os
import pytest
from engine.model import RWKV7

@pytest.fixture(autouse=True, scope="session")
def count_engine_tokens():
    original, seen = RWKV7.forward, [0]
    def counted(self, tokens, *args, **kwargs):  # a padded row's padding is not its tokens
        lengths = kwargs.get("lengths")
        seen[0] += sum(lengths) if lengths is not None else tokens.numel()
        return original(self, tokens, *args, **kwargs)
    RWKV7.forward = counted
    yield
    RWKV7.forward = original
    with open("engine_tokens.json", "w") as handle:
        json.dump(seen[0], handle)
''')
    result = suite.runpytest("-p", "no:cacheprovider", f"--model={tiny_model_path}", "-k", "mmlu_pro and math",
                             "--limit", "3", "--no-cache")
    assert result.ret == 0, result.stdout.str()
    ran = json.loads((suite.path / "engine_tokens.json").read_text())
    case = json.loads((suite.path / "reports" / "latest" / "results.json").read_text())[
        "benchmarks"]["mmlu_pro"]["cases"]["math"]
    rows = [json.loads(x) for x in
            (suite.path / "reports" / "latest" / "samples" / "mmlu_pro-math.jsonl").read_text().splitlines()]
    assert case["prompt_tokens"] == ran and case["generated_tokens"] == 0
    # each of the 3 questions scores ~10 options after a ~2k-token 5-shot prompt: run as text they
    # would be far more tokens than the engine ran
    assert case["requests"] == sum(len(r["choice_logprobs"]) for r in rows)
    assert ran < 0.5 * case["requests"] * min(len(r["prompt"]) for r in rows if "prompt" in r)


def test_under_xdist_a_check_before_the_work_is_still_one_usage_error(tiny_model_path, tmp_path):
    """xdist's controller collects nothing itself; the plugin collects there once, so a bad gate
    stops the run with one message instead of an internal error from every worker."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env.pop("RWKV_MODEL", None)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "evals", "-n", "2", "-p", "no:cacheprovider",
                           "-k", "mmlu_pro", f"--model={tiny_model_path}", "--threshold", "mmlu_pro.accuracy>=0.5",
                           "--report-dir", str(tmp_path)], cwd=Path(__file__).resolve().parent.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert done.stderr.count("ERROR:") == 1 and "does not report 'accuracy'" in done.stderr
    assert time.monotonic() - started < 30  # two workers started, nothing evaluated
    assert not list(tmp_path.glob("2*"))


def test_xdist_workers_write_whole_lines_and_the_controller_the_total(suite, tmp_path):
    import os
    import subprocess
    import sys

    suite.makeconftest(slow_conftest(sleep=0.03, tokens=7))
    (suite.path / "fake.pth").write_bytes(b"not loaded")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--model", "fake.pth",
                           "--limit", "120", "--no-cache", "--progress-interval", "0.1",
                           "--progress-summary-interval", "0.5"], cwd=suite.path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    log = (suite.path / "reports" / "latest" / "progress.log").read_text().splitlines()
    line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (gw\d|total) .*(ETA (-|\d+m\d\ds)|docs/s.*)$")
    assert log and all(line.match(x) for x in log), [x for x in log if not line.match(x)][:3]  # whole lines
    assert {x.split()[1] for x in log} == {"gw0", "gw1", "total"}
    totals = [x for x in log if x.split()[1] == "total"]
    assert any("2 workers:" in x and "total " in x for x in totals)
    assert "[progress] 2 workers:" in done.stdout  # the controller shows it too


def test_generation_eta_comes_from_the_token_budget_left():
    """A batch of sequences that all decode to their budget finishes no request until the end: the
    ETA is then the tokens left over the generation rate, and it tightens as sequences stop early."""
    from evals.backend import GenerateResponse
    from evals.plugin.progress import CaseProgress

    now = [0.0]
    progress = CaseProgress(None, clock=lambda: now[0], interval=1e9)
    progress.start("gsm8k/test generate", 4, 4, budgets=[10, 10, 10, 10])
    now[0] = 2.0
    progress.on_tokens(0, 8)  # 8 tokens in 2 s, nothing finished: 32 left at 4 tokens/s
    assert progress.snapshot().tokens_left == 32 and progress.snapshot().eta() == pytest.approx(8.0)
    progress.on_result(1, GenerateResponse("stop early", 3, 2, "stop"))  # its 8 unused tokens are not to come
    snapshot = progress.snapshot()
    assert snapshot.tokens_left == 40 - 10 - (8 - 2) and snapshot.eta() == pytest.approx(24 / 4)
    assert snapshot.line().endswith("ETA 0m06s")


def test_generation_eta_leaves_out_the_prefill_before_the_first_token():
    """Minutes of prompt prefill before the first token must not make the ETA hours long: the
    rate is counted from the first generated token (the prefill's tokens come with it)."""
    from evals.plugin.progress import CaseProgress

    now = [0.0]
    progress = CaseProgress(None, clock=lambda: now[0], interval=1e9)
    progress.start("mmlu_pro/math generate", 2, 2, budgets=[100, 100])
    now[0] = 100.0  # 100 s of prefill
    progress.on_tokens(5000, 2)  # the prefill, and the first token of each sequence
    now[0] = 110.0
    progress.on_tokens(0, 20)  # 20 tokens in the 10 s since: 2 tokens/s
    snapshot = progress.snapshot()
    assert snapshot.generating == pytest.approx(10.0) and snapshot.tokens_left == 200 - 22
    assert snapshot.eta() == pytest.approx(178 * 10.0 / 22)  # not 178 * 110 / 22
