"""The controller's side: collect case results as tests finish, write them at once, close the run.

Registered only in the controlling process (never in an xdist worker). Case results arrive on
``report.user_properties`` in ``pytest_runtest_logreport`` (xdist forwards workers' reports), in
the pattern of pytest's junitxml. Each is judged (:func:`evals.plugin.result.judge`; the shards of
a split case once all are in), its rows are written to ``samples/`` and ``results.json`` is
rewritten with status ``running``, so the run folder is useful at any moment; a result that
cannot be judged or written fails the session with its reason instead of ending it. The session's
end decides the status (``complete``, ``interrupted`` by Ctrl-C or ``-x``, ``failed`` when a case
produced no result, a result could not be recorded or pytest itself failed), writes the final
files (results.json, the workbook, report.html), moves the links, and prints the results table
(value, 95% interval, n, chance level, gate; :mod:`evals.plugin.display`), titled as partial when
cases are missing. A run that selected no case writes no report and moves no link.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from evals.plugin.progress import WorkerTotals
from evals.plugin.display import aligned, results_rows
from evals.plugin.keys import LOAD_ERROR
from evals.plugin.report import Judged, build, git_info, machine_info, samples_file, versions
from evals.plugin.result import PROPERTY, CaseResult, judge, merge_shards
from evals.plugin.rundir import PROGRESS_DIR, RunFolder
from evals.plugin.writers.html_writer import SHOWN_ROWS
from evals.shard import case_nodeid
from evals.thresholds import Gate


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def trimmed(rows: Sequence[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """Sample rows as written: every row keeps its prompt's sha256, the first ``keep`` (all for
    -1) the prompt itself."""
    out = []
    for index, row in enumerate(rows):
        row = dict(row)
        if "prompt" in row:
            row["prompt_sha256"] = hashlib.sha256(row["prompt"].encode("utf-8")).hexdigest()
            if 0 <= keep <= index:
                del row["prompt"]
        out.append(row)
    return out


@dataclass(eq=False)  # plugins are registered by identity, so keep object hashing
class RunCollector:
    folder: RunFolder
    envelope: dict[str, Any]
    gates: list[Gate]
    sample_prompts: int
    baseline: Any = None
    progress_interval: float = 30.0
    judged: dict[tuple[str, str], Judged] = field(default_factory=dict)
    shards: dict[tuple[str, str], list[CaseResult]] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)  # case tests that skipped (no data file given, say)
    failures: list[str] = field(default_factory=list)  # decided here: merged shards, overall gates
    unrecorded: list[str] = field(default_factory=list)  # results that could not be judged or written
    expected_cases: int | None = None  # distinct case tests selected
    status: str = "running"
    results: dict[str, Any] | None = None
    started: str = field(default_factory=_now)
    totals: WorkerTotals | None = None
    clear_cache: Path | None = None  # --clear-cache: this cache folder is emptied as the work starts
    load_error: str | None = None  # an xdist worker could not load the checkpoint

    # ---------------------------------------------------------------- arrival

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtestloop(self, session: pytest.Session):
        from evals.plugin.collection import CASE_COUNT_KEY, LEFT_OUT_KEY

        self.expected_cases = session.config.stash.get(CASE_COUNT_KEY, self.expected_cases)
        left_out = session.config.stash.get(LEFT_OUT_KEY, {})
        if left_out:  # said on the terminal at collection; kept in the report too
            self.envelope["left_out"] = left_out
        if self.expected_cases == 0:
            yield  # nothing selected: no report, and the run folder is removed (pytest_unconfigure)
            return
        if self.clear_cache is not None:  # only now: every check before the work has passed
            self._clear_cache(self.clear_cache)
        self._write_results()  # status "running" from the first moment
        if session.config.pluginmanager.hasplugin("dsession"):  # xdist: totals over the workers
            tr = session.config.pluginmanager.getplugin("terminalreporter")
            self.totals = WorkerTotals(self.folder.path / PROGRESS_DIR,
                                       lambda line: tr.write_line(f"[progress] {line}") if tr else None,
                                       self.folder.path / "progress.log", self.progress_interval)
            self.totals.start()
        try:
            yield
        finally:
            if self.totals is not None:
                self.totals.stop()

    @staticmethod
    def _clear_cache(cache_dir: Path) -> None:
        from evals.cache import clear

        try:
            clear(cache_dir)
        except OSError as error:
            pytest.exit(f"--clear-cache: {error}", returncode=pytest.ExitCode.USAGE_ERROR)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """xdist: a worker that could not load the checkpoint stopped the run (eval_model)."""
        message = getattr(node, "workeroutput", {}).get(LOAD_ERROR)
        if message and self.load_error is None:
            self.load_error = message

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.expected_cases = len({case_nodeid(i) for i in ids})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.nodeid] = report.outcome
            if report.skipped:
                self.skipped.add(case_nodeid(report.nodeid))
        if report.when != "call":
            return
        for name, value in report.user_properties:
            if name == PROPERTY:
                self.add(CaseResult.from_json(value), report.nodeid)

    def add(self, result: CaseResult, nodeid: str) -> None:
        """Judge ``result`` and write it; one that cannot be (a bug, a value no writer takes) is
        left out with its reason and fails the session, instead of ending it with an internal error."""
        key = (result.benchmark, result.case)
        try:
            self._add(result, nodeid)
        except Exception as error:  # noqa: BLE001 - one case's problem must not lose the others
            message = f"{key[0]}/{key[1]}: its result could not be recorded ({type(error).__name__}: {error})"
            self.unrecorded.append(message)
            self.failures.append(message)
            if self.judged.pop(key, None) is not None:  # written in part: the folder goes back to the others
                try:
                    (self.folder.path / samples_file(*key)).unlink(missing_ok=True)
                    self._write_results()
                except Exception:  # noqa: BLE001 - the session's end writes results.json again
                    pass

    def _add(self, result: CaseResult, nodeid: str) -> None:
        key = (result.benchmark, result.case)
        if result.sharded:
            parts = self.shards.setdefault(key, [])
            parts.append(result)
            if len(parts) < result.shard[1]:
                return
            del self.shards[key]
            result = merge_shards(parts, case_nodeid(nodeid))
            if not result.rows:
                self.failures.append(f"{key[0]}/{key[1]}: no documents were evaluated")
                return
            verdict = judge(result, self.gates, self.baseline)
            passed = all(self.outcomes.get(p.nodeid) == "passed" for p in parts) and not verdict.failures
            self.failures += verdict.failures
            self.outcomes[result.nodeid] = "passed" if passed else "failed"
        else:
            verdict = judge(result, self.gates, self.baseline)
        rows = trimmed(result.rows, self.sample_prompts)
        self.judged[key] = Judged(result, verdict)
        self.folder.samples(samples_file(*key), rows)
        self._write_results()

    def _write_results(self) -> list[str]:
        envelope = {**self.envelope, "datetime": {"start": self.started, "updated": _now()}}
        self.results, overall_failures = build(envelope, self.judged, self.gates, self.status, self.outcomes)
        self.results["progress"] = {"cases_done": self.cases_done(), "cases_skipped": len(self.skipped),
                                    "cases_selected": self.expected_cases}
        self.folder.results(self.results)
        return overall_failures

    # ---------------------------------------------------------------- the end

    def _status(self, session: pytest.Session, exitstatus: int) -> str:
        if self.load_error is not None:
            return "failed"
        if exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop:
            return "interrupted"
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED) \
                or self.unrecorded:
            return "failed"
        if self.shards or (self.expected_cases is not None and self.cases_done() < self.expected_cases):
            return "interrupted" if session.shouldfail else "failed"
        return "complete"

    def cases_done(self) -> int:
        """Case tests finished: with a result, or skipped (a skip says why it did not run)."""
        return len({case_nodeid(j.result.nodeid) for j in self.judged.values()} | self.skipped)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.load_error is not None:  # as a serial run's pytest.exit in eval_model: exit 4
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        if not self.judged and self.results is None:
            return  # nothing ran (a usage error before the first test, no case selected): no report
        self.status = self._status(session, exitstatus)
        self.envelope.update({"commit": git_info(session.config.rootpath), "machine": machine_info(),
                              "versions": versions()})
        overall_failures = self._write_results()
        self.results["datetime"]["end"] = self.results["datetime"]["updated"]
        self.folder.results(self.results)
        if self.shards:
            self.failures += [f"{b}/{c}: shards {sorted({p.shard[0] for p in parts})} of {parts[0].shard[1]} "
                              f"reported; the case is left out" for (b, c), parts in self.shards.items()]
        self.failures += overall_failures
        if self.results["benchmarks"]:
            self.folder.workbook(self.results)
        self.folder.tidy()
        self.folder.link(self.status)
        self.folder.page(self.results, {key: trimmed(j.result.rows[:SHOWN_ROWS], self.sample_prompts)
                                        for key, j in self.judged.items()})
        if self.failures and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.expected_cases == 0 and not self.judged:
            terminalreporter.write_line("rwkveval: no case selected; no report written")
        if not self.results:
            return
        tr = terminalreporter
        title = "rwkveval results"
        if self.status != "complete":
            title += f" (partial: {self.cases_done()} of {self.expected_cases} cases; run {self.status})"
        tr.write_sep("=", title, red=self.status != "complete")
        for line in aligned(results_rows(self.results)) if self.results["benchmarks"] else []:
            tr.write_line(line)
        for message in self.failures:
            tr.write_line(message, red=True, bold=True)
        for note in self._baseline_notes():
            tr.write_line(note)
        cache = self.results["cache"]
        if cache.get("enabled", True) and (cache["reused"] or cache["computed"]):
            tr.write_line(f"response cache: {cache['reused']} responses reused, {cache['computed']} computed "
                          f"({cache.get('dir')})")
        for name, error in self.folder.errors.items():
            tr.write_line(f"could not write {self.folder.path / name}: {error}", red=True, bold=True)
        unwritten = f"; {len(self.folder.errors)} files could not be written" if self.folder.errors else ""
        tr.write_line(f"report: {self.folder.path} (status {self.status}{unwritten})")

    def _baseline_notes(self) -> list[str]:
        notes = []
        for j in self.judged.values():
            verdict = j.verdict.baseline or {}
            notes += [f"baseline: {warning}" for warning in verdict.get("data_warnings", [])]
            for name, entry in verdict.get("not_compared", {}).items():  # once per benchmark, not per case
                where = {"a": "only the baseline reports it", "b": "only this run reports it"}.get(
                    entry.get("only_in"), "the runs score it differently")
                notes.append(f"baseline: {j.result.benchmark}.{name} is not compared ({where})")
            if verdict.get("missing"):
                notes.append(f"baseline: {verdict['missing']}")
            elif verdict.get("only_current") or verdict.get("only_baseline"):
                notes.append(f"baseline: {j.result.benchmark}/{j.result.case}: {len(verdict['only_current'])} "
                             f"documents only in this run, {len(verdict['only_baseline'])} only in the baseline "
                             f"(not compared)")
        return list(dict.fromkeys(notes))  # a data file's warning comes once, not once per case
