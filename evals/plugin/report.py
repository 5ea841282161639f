"""Building a run's report from the collected case payloads, and the run folder around it.

Layout of ``reports/<timestamp>-<model>/`` (``reports/latest`` points at the newest run):

- ``results.json``: the envelope (options, model, git commit, machine, versions, start and end
  time) and per benchmark the cases' metrics, n, wall time, tokens, rates and gate outcomes,
  plus an ``overall`` entry pooling the documents of all cases;
- ``samples/<benchmark>-<case>.jsonl``: one row per document;
- ``summary.xlsx``: the aggregate sheet and one sheet per benchmark;
- ``progress.log``: appended while running.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from evals.metrics import Metric, aggregate
from evals.plugin.writers import write_json, write_jsonl, write_xlsx
from evals.plugin.writers.atomic import atomic_symlink
from evals.thresholds import OVERALL, Gate

SCHEMA_VERSION = 1


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def new_run_dir_name(report_root: Path, model_name: str, now: datetime | None = None) -> str:
    """A fresh ``<YYYYmmdd-HHMMSS>-<model>`` folder name under ``report_root`` (suffixed when two
    runs share a second). The folder itself is made when the first file is written."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{safe_name(model_name)}"
    name, k = base, 2
    while (report_root / name).exists():
        name, k = f"{base}-{k}", k + 1
    return name


def git_info(cwd: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"node": platform.node(), "system": platform.system(), "release": platform.release(),
                            "machine": platform.machine(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        info["cuda"] = None
    return info


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("rwkveval", "torch", "pytest", "pytest-xdist", "numpy", "openpyxl", "pyarrow", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def overall(cases: Mapping[str, Mapping[str, Any]], payloads: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The benchmark's pooled aggregate over every document of every case, and its gates."""
    if not payloads:
        return None
    spec = {name: tuple(pair) for name, pair in payloads[0]["spec"].items()}
    rows = [row for p in payloads for row in p["rows"]]
    values = aggregate(rows, spec)
    outcomes = []
    if payloads[0]["single_case"]:
        outcomes = [g for p in payloads for g in p["gates"] if g["case"] == OVERALL]
    else:
        for gate_fields in payloads[0]["overall_gates"]:
            gate = Gate(**gate_fields)
            if gate.metric not in values:
                raise ValueError(f"threshold {gate.label(OVERALL)} ({gate.source}) names metric {gate.metric!r}, "
                                 f"but the benchmark reports {sorted(values)}")
            outcomes.append(gate.check(OVERALL, values[gate.metric]).to_dict())
    return {"metrics": {k: m.to_dict() for k, m in values.items()}, "n": len(rows),
            "cases": sorted(cases), "gates": outcomes, "decided_in_test": bool(payloads[0]["single_case"])}


def build(payloads: Sequence[Mapping[str, Any]], outcomes: Mapping[str, str], envelope: Mapping[str, Any]
          ) -> tuple[dict[str, Any], dict[tuple[str, str], list[dict[str, Any]]]]:
    """results.json content and the per-case sample rows, in a deterministic order
    (benchmarks and cases sorted by name), so a run spread over xdist workers equals a serial one."""
    by_bench: dict[str, list[Mapping[str, Any]]] = {}
    for payload in payloads:
        by_bench.setdefault(payload["benchmark"], []).append(payload)
    benchmarks: dict[str, Any] = {}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    gates: list[dict[str, Any]] = []
    for bench in sorted(by_bench):
        items = sorted(by_bench[bench], key=lambda p: p["case"])
        cases = {}
        for p in items:
            case_gates = [g for g in p["gates"] if g["case"] != OVERALL]
            cases[p["case"]] = {
                "metrics": p["metrics"], "n": p["n"], "requests": p["requests"], "tokens": p["tokens"],
                "wall_s": p["wall_s"], "samples_per_s": p["samples_per_s"], "tokens_per_s": p["tokens_per_s"],
                "nodeid": p["nodeid"], "outcome": outcomes.get(p["nodeid"]), "gates": case_gates,
                "gated": bool(case_gates), "samples": f"samples/{safe_name(bench)}-{safe_name(p['case'])}.jsonl",
                "spec": p["spec"],  # {metric: [aggregation, score key]}: compare and --baseline rescore from samples
            }
            if "baseline" in p:
                cases[p["case"]]["baseline"] = p["baseline"]
            gates += case_gates
            samples[(bench, p["case"])] = list(p["rows"])
        summary = overall(cases, items)
        gates += summary["gates"] if summary else []
        benchmarks[bench] = {"protocol": items[0]["protocol"], "data": items[0]["data"],
                             "cases": cases, "overall": summary}
    model = dict(envelope.get("model") or {})
    if payloads:
        model.update(payloads[0]["model"])
    results = {
        "schema_version": SCHEMA_VERSION, **envelope, "model": model, "benchmarks": benchmarks,
        "gates": {"passed": sum(g["passed"] for g in gates), "failed": sum(not g["passed"] for g in gates),
                  "outcomes": gates},
    }
    return results, samples


def write_run(run_dir: Path, results: Mapping[str, Any], samples: Mapping[tuple[str, str], list[dict[str, Any]]],
              latest: bool = True) -> None:
    """Write every report file (each atomically) and point ``<root>/latest`` at ``run_dir``."""
    for (bench, case), rows in samples.items():
        write_jsonl(run_dir / "samples" / f"{safe_name(bench)}-{safe_name(case)}.jsonl", rows)
    write_xlsx(run_dir / "summary.xlsx", results["benchmarks"])
    write_json(run_dir / "results.json", dict(results))
    if latest:
        atomic_symlink(run_dir.parent / "latest", run_dir.name)


def metric_line(m: Mapping[str, Any]) -> str:
    metric = Metric.from_dict(m)
    se = f" ± {metric.stderr:.4f}" if metric.stderr is not None else ""
    return f"{metric.value:.4f}{se}"
