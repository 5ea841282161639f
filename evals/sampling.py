"""``--limit``: a seeded stratified sample of a benchmark's documents, spread across its cases.

``--limit N`` caps the documents a benchmark module evaluates in total; ``--limit 0.1`` takes that
fraction of them. The budget is split over the module's cases in proportion to their sizes by the
largest-remainder method, every non-empty case getting at least one document (so with fewer
documents than cases the total is the number of non-empty cases). Inside a case the documents are
a seeded random sample, returned in file order. The result depends only on the case sizes, the
limit and the seed: every xdist worker computes the same selection.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    """A parsed ``--limit``: ``count`` documents, or a ``fraction`` in (0, 1]."""

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("a Limit holds exactly one of count and fraction")
        if self.count is not None and self.count < 1:
            raise ValueError(f"--limit must be a positive integer or a fraction in (0, 1], found {self.count}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"--limit fraction must be in (0, 1], found {self.fraction}")

    @classmethod
    def parse(cls, text: str) -> Limit:
        """``"200"`` -> 200 documents; ``"0.1"`` -> a tenth; raises ValueError on anything else."""
        text = text.strip()
        try:
            if text.isdigit():
                return cls(count=int(text))
            return cls(fraction=float(text))
        except ValueError as error:
            raise ValueError(f"--limit expects a positive integer (documents) or a fraction in (0, 1] "
                             f"such as 0.1, found {text!r}: {error}") from None

    def total(self, available: int) -> int:
        if self.count is not None:
            return min(self.count, available)
        return min(available, max(1, round(self.fraction * available)))

    def to_json(self) -> int | float:
        return self.count if self.count is not None else self.fraction


def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` over cases in proportion to ``sizes``; each non-empty case gets >= 1."""
    available = sum(sizes.values())
    nonempty = [case for case, size in sizes.items() if size > 0]
    total = min(max(total, len(nonempty)), available)
    counts = {case: 0 for case in sizes}
    for case in nonempty:
        counts[case] = 1
    remaining = total - len(nonempty)
    if remaining <= 0:
        return counts
    # Proportional share of what is left after the guaranteed one each, by largest remainder;
    # ties broken by case name so the split is deterministic.
    spare = {case: sizes[case] - 1 for case in nonempty}
    spare_total = sum(spare.values())
    quotas = {case: remaining * spare[case] / spare_total for case in nonempty}
    floors = {case: min(spare[case], math.floor(q)) for case, q in quotas.items()}
    for case, extra in floors.items():
        counts[case] += extra
    left = remaining - sum(floors.values())
    order = sorted(nonempty, key=lambda c: (-(quotas[c] - floors[c]), c))
    while left > 0:
        for case in order:
            if left and counts[case] < sizes[case]:
                counts[case] += 1
                left -= 1
    return counts


def select(sizes: Mapping[str, int], limit: Limit | None, seed: int, benchmark: str) -> dict[str, list[int]]:
    """Indices (in file order) of the documents each case evaluates; all of them without a limit."""
    if limit is None:
        return {case: list(range(size)) for case, size in sizes.items()}
    counts = allocate(sizes, limit.total(sum(sizes.values())))
    chosen = {}
    for case, size in sizes.items():
        rng = random.Random(f"{seed}:{benchmark}:{case}")
        chosen[case] = sorted(rng.sample(range(size), counts[case]))
    return chosen
