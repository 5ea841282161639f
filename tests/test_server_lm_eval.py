"""lm-evaluation-harness (``lm_eval --model local-completions``) against ``rwkveval serve`` on LAMBADA
from the local data file gives the native suite's numbers: accuracy and perplexity, and every
document's log-likelihood and greedy flag, to 1e-4.

The task file is ``tests/lm_eval_tasks/lambada_openai_local.yaml`` (lm-eval's ``lambada_openai``
reading the shared jsonl). lm-eval tokenizes through the server's ``/tokenize`` (its "remote"
tokenizer backend), sends token ids with ``echo`` and ``logprobs``, and prepends no token 0, so the
native side runs with ``bos=False`` (``--no-bos``). lm_eval runs as a subprocess, exactly the
command README.md shows, offline, on the first ``LIMIT`` documents.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from benchmarkdata import shared_root
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from evals.backend import LocalBackend

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is a dev dependency (pip install -e '.[dev]')")

from conftest import require_shared  # noqa: E402  (the root conftest)

LIMIT = 32
TASK = "lambada_openai_local"
TASK_FILE = Path(__file__).parent / "lm_eval_tasks" / f"{TASK}.yaml"
DATA = "benchmarkdata/lambada_openai/lambada_test.jsonl"


def run_lm_eval(url: str, task_dir: Path, out: Path, home: Path) -> subprocess.CompletedProcess:
    model_args = (f"model=tiny,base_url={url}/v1/completions,tokenizer_backend=remote,"
                  "num_concurrent=4,max_retries=3,max_length=100000,timeout=120")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
               "--tasks", TASK, "--include_path", str(task_dir), "--limit", str(LIMIT),
               "--output_path", str(out), "--log_samples"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)


@pytest.mark.slow
def test_lm_eval_local_completions_equals_native_lambada(tiny_model_path, tmp_path):
    data_file = require_shared(shared_root() / DATA)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    text = TASK_FILE.read_text()
    relative = f"../shared/{DATA}"
    assert relative in text, "the task file must point at the shared LAMBADA file"
    (task_dir / TASK_FILE.name).write_text(text.replace(relative, str(data_file)))

    model = engine.load_model(tiny_model_path)
    with torch_threads(1):
        with serve_in_thread(create_app(model, ServerConfig(model_name="tiny"))) as url:
            done = run_lm_eval(url, task_dir, tmp_path / "out", tmp_path / "hf")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

        from evals.test_lambada import load, render

        docs = load()[:LIMIT]
        native = LocalBackend(model).loglikelihood([render(doc, bos=False) for doc in docs])

    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"][TASK]
    (samples_file,) = (tmp_path / "out").rglob(f"samples_{TASK}_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])

    assert [s["doc_id"] for s in samples] == list(range(LIMIT))
    for sample, response in zip(samples, native):
        logprob, greedy = sample["resps"][0][0]  # lm-eval logs them as strings
        assert float(logprob) == pytest.approx(response.logprob, abs=1e-4), sample["doc_id"]
        assert str(greedy) == str(response.is_greedy), sample["doc_id"]

    acc = sum(r.is_greedy for r in native) / LIMIT
    mean_logprob = sum(r.logprob for r in native) / LIMIT
    assert results["acc,none"] == pytest.approx(acc, abs=1e-4)
    # perplexity = exp(-mean log-likelihood) is in the billions for the tiny model without token 0:
    # compare it relatively, and its logarithm absolutely
    assert math.log(results["perplexity,none"]) == pytest.approx(-mean_logprob, abs=1e-4)
    assert results["perplexity,none"] == pytest.approx(math.exp(-mean_logprob), rel=1e-4)
