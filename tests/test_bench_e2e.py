"""End to end on the tiny real model: every new benchmark with ``--limit 20`` leaves a full report
(results.json with every case, one samples file per case, summary.xlsx, progress.log).

Few-shot counts and generation budgets are cut (``--num-fewshot 0``/``1``, ``--max-new-tokens
16``) so the byte-level prompts of the 834K model keep the whole file to a few CPU minutes; the
published prompts themselves are checked in ``test_bench_multiple_choice.py`` and
``test_bench_generation.py``.
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


def run_suite(model: Path, report_dir: Path, *args: str, target: str = "evals") -> tuple[subprocess.CompletedProcess, Path]:
    command = [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", "--model", str(model),
               "--report-dir", str(report_dir), *args]
    env = {k: v for k, v in os.environ.items() if k != "RWKV_MODEL"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=1200)
    return result, (report_dir / "latest").resolve()


def full_report(run_dir: Path, benchmark: str, n_cases: int, n_docs: int) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"]["config"]["vocab_size"] == 256
    bench = results["benchmarks"][benchmark]
    assert len(bench["cases"]) == n_cases and bench["overall"]["n"] == n_docs
    assert len(list((run_dir / "samples").glob(f"{benchmark}-*.jsonl"))) == n_cases
    assert (run_dir / "summary.xlsx").stat().st_size > 0 and (run_dir / "progress.log").exists()
    return bench


def first_row(run_dir: Path, benchmark: str, case: str) -> dict:
    return json.loads((run_dir / "samples" / f"{benchmark}-{case}.jsonl").read_text().splitlines()[0])


def test_mmlu_subjects_and_groups(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "--limit", "20", "--num-fewshot", "0",
                                 target="evals/test_mmlu.py")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = full_report(run_dir, "mmlu", 57, 57)  # every subject gets at least one question
    assert 0.0 <= bench["overall"]["metrics"]["acc"]["value"] <= 1.0 and bench["protocol"]["num_fewshot"] == 0
    groups = {g: full_report(run_dir, f"mmlu_{g}", n, n)
              for g, n in (("stem", 19), ("humanities", 13), ("social_sciences", 12), ("other", 13))}
    pooled = sum(g["overall"]["metrics"]["acc"]["value"] * g["overall"]["n"] for g in groups.values())
    assert pooled / 57 == pytest.approx(bench["overall"]["metrics"]["acc"]["value"])


def test_cmmlu(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "cmmlu", "--limit", "20", "--num-fewshot", "0")
    assert result.returncode == 0, result.stdout[-3000:]
    full_report(run_dir, "cmmlu", 67, 67)
    assert first_row(run_dir, "cmmlu", "agronomy")["prompt"].startswith("以下是关于农学的单项选择题")


def test_arc_piqa_winogrande(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "test_arc or piqa or winogrande", "--limit", "20")
    assert result.returncode == 0, result.stdout[-3000:]
    arc = full_report(run_dir, "arc", 2, 20)
    assert set(arc["overall"]["metrics"]) == {"acc", "acc_norm"}
    assert set(full_report(run_dir, "piqa", 1, 20)["overall"]["metrics"]) == {"acc", "acc_norm"}
    assert set(full_report(run_dir, "winogrande", 1, 20)["overall"]["metrics"]) == {"acc"}


def test_gsm8k_greedy_and_samples(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "gsm8k", "--limit", "20", "--num-fewshot", "1",
                                "--max-new-tokens", "16", "--samples", "2")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = full_report(run_dir, "gsm8k", 1, 20)
    assert set(bench["overall"]["metrics"]) == {"strict_match", "flexible_extract", "numeric_match", "no_answer",
                                                "maj@1", "pass@1", "maj@2", "pass@2"}
    assert bench["protocol"]["sampling"]["samples"] == 2 and bench["protocol"]["max_new_tokens"] == 16
    row = first_row(run_dir, "gsm8k", "test")
    assert len(row["sample_outputs"]) == 2 and row["prompt"].startswith("Q: There are 15 trees")


def test_math500_chat_template(tiny_model_path, tmp_path):
    result, run_dir = run_suite(tiny_model_path, tmp_path, "-k", "math500", "--limit", "20", "--max-new-tokens", "16",
                                "--template", "rwkv", "--samples", "2")
    assert result.returncode == 0, result.stdout[-3000:]
    bench = full_report(run_dir, "math500", 1, 20)
    metrics = bench["overall"]["metrics"]
    assert metrics["no_boxed"]["value"] + metrics["unparsable"]["value"] <= 20 and "pass@2" in metrics
    assert first_row(run_dir, "math500", "test")["prompt"].startswith("User: ")


def write_question_sets(folder: Path) -> Path:
    folder.mkdir()
    with open(folder / "capitals.jsonl", "w") as handle:
        for i in range(15):
            handle.write(json.dumps({"id": f"c{i}", "prompt": f"Q: What is {i} plus 1?\nA:", "answer": str(i + 1)}) + "\n")
    with open(folder / "animals.jsonl", "w") as handle:
        for i in range(15):
            handle.write(json.dumps({"prompt": "Which one is a mammal?", "choices": ["trout", "whale", "gull"],
                                     "answer": "whale"}) + "\n")
    return folder


def test_custom_folder_exact_match_and_multiple_choice(tiny_model_path, tmp_path):
    folder = write_question_sets(tmp_path / "sets")
    result, run_dir = run_suite(tiny_model_path, tmp_path / "r", "-k", "custom", "--data-file", str(folder),
                                "--limit", "20", "--max-new-tokens", "8", "--samples", "2",
                                "--match-normalize", "strip,lower,numbers")
    assert result.returncode == 0, result.stdout[-3000:]
    choice = full_report(run_dir, "custom_multiple_choice", 1, 10)  # 20 split over two files of 15
    assert set(choice["cases"]["animals"]["metrics"]) == {"acc", "acc_norm"}
    match = full_report(run_dir, "custom_exact_match", 1, 10)
    assert set(match["cases"]["capitals"]["metrics"]) == {"exact_match", "checker_errors", "maj@1", "pass@1", "maj@2",
                                                          "pass@2"}
    assert match["protocol"]["normalize"] == ["strip", "lower", "numbers"]


def test_custom_rouge_and_semantic(tiny_model_path, tmp_path):
    qa = write_question_sets(tmp_path / "sets") / "capitals.jsonl"
    for metric, names in (("rouge", {"rouge1", "rouge2", "rougeL", "checker_errors"} | {f"rouge{k}_{part}" for k in ("1", "2", "L")
                                                                           for part in ("precision", "recall")}),
                          ("semantic", {"semantic_similarity", "checker_errors"})):
        result, run_dir = run_suite(tiny_model_path, tmp_path / metric, "-k", "custom", "--data-file", str(qa),
                                    "--custom-metric", metric, "--limit", "20", "--max-new-tokens", "8")
        assert result.returncode == 0, result.stdout[-3000:]
        bench = full_report(run_dir, f"custom_{metric}", 1, 15)
        assert set(bench["overall"]["metrics"]) == names


def test_custom_malformed_row_fails_naming_file_and_line(tiny_model_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "answer": "a"}\n{"prompt": "p"}\n')
    result, _ = run_suite(tiny_model_path, tmp_path / "r", "-k", "custom", "--data-file", str(bad))
    assert result.returncode == 1 and f"{bad}:2: 'answer' must be the reference text" in result.stdout
