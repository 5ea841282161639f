"""What a benchmark module declares, so the plugin can check a run before any work is done.

Every benchmark module (``evals/test_*.py``) has, at module level:

- ``BENCHMARK``: its name, the key ``--limit`` samples by;
- ``CASE`` (a single-case benchmark) or ``CASE_PARAM``: the name of the test's parameter that
  holds the case (``"case"`` for MMLU-Pro, ``"subject"`` for MMLU);
- ``declare(config) -> list[Declared]``: the benchmarks it records (MMLU also records one per
  subject group), their cases, the metrics they report under the given options, the
  manifest data files they read, and which metrics have a chance level (multiple choice: each
  row then carries ``n_options``, and a case's chance is the mean of ``1 / n_options``).

Optionally, ``check(config) -> list[str]``: problems with the run's options for this benchmark
(an option it cannot run without), reported with the other problems before any work when the run
selects it; and ``READS_REWARD = True`` for a benchmark that scores with ``--reward`` itself
(CharacterEval), so ``--reward`` without a ``--strategy`` is not refused when it runs.

Collection reads these (no data file is opened and no model loaded) to check gates and data
files, and to draw ``--limit`` over the cases ``-k`` left selected.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Declared:
    benchmark: str  # the name results are recorded under (gates name it)
    cases: tuple[str, ...]
    metrics: tuple[str, ...]
    data: tuple[str, ...] = ()  # manifest files (benchmarkdata/manifest.json) it reads
    # metrics with a chance level: a uniform guess among each document's options, whose rows
    # therefore carry ``n_options``; the report shows mean(1 / n_options) beside them
    chance: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.cases or not self.metrics:
            raise ValueError(f"{self.benchmark}: a declaration needs at least one case and one metric")
        unknown = [m for m in self.chance if m not in self.metrics]
        if unknown:
            raise ValueError(f"{self.benchmark}: chance names metrics it does not report: {unknown}; "
                             f"it reports {list(self.metrics)}")


def is_benchmark(module: ModuleType | None) -> bool:
    return module is not None and isinstance(getattr(module, "BENCHMARK", None), str) and hasattr(module, "declare")


def benchmark_module(item: Any) -> ModuleType | None:
    """The benchmark module that defines a test item's function (a test file may import the test
    function from ``evals/test_*.py``), or None for any other test."""
    function = getattr(item, "function", None)
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    return module if is_benchmark(module) else None


def item_case(module: ModuleType, params: Mapping[str, Any]) -> tuple[str, str]:
    """(the module's benchmark, the case) a test item evaluates, from its parameters."""
    param = getattr(module, "CASE_PARAM", None)
    if param is None:
        return module.BENCHMARK, module.CASE
    if param not in params:
        raise ValueError(f"{module.__name__}: CASE_PARAM {param!r} is not a parameter of its test "
                         f"(found {sorted(params)})")
    return module.BENCHMARK, str(params[param])


def module_problems(module: ModuleType, config: Any) -> list[str]:
    """What the module's optional ``check(config)`` finds wrong with the run's options."""
    check = getattr(module, "check", None)
    return list(check(config)) if check is not None else []


def known(declarations: Iterable[Declared]) -> dict[str, Declared]:
    """By benchmark name; two modules declaring one name would make gates ambiguous."""
    out: dict[str, Declared] = {}
    for d in declarations:
        if d.benchmark in out and out[d.benchmark] != d:
            raise ValueError(f"benchmark {d.benchmark!r} is declared twice with different cases or metrics")
        out[d.benchmark] = d
    return out
