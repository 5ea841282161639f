"""What a benchmark test talks to: the backend (timed, counted, with progress) and the case record.

A benchmark test hands all its requests to :meth:`CaseRecorder.loglikelihood` (or the rolling and
generation twins), scores the responses into rows, then calls :meth:`CaseRecorder.record`. That
judges and builds the case's :class:`~evals.plugin.result.CaseResult` and attaches it to
``item.user_properties`` (from where the controller collects it, also across xdist workers, and
writes it to the run folder at once). For a case that is not split into shards, the messages of
any gate or ``--baseline`` check that does not hold are kept on the test item and fail the test
once its body has returned (:func:`pytest_runtest_call`), so a test that records several results
(MMLU: the subject, then its group) attaches every one of them even when the first fails a gate.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from evals.backend import Backend, FailedRequests, Listener
from evals.cache import CacheError
from evals.metrics import Metric, aggregate, chance_level
from evals.plugin.options import EvalConfig
from evals.plugin.progress import CaseProgress
from evals.plugin.result import PROPERTY, CaseResult, Counts, judge
from evals.remote import RemoteError
from evals.thresholds import Gate

GATE_FAILURES_KEY = pytest.StashKey[list[str]]()  # the failing gates of a test's records, on its item


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Fail a test whose records failed a gate or the baseline, after its body recorded them all."""
    result = yield
    failures = item.stash.get(GATE_FAILURES_KEY, [])
    if failures:
        pytest.fail("; ".join(failures), pytrace=False)
    return result


class _Counting(Listener):
    """Counts what the backend reports and passes it on to the progress line."""

    def __init__(self, progress: CaseProgress):
        self.progress = progress
        self.prompt_tokens = self.generated_tokens = 0

    def on_result(self, index: int, response: Any) -> None:
        self.progress.on_result(index, response)

    def on_tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens += prompt
        self.generated_tokens += generated
        self.progress.on_tokens(prompt, generated)


@dataclass
class CaseRecorder:
    item: pytest.Item
    backend: Backend
    config: EvalConfig
    gates: Sequence[Gate]
    progress: CaseProgress
    case: tuple[str, str]  # (the module's benchmark, the case) this test evaluates
    documents: int = 0  # documents selected for the case (for the progress line's docs/s)
    shard: tuple[int, int] = (0, 1)
    baseline: Any = None  # an evals.baseline.Baseline
    expected_cases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # benchmark -> selected cases
    chance: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # benchmark -> metrics with a chance level
    _counts: Counts = field(default_factory=Counts)

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    @property
    def label(self) -> str:
        return f"{self.case[0]}/{self.case[1]}"

    def add_counts(self, **counts: float) -> None:
        """Work done beside the backend (a search over the engine's states, a reward model), so
        the case's counts and rates include it."""
        self._counts = self._counts + Counts(**counts)

    def _call(self, kind: str, requests: Sequence[Any]) -> list[Any]:
        counting = _Counting(self.progress)
        stats = getattr(self.backend, "stats", None)
        before = stats.to_dict() if stats else {"reused": 0, "computed": 0}
        budgets = [r.max_new_tokens for r in requests] if kind == "generate" else None
        self.progress.start(f"{self.label} {kind}", len(requests), self.documents, budgets)
        started = time.perf_counter()
        try:
            responses = getattr(self.backend, kind)(requests, counting)
        except (RemoteError, FailedRequests, CacheError) as error:  # nothing of them scored: one clear failure
            pytest.fail(f"{self.case[0]}/{self.case[1]}: {error}", pytrace=False)
        finally:
            after = stats.to_dict() if stats else before
            self._counts = self._counts + Counts(
                requests=len(requests), prompt_tokens=counting.prompt_tokens,
                generated_tokens=counting.generated_tokens, reused=after["reused"] - before["reused"],
                computed=after["computed"] - before["computed"], wall_s=time.perf_counter() - started)
            self.progress.finish()
        if len(responses) != len(requests):
            raise RuntimeError(f"backend answered {len(responses)} of {len(requests)} {kind} requests")
        return responses

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        return self._call("loglikelihood", requests)

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[Any]:
        return self._call("loglikelihood_rolling", requests)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        return self._call("generate", requests)

    def record(self, benchmark: str, case: str, rows: Sequence[Mapping[str, Any]],
               metrics: Mapping[str, tuple[str, str]], protocol: Mapping[str, Any],
               data: Sequence[Mapping[str, Any]] = (), single_case: bool = False) -> dict[str, Metric]:
        """Record ``rows`` scored by ``metrics`` ({name: (aggregation, score key)}) as this case's
        result; the test fails after its body when a gate or the baseline says so (unsharded
        cases; a sharded case is judged at the controller once all its shards are in).

        ``single_case``: the benchmark has only this case, so its overall gates are decided here.
        The work counted since the previous ``record`` (a test may record twice) goes with it.
        """
        if not rows and not self.sharded:  # a shard of a small case may hold no documents
            raise ValueError(f"{benchmark}/{case}: no documents were evaluated")
        counts, self._counts = self._counts, Counts()
        result = CaseResult(
            benchmark=benchmark, case=case, nodeid=self.item.nodeid, rows=tuple(dict(r) for r in rows),
            spec={name: tuple(pair) for name, pair in metrics.items()}, protocol=dict(protocol),
            data=tuple(dict(d) for d in data), model=self.backend.info(),
            counts=counts, single_case=single_case,
            shard=self.shard, expected_cases=tuple(self.expected_cases.get(benchmark, (case,))),
            chance=tuple(m for m in self.chance.get(benchmark, ()) if m in metrics))
        if result.chance and result.rows:  # a row without its option count fails this test, not the controller
            try:
                chance_level(result.rows)
            except ValueError as error:
                raise ValueError(f"{benchmark}/{case}: {error}") from None
        # judged and checked as JSON before it leaves the test, so a bad row fails this test and
        # never reaches the controller (where it would stop the whole session); the payload is the
        # JSON read back, plain values only: xdist's channel refuses a numpy float or a str subclass
        verdict = None if self.sharded else judge(result, self.gates, self.baseline)
        try:
            payload = json.loads(json.dumps(result.to_json()))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{benchmark}/{case}: the rows are not plain JSON values: {error}") from None
        self.item.user_properties.append((PROPERTY, payload))
        if verdict is None:  # a shard: judged at the controller once every shard is in
            return aggregate(result.rows, result.spec) if result.rows else {}
        if verdict.failures:
            self.item.stash.setdefault(GATE_FAILURES_KEY, []).extend(verdict.failures)
        return verdict.metrics
