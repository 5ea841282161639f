"""Fixtures: the config, the engine (loaded once per process), the backend and the response cache
in front of it, the gates, the ``--limit`` selection, the shard of a test, and the per-test
:class:`CaseRecorder` a benchmark talks to.

A test (or a conftest, as the plugin's own tests do) can override ``eval_backend`` to run the
benchmarks against any :class:`evals.backend.Backend`; nothing else needs the engine.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from evals.backend import Backend, LocalBackend
from evals.cache import CachedBackend, ReplayBackend, ResponseCache
from evals.plugin.collection import CHANCE_KEY, EXPECTED_KEY, SELECTED_KEY
from evals.plugin.keys import BASELINE_KEY, CONFIG_KEY, GATES_KEY, LOAD_ERROR, MODEL_KEY, RUN_DIR_KEY
from evals.plugin.options import EvalConfig
from evals.plugin.progress import CaseProgress
from evals.plugin.recorder import CaseRecorder
from evals.plugin.rundir import PROGRESS_DIR
from evals.sampling import select
from evals.shard import block, shard_count, worker_device, worker_index
from evals.suite import benchmark_module, item_case
from evals.thresholds import Gate

DOCUMENTS_KEY = pytest.StashKey[dict[tuple[str, str], int]]()  # (benchmark, case) -> documents selected


def _workerinput(config: pytest.Config) -> dict | None:
    # xdist hands each worker its id and the worker count on config.workerinput; environment
    # variables would leak into pytest runs started inside a worker (pytester, subprocesses)
    return getattr(config, "workerinput", None)


def shards_for(config: pytest.Config) -> int:
    workerinput = _workerinput(config)
    return shard_count(config.stash[CONFIG_KEY].shards, int(workerinput["workercount"]) if workerinput else None)


@pytest.fixture(scope="session")
def eval_config(pytestconfig: pytest.Config) -> EvalConfig:
    return pytestconfig.stash[CONFIG_KEY]


def engine_device(device: str, config: pytest.Config) -> str:
    """The device this process loads the engine on (one GPU per xdist worker under ``--device cuda``)."""
    workerinput = _workerinput(config)
    worker = worker_index(workerinput["workerid"]) if workerinput else None
    if worker is None or device != "cuda":
        return device
    import torch

    return worker_device(device, worker, torch.cuda.device_count())


@pytest.fixture(scope="session")
def eval_model(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig):
    """The engine model, loaded once per process and shared by every benchmark module. A checkpoint
    that fails to load stops the whole run with one line (exit 4), not one error per test; in an
    xdist worker the message goes to the controller, which stops the run (:class:`RunCollector`)."""
    import engine

    run_model = pytestconfig.stash[MODEL_KEY]
    try:
        # under xdist with --device cuda each worker takes its own GPU (evals/shard.py)
        return engine.load_model(run_model.resolved.path, device=engine_device(eval_config.device, pytestconfig),
                                 dtype=eval_config.dtype, sha256=run_model.sha256,
                                 adapters=eval_config.adapter_options())
    except (engine.EngineError, OSError) as error:
        message = f"--model {eval_config.model}: {error}"
        if _workerinput(pytestconfig) is not None:
            pytestconfig.workeroutput[LOAD_ERROR] = message  # type: ignore[attr-defined]
            request.session.shouldstop = message  # xdist then stops the run, not a crashed worker
        pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def eval_backend(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig) -> Backend:
    run_model = pytestconfig.stash[MODEL_KEY]
    if run_model.remote is not None:  # --endpoint: the server, no engine loaded
        yield run_model.remote
        run_model.remote.close()
        return
    resolved = run_model.resolved
    yield LocalBackend(request.getfixturevalue("eval_model"), batch_size=eval_config.batch_size,
                       extra_info={"name": resolved.name, "spec": resolved.spec, "source": resolved.source})


@pytest.fixture(scope="session")
def eval_responses(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig):
    """The backend benchmarks talk to: the model behind the response cache, or the cache alone."""
    run_model = pytestconfig.stash[MODEL_KEY]
    if eval_config.rescore:
        model_id, entry = run_model.stored
        return ReplayBackend(ResponseCache.open(eval_config.cache_dir, create=False), model_id, entry.get("info", {}))
    backend = request.getfixturevalue("eval_backend")
    if not eval_config.use_cache:
        return backend
    resolved = run_model.resolved
    naming = {"resolved": {"spec": resolved.spec, "name": resolved.name, "path": str(resolved.path),
                           "source": resolved.source}}
    return CachedBackend(backend, ResponseCache.open(eval_config.cache_dir), naming)


@pytest.fixture(scope="session")
def eval_gates(pytestconfig: pytest.Config) -> list[Gate]:
    """The thresholds file's gates for this model (by name or sha256), overridden by --threshold."""
    return pytestconfig.stash[GATES_KEY]


