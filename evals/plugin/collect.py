"""The controller's side: collect case payloads from test reports, write the run once at the end.

Registered only in the controlling process (never in an xdist worker), following pytest's
junitxml: payloads arrive on ``report.user_properties`` in ``pytest_runtest_logreport`` (xdist
forwards workers' reports to the controller), and the report is written once in
``pytest_sessionfinish``. Overall gates (pooled over a benchmark's cases) are decided here and
fail the session with their message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from evals.plugin.recorder import PROPERTY
from evals.plugin.runs import merge_and_summarise
from evals.plugin.report import build, git_info, machine_info, metric_line, versions, write_run


@dataclass(eq=False)  # plugins are registered by identity, so keep object hashing
class RunCollector:
    run_dir: Path
    envelope: dict[str, Any]
    payloads: list[dict[str, Any]] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] | None = None
    failed_overall: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.nodeid] = report.outcome
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.payloads.append(value)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.payloads:
            return  # nothing was evaluated (collect-only, all deselected or skipped): no report
        envelope = {**self.envelope, "datetime": {
            "start": self.started, "end": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            "commit": git_info(session.config.rootpath), "machine": machine_info(), "versions": versions()}
        # shards merged into their cases, case gates and --baseline of sharded cases decided there
        payloads, outcomes, decided, self.notes, cache = merge_and_summarise(session.config, self.payloads,
                                                                             self.outcomes)
        self.results, samples = build(payloads, outcomes, {**envelope, "cache": cache})
        write_run(self.run_dir, self.results, samples)
        # Gates on a single-case benchmark were decided (and failed) in its test already.
        self.failed_overall = [f"threshold gate failed: {g['message']}" for b in self.results["benchmarks"].values()
                               if b["overall"] and not b["overall"]["decided_in_test"]
                               for g in b["overall"]["gates"] if not g["passed"]] + decided
        if self.failed_overall and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.results:
            return
        tr = terminalreporter
        tr.write_sep("=", "rwkveval results")
        rows = [("benchmark", "case", "metric", "value ± stderr", "n", "gate")]
        for bench, data in self.results["benchmarks"].items():
            sections = list(data["cases"].items())
            if data["overall"] and len(data["cases"]) > 1:
                sections.append(("all", data["overall"]))
            for case, entry in sections:
                listed = entry["gates"] + (data["overall"]["gates"] if data["overall"] and len(sections) == 1 else [])
                gates = {g["metric"]: g for g in listed}
                for metric, m in entry["metrics"].items():
                    gate = gates.get(metric)
                    status = "ungated" if gate is None else ("pass" if gate["passed"] else "FAIL")
                    if gate is not None:
                        status += f" ({gate['op']} {gate['bound']:g})"
                    rows.append((bench, case, metric, metric_line(m), str(m["n"]), status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            tr.write_line("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for message in self.failed_overall:
            tr.write_line(message, red=True, bold=True)
        for note in self.notes:
            tr.write_line(note)
        tr.write_line(f"report: {self.run_dir}")
