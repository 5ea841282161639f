"""What a benchmark test talks to: the backend (timed, counted, with progress) and the result record.

A benchmark test hands all its requests to :meth:`CaseRecorder.loglikelihood` (or the rolling and
generation twins), scores the responses into rows, then calls :meth:`CaseRecorder.record`. That
aggregates the rows, attaches everything the report needs to ``item.user_properties`` (from where
the controller collects it, also across xdist workers) and asserts the case's threshold gates.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from evals.backend import Backend, FailedRequests
from evals.metrics import Metric, aggregate
from evals.plugin.options import EvalConfig
from evals.plugin.progress import ProgressLog
from evals.remote import RemoteError
from evals.thresholds import OVERALL, Gate, check

PROPERTY = "rwkveval"  # the user_properties key carrying a case's payload


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


@dataclass
class CaseRecorder:
    item: pytest.Item
    backend: Backend
    config: EvalConfig
    gates: Sequence[Gate]
    progress: ProgressLog
    wall_s: float = 0.0
    tokens: int = 0
    requests: int = 0
    label: str = field(default="")

    def _call(self, kind: str, requests: Sequence[Any]) -> list[Any]:
        self.progress.start(self.label or self.item.name, len(requests))
        started = time.perf_counter()
        try:
            responses = getattr(self.backend, kind)(requests, progress=self.progress.advance)
        except (RemoteError, FailedRequests) as error:  # failed, or answers that cannot be right: nothing scored
            pytest.fail(f"{self.label or self.item.name}: {error}", pytrace=False)
        finally:
            self.wall_s += time.perf_counter() - started
            self.progress.finish()
        if len(responses) != len(requests):
            raise RuntimeError(f"backend answered {len(responses)} of {len(requests)} {kind} requests")
        self.requests += len(requests)
        return responses

    def loglikelihood(self, requests: Sequence[Any]) -> list[Any]:
        responses = self._call("loglikelihood", requests)
        self.tokens += sum(r.context_tokens + r.continuation_tokens for r in responses)
        return responses

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> list[Any]:
        responses = self._call("loglikelihood_rolling", requests)
        self.tokens += sum(r.tokens for r in responses)
        return responses

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        responses = self._call("generate", requests)
        self.tokens += sum(r.prompt_tokens + r.generated_tokens for r in responses)
        return responses

    def _rows_for_report(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        keep = self.config.sample_prompts
        out = []
        for index, row in enumerate(rows):
            row = dict(row)
            if "prompt" in row:
                row["prompt_sha256"] = prompt_hash(row["prompt"])
                if keep >= 0 and index >= keep:
                    del row["prompt"]
            out.append(row)
        return out

    def record(self, benchmark: str, case: str, rows: Sequence[Mapping[str, Any]],
               metrics: Mapping[str, tuple[str, str]], protocol: Mapping[str, Any],
               data: Sequence[Mapping[str, Any]] = (), single_case: bool = False) -> dict[str, Metric]:
        """Aggregate ``rows`` by ``metrics`` ({name: (aggregation, score key)}), attach the payload,
        then fail the test with the gate's message if a bound is not met.

        ``single_case``: the benchmark has only this case, so its overall gates are decided here.
        """
        if not rows:
            raise ValueError(f"{benchmark}/{case}: no documents were evaluated")
        values = aggregate(rows, metrics)
        outcomes = check(self.gates, benchmark, case, values)
        if single_case:
            outcomes += check(self.gates, benchmark, OVERALL, values)
        wall = max(self.wall_s, 1e-9)
        payload = {
            "benchmark": benchmark, "case": case, "nodeid": self.item.nodeid, "single_case": single_case,
            "metrics": {name: m.to_dict() for name, m in values.items()},
            "spec": {name: list(pair) for name, pair in metrics.items()},
            "n": len(rows), "requests": self.requests, "tokens": self.tokens, "wall_s": self.wall_s,
            "samples_per_s": len(rows) / wall, "tokens_per_s": self.tokens / wall,
            "protocol": dict(protocol), "data": [dict(d) for d in data],
            "model": self.backend.info(),
            "gates": [o.to_dict() for o in outcomes],
            "overall_gates": [g.__dict__ for g in self.gates if g.benchmark == benchmark and g.case == OVERALL],
            "rows": self._rows_for_report(rows),
        }
        self.item.user_properties.append((PROPERTY, payload))
        failed = [o.message for o in outcomes if not o.passed]
        if failed:
            pytest.fail("threshold gate failed: " + "; ".join(failed), pytrace=False)
        return values
