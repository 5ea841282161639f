"""Resume after a kill, Ctrl-C, ``--rescore`` without a model, and the cache options, through real
pytest subprocesses running the benchmark modules against slow deterministic fake backends.

The kill test runs a generation case (the custom benchmark over a folder of two question files)
whose fake answers one request at a time, SIGKILLs it part way through the second file, and
checks that every answer the backend had handed over (but those of the last second) is in the cache, that the run folder holds
valid files with the first case and status ``running``, and that the rerun computes only the
rest and writes the report of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
DOCS = 40

CONFTEST = '''
import os, time
from dataclasses import dataclass
import pytest
from evals.backend import SILENT
from evals.fakes import FakeBackend

pytest_plugins = ["evals.plugin"]

def pytest_configure(config):
    from evals.plugin.keys import NO_CHECKPOINT_KEY
    config.stash[NO_CHECKPOINT_KEY] = "a fake backend"

@dataclass
class SlowFake(FakeBackend):
    """Answers one request at a time (FAKE_DELAY seconds each), reports each as it goes, and notes
    in FAKE_FINISHED the contexts it has handed over (after the listener returned)."""

    def _slowly(self, requests, answers, listener):
        delay = float(os.environ.get("FAKE_DELAY", "0"))
        log = os.environ.get("FAKE_FINISHED")
        for i, (request, answer) in enumerate(zip(requests, answers)):
            time.sleep(delay)
            listener.on_result(i, answer)
            if log:
                with open(log, "a") as handle:
                    handle.write(json.dumps([time.time(), getattr(request, "context", None)]) + "\\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        return answers

    def loglikelihood(self, requests, listener=SILENT):
        return self._slowly(requests, super().loglikelihood(requests), listener)

    def generate(self, requests, listener=SILENT):
        return self._slowly(requests, super().generate(requests), listener)

import json

@pytest.fixture(scope="session")
def eval_backend():
    if os.environ.get("FAKE_FORBID"):
        raise RuntimeError("the model must not be loaded in this run")
    return SlowFake()  # answers are a function of the request text, whatever the call
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    for name in ("RWKV_MODEL", "FAKE_FORBID", "FAKE_DELAY", "FAKE_FINISHED"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n",
                        test_custom_suite="from evals.test_custom import custom_selection, test_custom, "
                                          "pytest_generate_tests\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    questions = pytester.path / "questions"
    questions.mkdir()
    for name, count in (("a_first", 8), ("b_second", 24)):
        (questions / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}-{i}", "prompt": f"{name} question {i}?", "answer": ("Paris", "4")[i % 2]}) + "\n"
            for i in range(count)), encoding="utf-8")
    return pytester


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
            "--model", "fake.pth", *args]


LAMBADA = ("-k", "lambada", "--limit", str(DOCS))
CUSTOM = ("-k", "custom", "--data-file", "questions", "--max-new-tokens", "8")


def run(suite: pytest.Pytester, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    report_dir = args[args.index("--report-dir") + 1] if "--report-dir" in args else "reports"
    result = subprocess.run(command(*args), cwd=suite.path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    return result, (suite.path / report_dir / "latest").resolve()


def stored(cache_file: Path, kind: str = "loglikelihood") -> list[str]:
    """The contexts of the stored answers of ``kind``."""
    if not cache_file.exists():
        return []
    db = sqlite3.connect(f"file:{cache_file}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT request FROM responses WHERE kind = ?", (kind,)).fetchall()
    except sqlite3.OperationalError:  # the schema is being created
        return []
    finally:
        db.close()
    return [json.loads(r[0]).get("context") for r in rows]


def comparable(run_dir: Path, bench: str = "lambada") -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    drop = ("wall_s", "documents_per_s", "prompt_tokens_per_s", "generated_tokens_per_s", "cache", "prompt_tokens",
            "generated_tokens")
    cases = {c: {k: v for k, v in e.items() if k not in drop} for c, e in results["benchmarks"][bench]["cases"].items()}
    return {"cases": cases, "overall": results["benchmarks"][bench]["overall"], "gates": results["gates"],
            "model": results["model"], "status": results["status"],
            "samples": {p.name: p.read_text() for p in sorted((run_dir / "samples").iterdir())}}


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def test_killed_generation_run_resumes_and_reports_as_if_never_interrupted(suite):
    cache_file = suite.path / "reports" / "cache" / "responses.sqlite"
    finished = suite.path / "finished.log"
    process = subprocess.Popen(command(*CUSTOM), cwd=suite.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "FAKE_DELAY": "0.1", "FAKE_FINISHED": str(finished)})
    run_dirs = lambda: [p for p in (suite.path / "reports").glob("2*") if p.is_dir()]  # noqa: E731
    wait_for(lambda: len(stored(cache_file, "generate")) >= 8 + 5, "13 stored answers", process)
    killed_at = time.time()
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    handed_over = [json.loads(line) for line in finished.read_text().splitlines()]
    kept = stored(cache_file, "generate")
    # every answer handed over before the kill is in the file within the cache's flush interval
    # (evals.cache.FLUSH_S, 50 ms); a second of slack covers a descheduled timer on a loaded machine
    assert {context for at, context in handed_over if at < killed_at - 1.0} <= set(kept)
    assert 13 <= len(kept) < 32
    assert not (suite.path / "reports" / "latest").exists()  # a killed run moves no link

    (run_dir,) = run_dirs()  # what the killed run left is valid and says so
    partial = json.loads((run_dir / "results.json").read_text())
    assert partial["status"] == "running"
    assert list(partial["benchmarks"]["custom_exact_match"]["cases"]) == ["a_first"]
    rows = [json.loads(x) for x in (run_dir / "samples" / "custom_exact_match-a_first.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and not (run_dir / "samples" / "custom_exact_match-b_second.jsonl").exists()

    result, resumed = run(suite, *CUSTOM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"response cache: {len(kept)} responses reused, {32 - len(kept)} computed" in result.stdout
    results = json.loads((resumed / "results.json").read_text())
    assert results["cache"] == {**results["cache"], "reused": len(kept), "computed": 32 - len(kept)}
    assert len(stored(cache_file, "generate")) == 32

    result, uninterrupted = run(suite, *CUSTOM, "--no-cache", "--report-dir", "fresh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert comparable(resumed, "custom_exact_match") == comparable(uninterrupted, "custom_exact_match")
    assert comparable(resumed, "custom_exact_match")["status"] == "complete"


def test_ctrl_c_marks_the_run_interrupted_and_leaves_latest(suite):
    result, complete = run(suite, *CUSTOM, "--threshold", "custom_exact_match.exact_match>=0",
                           "--threshold", "custom_exact_match/*.exact_match>=0", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    process = subprocess.Popen(command(*CUSTOM, "--threshold", "custom_exact_match.exact_match>=0",
                                       "--threshold", "custom_exact_match/*.exact_match>=0", "--no-cache"),
                               cwd=suite.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "FAKE_DELAY": "0.1"})
    # the complete run wrote one a_first file; the second one is this run's first case, done
    wait_for(lambda: len(list((suite.path / "reports").glob("2*/samples/*a_first*"))) == 2, "the first case", process)
    time.sleep(0.5)  # into the second case (24 answers, 0.1 s each)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert (suite.path / "reports" / "latest").resolve() == complete  # not moved
    interrupted = (suite.path / "reports" / "last-interrupted").resolve()
    results = json.loads((interrupted / "results.json").read_text())
    assert results["status"] == "interrupted"
    bench = results["benchmarks"]["custom_exact_match"]
    assert list(bench["cases"]) == ["a_first"] and bench["overall"]["complete"] is False
    assert bench["overall"]["gates"] == [] and bench["overall"]["missing"] == ["b_second"]
    assert "rwkveval results (partial: 1 of 2 cases; run interrupted)" in output
    summary = output[output.index("rwkveval results"):]
    assert "b_second" not in summary  # no row, no gate, for the case that did not finish
    assert "undecided (cases missing)" in summary and "all (partial 1 cases)" in summary


def test_rescore_without_the_model_gives_the_same_report(suite):
    result, first = run(suite, *LAMBADA)
    assert result.returncode == 0, result.stdout + result.stderr
    (suite.path / "fake.pth").unlink()  # no checkpoint, and the backend refuses to load
    result, rescored = run(suite, *LAMBADA, "--rescore", "--report-dir", "reports", FAKE_FORBID="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert rescored != first and comparable(rescored) == comparable(first)
    results = json.loads((rescored / "results.json").read_text())
    assert results["options"]["rescore"] is True and results["cache"]["computed"] == 0


def test_rescore_with_responses_missing_is_an_error(suite):
    assert run(suite, *LAMBADA)[0].returncode == 0
    result, _ = run(suite, *LAMBADA, "--rescore", "--limit", str(DOCS + 5), FAKE_FORBID="1")  # the last --limit wins
    assert result.returncode == 1
    assert "5 of 45 loglikelihood requests were never stored" in result.stdout


def test_rescore_needs_a_cache_and_conflicts_with_no_cache(suite):
    result, _ = run(suite, *LAMBADA, "--rescore")
    assert result.returncode == 4 and "no response cache at" in result.stderr
    result, _ = run(suite, *LAMBADA, "--rescore", "--no-cache")
    assert result.returncode == 4 and "cannot be combined with --no-cache" in result.stderr


def test_corrupt_cache_is_a_usage_error_and_clear_cache_recovers(suite):
    cache_dir = suite.path / "mycache"
    cache_dir.mkdir()
    (cache_dir / "responses.sqlite").write_bytes(b"this is not sqlite" * 100)
    result, _ = run(suite, *LAMBADA, "--cache-dir", "mycache")
    assert result.returncode == 4
    assert "is not a readable SQLite file" in result.stderr and "--clear-cache" in result.stderr
    result, run_dir = run(suite, *LAMBADA, "--cache-dir", "mycache", "--clear-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(stored(cache_dir / "responses.sqlite")) == DOCS
    result, run_dir = run(suite, *LAMBADA, "--cache-dir", "mycache")
    assert json.loads((run_dir / "results.json").read_text())["cache"]["reused"] == DOCS


def test_cache_command_info_and_clear(suite):
    assert run(suite, *LAMBADA)[0].returncode == 0
    from evals.cli import main

    cache_dir = str(suite.path / "reports" / "cache")
    assert main(["cache", "info", "--cache-dir", cache_dir]) == 0
    assert main(["cache", "clear", "--cache-dir", cache_dir]) == 0
    assert not (suite.path / "reports" / "cache" / "responses.sqlite").exists()
