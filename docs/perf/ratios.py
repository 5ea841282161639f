"""Print the ratio tables of benchmark runs (pytest-benchmark JSON) as Markdown, with the machine.

    python docs/perf/ratios.py docs/perf/cpu-0.1B-benchmark-DATE.json docs/perf/cpu-0.1B-eval-DATE.json

Reads the ``extra_info`` that tests/test_throughput.py and tests/test_eval_throughput.py record
(rates, ratios, targets, roofline fractions, the CPU's flags, the product forms measured for it).
"""
from __future__ import annotations

import json
import sys


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [b["extra_info"] | {"name": b["name"]} for b in json.load(f)["benchmarks"]]


def mark(ok) -> str:
    return "" if ok is None else (" (met)" if ok else " (**missed**)")


def main(paths: list[str]) -> None:
    infos = [row for path in paths for row in rows(path)]
    machine = next((r["machine"] for r in infos if "machine" in r), {})
    print(f"Machine: {machine.get('cpu')}, flags {', '.join(machine.get('flags', []))}, "
          f"{machine.get('threads')} threads, torch {machine.get('torch')} ({machine.get('torch_cpu_capability')})\n")
    speed = [r for r in infos if "tokens_per_s" in r]
    if speed:
        print("| scenario | dtype | rwkveval tok/s | official tok/s | ratio | target | roofline |")
        print("|---|---|---|---|---|---|---|")
        for r in speed:
            target = f">= {r['target_ratio']}x{mark(r.get('meets_target'))}" if "target_ratio" in r else ""
            roof = f"{r['fraction_of_matmul_roofline']:.0%} of {r['machine_matmul_gflops']} GFLOP/s"
            if "meets_matmul_target" in r:
                roof += f" (target {r['matmul_target']:.0%}{mark(r['meets_matmul_target'])})"
            if "fraction_of_bandwidth_roofline" in r:
                roof = (f"{r['fraction_of_bandwidth_roofline']:.0%} of {r['machine_read_gb_per_s']} GB/s read "
                        f"(target {r['bandwidth_target']:.0%}{mark(r['meets_bandwidth_target'])})")
            print(f"| {r['scenario']} | {r['dtype']} | {r['tokens_per_s']} | {r['official_tokens_per_s']} | "
                  f"{r['ratio_to_official']}x | {target} | {roof} |")
        print()
    evals = [r for r in infos if "docs_per_s" in r]
    if evals:
        print("| benchmark | batch | rwkveval docs/s | official docs/s | ratio | target | vs one per call |")
        print("|---|---|---|---|---|---|---|")
        for r in evals:
            print(f"| {r['benchmark']} ({r['documents']} docs) | {r['batch_size']} | {r['docs_per_s']} | "
                  f"{r['official_docs_per_s']} | {r['ratio_to_official']}x | >= {r['target_ratio']}x"
                  f"{mark(r['meets_target'])} | {r.get('ratio_to_one_document_per_call', '')} |")


if __name__ == "__main__":
    main(sys.argv[1:])
