"""Threshold gates: bounds on metrics that turn an evaluation into a CI assertion.

A gate reads ``benchmark[/case].metric OP bound`` with OP ``>=`` (a minimum, for accuracies) or
``<=`` (a maximum, for perplexities):

- ``lambada.acc >= 0.45``: the benchmark's overall aggregate (all its cases' documents pooled);
- ``mmlu_pro/math.acc >= 0.2``: one case;
- ``mmlu_pro/*.acc >= 0.1``: every case.

Gates come from ``evals/thresholds.toml`` (per model, matched by name or sha256; a fine-tune by
its name ``base+adapter-stem`` or by the base's sha256 plus its adapters' sha256s) and from
``--threshold`` on the command line, which adds a gate or replaces the file's gate on the same
benchmark, case, metric and direction (``ppl >= 1`` and ``ppl <= 20`` are two gates). A case without a gate passes and is reported as ungated.
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.metrics import Metric

DEFAULT_FILE = Path(__file__).with_name("thresholds.toml")
_GATE = re.compile(r"^\s*(?P<bench>[A-Za-z0-9_\-]+)(?:/(?P<case>[^.\s]+))?\.(?P<metric>[A-Za-z0-9_]+)"
                   r"\s*(?P<op>>=|<=)\s*(?P<bound>[-+0-9.eE]+|inf)\s*$")
OVERALL = "all"  # the case name of a benchmark's pooled aggregate


@dataclass(frozen=True)
class Gate:
    benchmark: str
    case: str  # a case name, "*" for every case, or OVERALL
    metric: str
    op: str
    bound: float
    source: str = "cli"

    @classmethod
    def parse(cls, text: str, source: str = "cli") -> Gate:
        match = _GATE.match(text)
        if not match:
            raise ValueError(f"cannot read threshold {text!r} ({source}); expected "
                             "'benchmark[/case].metric>=number' or '...<=number', e.g. 'lambada.acc>=0.45'")
        return cls(match["bench"], match["case"] or OVERALL, match["metric"], match["op"],
                   float(match["bound"]), source)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """A gate replaces another with the same key: a lower and an upper bound on one metric both hold."""
        return (self.benchmark, self.case, self.metric, self.op)

    def applies_to(self, benchmark: str, case: str) -> bool:
        return self.benchmark == benchmark and (self.case == case or (self.case == "*" and case != OVERALL))

    def label(self, case: str) -> str:
        where = self.benchmark if case == OVERALL else f"{self.benchmark}/{case}"
        return f"{where}.{self.metric}"

    def check(self, case: str, metric: Metric) -> GateOutcome:
        passed = metric.value >= self.bound if self.op == ">=" else metric.value <= self.bound
        ci = (f"[{metric.ci95[0]:.4g}, {metric.ci95[1]:.4g}]" if metric.ci95 else "undefined")
        relation = ("meets" if passed else "is below") if self.op == ">=" else ("meets" if passed else "is above")
        message = (f"{self.label(case)} = {metric.value:.4g} {relation} the bound {self.op} {self.bound:g} "
                   f"(n={metric.n}, 95% CI {ci}; gate from {self.source})")
        return GateOutcome(self.label(case), self.benchmark, case, self.metric, self.op, self.bound,
                           metric.value, metric.n, metric.ci95, passed, message, self.source)


@dataclass(frozen=True)
class GateOutcome:
    label: str
    benchmark: str
    case: str
    metric: str
    op: str
    bound: float
    value: float
    n: int
    ci95: tuple[float, float] | None
    passed: bool
    message: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["ci95"] = list(self.ci95) if self.ci95 else None
        return data


def load_file(path: Path, model_name: str, model_sha256: str | None, adapter_sha256s: Iterable[str] = ()) -> list[Gate]:
    """The gates ``path`` lists for a model, matched by ``[models."NAME"]`` or its ``sha256`` key.

    A run with adapters (``adapter_sha256s``: the sha256 of each ``--adapter`` file) is a
    different model from its base: an entry matches it by its name (``base+adapter-stem``) or by
    ``sha256`` (the base's) together with ``adapters = [sha256, ...]`` listing exactly its adapter
    files, in any order. An entry with ``adapters`` never matches the base alone, and the base's
    entry never matches a fine-tune by checksum.
    """
    run_adapters = sorted(s.lower() for s in adapter_sha256s)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"cannot read thresholds file {path}: {error}") from None
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ValueError(f"{path}: 'models' must be a table of model names, found {type(models).__name__}")
    gates: list[Gate] = []
    for name, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("gates", []), list):
            raise ValueError(f"{path}: [models.{name!r}] must hold a 'gates' list of strings")
        sha, wanted = entry.get("sha256"), entry.get("adapters", [])
        if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
            raise ValueError(f"{path}: [models.{name!r}] 'adapters' must be a list of sha256 strings, found {wanted!r}")
        same_adapters = sorted(s.lower() for s in wanted) == run_adapters
        by_name = name == model_name and (same_adapters or not wanted)
        by_sha = bool(sha and model_sha256 and sha.lower() == model_sha256.lower()) and same_adapters
        if by_name or by_sha:
            gates.extend(Gate.parse(text, source=f"{path.name}[{name}]") for text in entry.get("gates", []))
    return gates


def merge(file_gates: Iterable[Gate], cli_gates: Iterable[Gate]) -> list[Gate]:
    """File gates, each replaced by a command-line gate on the same benchmark, case, metric and
    direction (``>=`` or ``<=``)."""
    merged: dict[tuple[str, str, str, str], Gate] = {g.key: g for g in file_gates}
    for gate in cli_gates:
        merged[gate.key] = gate
    return list(merged.values())


def check(gates: Iterable[Gate], benchmark: str, case: str, metrics: Mapping[str, Metric]) -> list[GateOutcome]:
    """Outcomes of every gate on this benchmark and case. A gate on a metric the case does not
    produce is an error, so a typo in a gate never passes silently."""
    outcomes = []
    for gate in gates:
        if not gate.applies_to(benchmark, case):
            continue
        if gate.metric not in metrics:
            raise ValueError(f"threshold {gate.label(case)} ({gate.source}) names metric {gate.metric!r}, "
                             f"but {benchmark} reports {sorted(metrics)}")
        outcomes.append(gate.check(case, metrics[gate.metric]))
    return outcomes
