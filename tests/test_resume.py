"""Resume after a kill, ``--rescore`` without a model, and the cache options, through real pytest
subprocesses running the LAMBADA module against a slow deterministic fake backend.

The kill test sends SIGKILL to the run once some responses are in the cache file, reruns, and
checks that every document is scored exactly once, that the report equals an uninterrupted run's,
and that the rerun computed only the requests that were missing.
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
from evals.fakes import FakeBackend

pytest_plugins = ["evals.plugin"]

@dataclass
class SlowFake(FakeBackend):
    chunk_size: int = 4  # the cache commits after every chunk of this many requests

    def loglikelihood(self, requests, progress=None):
        time.sleep(float(os.environ.get("FAKE_DELAY", "0")) * len(requests))
        return super().loglikelihood(requests, progress)

@pytest.fixture(scope="session")
def eval_backend():
    if os.environ.get("FAKE_FORBID"):
        raise RuntimeError("the model must not be loaded in this run")
    return SlowFake()
'''


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, shared_dir) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    monkeypatch.delenv("FAKE_FORBID", raising=False)
    monkeypatch.delenv("FAKE_DELAY", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    return pytester


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
            "--model", "fake.pth", "--limit", str(DOCS), *args]


def run(suite: pytest.Pytester, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    report_dir = args[args.index("--report-dir") + 1] if "--report-dir" in args else "reports"
    result = subprocess.run(command(*args), cwd=suite.path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env})
    return result, (suite.path / report_dir / "latest").resolve()


def stored(cache_file: Path) -> int:
    if not cache_file.exists():
        return 0
    db = sqlite3.connect(f"file:{cache_file}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT count(*) FROM responses WHERE kind = 'loglikelihood'").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is being created
        return 0
    finally:
        db.close()


def comparable(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    cases = {c: {k: v for k, v in e.items() if k not in ("wall_s", "samples_per_s", "tokens_per_s")}
             for c, e in results["benchmarks"]["lambada"]["cases"].items()}
    return {"cases": cases, "overall": results["benchmarks"]["lambada"]["overall"], "gates": results["gates"],
            "model": results["model"],
            "samples": {p.name: p.read_text() for p in sorted((run_dir / "samples").iterdir())}}


def test_killed_run_resumes_and_reports_as_if_never_interrupted(suite):
    cache_file = suite.path / "reports" / "cache" / "responses.sqlite"
    process = subprocess.Popen(command(), cwd=suite.path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "FAKE_DELAY": "0.1"})
    deadline = time.monotonic() + 120
    while stored(cache_file) < 12:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no responses were stored within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait(30) == -signal.SIGKILL
    before = stored(cache_file)
    assert 12 <= before < DOCS
    assert not (suite.path / "reports" / "latest").exists()  # the killed run wrote no report

    result, resumed = run(suite)
    assert result.returncode == 0, result.stdout + result.stderr
    cache = json.loads((resumed / "results.json").read_text())["cache"]
    assert cache == {**cache, "reused": before, "computed": DOCS - before}  # only the missing part ran
    assert stored(cache_file) == DOCS

    rows = [json.loads(line) for line in (resumed / "samples" / "lambada-openai.jsonl").read_text().splitlines()]
    doc_ids = [r["doc_id"] for r in rows]
    assert len(doc_ids) == DOCS and len(set(doc_ids)) == DOCS  # every document exactly once

    result, uninterrupted = run(suite, "--no-cache", "--report-dir", "fresh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert comparable(resumed) == comparable(uninterrupted)
    assert json.loads((uninterrupted / "results.json").read_text())["cache"]["computed"] == 0  # --no-cache: not counted


def test_rescore_without_the_model_gives_the_same_report(suite):
    result, first = run(suite)
    assert result.returncode == 0, result.stdout + result.stderr
    (suite.path / "fake.pth").unlink()  # no checkpoint, and the backend refuses to load
    result, rescored = run(suite, "--rescore", "--report-dir", "reports", FAKE_FORBID="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert rescored != first and comparable(rescored) == comparable(first)
    results = json.loads((rescored / "results.json").read_text())
    assert results["options"]["rescore"] is True and results["cache"]["computed"] == 0


def test_rescore_with_responses_missing_is_an_error(suite):
    assert run(suite)[0].returncode == 0
    result, _ = run(suite, "--rescore", "--limit", str(DOCS + 5), FAKE_FORBID="1")  # the last --limit wins
    assert result.returncode == 1
    assert "5 of 45 loglikelihood requests were never stored" in result.stdout


def test_rescore_needs_a_cache_and_conflicts_with_no_cache(suite):
    result, _ = run(suite, "--rescore")
    assert result.returncode == 4 and "no response cache at" in result.stderr
    result, _ = run(suite, "--rescore", "--no-cache")
    assert result.returncode == 4 and "cannot be combined with --no-cache" in result.stderr


def test_corrupt_cache_is_a_usage_error_and_clear_cache_recovers(suite):
    cache_dir = suite.path / "mycache"
    cache_dir.mkdir()
    (cache_dir / "responses.sqlite").write_bytes(b"this is not sqlite" * 100)
    result, _ = run(suite, "--cache-dir", "mycache")
    assert result.returncode == 4
    assert "is not a readable SQLite file" in result.stderr and "--clear-cache" in result.stderr
    result, run_dir = run(suite, "--cache-dir", "mycache", "--clear-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert stored(cache_dir / "responses.sqlite") == DOCS
    result, run_dir = run(suite, "--cache-dir", "mycache")
    assert json.loads((run_dir / "results.json").read_text())["cache"]["reused"] == DOCS


def test_cache_command_info_and_clear(suite):
    assert run(suite)[0].returncode == 0
    from evals.cli import main

    cache_dir = str(suite.path / "reports" / "cache")
    assert main(["cache", "info", "--cache-dir", cache_dir]) == 0
    assert main(["cache", "clear", "--cache-dir", cache_dir]) == 0
    assert not (suite.path / "reports" / "cache" / "responses.sqlite").exists()
