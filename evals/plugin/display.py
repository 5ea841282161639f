"""How a metric reads to a person: one set of formatting rules for the terminal table, the HTML
pages and the comparison table, so a number looks the same wherever it is shown.

A metric's *kind* decides its format (:func:`metric_kind`):

- ``count`` (a ``sum``: answers guessed, no answer found): an integer, ``5``;
- ``perplexity``: four significant digits, scientific from 10,000 on (``12.35``, ``2.385e+11``);
- ``proportion`` (a ``mean`` whose value and interval lie in [0, 1]: accuracy, exact match): four
  decimals, the interval three (``0.4123 [0.397, 0.424]``);
- ``number`` (any other mean: a token count, a log-likelihood): four significant digits.

The chance level (``chance`` in results.json, from :func:`evals.metrics.chance_level`) is shown
with three significant digits where it is defined, ``-`` elsewhere.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

KINDS = ("count", "perplexity", "proportion", "number")
NONE = "-"


def metric_kind(m: Mapping[str, Any]) -> str:
    aggregation = m.get("aggregation")
    if aggregation == "sum":
        return "count"
    if aggregation == "perplexity":
        return "perplexity"
    bounds = [m.get("value")] + list(m.get("ci95") or [])
    if all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in bounds):
        return "proportion"
    return "number"


def fmt_number(value: Any, kind: str, interval: bool = False) -> str:
    """``value`` in the format of ``kind`` (an interval bound gets one digit less)."""
    if value is None:
        return NONE
    if isinstance(value, str):  # a non-finite value written as a string ("nan", "inf")
        return value
    if not math.isfinite(value):
        return str(value)
    if kind == "count":
        return f"{value:.0f}"
    if kind == "proportion":
        return f"{value:.{3 if interval else 4}f}"
    digits = 3 if interval else 4
    if kind == "perplexity" and abs(value) >= 1e4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def fmt_value(m: Mapping[str, Any]) -> str:
    return fmt_number(m.get("value"), metric_kind(m))


def fmt_interval(m: Mapping[str, Any]) -> str:
    ci = m.get("ci95")
    if not ci:
        return NONE
    kind = metric_kind(m)
    return f"[{fmt_number(ci[0], kind, True)}, {fmt_number(ci[1], kind, True)}]"


def fmt_chance(m: Mapping[str, Any]) -> str:
    chance = m.get("chance")
    return NONE if chance is None else f"{chance:.3g}"


def fmt_diff(value: float | None, kind: str) -> str:
    """A signed difference B - A (of per-document scores)."""
    if value is None:
        return NONE
    if kind == "proportion":
        return f"{value:+.4f}"
    return f"{value:+.4g}"


def fmt_p(p: float | None) -> str:
    if p is None:
        return NONE
    return f"{p:.4g}" if p >= 1e-4 else f"{p:.3e}"


def primary_metric(metrics: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The metric a benchmark's chart shows: its first ``mean`` (accuracy, exact match), else its
    first metric. None for a benchmark without metrics."""
    for name, m in metrics.items():
        if m.get("aggregation") == "mean":
            return name
    return next(iter(metrics), None)


def sections(bench: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) of a benchmark's cases, then its pooled row where it adds something (more
    than one case, or a single case whose overall gates were decided apart): ``all``, or ``all
    (partial k cases)`` while cases are missing."""
    overall = bench["overall"]
    out = list(bench["cases"].items())
    if len(bench["cases"]) > 1 or not overall.get("decided_in_test", True):
        label = "all" if overall.get("complete", True) else f"all (partial {len(overall['cases'])} cases)"
        out.append((label, overall))
    return out


def gate_status(bench: Mapping[str, Any], entry: Mapping[str, Any], metric: str) -> str:
    """``pass (>= 0.45)``, ``FAIL (...)``, ``undecided (cases missing)`` or ``ungated``; of several
    gates on the metric (a case gate and an overall one, a lower and an upper bound), the first
    that fails, else the first."""
    overall = bench["overall"]
    listed = list(entry.get("gates", []))
    if overall.get("decided_in_test") and entry is not overall:
        listed += overall.get("gates", [])
    undecided = {u["label"].rsplit(".", 1)[1] for u in entry.get("undecided", [])}
    if metric in undecided:
        return "undecided (cases missing)"
    mine = [g for g in listed if g["metric"] == metric]
    if not mine:
        return "ungated"
    gate = next((g for g in mine if not g["passed"]), mine[0])  # several gates on one metric: a failing one shows
    return ("pass" if gate["passed"] else "FAIL") + f" ({gate['op']} {gate['bound']:g})"


RESULTS_HEADER = ("benchmark", "case", "metric", "value", "95% CI", "n", "chance", "gate")


def results_rows(results: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The terminal table of a run: one row per benchmark, case (or pooled row) and metric."""
    rows = [RESULTS_HEADER]
    for bench, data in results["benchmarks"].items():
        for case, entry in sections(data):
            for metric, m in entry["metrics"].items():
                rows.append((bench, case, metric, fmt_value(m), fmt_interval(m), str(int(m["n"])), fmt_chance(m),
                             gate_status(data, entry, metric)))
    return rows


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