@pytest.fixture(scope="module")
def eval_shard() -> tuple[int, int]:
    """(index, count) of this test's shard; (0, 1) when the case is not split."""
    return (0, 1)


@pytest.fixture(scope="module")
def eval_select(pytestconfig: pytest.Config, eval_config: EvalConfig, eval_shard: tuple[int, int]
                ) -> Callable[[str, Mapping[str, int]], dict[str, list[int]]]:
    """``eval_select(benchmark, {case: size})`` -> {case: document indices} under ``--limit``,
    drawn over the cases selected in this run (``-k``, node ids); a deselected case gets none. A
    sharded test (``eval_shard``, under xdist) gets its contiguous block of each case."""
    selected = pytestconfig.stash.get(SELECTED_KEY, {})
    documents = pytestconfig.stash.setdefault(DOCUMENTS_KEY, {})

    def choose(benchmark: str, sizes: Mapping[str, int]) -> dict[str, list[int]]:
        wanted = selected.get(benchmark)
        live = {case: size for case, size in sizes.items() if wanted is None or case in wanted}
        chosen = select(live, eval_config.limit, eval_config.limit_seed, benchmark)
        out = {case: block(chosen.get(case, []), *eval_shard) for case in sizes}
        for case, indices in out.items():
            documents[(benchmark, case)] = len(indices)
        return out

    return choose


def _progress(config: pytest.Config, cfg: EvalConfig) -> CaseProgress:
    run_dir = config.stash[RUN_DIR_KEY]
    workerinput = _workerinput(config)
    if workerinput is not None:  # a worker: the log and a status file the controller sums up
        worker = workerinput["workerid"]
        return CaseProgress(run_dir / "progress.log", worker, status=run_dir / PROGRESS_DIR / f"{worker}.json",
                            interval=cfg.progress_interval)
    writer = config.get_terminal_writer()
    capture = config.pluginmanager.getplugin("capturemanager")

    def show(text: str) -> None:
        if capture is not None:
            with capture.global_and_fixture_disabled():
                writer.write(text, flush=True)
        else:
            writer.write(text, flush=True)

    if writer.hasmarkup:  # a real terminal: the live line
        return CaseProgress(run_dir / "progress.log", "main", live=show, interval=cfg.progress_interval)
    return CaseProgress(run_dir / "progress.log", "main", plain=lambda text: show(f"\n{text}"),
                        interval=cfg.progress_interval, plain_interval=cfg.progress_summary_interval)


@pytest.fixture
def evaluation(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig,
               eval_responses: Backend, eval_gates: list[Gate], eval_shard: tuple[int, int]) -> CaseRecorder:
    """The recorder a benchmark test hands its requests and rows to."""
    params = dict(request.node.callspec.params) if hasattr(request.node, "callspec") else {}
    module = benchmark_module(request.node)
    if module is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses the `evaluation` fixture but its function is not "
                                f"in a benchmark module (one with BENCHMARK and declare(), see evals/suite.py)")
    case = item_case(module, params)
    sharded = eval_shard[1] > 1
    return CaseRecorder(
        request.node, eval_responses, eval_config, [] if sharded else eval_gates, _progress(pytestconfig, eval_config),
        case, documents=pytestconfig.stash.get(DOCUMENTS_KEY, {}).get(case, 0), shard=eval_shard,
        baseline=None if sharded else pytestconfig.stash.get(BASELINE_KEY, None),
        expected_cases=pytestconfig.stash.get(EXPECTED_KEY, {}), chance=pytestconfig.stash.get(CHANCE_KEY, {}))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "eval_shard" not in metafunc.fixturenames:
        return
    from evals.shard import shard_id

    count = shards_for(metafunc.config)
    if count > 1:
        metafunc.parametrize("eval_shard", [(i, count) for i in range(count)],
                             ids=[shard_id(i, count) for i in range(count)], scope="module")

