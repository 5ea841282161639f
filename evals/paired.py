"""Paired statistics for two runs scored on the same documents (standard library only).

- :func:`paired_difference`: mean of per-document differences ``b - a`` with its standard error
  (sample sd of the differences / sqrt(n)) and a normal 95% interval; the two-sided p-value of
  the same z statistic. Pairing removes the variance shared by both runs (how hard a document
  is), so it detects much smaller changes than comparing two independent averages.
- :func:`mcnemar_exact`: McNemar's exact test for 0/1 scores. Only discordant documents carry
  information: ``b`` = right in A and wrong in B, ``c`` = wrong in A and right in B. Under "no
  difference" each discordant document goes either way with probability 1/2, so
  ``p = min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``, computed exactly with
  integers. The one-sided ``p_worse`` = ``P(X >= b)``: the chance of B losing at least ``b`` of
  the discordant documents by luck.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from evals.metrics import Z95


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exact (integer sum, one correctly rounded division)."""
    if n < 0:
        raise ValueError(f"binomial n must be >= 0, found {n}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


@dataclass(frozen=True)
class McNemar:
    a_only: int  # right in A, wrong in B
    b_only: int  # wrong in A, right in B
    p_value: float  # two-sided exact
    p_worse: float  # one-sided: B worse than A at least this much by chance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(a_only: int, b_only: int) -> McNemar:
    n = a_only + b_only
    if n == 0:
        return McNemar(0, 0, 1.0, 1.0)
    two_sided = min(1.0, 2 * binomial_cdf_half(min(a_only, b_only), n))
    worse = 1.0 - binomial_cdf_half(a_only - 1, n)  # P(X >= a_only), X = documents B lost
    return McNemar(a_only, b_only, two_sided, worse)


@dataclass(frozen=True)
class PairedDifference:
    n: int
    mean_a: float
    mean_b: float
    diff: float  # mean(b - a)
    stderr: float | None
    ci95: tuple[float, float] | None
    p_value: float | None  # two-sided, normal approximation
    p_worse: float | None  # one-sided: P(diff this low | no difference)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, found {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("no shared documents to compare")
    d = [y - x for x, y in zip(a, b)]
    mean = math.fsum(d) / n
    mean_a, mean_b = math.fsum(a) / n, math.fsum(b) / n
    if n < 2:
        return PairedDifference(n, mean_a, mean_b, mean, None, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    ci = (mean - Z95 * se, mean + Z95 * se)
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        worse = 1.0 if mean >= 0 else 0.0
    else:
        z = mean / se
        p, worse = min(1.0, 2 * normal_sf(abs(z))), 1.0 - normal_sf(z)
    return PairedDifference(n, mean_a, mean_b, mean, se, ci, p, worse)


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)
