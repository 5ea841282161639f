"""Resume, rescore, baseline gates and sharding: the plugin's part for long runs and many GPUs.

Options (group ``rwkveval``): ``--cache-dir``, ``--no-cache``, ``--clear-cache``, ``--rescore``,
``--baseline``, ``--baseline-alpha``, ``--baseline-min-effect``, ``--shards``; read once into the
frozen :class:`RunOptions`. Fixtures:

- ``eval_responses``: what benchmarks talk to: ``eval_backend`` behind the response cache
  (:class:`evals.cache.CachedBackend`), or with ``--rescore`` the cache alone
  (:class:`evals.cache.ReplayBackend`, so ``eval_backend`` and the model are never loaded);
- ``eval_shard``: ``(index, count)`` of the test's shard; under xdist ``pytest_generate_tests``
  parametrizes every benchmark test over it (``[shard0of8]``...), ``eval_select`` hands each shard
  its block of documents and the controller merges them (:mod:`evals.shard`);
- ``eval_baseline``: the loaded ``--baseline`` run.

:class:`RunRecorder` is the :class:`CaseRecorder` the ``evaluation`` fixture hands out: it counts
reused and computed requests, judges the baseline on an unsharded case (failing the test), and
marks a shard's payload for the merge.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from evals.cache import CacheError, CachedBackend, ReplayBackend, ResponseCache, choose_model, clear
from evals.models import ResolvedModel
from evals.plugin.recorder import PROPERTY, CaseRecorder
from evals.shard import shard_count, shard_id, worker_device, worker_index
from evals.thresholds import OVERALL
from engine.argtypes import non_negative_float, positive_int, probability
from engine.checkpoint import file_sha256

RUN_OPTIONS_KEY = pytest.StashKey["RunOptions"]()
RESCORE_KEY = pytest.StashKey[tuple]()
BASELINE_KEY = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add = parser.getgroup("rwkveval", "rwkveval evaluation suite").addoption
    add("--cache-dir", type=Path, default=None, metavar="DIR",
        help="response cache folder (one SQLite file; reruns reuse stored responses) "
             "(default: <report-dir>/cache)")
    add("--no-cache", action="store_true", default=False,
        help="neither read nor store model responses (default: the cache is on)")
    add("--clear-cache", action="store_true", default=False,
        help="delete the response cache before running (default: keep it)")
    add("--rescore", action="store_true", default=False,
        help="recompute metrics and reports from stored responses only, without loading the model; "
             "--model picks the stored model when the cache holds several (default: off)")
    add("--baseline", type=Path, default=None, metavar="RUN_DIR",
        help="fail a case significantly worse than this report folder on the shared documents (default: none)")
    add("--baseline-alpha", type=probability, default=0.05,
        help="level of the one-sided paired test of --baseline (default: %(default)s)")
    add("--baseline-min-effect", type=non_negative_float, default=0.0,
        help="a case fails only when it drops by more than this, in score units (default: %(default)s)")
    add("--shards", type=positive_int, default=None, metavar="K",
        help="split every case into K shards spread over xdist workers (default: the number of workers; "
             "1 outside xdist)")


@dataclass(frozen=True)
class RunOptions:
    cache_dir: Path
    use_cache: bool
    clear_cache: bool
    rescore: bool
    baseline: Path | None
    baseline_alpha: float
    baseline_min_effect: float
    shards: int | None

    @classmethod
    def from_pytest(cls, config: pytest.Config) -> RunOptions:
        get = config.getoption
        cache_dir = get("cache_dir")
        if cache_dir is None:
            report_dir = get("report_dir")
            cache_dir = (report_dir if report_dir.is_absolute() else config.rootpath / report_dir) / "cache"
        elif not cache_dir.is_absolute():
            cache_dir = config.rootpath / cache_dir
        if get("rescore") and get("no_cache"):
            raise pytest.UsageError("--rescore reads the response cache; it cannot be combined with --no-cache")
        if get("rescore") and get("clear_cache"):
            raise pytest.UsageError("--rescore reads the response cache; --clear-cache would delete it first")
        baseline = get("baseline")
        if baseline is not None and not (baseline / "results.json").is_file():
            raise pytest.UsageError(f"--baseline {baseline}: no results.json there (expected a report folder)")
        return cls(cache_dir, not get("no_cache"), get("clear_cache"), get("rescore"), baseline,
                   get("baseline_alpha"), get("baseline_min_effect"), get("shards"))

    def to_json(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir), "cache": self.use_cache, "rescore": self.rescore,
                "baseline": str(self.baseline) if self.baseline else None, "baseline_alpha": self.baseline_alpha,
                "baseline_min_effect": self.baseline_min_effect, "shards": self.shards}


def run_options(config: pytest.Config) -> RunOptions:
    if RUN_OPTIONS_KEY not in config.stash:
        config.stash[RUN_OPTIONS_KEY] = RunOptions.from_pytest(config)
    return config.stash[RUN_OPTIONS_KEY]


def rescore_model(config: pytest.Config, spec: str | None, dtype: str,
                  adapters: tuple[Path, ...] = ()) -> ResolvedModel | None:
    """With ``--rescore``: the stored model to replay (nothing is loaded or downloaded), the one
    with exactly ``adapters`` (by the files' sha256); else None."""
    options = run_options(config)
    if not options.rescore:
        return None
    try:
        cache = ResponseCache.open(options.cache_dir, create=False)
        try:
            model_id, entry = choose_model(cache.models(), spec, dtype, cache.path,
                                           [file_sha256(p) for p in adapters])
        finally:
            cache.close()
    except CacheError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[RESCORE_KEY] = (model_id, entry)
    info, named = entry.get("info", {}), entry.get("resolved", {})
    name = named.get("name") or info.get("name") or model_id
    return ResolvedModel(named.get("spec") or name, name, Path(named.get("path") or info.get("path") or name),
                         named.get("source") or info.get("backend") or "cache")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.help or getattr(config.option, "collectonly", False):
        return
    options = run_options(config)
    if getattr(config, "workerinput", None) is None:  # the controller (or a serial run) prepares the cache
        if options.clear_cache:
            clear(options.cache_dir)
        if options.use_cache and not options.rescore:
            try:
                ResponseCache.open(options.cache_dir).close()
            except CacheError as error:
                raise pytest.UsageError(str(error)) from None
    if options.baseline is not None:
        from evals.baseline import Baseline
        from evals.compare import RunError

        try:
            config.stash[BASELINE_KEY] = Baseline.load(options.baseline, options.baseline_alpha,
                                                       options.baseline_min_effect)
        except (RunError, KeyError) as error:
            raise pytest.UsageError(f"--baseline {options.baseline}: {error}") from None


def _workerinput(config: pytest.Config) -> dict | None:
    # xdist hands each worker its id and the worker count on config.workerinput; environment
    # variables would leak into pytest runs started inside a worker (pytester, subprocesses)
    return getattr(config, "workerinput", None)


def shards_for(config: pytest.Config) -> int:
    workerinput = _workerinput(config)
    return shard_count(run_options(config).shards, int(workerinput["workercount"]) if workerinput else None)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "eval_shard" not in metafunc.fixturenames:
        return
    count = shards_for(metafunc.config)
    if count > 1:
        metafunc.parametrize("eval_shard", [(i, count) for i in range(count)],
                             ids=[shard_id(i, count) for i in range(count)], scope="module")


@pytest.fixture(scope="module")
def eval_shard() -> tuple[int, int]:
    """(index, count) of this test's shard; (0, 1) when the case is not split."""
    return (0, 1)


def engine_device(device: str, config: pytest.Config) -> str:
    """The device this process loads the engine on (one GPU per xdist worker under ``--device cuda``)."""
    workerinput = _workerinput(config)
    worker = worker_index(workerinput["workerid"]) if workerinput else None
    if worker is None or device != "cuda":
        return device
    import torch

    return worker_device(device, worker, torch.cuda.device_count())


@pytest.fixture(scope="session")
def eval_responses(request: pytest.FixtureRequest, pytestconfig: pytest.Config):
    """The backend benchmarks talk to: the model behind the response cache, or the cache alone."""
    from evals.plugin.keys import MODEL_KEY

    options = run_options(pytestconfig)
    if options.rescore:
        model_id, entry = pytestconfig.stash[RESCORE_KEY]
        return ReplayBackend(ResponseCache.open(options.cache_dir, create=False), model_id, entry.get("info", {}))
    backend = request.getfixturevalue("eval_backend")
    if not options.use_cache:
        return backend
    resolved = pytestconfig.stash.get(MODEL_KEY, None)
    naming = {"resolved": {"spec": resolved.spec, "name": resolved.name, "path": str(resolved.path),
                           "source": resolved.source}} if resolved else {}
    return CachedBackend(backend, ResponseCache.open(options.cache_dir), naming)


class RunRecorder(CaseRecorder):
    """A :class:`CaseRecorder` that also counts cache reuse, judges ``--baseline`` and marks shards."""

    def __init__(self, *args: Any, shard: tuple[int, int] = (0, 1), baseline: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.shard, self.baseline = shard, baseline
        self.cache_counts = {"reused": 0, "computed": 0}
        if self.sharded:
            self._all_gates, self.gates = list(self.gates), []  # decided on the merged case

    @property
    def sharded(self) -> bool:
        return self.shard[1] > 1

    def _call(self, kind: str, requests: Any) -> list[Any]:
        stats = getattr(self.backend, "stats", None)
        before = stats.to_dict() if stats else None
        try:
            return super()._call(kind, requests)
        finally:
            if stats is not None:
                for key, value in stats.to_dict().items():
                    self.cache_counts[key] += value - before[key]

    def _rows_for_report(self, rows):
        if not self.sharded:
            return super()._rows_for_report(rows)
        # every prompt travels; the controller keeps --sample-prompts of them after the merge
        return [{**row, "prompt_sha256": _sha(row["prompt"])} if "prompt" in row else dict(row) for row in rows]

    def record(self, benchmark: str, case: str, rows, metrics, protocol, data=(), single_case: bool = False):
        if self.sharded:
            return self._record_shard(benchmark, case, rows, metrics, protocol, data, single_case)
        verdict = self.baseline.judge(benchmark, case, rows, metrics) if self.baseline else None
        try:
            return super().record(benchmark, case, rows, metrics, protocol, data, single_case)
        finally:
            payload = self._payload()
            if payload is not None:
                payload["cache"] = self._take_counts()
                if verdict is not None:
                    payload["baseline"] = verdict
            if verdict and verdict["failures"]:
                pytest.fail("baseline: " + "; ".join(verdict["failures"]), pytrace=False)

    def _take_counts(self) -> dict[str, int]:
        """The requests reused and computed since the last record (a test may record twice)."""
        counts, self.cache_counts = self.cache_counts, {"reused": 0, "computed": 0}
        return counts

    def _payload(self) -> dict[str, Any] | None:
        for name, value in reversed(self.item.user_properties):
            if name == PROPERTY:
                return value
        return None

    def _record_shard(self, benchmark, case, rows, metrics, protocol, data, single_case):
        gate_defs = [g.__dict__ for g in self._all_gates if g.benchmark == benchmark]
        if rows:
            values = super().record(benchmark, case, rows, metrics, protocol, data, single_case)
            payload = self._payload()
        else:  # an empty block of a small case: nothing to aggregate, only the marker for the merge
            values, payload = {}, {"benchmark": benchmark, "case": case, "nodeid": self.item.nodeid, "rows": [],
                                   "single_case": single_case}
            self.item.user_properties.append((PROPERTY, payload))
        payload.update({"shard": list(self.shard), "gate_defs": gate_defs, "cache": self._take_counts(),
                        "overall_gates": [g for g in gate_defs if g["case"] == OVERALL]})
        return values


def _sha(text: str) -> str:
    from evals.plugin.recorder import prompt_hash

    return prompt_hash(text)


def make_recorder(request: pytest.FixtureRequest, backend: Any, config: Any, gates: Any, progress: Any,
                  shard: tuple[int, int]) -> RunRecorder:
    return RunRecorder(request.node, backend, config, gates, progress, label=request.node.name, shard=shard,
                       baseline=request.config.stash.get(BASELINE_KEY, None))


def merge_and_summarise(config: pytest.Config, payloads: list, outcomes: dict) -> tuple[list, dict, list, list, dict]:
    """The controller's step before the report is built: shards merged (see :func:`evals.shard.merge`),
    messages of failures decided there and notes (documents in only one of run and baseline), and
    the run's cache summary for results.json."""
    from evals.plugin.keys import CONFIG_KEY
    from evals.shard import merge

    options = run_options(config)
    merged, merged_outcomes, failures = merge(payloads, outcomes, config.stash[CONFIG_KEY].sample_prompts,
                                              config.stash.get(BASELINE_KEY, None))
    notes = []
    for p in merged:
        verdict = p.get("baseline") or {}
        if verdict.get("missing"):
            notes.append(f"baseline: {verdict['missing']}")
        elif verdict.get("only_current") or verdict.get("only_baseline"):
            notes.append(f"baseline: {p['benchmark']}/{p['case']}: {len(verdict['only_current'])} documents only in "
                         f"this run, {len(verdict['only_baseline'])} only in the baseline (not compared)")
    summary = {"dir": str(options.cache_dir), "enabled": options.use_cache, "rescore": options.rescore,
               "reused": sum(p.get("cache", {}).get("reused", 0) for p in merged),
               "computed": sum(p.get("cache", {}).get("computed", 0) for p in merged)}
    return merged, merged_outcomes, failures, notes, summary
