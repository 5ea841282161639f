"""The GPU run's machinery on the CPU (docs/perf/gpu_run.py, gpu_tasks.py, gpu_dryrun.py and the
benchmark module's bookkeeping): the plan against its budget, the toolkit search, stage limits and
stops, the table with its gaps, partial benchmark records, the official package's missing reason,
the launch line of GPU_PLAN.md, and the dry run itself (`bash docs/perf/run_gpu.sh --prepare`
into a scratch carried folder, then every check of `--dry-run`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs" / "perf"))

import gpu_dryrun  # noqa: E402
import gpu_run  # noqa: E402
import gpu_tasks  # noqa: E402
import test_throughput_gpu as bench_module  # noqa: E402
from gpu_run import PLAN, Stage, check_plan, find_cuda_home, time_limit, worst_case  # noqa: E402

import engine  # noqa: E402
from benchmarkdata import in_ci, tiny_model_dir  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The plan and its time limits


def test_the_plan_fits_its_budget_with_every_essential_stage_at_its_cap():
    assert check_plan(list(PLAN)) == []
    rows = worst_case(list(PLAN))
    assert [name for name, _, _ in rows][:3] == ["prereq", "env", "tests"]  # tests before benchmarks
    for (name, start, limit), stage in zip(rows, PLAN):
        assert limit == (stage.cap_s if stage.essential else limit)
        assert start + limit <= gpu_run.BUDGET_S
    assert sum(s.cap_s for s in PLAN if s.essential) <= gpu_run.BUDGET_S
    outputs = {o for s in PLAN for o in s.outputs} | set(gpu_run.BACKGROUND_OUTPUTS)
    assert len(outputs) <= gpu_run.MAX_OUT_FILES


def test_a_plan_over_budget_is_reported():
    stages = [Stage("a", 300, 200, True, "x"), Stage("b", 300, 200, True, "y", outputs=tuple("123456789"))]
    problems = check_plan(stages, budget=540)
    assert any("caps add up to 600 s, over the budget of 540 s" in p for p in problems)
    assert any("10 output files" in p and "only 8 come back" in p for p in problems)  # 9 + official-build.log


def test_time_limits_hold_back_the_essential_caps_still_to_come():
    stages = [Stage("a", 100, 50, True, ""), Stage("extra", 200, 50, False, "", min_s=45), Stage("b", 100, 50, True, "")]
    assert time_limit(stages, 0, elapsed=0, budget=300) == 100
    assert time_limit(stages, 1, elapsed=60, budget=300) == 140    # 300 - 60 - 100 for b
    assert time_limit(stages, 1, elapsed=180, budget=300) == 20    # under min_s: worst_case skips it
    assert worst_case(stages, budget=300) == [("a", 0, 100), ("extra", 100, 100), ("b", 200, 100)]
    assert worst_case(stages, budget=250) == [("a", 0, 100), ("extra", 100, 50), ("b", 150, 100)]
    assert worst_case(stages, budget=230) == [("a", 0, 100), ("extra", 100, 0), ("b", 100, 100)]


def test_stage_names():
    assert gpu_run.stage_named("bench=0.4B").cap_s == gpu_run.BENCH_CAPS["0.4B"]
    assert not gpu_run.stage_named("bench=2.9B,7.2B").essential
    with pytest.raises(ValueError, match="expected shapes from 0.1B"):
        gpu_run.stage_named("bench=3B")
    with pytest.raises(ValueError, match="unknown stage 'benchmark'"):
        gpu_run.stage_named("benchmark")


def test_a_command_over_its_limit_gets_sigint_and_keeps_its_output(tmp_path):
    with (tmp_path / "run.log").open("w") as log:
        run = gpu_run.Run(tmp_path, tmp_path, tmp_path, dict(os.environ), log)
        child = ("import time, sys\nprint('started', flush=True)\ntry:\n    time.sleep(60)\n"
                 "except KeyboardInterrupt:\n    print('interrupted: reports written', flush=True)\n    sys.exit(2)")
        began = time.monotonic()
        rc = gpu_run.run_cmd(run, [sys.executable, "-c", child], 2, log=tmp_path / "child.log")
    assert rc == 124 and time.monotonic() - began < 20
    text = (tmp_path / "child.log").read_text()
    assert "started" in text and "interrupted: reports written" in text  # SIGINT first, as pytest wants
    assert "stopped at its limit of 2 s" in (tmp_path / "run.log").read_text()


# ---------------------------------------------------------------------------------------------
# The CUDA toolkit behind a wrapper nvcc


def fake_toolkit(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (root / "include" / "cuda_runtime.h").write_text("")
    return root


def test_cuda_home_is_the_folder_a_wrapper_nvcc_runs(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = tmp_path / "usr" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f"#!/bin/sh\nexec {toolkit}/bin/nvcc \"$@\"\n")

    def run(cmd, **kwargs):
        assert cmd[:2] == [str(wrapper), "--dryrun"]
        return types.SimpleNamespace(stdout="", stderr=f"#$ _NVVM_BRANCH_=nvvm\n#$ _HERE_={toolkit}/bin\n")

    which = lambda name, path=None: str(wrapper) if name == "nvcc" else None  # noqa: E731
    # torch would take dirname(dirname(nvcc)) = .../usr, which has no include/cuda_runtime.h
    assert find_cuda_home({"CUDA_HOME": str(tmp_path / "usr")}, which, run) == (str(toolkit), f"nvcc --dryrun of {wrapper}")
    assert find_cuda_home({"CUDA_HOME": str(toolkit)}, which, run) == (str(toolkit), "$CUDA_HOME")


def test_cuda_home_falls_back_to_standard_places_or_says_none(tmp_path):
    toolkit = fake_toolkit(tmp_path / "cuda")
    nothing = lambda name, path=None: None  # noqa: E731
    assert find_cuda_home({}, nothing, candidates=(str(tmp_path / "missing"), str(toolkit))) == (str(toolkit), "standard location")
    home, how = find_cuda_home({}, nothing, candidates=(str(tmp_path / "missing"),))
    assert home is None and "no toolkit" in how


# ---------------------------------------------------------------------------------------------
# The table and the benchmark bookkeeping


def test_scenario_lists_agree_with_the_benchmark_module():
    assert gpu_tasks.OURS + gpu_tasks.OFFICIAL == bench_module.SCENARIOS
    assert gpu_tasks.OURS == bench_module.OURS


def _row(scenario, **kw):
    return {"shape": "0.1B", "scenario": scenario, "device_name": "NVIDIA H200", "time": "2026-12-01T10:00:00+00:00", **kw}


def test_the_table_shows_every_gap_without_raising():
    rows = [
        _row("decode_b1", batch=1, tokens_per_s=1000.0, weight_gb_per_s=400.0, fraction_of_bandwidth_roofline=0.1,
             fraction_of_matmul_roofline=0.001, official_ratio_target=2.0),
        _row("prefill_512", length=512, tokens_per_s=50000.0, error="KeyError: 'float16_matmul_flops'"),  # after timing
        _row("prefill_4096", length=4096, error="RuntimeError: CUDA error: out of memory"),            # before timing
        _row("official_decode_b1", engine="official", tokens_per_s=400.0),
        _row("official_prefill_512", engine="official", official_missing="its CUDA extension did not build: exit 1"),
        {"scenario": "kernel_wkv7", "shape": "1.5B layer (H=32)", "batch": 1, "length": 4096, "dtype": "bfloat16",
         "ms_per_call": 2.5, "tokens_per_s": 1638400.0},
    ]
    text = gpu_tasks.table(rows, ["0.1B", "1.5B"])
    assert "NVIDIA H200, 2026-12-01" in text
    assert "| 0.1B | decode_b1 | 1 | 1,000 | 400 | 0.10 | 0.00 | 400 | 2.50x | vs official met (2.50 vs 2.0) |" in text
    assert "| 0.1B | decode_b8 | | not run |" in text and "| 1.5B | prefill_4096 | | not run |" in text
    assert "| 0.1B | prefill_512 | 512 | 50,000 | — | — | — | missing | — | error (see below) |" in text
    assert "| 0.1B | prefill_4096 | 4096 | — |" in text and "| 0.1B | prefill_4096 | 4096 | — | — | — | — | not run |" in text
    assert "- 0.1B: the official package was not measured: its CUDA extension did not build: exit 1" in text
    assert "- 0.1B prefill_512: error after timing: KeyError" in text
    assert "- 0.1B prefill_4096: error after setup: RuntimeError: CUDA error: out of memory" in text
    assert "| kernel_wkv7 | 1.5B layer (H=32) | bfloat16 | 1 x 4096 | 2.500 | 1,638,400 |" in text


def test_a_cut_off_log_line_is_reported_and_skipped(tmp_path, capsys):
    log = tmp_path / "bench.jsonl"
    log.write_text(json.dumps(_row("decode_b1", tokens_per_s=5.0)) + "\n{\"shape\": \"0.1")
    assert [r["scenario"] for r in gpu_tasks.read_log(log)] == ["decode_b1"]
    assert "bench.jsonl:2 is not JSON (cut off?)" in capsys.readouterr().err
    assert gpu_tasks.read_log(tmp_path / "none.jsonl") == []


def _bench(tmp_path) -> bench_module.Bench:
    cfg = engine.ModelConfig(n_layer=1, n_embd=64, n_head=1, head_size=64, vocab_size=256, ffn_size=256,
                             rank_w=8, rank_a=8, rank_v=8, rank_g=8)
    return bench_module.Bench("0.1B", cfg, {}, tmp_path, _model=types.SimpleNamespace(forward=None))


def test_a_benchmark_failing_after_timing_keeps_its_figures_and_logs_them(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_module, "cuda_seconds", lambda fn, **kw: [0.02, 0.01, 0.03])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    benchmark = types.SimpleNamespace(extra_info={}, group=None)
    roofline = {"device_name": "NVIDIA H200", "copy_bytes_per_s": 4.3e12}  # no matmul rate measured
    log = bench_module.BenchLog(str(tmp_path / "bench.jsonl"))
    with pytest.raises(KeyError, match="float16_matmul_flops"):
        bench_module.test_throughput(benchmark, _bench(tmp_path), roofline, "prefill_512", log)
    info = benchmark.extra_info
    assert info["tokens_per_s"] == pytest.approx(512 / 0.02) and info["rounds"] == 3
    assert info["error"] == "KeyError: 'float16_matmul_flops'" and info["scenario"] == "prefill_512"
    (logged,) = gpu_tasks.read_log(tmp_path / "bench.jsonl")
    assert logged["tokens_per_s"] == info["tokens_per_s"] and logged["error"] == info["error"] and logged["time"]
    assert "| 0.1B | prefill_512 | 512 | 25,600 |" in gpu_tasks.table([logged], ["0.1B"])


def test_the_official_package_missing_is_recorded_with_its_reason_and_tried_once(tmp_path, monkeypatch):
    calls = []

    def load_official(sd, directory):
        calls.append(directory)
        raise RuntimeError("Error building extension 'wkv7s': nvcc fatal")

    monkeypatch.setattr(bench_module, "load_official", load_official)
    monkeypatch.delenv(bench_module.OFFICIAL_BUILD_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    bench = _bench(tmp_path)
    for scenario in ("decode_b1", "prefill_512"):
        benchmark = types.SimpleNamespace(extra_info={})
        with pytest.raises(pytest.skip.Exception, match="official package not measured: RuntimeError: Error building"):
            bench_module.official(benchmark, bench, {}, scenario)
        assert benchmark.extra_info["official_missing"].startswith("RuntimeError: Error building extension")
    assert len(calls) == 1 and bench._model is None  # ours released before the official model loaded


def test_the_official_benchmarks_follow_the_separate_build(tmp_path, monkeypatch):
    status = tmp_path / "official-build.status"
    monkeypatch.setenv(bench_module.OFFICIAL_BUILD_ENV, str(status))
    status.write_text("timed out after 240 s (official-build.log)\n")
    loads = []
    monkeypatch.setattr(bench_module, "load_official", lambda sd, d: loads.append(d) or "model")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    failed = _bench(tmp_path)
    assert failed.official() is None and loads == []
    assert failed.official_missing == "its CUDA extension did not build: timed out after 240 s (official-build.log)"
    status.write_text("ok\n")
    assert _bench(tmp_path).official() == "model" and len(loads) == 1


# ---------------------------------------------------------------------------------------------
# The launch line and the dry run


def test_the_launch_line_in_gpu_plan_is_within_the_run_tools_limits():
    command, carry, timeout_s = gpu_dryrun.launch_command(gpu_run.HERE / "GPU_PLAN.md")
    assert command == "bash docs/perf/run_gpu.sh" and carry == [".gpu"]
    assert gpu_run.BUDGET_S + 30 <= timeout_s <= gpu_run.RUN_TOOL_LIMIT_S


def test_a_launch_line_past_the_limits_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv(gpu_run.CARRY_ENV, raising=False)
    doc = tmp_path / "PLAN.md"
    carry = [f"c{i}" for i in range(9)]
    doc.write_text(f'text\nrun(command="{"x" * 2001}", carry={json.dumps(carry)}, timeout_s=700)\n')
    problems = "\n".join(gpu_dryrun.check_launch(doc, REPO / ".gpu"))
    for expected in ("2001 characters, over 2000", "does not run docs/perf/run_gpu.sh", "9 carry paths, over 8",
                     "does not name .gpu", "carried path c0 does not exist here", "timeout_s=700"):
        assert expected in problems
    doc.write_text("no launch line\n")
    assert "has no line run(" in gpu_dryrun.check_launch(doc, REPO / ".gpu")[0]


@pytest.mark.slow
def test_prepare_and_dry_run_pass():
    """What CI can check of the GPU call: the carried folder made from scratch (the rwkv wheel from
    the package index, the tiny model from the shared folder), then every check of the dry run."""
    if not (tiny_model_dir() / "tiny-rwkv7-834K.pth").is_file():
        from conftest import require_shared

        require_shared(tiny_model_dir() / "tiny-rwkv7-834K.pth")
    scratch = f".gpu-pytest-{uuid.uuid4().hex[:8]}"  # ignored by git like .gpu/
    env = {**os.environ, gpu_run.CARRY_ENV: scratch, "PYTHON": sys.executable}
    try:
        done = subprocess.run(["bash", "docs/perf/run_gpu.sh", "--prepare"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run(["rm", "-rf", str(REPO / scratch)], check=True)
    output = done.stdout + done.stderr
    if "could not download rwkv" in output and not in_ci():
        pytest.skip("no network to the package index for the rwkv wheel (CI has one)")
    assert done.returncode == 0, output[-3000:]
    assert "dry run: ok" in output and "the plan fits 540 s" in output
