"""Many GPUs: which device an xdist worker takes, how a case is split into shards, and the
controller's merge of the shards back into one case.

``pytest evals -n 8 --device cuda``: worker ``gwN`` loads the engine once, on ``cuda:(N mod G)``
where G is the number of GPUs it sees (``CUDA_VISIBLE_DEVICES`` is honoured). With
``--tx 4*ssh=host1 --tx 4*ssh=host2`` the workers are numbered host by host, so each host's four
workers take its four GPUs.

Under xdist every benchmark test is parametrized over a shard index (``--shards``, default the
number of workers): shard i of k evaluates the i-th contiguous block of each case's documents
(see :func:`block`), so a large case keeps all workers busy. Each shard ships its rows; the
controller concatenates them in shard order, which is document order, and recomputes metrics and
gates from the rows (:func:`merge`), so the report equals a single-process run's.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from evals.metrics import aggregate
from evals.thresholds import OVERALL, Gate, check

_SHARD_ID = re.compile(r"shard\d+of\d+")


def worker_index(worker: str | None) -> int | None:
    """``"gw3"`` (``PYTEST_XDIST_WORKER``) -> 3; None outside xdist."""
    if not worker:
        return None
    match = re.fullmatch(r"gw(\d+)", worker)
    if not match:
        raise ValueError(f"PYTEST_XDIST_WORKER: expected gw<N>, found {worker!r}")
    return int(match.group(1))


def worker_device(device: str, worker: int | None, gpu_count: int) -> str:
    """The device a worker loads the engine on: ``--device cuda`` spreads workers over the GPUs;
    ``cpu`` and an explicit ``cuda:N`` are kept as given."""
    if worker is None or device != "cuda":
        return device
    if gpu_count < 1:
        raise ValueError(f"--device cuda under xdist: worker gw{worker} sees no CUDA device")
    return f"cuda:{worker % gpu_count}"


def shard_count(option: int | None, workers: int | None) -> int:
    """``--shards`` if given, else the number of xdist workers (1, no sharding, outside xdist)."""
    if option is not None:
        return option
    return workers if workers and workers > 1 else 1


def shard_id(index: int, count: int) -> str:
    return f"shard{index}of{count}"


def block(indices: Sequence[int], index: int, count: int) -> list[int]:
    """The ``index``-th of ``count`` contiguous, near-equal blocks of ``indices`` (may be empty)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    n = len(indices)
    return list(indices[n * index // count: n * (index + 1) // count])


def case_nodeid(nodeid: str) -> str:
    """The node id of a case without its shard parameter (the serial run's id)."""
    nodeid = re.sub(r"\[shard\d+of\d+\]$", "", nodeid)
    nodeid = re.sub(r"shard\d+of\d+-", "", nodeid)
    return re.sub(r"-shard\d+of\d+\]", "]", nodeid)


def _trim_prompts(rows: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    out = []
    for index, row in enumerate(rows):
        if keep >= 0 and index >= keep and "prompt" in row:
            row = {k: v for k, v in row.items() if k != "prompt"}
        out.append(row)
    return out


def merge(payloads: Sequence[Mapping[str, Any]], outcomes: Mapping[str, str], sample_prompts: int,
          baseline: Any = None) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """Merge sharded case payloads into one payload per case.

    Returns (payloads, outcomes, failure messages): unsharded payloads pass through; a case whose
    shards did not all report is left out with a message (its shard tests failed already); case
    gates (and ``baseline``, a :class:`evals.baseline.Baseline`) are decided on the merged rows.
    """
    plain = [dict(p) for p in payloads if "shard" not in p]
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for p in payloads:
        if "shard" in p:
            groups.setdefault((p["benchmark"], p["case"]), []).append(p)
    merged_outcomes = dict(outcomes)
    failures: list[str] = []
    for (bench, case), parts in sorted(groups.items()):
        count = parts[0]["shard"][1]
        parts = sorted(parts, key=lambda p: p["shard"][0])
        seen = [p["shard"][0] for p in parts]
        if seen != list(range(count)):
            missing = sorted(set(range(count)) - set(seen))
            failures.append(f"{bench}/{case}: shards {missing} of {count} did not report; the case is left out")
            continue
        rows = [row for p in parts for row in p["rows"]]
        full = [p for p in parts if p["rows"]]
        if not rows:
            failures.append(f"{bench}/{case}: no documents were evaluated")
            continue
        template = dict(full[0])
        spec = {name: tuple(pair) for name, pair in template["spec"].items()}
        metrics = aggregate(rows, spec)
        gates = [Gate(**fields) for fields in template.get("gate_defs", [])]
        gate_outcomes = check(gates, bench, case, metrics)
        if template["single_case"]:
            gate_outcomes += check(gates, bench, OVERALL, metrics)
        wall = sum(p["wall_s"] for p in full)
        tokens = sum(p["tokens"] for p in full)
        nodeid = case_nodeid(template["nodeid"])
        template.update({
            "nodeid": nodeid, "metrics": {k: m.to_dict() for k, m in metrics.items()}, "n": len(rows),
            "requests": sum(p["requests"] for p in full), "tokens": tokens, "wall_s": wall,
            "samples_per_s": len(rows) / max(wall, 1e-9), "tokens_per_s": tokens / max(wall, 1e-9),
            "gates": [o.to_dict() for o in gate_outcomes], "rows": _trim_prompts(rows, sample_prompts),
            "cache": {key: sum(p.get("cache", {}).get(key, 0) for p in parts) for key in ("reused", "computed")},
        })
        for key in ("shard", "gate_defs"):
            template.pop(key, None)
        case_failures = [f"threshold gate failed: {o.message}" for o in gate_outcomes if not o.passed]
        if baseline is not None:
            verdict = baseline.judge(bench, case, rows, spec)
            template["baseline"] = verdict
            case_failures += [f"baseline: {m}" for m in verdict["failures"]]
        failures += case_failures
        # the case fails as its serial test would have: a shard failed, or a gate decided here
        shard_outcomes = [outcomes.get(p["nodeid"]) for p in parts]
        passed = all(o == "passed" for o in shard_outcomes) and not case_failures
        merged_outcomes[nodeid] = "passed" if passed else "failed"
        plain.append(template)
    return plain, merged_outcomes, failures
