"""One case's result, typed and frozen, and the one place it is judged.

A benchmark test hands its rows to the recorder, which builds a :class:`CaseResult`: what was
evaluated (benchmark, case, rows, metric spec, protocol, data files, model, the metrics with a
chance level), what it cost
(:class:`Counts`) and where it ran (its shard). It travels to the controller as plain JSON on
``report.user_properties`` (so also from xdist workers) and is never changed afterwards: a
sharded case is merged into a new result (:func:`merge_shards`), a benchmark's overall row is a
pooled result (:func:`pool`).

:func:`judge` turns a result into a :class:`Verdict`: its metrics, their chance levels, the outcome
of every gate that applies, and the ``--baseline`` comparison. The recorder (to fail a test), the shard merge and the
overall rows all call it, so a gate is decided the same way wherever it is decided.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from evals.metrics import Metric, aggregate, chance_level
from evals.thresholds import OVERALL, Gate, GateOutcome, check

PROPERTY = "rwkveval"  # the user_properties key carrying a case's result


@dataclass(frozen=True)
class Counts:
    """What a case cost. Token figures are what the model ran: a few-shot prefix shared by many
    requests counts once, a response taken from the cache counts nothing; for an endpoint they
    are the tokens the server reported processing."""

    requests: int = 0
    prompt_tokens: int = 0  # input tokens the model ran (contexts, continuations scored, prompts prefilled)
    generated_tokens: int = 0  # tokens the model generated
    reused: int = 0  # requests answered from the response cache
    computed: int = 0  # requests the model answered (and the cache stored)
    wall_s: float = 0.0  # time spent waiting for the backend

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass(frozen=True)
class CaseResult:
    benchmark: str
    case: str
    nodeid: str  # the test's node id (a shard's own id until merged)
    rows: tuple[dict[str, Any], ...]
    spec: dict[str, tuple[str, str]]  # metric -> (aggregation, score key)
    protocol: dict[str, Any]
    data: tuple[dict[str, Any], ...] = ()
    model: dict[str, Any] = field(default_factory=dict)
    counts: Counts = Counts()
    single_case: bool = False  # the benchmark has only this case: its overall gates are decided with it
    shard: tuple[int, int] = (0, 1)  # (index, count)
    expected_cases: tuple[str, ...] = ()  # the benchmark's cases selected in this run, as collection saw them
    chance: tuple[str, ...] = ()  # metrics with a chance level (Declared.chance); rows carry n_options

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["spec"] = {name: list(pair) for name, pair in self.spec.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CaseResult:
        return cls(**{**data, "rows": tuple(data["rows"]), "data": tuple(data["data"]),
                      "spec": {name: tuple(pair) for name, pair in data["spec"].items()},
                      "counts": Counts(**data["counts"]), "shard": tuple(data["shard"]),
                      "expected_cases": tuple(data["expected_cases"]), "chance": tuple(data.get("chance", ()))})


@dataclass(frozen=True)
class Verdict:
    metrics: dict[str, Metric]
    gates: tuple[GateOutcome, ...]
    baseline: dict[str, Any] | None = None
    chance: dict[str, float] = field(default_factory=dict)  # metric -> the score a uniform guess expects

    @property
    def failures(self) -> list[str]:
        messages = [f"threshold gate failed: {o.message}" for o in self.gates if not o.passed]
        if self.baseline:
            messages += [f"baseline: {m}" for m in self.baseline["failures"]]
        return messages


def judge(result: CaseResult, gates: Sequence[Gate], baseline: Any = None) -> Verdict:
    """Metrics, gate outcomes and the ``--baseline`` verdict of ``result``.

    The case's own gates apply; a single-case benchmark's overall gates too (its overall is this
    case); a pooled result (case ``all``) gets the overall gates. ``baseline`` is an
    :class:`evals.baseline.Baseline` (or None)."""
    if not result.rows:
        raise ValueError(f"{result.benchmark}/{result.case}: no documents were evaluated")
    metrics = aggregate(result.rows, result.spec)
    level = chance_level(result.rows) if any(m in metrics for m in result.chance) else None
    chance = {m: level for m in result.chance if m in metrics}
    outcomes = check(gates, result.benchmark, result.case, metrics)
    if result.single_case and result.case != OVERALL:
        outcomes += check(gates, result.benchmark, OVERALL, metrics)
    verdict = None
    if baseline is not None and result.case != OVERALL:
        verdict = baseline.judge(result.benchmark, result.case, result.rows, result.spec, data=result.data)
    return Verdict(metrics, tuple(outcomes), verdict, chance)


def merge_shards(parts: Sequence[CaseResult], case_nodeid: str) -> CaseResult:
    """The shards of one case as one result: rows in shard order (= document order), counts added."""
    parts = sorted(parts, key=lambda p: p.shard[0])
    count = parts[0].shard[1]
    if [p.shard[0] for p in parts] != list(range(count)):
        missing = sorted(set(range(count)) - {p.shard[0] for p in parts})
        raise ValueError(f"{parts[0].benchmark}/{parts[0].case}: shards {missing} of {count} did not report")
    template = next((p for p in parts if p.rows), parts[0])
    total = Counts()
    for part in parts:
        total = total + part.counts
    return replace(template, nodeid=case_nodeid, rows=tuple(row for p in parts for row in p.rows),
                   counts=total, shard=(0, 1))


def pool(results: Sequence[CaseResult]) -> CaseResult:
    """A benchmark's overall row: every document of its cases as one result (case ``all``)."""
    first = results[0]
    total = Counts()
    for result in results:
        total = total + result.counts
    return replace(first, case=OVERALL, nodeid="", rows=tuple(row for r in results for row in r.rows),
                   counts=total, single_case=False)
