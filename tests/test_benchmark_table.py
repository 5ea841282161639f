"""The throughput table printed after ``pytest --benchmark-only`` (evals/benchmark_table.py): from
``extra_info`` shaped as tests/test_throughput.py and tests/test_throughput_gpu.py fill it, and
through an in-process pytester run of pytest-benchmark itself."""
from __future__ import annotations

import pytest

from evals.benchmark_table import table

pytest_plugins = ["pytester"]

CPU = {"dtype": "float32", "scenario": "prefill", "tokens_per_s": 485.04, "official_tokens_per_s": 193.1,
       "ratio_to_official": 2.512, "fraction_of_matmul_roofline": 0.652, "target_ratio": 2.0, "meets_target": True}
CPU_B1 = {"dtype": "bfloat16", "scenario": "decode_b1", "tokens_per_s": 22.3, "official_tokens_per_s": 1.8,
          "ratio_to_official": 12.4, "fraction_of_matmul_roofline": 0.1, "fraction_of_bandwidth_roofline": 0.24,
          "target_ratio": 1.0, "meets_target": True}
GPU = {"scenario": "decode_b1", "shape": "0.1B", "engine": "rwkveval", "dtype": "float16", "tokens_per_s": 900.0,
       "fraction_of_bandwidth_roofline": 0.71, "fraction_of_matmul_roofline": 0.01,
       "targets": {"fraction_of_bandwidth_roofline": "met (>= 0.7)"}}
GPU_OFFICIAL = {"scenario": "official_decode_b1", "shape": "0.1B", "engine": "official", "dtype": "float16",
                "tokens_per_s": 300.0}
CPU_B1_ROOFLINE = {**CPU_B1, "target_ratio": 1.2, "bandwidth_target": 0.6, "meets_bandwidth_target": False}
EVAL = {"benchmark": "lambada", "docs_per_s": 6.5, "official_docs_per_s": 1.1, "ratio_to_official": 5.909,
        "target_ratio": 4.0, "meets_target": True}
SEARCH = {"strategy": "beam", "fork": False, "prefill_tokens": 2048, "prefill_ratio_to_fork": 4.0,
          "time_ratio_to_fork": 2.5, "shape": {"n_layer": 2}}


def test_table_rows_from_extra_info():
    lines, others = table([("test_prefill[float32]", CPU), ("test_decode_b1[bfloat16]", CPU_B1),
                           ("test_throughput[decode_b1]", GPU), ("test_throughput[official_decode_b1]", GPU_OFFICIAL),
                           ("test_search[beam-rerun]", SEARCH), ("test_plain", {})])
    assert lines[0][:6] == ("benchmark", "scenario", "dtype", "tokens/s", "official tokens/s", "ratio")
    assert lines[1] == ("test_prefill[float32]", "prefill", "float32", "485", "193.1", "2.51x", "65%", "-",
                        "met (>= 2.0x)")
    assert lines[2][3:8] == ("22.3", "1.8", "12.40x", "10%", "24%")
    # the GPU row's ratio comes from the official row of the same shape and scenario: 900 / 300
    assert lines[3][:8] == ("test_throughput[decode_b1]", "decode_b1", "float16", "900", "300", "3.00x", "1%", "71%")
    assert lines[3][8] == "fraction_of_bandwidth_roofline: met (>= 0.7)"
    assert lines[4][5] == "-"  # the official package against itself: no ratio
    assert others == ["test_search[beam-rerun]: prefill_tokens 2,048, prefill_ratio_to_fork 4, time_ratio_to_fork 2.5"]


def test_roofline_targets_and_evaluation_rows():
    lines, others = table([("test_decode[bfloat16-1]", CPU_B1_ROOFLINE), ("test_eval_throughput[lambada-auto]", EVAL)])
    assert lines[1][8] == "met (>= 1.2x), bandwidth MISSED (>= 60%)"
    assert others == ["test_eval_throughput[lambada-auto]: docs_per_s 6.5, official_docs_per_s 1.1, "
                      "ratio_to_official 5.909, met (>= 4.0x)"]


def test_benchmark_only_prints_the_table(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # under -n, pytest-benchmark would disable itself
    pytester.makeconftest('pytest_plugins = ["evals.benchmark_table"]\n')
    pytester.makepyfile(test_speed='''
def test_prefill(benchmark):
    benchmark(lambda: None)
    benchmark.extra_info.update(scenario="prefill", dtype="float32", tokens_per_s=1234.5,
                                official_tokens_per_s=500.0, ratio_to_official=2.469,
                                fraction_of_matmul_roofline=0.5, target_ratio=2.0, meets_target=True)

def test_not_a_benchmark():
    pass
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-only")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*throughput (benchmark extra_info*",
                                 "benchmark*scenario*dtype*tokens/s*official tokens/s*ratio*matmul roofline*",
                                 "test_prefill*prefill*float32*1,234.5*500*2.47x*50%*-*met (>= 2.0x)"])
    text = result.stdout.str()
    assert text.index("benchmark: 1 tests") < text.index("throughput (benchmark extra_info")  # after pytest-benchmark's


def test_nothing_printed_without_benchmarks(pytester: pytest.Pytester):
    pytester.makeconftest('pytest_plugins = ["evals.benchmark_table"]\n')
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == 0 and "throughput" not in result.stdout.str()
