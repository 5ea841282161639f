"""End to end on the tiny real model (../shared/models): the suite's own commands, each leaving a
full report, and a threshold above the measured value failing with its message.

These run the real engine on the 2-core CPU reference machine, so they are marked ``slow``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run_suite(tiny_model_path: Path, report_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    command = [sys.executable, "-m", "pytest", "evals", "-p", "no:cacheprovider", "--model", str(tiny_model_path),
               "--report-dir", str(report_dir), *args]
    env = {k: v for k, v in os.environ.items() if k != "RWKV_MODEL"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
    return result, (report_dir / "latest").resolve()


def check_full_report(run_dir: Path, benchmark: str, n_cases: int, n_docs: int) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"]["sha256"].startswith("6bc13f3f") and results["model"]["config"]["vocab_size"] == 256
    bench = results["benchmarks"][benchmark]
    assert len(bench["cases"]) == n_cases and bench["overall"]["n"] == n_docs
    assert len(list((run_dir / "samples").glob(f"{benchmark}-*.jsonl"))) == n_cases
    assert (run_dir / "summary.xlsx").stat().st_size > 0 and (run_dir / "progress.log").exists()
    return bench


def test_lambada_limit_200(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "lambada", "--limit", "200")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = check_full_report(run_dir, "lambada", 1, 200)
    metrics = bench["overall"]["metrics"]
    assert 0.0 <= metrics["acc"]["value"] < 0.1 and metrics["ppl"]["value"] > 100  # a tiny model: near chance


def test_mmlu_pro_limit_28_direct(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "mmlu_pro", "--limit", "28")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = check_full_report(run_dir, "mmlu_pro", 14, 28)
    assert bench["protocol"]["num_fewshot"] == 5 and bench["overall"]["metrics"]["acc"]["value"] <= 0.5


def test_mmlu_pro_short_cot(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "mmlu_pro", "--limit", "14", "--cot",
                                "--num-fewshot", "1", "--max-new-tokens", "8")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = check_full_report(run_dir, "mmlu_pro", 14, 14)
    assert set(bench["overall"]["metrics"]) == {"acc", "acc_first_pattern", "guessed"}
    row = json.loads((run_dir / "samples" / "mmlu_pro-math.jsonl").read_text().splitlines()[0])
    assert {"output", "extracted", "extracted_by", "prompt"} <= set(row)


def test_threshold_above_measured_value_fails(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "lambada", "--limit", "20",
                                "--threshold", "lambada.acc>=0.45")
    assert result.returncode == 1
    assert "threshold gate failed: lambada.acc = 0 is below the bound >= 0.45 (n=20, 95% CI [0, " in result.stdout
    assert json.loads((run_dir / "results.json").read_text())["gates"]["failed"] == 1
