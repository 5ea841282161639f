"""Collection-time work: which cases ``-k`` and node ids left selected, and the checks that need
the benchmark modules' declarations (:mod:`evals.suite`), all before any model is loaded.

- ``--limit`` is drawn over the selected cases only (``pytest evals/test_mmlu.py -k
  abstract_algebra --limit 10`` evaluates ten abstract-algebra questions); every xdist worker
  collects and deselects alike, so all agree on the sample.
- Every gate must name a benchmark the collected modules declare, one of its cases (or ``*`` or
  the overall), and a metric it reports under the run's options; a gate from the thresholds file
  on a benchmark this run does not collect is ignored, one given with ``--threshold`` is an error.
- A selected benchmark's own check of the options (``check(config)``, e.g. CharacterEval without
  ``--reward``) and ``--reward`` without a strategy where nothing selected reads it.
- A whole-suite run (every collected benchmark selected, several of them) leaves out, with a note,
  a benchmark that cannot run as the options stand (CharacterEval without ``--reward``, C-Eval whose
  unpinned zip is not here); selected on purpose, the same benchmark stops the run with the reason.
- Every data file a selected benchmark reads must be present with a known sha256, or is fetched
  now, on first use, into the user data cache (``--offline`` turns that into an error).

A problem is one ``pytest.UsageError`` (exit 4) listing everything found. Under xdist the
controller collects once and checks; its workers only select (``-k``, a whole-suite run's leaving
out) and check nothing again.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import ModuleType

import pytest

from evals.suite import Declared, benchmark_module, item_case, known, module_problems
from evals.thresholds import OVERALL, Gate

SELECTED_KEY = pytest.StashKey[dict[str, set[str]]]()  # module benchmark -> selected cases
EXPECTED_KEY = pytest.StashKey[dict[str, tuple[str, ...]]]()  # recorded benchmark -> its selected cases
CASE_COUNT_KEY = pytest.StashKey[int]()  # distinct cases (tests without their shard) selected
LEFT_OUT_KEY = pytest.StashKey[dict[str, list[str]]]()  # a whole-suite run's benchmarks left out, and why
CHANCE_KEY = pytest.StashKey[dict[str, tuple[str, ...]]]()  # recorded benchmark -> metrics with a chance level
_ALL_MODULES_KEY = pytest.StashKey[list[ModuleType]]()


def _modules(items: Iterable[pytest.Item]) -> list[ModuleType]:
    seen: dict[str, ModuleType] = {}
    for item in items:
        module = benchmark_module(item)
        if module is not None:
            seen.setdefault(module.__name__, module)
    return list(seen.values())


def _params(item: pytest.Item) -> dict:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec is not None else {}


def selection(items: Sequence[pytest.Item]) -> dict[str, set[str]]:
    selected: dict[str, set[str]] = {}
    for item in items:
        module = benchmark_module(item)
        if module is not None:
            benchmark, case = item_case(module, _params(item))
            selected.setdefault(benchmark, set()).add(case)
    return selected


def expected_cases(modules: Iterable[ModuleType], selected: dict[str, set[str]], config) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for module in modules:
        chosen = selected.get(module.BENCHMARK, set())
        for declared in module.declare(config):
            cases = tuple(c for c in declared.cases if c in chosen)
            if cases:
                out[declared.benchmark] = cases
    return out


def gate_problems(gates: Sequence[Gate], declared: dict[str, Declared]) -> list[str]:
    problems = []
    for gate in gates:
        entry = declared.get(gate.benchmark)
        if entry is None:
            if gate.source == "cli":
                problems.append(f"--threshold {gate.label(gate.case)}: no collected benchmark is named "
                                f"{gate.benchmark!r}; known: {', '.join(sorted(declared)) or 'none'}")
            continue
        if gate.case not in (OVERALL, "*") and gate.case not in entry.cases:
            problems.append(f"gate {gate.label(gate.case)} ({gate.source}): {gate.benchmark} has no case "
                            f"{gate.case!r}; its cases: {', '.join(entry.cases[:20])}"
                            + (" ..." if len(entry.cases) > 20 else ""))
        if gate.metric not in entry.metrics:
            problems.append(f"gate {gate.label(gate.case)} ({gate.source}): {gate.benchmark} does not report "
                            f"{gate.metric!r} with these options; it reports {', '.join(entry.metrics)}")
    return problems


def option_problems(modules: Sequence[ModuleType], cfg) -> list[str]:
    """The selected benchmarks' own checks of the options, and ``--reward`` without a strategy
    when no selected benchmark scores with a reward model itself."""
    problems = [problem for module in modules for problem in module_problems(module, cfg)]
    ttc = getattr(cfg, "ttc", None)
    if ttc is not None and ttc.reward is not None and not ttc.active and \
            not any(getattr(m, "READS_REWARD", False) for m in modules):
        problems.append("--reward ranks candidates of a strategy; add --strategy sample, best_of_n, beam or mcts "
                        "(with --strategy greedy it would change nothing), or select a benchmark that scores with "
                        "a reward model (charactereval)")
    return problems


def whole_suite(all_modules: Sequence[ModuleType], selected: dict[str, set[str]]) -> bool:
    """True for a run that narrowed nothing: several benchmark modules, each with cases selected."""
    return len(all_modules) > 1 and {m.BENCHMARK for m in all_modules} == set(selected)


def unrunnable(module: ModuleType, cfg) -> list[str]:
    """Why a benchmark cannot run with these options: its own check, and data files the manifest
    pins no sha256 for that are in no data root (fetching them needs --accept-new-revision)."""
    from benchmarkdata.loader import DataError, find, manifest

    reasons = module_problems(module, cfg)
    if cfg.accept_new_revision:
        return reasons
    entries = manifest()
    for name in data_files([module], cfg):
        if name in entries and entries[name].sha256 is None:
            try:
                find(name, cfg.data_dir)
            except DataError:
                reasons.append(f"{name} is not here and the manifest pins no sha256 for it: run `python -m "
                               f"benchmarkdata fetch {name} --accept-new-revision` once")
    return reasons


def leave_out(config: pytest.Config, items: list[pytest.Item], cfg) -> dict[str, list[str]]:
    """In a whole-suite run, deselect the benchmarks that cannot run (see :func:`unrunnable`), with
    a note on the terminal; returns {benchmark: reasons}."""
    all_modules = config.stash.get(_ALL_MODULES_KEY, [])
    if not whole_suite(all_modules, selection(items)):
        return {}
    blocked = {m.BENCHMARK: reasons for m in all_modules if (reasons := unrunnable(m, cfg))}
    if blocked:
        dropped = [item for item in items if getattr(benchmark_module(item), "BENCHMARK", None) in blocked]
        items[:] = [item for item in items if getattr(benchmark_module(item), "BENCHMARK", None) not in blocked]
        config.hook.pytest_deselected(items=dropped)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for benchmark, reasons in blocked.items():
            if reporter is not None:
                reporter.write_line(f"rwkveval: whole-suite run without {benchmark}: {'; '.join(reasons)}")
    return blocked


def data_files(modules: Iterable[ModuleType], config) -> list[str]:
    """The manifest files the selected benchmarks read, in order, once each."""
    return list(dict.fromkeys(name for module in modules for declared in module.declare(config)
                              for name in declared.data))


def fetch_data(names: Sequence[str], cfg, capture=None) -> list[str]:
    """Every file located (its sha256 checked) or fetched on first use into the user data cache,
    with a progress bar on the terminal; the problems, if any (``--offline`` and a missing file,
    a changed upstream file without ``--accept-new-revision``, ...)."""
    import contextlib

    from benchmarkdata.fetch import ensure
    from benchmarkdata.loader import DataError

    visible = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    try:
        with visible:
            ensure(names, cfg.data_dir, offline=cfg.offline, accept_new_revision=cfg.accept_new_revision,
                   endpoint=cfg.hub_url)
    except DataError as error:
        return [str(error)]
    return []


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    """xdist's controller collects nothing itself (its workers do), so the checks below would run
    in every worker, where a usage error cannot stop the run cleanly. The controller collects once
    here for them (the workers still collect to run the tests)."""
    from evals.plugin.keys import GATES_KEY

    config = session.config
    if config.pluginmanager.hasplugin("dsession") and GATES_KEY in config.stash:
        session.perform_collect()
    return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before ``-k``/``-m`` deselect: every collected benchmark module (for the gate names)."""
    config.stash[_ALL_MODULES_KEY] = _modules(items)


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def pytest_collection_modifyitems_selection(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    from evals.plugin.keys import CONFIG_KEY, GATES_KEY
    from evals.shard import case_nodeid

    cfg = config.stash.get(CONFIG_KEY, None)
    if cfg is None:
        return
    if GATES_KEY in config.stash:  # a run that will do work (not --collect-only)
        config.stash[LEFT_OUT_KEY] = leave_out(config, items, cfg)
    selected = selection(items)
    modules = [m for m in config.stash.get(_ALL_MODULES_KEY, []) if m.BENCHMARK in selected]
    config.stash[SELECTED_KEY] = selected
    config.stash[EXPECTED_KEY] = expected_cases(modules, selected, cfg)
    config.stash[CHANCE_KEY] = {d.benchmark: d.chance for m in modules for d in m.declare(cfg)}
    config.stash[CASE_COUNT_KEY] = len({case_nodeid(item.nodeid) for item in items})
    if GATES_KEY not in config.stash:  # --collect-only and friends: nothing will run
        return
    if hasattr(config, "workerinput"):  # an xdist worker: its controller checked all this before starting it
        return
    declared = known(d for m in config.stash.get(_ALL_MODULES_KEY, []) for d in m.declare(cfg))
    # data files also for --rescore: it renders the requests again to find their stored answers
    problems = gate_problems(config.stash[GATES_KEY], declared) + option_problems(modules, cfg)
    if not problems:  # a download is worth starting only for a run that can start
        problems = fetch_data(data_files(modules, cfg), cfg, config.pluginmanager.getplugin("capturemanager"))
    if problems:
        raise pytest.UsageError("this run cannot start:\n  " + "\n  ".join(problems))
