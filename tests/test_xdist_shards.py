"""Many GPUs on a CPU machine: the device each xdist worker takes, the shard blocks, the merge of
shards back into one case, and ``-n 2`` (cases split into shards) writing the report of ``-n 0``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.fakes import PLUGIN_CONFTEST
from evals.plugin.collect import trimmed
from evals.plugin.result import CaseResult, Counts, judge, merge_shards
from evals.shard import block, case_nodeid, shard_count, worker_device, worker_index
from evals.thresholds import Gate

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("device, worker, gpus, expected", [
    ("cuda", 0, 8, "cuda:0"), ("cuda", 7, 8, "cuda:7"), ("cuda", 5, 4, "cuda:1"),  # 2 hosts x 4 GPUs
    ("cuda", None, 8, "cuda"), ("cpu", 3, 8, "cpu"), ("cuda:2", 5, 8, "cuda:2"),
])
def test_worker_device(device, worker, gpus, expected):
    assert worker_device(device, worker, gpus) == expected


def test_worker_device_errors():
    assert worker_index("gw12") == 12 and worker_index(None) is None
    with pytest.raises(ValueError, match="gw<N>"):
        worker_index("worker-1")
    with pytest.raises(ValueError, match="sees no CUDA device"):
        worker_device("cuda", 1, 0)


def test_engine_device_reads_the_worker_number(monkeypatch):
    from types import SimpleNamespace

    from evals.plugin.fixtures import engine_device

    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    worker = SimpleNamespace(workerinput={"workerid": "gw3", "workercount": 4})
    assert engine_device("cuda", worker) == "cuda:1" and engine_device("cpu", worker) == "cpu"
    # outside xdist (no workerinput) the device is kept, whatever the environment says:
    # an inner pytest run started by a worker inherits PYTEST_XDIST_WORKER but is no worker
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert engine_device("cuda", SimpleNamespace()) == "cuda"


def test_blocks_cover_every_document_once_in_order():
    for n in (0, 1, 2, 7, 100):
        for k in (1, 2, 3, 8):
            parts = [block(list(range(n)), i, k) for i in range(k)]
            assert [x for p in parts for x in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_count(None, 8) == 8 and shard_count(None, None) == 1 and shard_count(3, 8) == 3


def test_case_nodeid_strips_the_shard():
    assert case_nodeid("evals/test_lambada.py::test_lambada[shard1of2]") == "evals/test_lambada.py::test_lambada"
    assert case_nodeid("m.py::test_mmlu_pro[shard0of4-math]") == "m.py::test_mmlu_pro[math]"
    assert case_nodeid("m.py::test_mmlu_pro[math-shard3of4]") == "m.py::test_mmlu_pro[math]"


def _shard(index: int, count: int, docs: list[int]) -> CaseResult:
    rows = tuple({"doc_id": d, "prompt": f"p{d}", "scores": {"acc": float(d % 3 == 0)}} for d in docs)
    return CaseResult("b", "c", f"t.py::test[shard{index}of{count}]", rows, {"acc": ("mean", "acc")}, {},
                      counts=Counts(requests=len(rows), prompt_tokens=10 * len(rows),
                                    reused=1, computed=2, wall_s=1.0),
                      single_case=True, shard=(index, count), expected_cases=("c",))


def test_merge_concatenates_in_shard_order_and_the_merged_case_is_judged():
    parts = [_shard(2, 3, []), _shard(1, 3, [5, 6, 7]), _shard(0, 3, [0, 1, 2, 3, 4])]
    case = merge_shards(parts, "t.py::test")
    assert CaseResult.from_json(parts[1].to_json()) == parts[1]  # travels as JSON unchanged
    assert [r["doc_id"] for r in case.rows] == list(range(8))
    assert ["prompt" in r for r in trimmed(case.rows, 2)] == [True, True] + [False] * 6
    assert case.counts == Counts(requests=8, prompt_tokens=80, reused=3, computed=6, wall_s=3.0)
    assert case.nodeid == "t.py::test" and case.shard == (0, 1)
    verdict = judge(case, [Gate.parse("b.acc>=0.9")])  # a single-case benchmark: its overall gate applies
    assert verdict.metrics["acc"].value == pytest.approx(3 / 8) and verdict.metrics["acc"].n == 8
    assert verdict.failures == [f"threshold gate failed: {verdict.gates[0].message}"]


def test_merge_refuses_a_case_with_a_missing_shard():
    with pytest.raises(ValueError, match=r"b/c: shards \[1\] of 2 did not report"):
        merge_shards([_shard(0, 2, [1, 2])], "t.py::test")


CONFTEST = PLUGIN_CONFTEST


def test_n2_report_equals_n0_report(pytester: pytest.Pytester, monkeypatch, shared_dir):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_lambada_suite="from evals.test_lambada import lambada_docs, test_lambada\n",
                        test_mmlu_pro_suite="from evals.test_mmlu_pro import mmlu_pro_data, test_mmlu_pro\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded")
    args = ["-p", "no:cacheprovider", "--model", "fake.pth", "--limit", "45", "--sample-prompts", "2", "--no-cache",
            "--threshold", "mmlu_pro/*.acc>=0", "--threshold", "lambada.acc>=0.99"]

    def report(*extra: str) -> tuple[int, dict, dict, list]:
        result = pytester.runpytest_subprocess(*args, *extra)
        run_dir = (pytester.path / "reports" / "latest").resolve()
        results = json.loads((run_dir / "results.json").read_text())
        for bench in results["benchmarks"].values():
            for case in bench["cases"].values():
                for key in ("wall_s", "documents_per_s", "prompt_tokens_per_s", "generated_tokens_per_s"):
                    case.pop(key)
        samples = {p.name: [json.loads(x) for x in p.read_text().splitlines()]
                   for p in sorted((run_dir / "samples").iterdir())}
        return result.ret, results["benchmarks"], samples, results["gates"]

    serial = report("-n", "0")
    sharded = report("-n", "2", "--shards", "3")  # 3 shards per case over 2 workers, some shards empty
    assert serial[0] == sharded[0] == pytest.ExitCode.TESTS_FAILED  # the lambada gate fails in both
    assert sharded[1] == serial[1]  # aggregates, n, requests, tokens, cache counts, nodeids, outcomes, gates
    assert sharded[2] == serial[2]  # per-sample rows, prompts kept for the same first two
    assert sharded[3] == serial[3]
    assert sum(len(rows) for rows in serial[2].values()) == 90
