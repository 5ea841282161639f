"""The rwkveval pytest plugin: options, checks before the work, fixtures, results and reports.

Loaded by ``evals/conftest.py`` (``pytest_plugins``), so ``pytest evals ...`` from the repository
root picks it up while the project's own ``pytest`` run does not; tests load it with
``-p evals.plugin``. The package is split by job:

- :mod:`.options`     every option and the one frozen :class:`EvalConfig`
- :mod:`.model`       which model the run evaluates, checked before anything is loaded
- :mod:`.collection`  the cases ``-k`` selected, gate names and data files checked at collection
- :mod:`.fixtures`    engine, backend and response cache, gates, ``--limit``, shards, the recorder
- :mod:`.recorder`    what a benchmark test calls; builds the case's result
- :mod:`.result`      the typed :class:`CaseResult` and :func:`judge`, the one place gates are decided
- :mod:`.collect`     the controller: results as they arrive -> the run folder; status; terminal table
- :mod:`.report`      results.json content
- :mod:`.rundir`      the run folder, its atomic writes and links
- :mod:`.progress`    progress.log, the live terminal line, totals over xdist workers
- :mod:`.writers`     one atomic writer per format
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from evals.plugin.collect import RunCollector
from evals.plugin.fixtures import (
    eval_backend, eval_config, eval_gates, eval_model, eval_responses, eval_select, eval_shard, evaluation,
    pytest_generate_tests,
)
from evals.plugin.keys import BASELINE_KEY, CONFIG_KEY, GATES_KEY, MODEL_KEY, NO_CHECKPOINT_KEY, RUN_DIR_KEY
from evals.plugin.options import EvalConfig, add_options
from evals.plugin.recorder import pytest_runtest_call

pytest_plugins = ("evals.plugin.collection",)

__all__ = ["eval_backend", "eval_config", "eval_gates", "eval_model", "eval_responses", "eval_select", "eval_shard",
           "evaluation", "pytest_generate_tests", "pytest_runtest_call"]

COLLECTOR = "rwkveval-collector"
MODEL_INPUT = "rwkveval_model"  # workerinput key: the checkpoint as the controller checked it


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _inspect_only(config: pytest.Config) -> bool:
    """Runs that evaluate nothing (help, collection listings) need no model."""
    option = config.option
    return any(getattr(option, name, False) for name in
               ("help", "version", "collectonly", "showfixtures", "show_fixtures_per_test", "markers"))


def _gates(config: pytest.Config, cfg: EvalConfig, run_model) -> list:
    """The thresholds file's gates for this model (by name, or sha256 and its adapters' sha256s),
    each replaced by a --threshold gate on the same benchmark, case and metric."""
    from evals.thresholds import load_file, merge

    file_gates = []
    if cfg.thresholds_file is not None:
        try:
            file_gates = load_file(cfg.thresholds_file, run_model.resolved.name, run_model.sha256,
                                   run_model.adapter_sha256s)
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
    return merge(file_gates, cfg.thresholds)


def _prepare_cache(cfg: EvalConfig) -> None:
    """The response cache checked before any work: opened (made, or its format read). With
    ``--clear-cache`` only its folder is checked here: the file is deleted as the work starts
    (:class:`RunCollector`), so a usage error found at collection deletes nothing."""
    from evals.cache import CacheError, ResponseCache

    if cfg.clear_cache:
        try:
            cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise pytest.UsageError(f"--clear-cache: cannot make the cache folder {cfg.cache_dir}: {error}") from None
        if not os.access(cfg.cache_dir, os.W_OK):
            raise pytest.UsageError(f"--clear-cache: the cache folder {cfg.cache_dir} is not writable; pass "
                                    f"--cache-dir to a writable folder")
        return
    if cfg.use_cache and not cfg.rescore:
        try:
            ResponseCache.open(cfg.cache_dir).close()
        except CacheError as error:
            raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(trylast=True)  # after a conftest's own pytest_configure (evals.fakes sets NO_CHECKPOINT_KEY)
def pytest_configure(config: pytest.Config) -> None:
    cfg = EvalConfig.from_pytest(config)
    config.stash[CONFIG_KEY] = cfg
    if _inspect_only(config):
        return
    from evals.plugin import model

    workerinput = getattr(config, "workerinput", None)
    # an xdist worker takes what the controller found of the checkpoint (its sha256, its shape),
    # instead of reading and hashing it again
    checked = workerinput.get(MODEL_INPUT) if workerinput is not None else None
    run_model = model.find(config, cfg, checkpoint_check=NO_CHECKPOINT_KEY not in config.stash, checked=checked)
    config.stash[MODEL_KEY] = run_model
    config.stash[GATES_KEY] = _gates(config, cfg, run_model)
    if cfg.baseline is not None:
        from evals.baseline import Baseline
        from evals.compare import RunError

        try:
            config.stash[BASELINE_KEY] = Baseline.load(cfg.baseline, cfg.baseline_alpha, cfg.baseline_min_effect)
        except (RunError, OSError, ValueError, KeyError, TypeError) as error:  # load_run names most as RunError
            raise pytest.UsageError(f"--baseline {cfg.baseline}: {error}") from None
    if workerinput is not None:  # an xdist worker: reports go to the controller's run folder
        config.stash[RUN_DIR_KEY] = Path(workerinput["rwkveval_run_dir"])
        return
    _prepare_cache(cfg)  # the controller (or a serial run) makes, checks or clears the cache file
    from evals.plugin.rundir import RunFolder, RunFolderError, make_run_dir

    try:
        run_dir = make_run_dir(cfg.report_dir, run_model.resolved.name)
    except RunFolderError as error:
        raise pytest.UsageError(f"--report-dir {cfg.report_dir}: {error}") from None
    config.stash[RUN_DIR_KEY] = run_dir
    resolved = run_model.resolved
    from evals.plugin.options import redacted_command

    envelope = {"command": redacted_command(config.invocation_params.args, cfg), "options": cfg.to_json(),
                "model": {"spec": resolved.spec, "name": resolved.name, "path": str(resolved.path),
                          "source": resolved.source, "sha256": run_model.sha256, **run_model.info},
                "cache": {"dir": str(cfg.cache_dir), "enabled": cfg.use_cache, "rescore": cfg.rescore}}
    collector = RunCollector(RunFolder(run_dir), envelope, config.stash[GATES_KEY], cfg.sample_prompts,
                             config.stash.get(BASELINE_KEY, None), cfg.progress_summary_interval,
                             clear_cache=cfg.cache_dir if cfg.clear_cache else None)
    config.pluginmanager.register(collector, COLLECTOR)


def pytest_unconfigure(config: pytest.Config) -> None:
    collector = config.pluginmanager.get_plugin(COLLECTOR)
    if collector is not None:
        collector.folder.remove_if_unused()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: tell each worker the controller's run folder (for progress.log) and what it found of
    the checkpoint (so no worker hashes or inspects it again)."""
    run_dir = node.config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None:
        node.workerinput["rwkveval_run_dir"] = str(run_dir)
    run_model = node.config.stash.get(MODEL_KEY, None)
    if run_model is not None and run_model.remote is None and run_model.stored is None:
        node.workerinput[MODEL_INPUT] = {"sha256": run_model.sha256, "info": run_model.info,
                                         "adapter_sha256s": list(run_model.adapter_sha256s)}
