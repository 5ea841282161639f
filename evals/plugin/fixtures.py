"""Session fixtures: the config, the engine (loaded once per process), the backend, the gates, the
``--limit`` selection, and the per-test :class:`CaseRecorder` a benchmark talks to.

A test (or a conftest, as the plugin's own tests do) can override ``eval_backend`` to run the
benchmarks against any :class:`evals.backend.Backend`; nothing else needs the engine.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from evals.backend import Backend, LocalBackend
from evals.plugin.endpoint import remote_backend
from evals.plugin.keys import CONFIG_KEY, MODEL_KEY, RUN_DIR_KEY
from evals.plugin.options import EvalConfig
from evals.plugin.progress import ProgressLog
from evals.plugin.recorder import CaseRecorder
from evals.plugin.runs import engine_device, make_recorder
from evals.shard import block
from evals.sampling import select
from evals.thresholds import Gate, load_file, merge


@pytest.fixture(scope="session")
def eval_config(pytestconfig: pytest.Config) -> EvalConfig:
    return pytestconfig.stash[CONFIG_KEY]


@pytest.fixture(scope="session")
def eval_model(pytestconfig: pytest.Config, eval_config: EvalConfig):
    """The engine model, loaded once per process and shared by every benchmark module."""
    resolved = pytestconfig.stash.get(MODEL_KEY, None)
    if resolved is None:
        raise pytest.UsageError("no model: pass --model PATH (see `pytest evals --help`)")
    import engine

    # under xdist with --device cuda each worker takes its own GPU (evals/shard.py)
    return engine.load_model(resolved.path, device=engine_device(eval_config.device, pytestconfig),
                             dtype=eval_config.dtype, adapters=eval_config.adapter_options())


@pytest.fixture(scope="session")
def eval_backend(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig) -> Backend:
    remote = remote_backend(pytestconfig)  # --endpoint: the server, no engine loaded
    if remote is not None:
        yield remote
        remote.close()
        return
    resolved = pytestconfig.stash[MODEL_KEY]
    eval_model = request.getfixturevalue("eval_model")
    yield LocalBackend(eval_model, batch_size=eval_config.batch_size,
                        extra_info={"name": resolved.name, "spec": resolved.spec, "source": resolved.source})


@pytest.fixture(scope="session")
def eval_gates(eval_config: EvalConfig, eval_responses: Backend) -> list[Gate]:
    """The thresholds file's gates for this model (by name, or sha256 and adapters' sha256s),
    overridden by --threshold."""
    info = eval_responses.info()
    name = info.get("name") or ""
    file_gates = []
    if eval_config.thresholds_file is not None:
        try:
            file_gates = load_file(eval_config.thresholds_file, name, info.get("sha256"),
                                   [a["sha256"] for a in info.get("adapters") or []])
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
    return merge(file_gates, eval_config.thresholds)


@pytest.fixture(scope="module")
def eval_select(eval_config: EvalConfig, eval_shard: tuple[int, int]
                ) -> Callable[[str, Mapping[str, int]], dict[str, list[int]]]:
    """``eval_select(benchmark, {case: size})`` -> {case: document indices} under ``--limit``;
    a sharded test (``eval_shard``, under xdist) gets its contiguous block of each case."""
    def choose(benchmark: str, sizes: Mapping[str, int]) -> dict[str, list[int]]:
        chosen = select(sizes, eval_config.limit, eval_config.limit_seed, benchmark)
        return {case: block(indices, *eval_shard) for case, indices in chosen.items()}

    return choose


@pytest.fixture
def evaluation(request: pytest.FixtureRequest, pytestconfig: pytest.Config, eval_config: EvalConfig,
               eval_responses: Backend, eval_gates: list[Gate], eval_shard: tuple[int, int]) -> CaseRecorder:
    """The recorder a benchmark test hands its requests and rows to."""
    run_dir = pytestconfig.stash[RUN_DIR_KEY]
    run_dir.mkdir(parents=True, exist_ok=True)
    workerinput = getattr(pytestconfig, "workerinput", None)
    terminal = capture = None
    if workerinput is None:
        writer = pytestconfig.get_terminal_writer()
        if writer.hasmarkup:  # a real terminal: show the live line
            terminal, capture = writer, pytestconfig.pluginmanager.getplugin("capturemanager")
    progress = ProgressLog(run_dir / "progress.log", workerinput["workerid"] if workerinput else "main",
                           terminal, capture)
    return make_recorder(request, eval_responses, eval_config, eval_gates, progress, eval_shard)
