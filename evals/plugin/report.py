"""The content of a run's report: results.json, built from the case results judged so far.

``results.json`` holds the envelope (command, options, model, git commit, machine, versions,
start and update times, ``status``), per benchmark its protocol, data files, every case (metrics
with standard errors and intervals, gates, outcome, counts and rates) and an ``overall`` entry
pooling the documents of its cases. The overall row of a multi-case benchmark is judged against
its gates only when every selected case is in; until then it says which cases are missing and
its gates are undecided, so a partial run never reports a pooled gate as passed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evals.plugin.result import CaseResult, Verdict, judge, pool
from evals.thresholds import OVERALL, Gate

SCHEMA_VERSION = 2
STATUSES = ("running", "complete", "interrupted", "failed")
COUNTS_NOTE = ("prompt_tokens: input tokens the model ran (a shared few-shot prefix once, continuations scored, "
               "cached answers none; for an endpoint, what the server reported); generated_tokens: tokens "
               "generated; rates are per second of waiting for the backend (wall_s)")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def file_part(text: str) -> str:
    """``text`` as part of a file name: as it is when already safe, else its safe form and a short
    hash of the original, so two names that differ only in dropped characters (the custom
    files ``a b.jsonl`` and ``a_b.jsonl``) never share a file."""
    safe = safe_name(text)
    return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def case_stem(benchmark: str, case: str) -> str:
    """The file name (without suffix) of one case's rows: samples here, discordant rows in compare."""
    return f"{file_part(benchmark)}-{file_part(case)}"


def samples_file(benchmark: str, case: str) -> str:
    return f"samples/{case_stem(benchmark, case)}.jsonl"


def git_info(cwd) -> dict[str, Any]:
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


@dataclass(frozen=True)
class Judged:
    """A case result with its verdict, as the controller holds it."""

    result: CaseResult
    verdict: Verdict


def _metrics(verdict: Verdict) -> dict[str, Any]:
    """Each metric's aggregate and its chance level (None where a guess has no defined score:
    perplexities, counts, generated answers)."""
    return {name: {**m.to_dict(), "chance": verdict.chance.get(name)} for name, m in verdict.metrics.items()}


def _rates(wall: float, value: float) -> float | None:
    return value / wall if wall > 0 else None


def case_entry(judged: Judged, outcome: str | None = None) -> dict[str, Any]:
    r, counts = judged.result, judged.result.counts
    entry = {
        "metrics": _metrics(judged.verdict), "n": len(r.rows), "requests": counts.requests,
        "prompt_tokens": counts.prompt_tokens, "generated_tokens": counts.generated_tokens, "wall_s": counts.wall_s,
        "documents_per_s": _rates(counts.wall_s, len(r.rows)),
        "prompt_tokens_per_s": _rates(counts.wall_s, counts.prompt_tokens),
        "generated_tokens_per_s": _rates(counts.wall_s, counts.generated_tokens),
        "cache": {"reused": counts.reused, "computed": counts.computed},
        "nodeid": r.nodeid, "outcome": outcome,
        "gates": [o.to_dict() for o in judged.verdict.gates if o.case != OVERALL],
        "samples": samples_file(r.benchmark, r.case),
        "spec": {name: list(pair) for name, pair in r.spec.items()},  # compare and --baseline rescore from samples
    }
    entry["gated"] = bool(entry["gates"])
    if judged.verdict.baseline is not None:
        entry["baseline"] = judged.verdict.baseline
    return entry


def overall_entry(cases: Sequence[Judged], gates: Sequence[Gate]) -> tuple[dict[str, Any], list[str]]:
    """The pooled row of one benchmark and the failure messages of its gates (decided only when
    every selected case is in)."""
    results = [j.result for j in cases]
    expected = set(results[0].expected_cases) | {r.case for r in results}
    present = {r.case for r in results}
    missing = sorted(expected - present)
    pooled = pool(results)
    single = results[0].single_case
    entry: dict[str, Any] = {"n": len(pooled.rows), "cases": sorted(present), "complete": not missing,
                             "decided_in_test": single}
    failures: list[str] = []
    if single:  # the one case's verdict holds the overall gates already
        entry["metrics"] = _metrics(cases[0].verdict)
        entry["gates"] = [o.to_dict() for o in cases[0].verdict.gates if o.case == OVERALL]
        return entry, failures
    verdict = judge(pooled, gates)
    entry["metrics"] = _metrics(verdict)
    if missing:
        entry["missing"] = missing
        entry["gates"] = []
        entry["undecided"] = [{"label": g.label(OVERALL), "source": g.source,
                               "reason": f"{len(present)} of {len(expected)} cases ran"}
                              for g in gates if g.applies_to(pooled.benchmark, OVERALL)]
    else:
        entry["gates"] = [o.to_dict() for o in verdict.gates]
        failures = verdict.failures
    return entry, failures


def build(envelope: Mapping[str, Any], judged: Mapping[tuple[str, str], Judged], gates: Sequence[Gate],
          status: str, test_outcomes: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """results.json content (benchmarks and cases sorted by name, so an xdist run equals a serial
    one) and the failure messages of the overall gates decided here. ``test_outcomes``: each test's
    outcome by node id, as pytest reported it so far."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, found {status!r}")
    by_bench: dict[str, list[Judged]] = {}
    for (bench, _), item in sorted(judged.items()):
        by_bench.setdefault(bench, []).append(item)
    benchmarks: dict[str, Any] = {}
    outcomes: list[dict[str, Any]] = []
    failures: list[str] = []
    for bench, items in by_bench.items():
        cases = {j.result.case: case_entry(j, (test_outcomes or {}).get(j.result.nodeid)) for j in items}
        overall, failed = overall_entry(items, gates)
        failures += failed
        for entry in cases.values():
            outcomes += entry["gates"]
        outcomes += overall["gates"]
        first = items[0].result
        # every case's files (the custom benchmark reads one file per case), each once, in case order
        data = list({json.dumps(d, sort_keys=True): d for j in items for d in j.result.data}.values())
        benchmarks[bench] = {"protocol": first.protocol, "data": data, "cases": cases, "overall": overall}
    model = dict(envelope.get("model") or {})
    if judged:
        model.update(next(iter(judged.values())).result.model)
    reused = sum(j.result.counts.reused for j in judged.values())
    computed = sum(j.result.counts.computed for j in judged.values())
    results = {
        "schema_version": SCHEMA_VERSION, "status": status, **envelope, "model": model,
        "cache": {**envelope.get("cache", {}), "reused": reused, "computed": computed},
        "counts_note": COUNTS_NOTE, "benchmarks": benchmarks,
        "gates": {"passed": sum(g["passed"] for g in outcomes), "failed": sum(not g["passed"] for g in outcomes),
                  "undecided": sum(len(b["overall"].get("undecided", [])) for b in benchmarks.values()),
                  "outcomes": outcomes},
    }
    return results, failures

