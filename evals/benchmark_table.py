"""After ``pytest --benchmark-only``: the throughput figures per scenario as a table.

pytest-benchmark's own table shows time per call; what the engine's benchmarks are about (tokens/s,
the ratio to the official ``rwkv`` package, the fraction of the machine's roofline) lives in each
benchmark's ``extra_info`` (``--benchmark-json FILE`` writes it under ``benchmarks[i].extra_info``).
This plugin prints those figures at the end of the run, one row per benchmark that reports
``tokens_per_s``; the ratio to the official package is taken from ``ratio_to_official`` or, for
the GPU benchmarks, computed against the ``official_<scenario>`` row of the same shape. Other
benchmarks with figures of their own (search: prefill tokens and ratios to forking; the response
cache: its overhead; evaluation throughput: documents/s beside the official loop) get one line
each with those figures and their target.

Registered by the root ``conftest.py``; it prints nothing when no benchmark ran.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

NONE = "-"
OTHER_KEYS = ("prefill_tokens", "generated_tokens", "reward_calls", "prefill_ratio_to_fork", "time_ratio_to_fork",
              "median_s", "overhead", "target", "docs_per_s", "official_docs_per_s", "ratio_to_official",
              "ratio_to_one_document_per_call")
HEADER = ("benchmark", "scenario", "dtype", "tokens/s", "official tokens/s", "ratio", "matmul roofline",
          "bandwidth roofline", "target")


def _number(value: Any, digits: int = 4) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return NONE
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def _percent(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else NONE


def _target(info: Mapping[str, Any]) -> str:
    if "meets_target" in info:
        parts = [("met" if info["meets_target"] else "MISSED") + f" (>= {info.get('target_ratio')}x)"]
        for key, name in (("matmul_target", "matmul"), ("bandwidth_target", "bandwidth")):
            if f"meets_{key}" in info:  # a roofline fraction's own target (tests/test_throughput.py)
                met = "met" if info[f"meets_{key}"] else "MISSED"
                parts.append(f"{name} {met} (>= {_percent(info.get(key))})")
        return ", ".join(parts)
    targets = info.get("targets")
    if isinstance(targets, Mapping) and targets:
        return ", ".join(f"{k}: {v}" for k, v in targets.items())
    return ""


def _official_rates(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], float]:
    rates = {}
    for _, info in rows:
        scenario = str(info.get("scenario", ""))
        if info.get("engine") == "official" and scenario.startswith("official_") and "tokens_per_s" in info:
            rates[(str(info.get("shape")), scenario.removeprefix("official_"))] = info["tokens_per_s"]
    return rates


def table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[list[tuple[str, ...]], list[str]]:
    """``rows``: (benchmark name, extra_info). The table (header first) of the rows with
    ``tokens_per_s``, and one line for each other row that has figures of its own."""
    official = _official_rates(rows)
    lines = [HEADER]
    others = []
    for name, info in rows:
        if "tokens_per_s" not in info:
            figures = [f"{k} {_number(info[k])}" for k in OTHER_KEYS if k in info]
            if figures and "meets_target" in info:
                figures.append(_target(info))
            if figures:
                others.append(f"{name}: " + ", ".join(figures))
            continue
        scenario = str(info.get("scenario", NONE))
        reference = info.get("official_tokens_per_s", official.get((str(info.get("shape")), scenario)))
        ratio = info.get("ratio_to_official")
        if ratio is None and isinstance(reference, (int, float)) and reference > 0 and info.get("engine") != "official":
            ratio = info["tokens_per_s"] / reference
        lines.append((name, scenario, str(info.get("dtype", NONE)), _number(info["tokens_per_s"]), _number(reference),
                      f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else NONE,
                      _percent(info.get("fraction_of_matmul_roofline")),
                      _percent(info.get("fraction_of_bandwidth_roofline")), _target(info)))
    return lines, others


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)  # pytest-benchmark's session object
    benchmarks = getattr(session, "benchmarks", None) or []
    rows = [(b.name, dict(b.extra_info or {})) for b in benchmarks]
    lines, others = table(rows)
    if len(lines) == 1 and not others:
        return
    from evals.plugin.display import aligned

    terminalreporter.write_sep("-", "throughput (benchmark extra_info; --benchmark-json keeps it per benchmark)")
    if len(lines) > 1:
        for line in aligned(lines):
            terminalreporter.write_line(line)
    for line in others:
        terminalreporter.write_line(line)
