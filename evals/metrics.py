"""Aggregating per-document scores into metrics with standard errors and confidence intervals.

Every benchmark scores one document into a row whose ``scores`` dict holds plain numbers (``acc``
0/1, ``logprob`` a float, ...). A benchmark declares its metrics as ``{name: (aggregation, key)}``
and :func:`aggregate` turns rows into :class:`Metric` values. Because the aggregations are named,
the report plugin can recompute any aggregate (a benchmark's overall row across its cases, a rescore
from stored rows) without importing the benchmark.

Aggregations:

- ``mean``: mean of ``key``; standard error = sample standard deviation (n-1) / sqrt(n), as in
  lm-evaluation-harness; the 95% interval is Wilson's for 0/1 scores, mean +- 1.96 se otherwise.
- ``perplexity``: exp(-mean(key)) over per-document log-likelihoods; the standard error by the
  delta method (ppl * se(mean)), the interval exp(-(mean +- 1.96 se)). Deterministic, unlike the
  harness's bootstrap.
- ``sum``: a count (for example answers that had to be guessed); no standard error.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Metric:
    """One aggregate: value, standard error (None when undefined, n < 2), n, and a 95% interval."""

    value: float
    stderr: float | None
    n: int
    ci95: tuple[float, float] | None
    aggregation: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        ci = data.get("ci95")
        return cls(data["value"], data["stderr"], data["n"], tuple(ci) if ci else None, data["aggregation"])


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    if n == 0:
        raise ValueError("cannot aggregate an empty list of scores")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 and 1, unlike +-z*se)."""
    if n <= 0:
        raise ValueError(f"Wilson interval needs n >= 1, found {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low, high = centre - half, centre + half
    # rounding leaves 1e-18 where the bound is exactly 0 (or 1) at p = 0 (or 1)
    return (0.0 if low < 1e-12 else low), (1.0 if high > 1 - 1e-12 else high)


def _column(rows: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    values = []
    for row in rows:
        scores = row["scores"]
        if key not in scores:
            raise KeyError(f"row {row.get('doc_id')!r} has no score {key!r}; it has {sorted(scores)}")
        values.append(float(scores[key]))
    return values


def aggregate_one(values: Sequence[float], aggregation: str) -> Metric:
    n = len(values)
    if aggregation == "mean":
        mean, se = mean_and_stderr(values)
        if all(v in (0.0, 1.0) for v in values):
            ci = wilson_interval(math.fsum(values), n)
        else:
            ci = (mean - Z95 * se, mean + Z95 * se) if se is not None else None
        return Metric(mean, se, n, ci, aggregation)
    if aggregation == "perplexity":
        mean, se = mean_and_stderr(values)
        ppl = math.exp(-mean)
        if se is None:
            return Metric(ppl, None, n, None, aggregation)
        return Metric(ppl, ppl * se, n, (math.exp(-(mean + Z95 * se)), math.exp(-(mean - Z95 * se))), aggregation)
    if aggregation == "sum":
        return Metric(math.fsum(values), None, n, None, aggregation)
    raise ValueError(f"unknown aggregation {aggregation!r}; expected mean, perplexity or sum")


def aggregate(rows: Sequence[Mapping[str, Any]], spec: Mapping[str, tuple[str, str]]) -> dict[str, Metric]:
    """``spec``: metric name -> (aggregation, score key). Returns the metrics in ``spec`` order."""
    return {name: aggregate_one(_column(rows, key), aggregation) for name, (aggregation, key) in spec.items()}


def chance_level(rows: Sequence[Mapping[str, Any]]) -> float:
    """The score a uniform guess expects: mean of ``1 / n_options`` over the rows (MMLU 0.25, PIQA
    0.5, MMLU-Pro about 0.1 as its questions have 3 to 10 options)."""
    if not rows:
        raise ValueError("cannot compute a chance level without rows")
    total = 0.0
    for row in rows:
        n = row.get("n_options")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"row {row.get('doc_id')!r}: n_options must be the number of answer options "
                             f"(an integer >= 1) for a metric with a chance level, found {n!r}")
        total += 1.0 / n
    return total / len(rows)


def poisson_binomial_interval(probabilities: Sequence[float], level: float = 0.99) -> tuple[int, int]:
    """Central interval [lo, hi] holding at least ``level`` of the number of successes of
    independent trials with success probabilities ``probabilities`` (exact, by convolution).

    With equal probabilities this is the binomial interval. Used by the chance self-check: a model
    that guesses answers question i right with probability 1/options_i.
    """
    distribution = [1.0]
    for p in probabilities:
        nxt = [0.0] * (len(distribution) + 1)
        for k, mass in enumerate(distribution):
            nxt[k] += mass * (1 - p)
            nxt[k + 1] += mass * p
        distribution = nxt
    tail = (1 - level) / 2
    cumulative, lo = 0.0, 0
    for k, mass in enumerate(distribution):
        if cumulative + mass > tail:
            lo = k
            break
        cumulative += mass
    cumulative, hi = 0.0, len(distribution) - 1
    for k in range(len(distribution) - 1, -1, -1):
        if cumulative + distribution[k] > tail:
            hi = k
            break
        cumulative += distribution[k]
    return lo, hi
