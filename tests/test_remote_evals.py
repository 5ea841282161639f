"""``pytest evals -k lambada --endpoint URL`` against our own server reproduces the native run, and
against a flaky server it retries; with retries exhausted, or against a server whose answers cannot
be right, it fails, names the failed requests and scores and caches nothing.

Each run is a real ``pytest evals`` subprocess (the command a user types) on the same ``--limit``
sample, without the response cache, so the remote run cannot reuse the native answers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from evals.cache import ResponseCache
from test_remote_backend import FlakyServer, sabotage

REPO = Path(__file__).resolve().parent.parent
LIMIT = "16"


def run_evals(report_dir: Path, *args: str, cache: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "evals", "-k", "lambada", "--limit", LIMIT,
               *(() if cache else ("--no-cache",)), "--report-dir", str(report_dir), "-p", "no:cacheprovider",
               "-q", *args]
    # a plain run: not an xdist worker's (whose variables would shard the cases), one thread (fastest
    # on a small shared CPU), no model from the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RWKV_MODEL", None)
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def lambada_results(report_dir: Path) -> tuple[dict, dict[int, dict]]:
    run = report_dir / "latest"
    results = json.loads((run / "results.json").read_text())
    case = results["benchmarks"]["lambada"]["cases"]["openai"]
    rows = [json.loads(line) for line in (run / case["samples"]).read_text().splitlines()]
    return case["metrics"], {row["doc_id"]: row for row in rows}


@pytest.fixture(scope="module")
def native(tiny_model_path, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("native")
    done = run_evals(report_dir, "--model", str(tiny_model_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return lambada_results(report_dir)


@pytest.fixture(scope="module")
def server_url(tiny_model_path):
    model = engine.load_model(tiny_model_path)
    # the served name is the file stem, as the native run names the model: the same gates apply
    config = ServerConfig(model_name=Path(tiny_model_path).stem)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        yield url


def assert_same(remote: tuple[dict, dict], native: tuple[dict, dict]) -> None:
    (remote_metrics, remote_rows), (native_metrics, native_rows) = remote, native
    assert sorted(remote_rows) == sorted(native_rows)  # the same --limit sample
    for doc_id, row in native_rows.items():
        assert remote_rows[doc_id]["logprob"] == pytest.approx(row["logprob"], abs=1e-4), doc_id
        assert remote_rows[doc_id]["is_greedy"] == row["is_greedy"], doc_id
    assert remote_metrics["acc"]["value"] == pytest.approx(native_metrics["acc"]["value"], abs=1e-4)
    assert remote_metrics["ppl"]["value"] == pytest.approx(native_metrics["ppl"]["value"], rel=1e-4)


@pytest.mark.slow
def test_endpoint_reproduces_the_native_run(native, server_url, tmp_path):
    done = run_evals(tmp_path, "--endpoint", server_url, "--concurrency", "4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert_same(lambada_results(tmp_path), native)
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    assert results["model"]["source"] == "endpoint" and results["options"]["endpoint"] == server_url


@pytest.mark.slow
def test_flaky_endpoint_is_retried_and_still_reproduces_the_native_run(native, server_url, tmp_path):
    failures = {0: "drop", 1: "503", 2: "drop", 5: "503", 9: "drop"}
    with FlakyServer(server_url, lambda n: failures.get(n, "pass")) as flaky:
        done = run_evals(tmp_path, "--endpoint", flaky.url, "--concurrency", "2", "--max-retries", "4")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert {"drop", "503"} <= set(flaky.outcomes)
    assert_same(lambada_results(tmp_path), native)


@pytest.mark.slow
def test_retries_exhausted_fail_the_case_and_score_nothing(server_url, tmp_path):
    with FlakyServer(server_url, lambda n: "503") as flaky:
        done = run_evals(tmp_path, "--endpoint", flaky.url, "--max-retries", "1")
    assert done.returncode == 1, done.stdout[-3000:]
    output = done.stdout
    assert "loglikelihood requests to" in output and "none of them is scored" in output
    assert "gave up after 2 attempts" in output and "HTTP 503" in output
    results_file = tmp_path / "latest" / "results.json"
    if results_file.exists():  # the run's report, if written, holds no score for the case
        cases = json.loads(results_file.read_text())["benchmarks"].get("lambada", {}).get("cases", {})
        assert "openai" not in cases


@pytest.mark.slow
def test_impossible_answers_fail_the_case_and_are_neither_scored_nor_cached(server_url, tmp_path):
    with FlakyServer(server_url, lambda n: "pass", rewrite=sabotage("nan")) as fake:
        done = run_evals(tmp_path, "--endpoint", fake.url, cache=True)
    assert done.returncode == 1, done.stdout[-3000:]
    assert f"{LIMIT} of {LIMIT} loglikelihood requests to" in done.stdout and "none of them is scored" in done.stdout
    assert "invalid answer: token_logprobs[" in done.stdout and "is nan, expected a finite number <= 0" in done.stdout
    cache = ResponseCache.open(tmp_path / "cache", create=False)
    assert cache.count(kind="loglikelihood") == 0
    cache.close()
    results_file = tmp_path / "latest" / "results.json"
    if results_file.exists():
        assert "openai" not in json.loads(results_file.read_text())["benchmarks"].get("lambada", {}).get("cases", {})


def test_endpoint_options_are_checked(tmp_path, tiny_model_path):
    done = run_evals(tmp_path, "--api-key", "k")
    assert done.returncode == 4 and "--api-key only applies with --endpoint" in done.stderr
    done = run_evals(tmp_path, "--endpoint", "http://127.0.0.1:9", "--model", str(tiny_model_path))
    assert done.returncode == 4 and "pass one of them" in done.stderr
    done = run_evals(tmp_path, "--endpoint", "http://127.0.0.1:9", "--endpoint-wait", "0.5")
    assert done.returncode == 4 and "did not answer and list its model within 0.5 s" in done.stderr


@pytest.mark.slow
def test_answers_that_arrived_are_cached_when_others_of_the_case_fail(server_url, tmp_path):
    import threading

    lock, seen, behaving = threading.Lock(), [0], [False]
    nan = sabotage("nan")

    def three_bad(path: str, body: dict) -> dict:  # every 5th scoring answer impossible: 3 of 16
        if behaving[0] or not path.endswith("/completions"):
            return body
        with lock:
            seen[0] += 1
            bad = seen[0] % 5 == 0
        return nan(path, body) if bad else body

    with FlakyServer(server_url, lambda n: "pass", rewrite=three_bad) as fake:
        done = run_evals(tmp_path, "--endpoint", fake.url, "--concurrency", "2", cache=True)
        assert done.returncode == 1, done.stdout[-3000:]
        assert f"3 of {LIMIT} loglikelihood requests to" in done.stdout
        cache = ResponseCache.open(tmp_path / "cache", create=False)
        assert cache.count(kind="loglikelihood") == int(LIMIT) - 3  # the good answers are kept
        cache.close()
        behaving[0] = True  # the same endpoint (the cache keys answers by it), answering well now
        done = run_evals(tmp_path, "--endpoint", fake.url, cache=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"response cache: {int(LIMIT) - 3} responses reused, 3 computed" in done.stdout


@pytest.mark.slow
def test_gates_follow_the_served_checkpoint_by_its_sha256(tiny_model_path, tmp_path):
    model = engine.load_model(tiny_model_path)
    config = ServerConfig(model_name="tiny")  # not the name the thresholds file keys: its sha256 is
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        done = run_evals(tmp_path, "--endpoint", url)
    assert done.returncode == 0, done.stdout[-3000:]
    results = json.loads((tmp_path / "latest" / "results.json").read_text())
    gates = results["benchmarks"]["lambada"]["overall"]["gates"]
    assert {g["label"] for g in gates} == {"lambada.acc", "lambada.ppl"}
    assert all(g["source"] == "thresholds.toml[tiny-rwkv7-834K]" for g in gates)
    assert "ungated" not in done.stdout
