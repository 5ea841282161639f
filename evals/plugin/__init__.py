"""The rwkveval pytest plugin: options, session fixtures, result collection and reports.

Loaded by ``evals/conftest.py`` (``pytest_plugins``), so ``pytest evals ...`` from the repository
root picks it up while the project's own ``pytest`` run does not; tests load it with
``-p evals.plugin``. The package is split by job:

- :mod:`.options`   the option group and the frozen :class:`EvalConfig`
- :mod:`.fixtures`  engine, backend, gates, ``--limit`` selection, the per-test recorder
- :mod:`.recorder`  what a benchmark test calls; results travel on ``item.user_properties``
- :mod:`.collect`   the controller's collector: ``pytest_runtest_logreport`` -> ``pytest_sessionfinish``
- :mod:`.report`    results.json / samples / summary.xlsx content and the run folder
- :mod:`.writers`   one atomic writer per format
- :mod:`.progress`  progress.log and the live terminal line
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from benchmarkdata.hub import DownloadError
from evals import models
from evals.plugin.collect import RunCollector
from evals.plugin.fixtures import eval_backend, eval_config, eval_gates, eval_model, eval_select, evaluation
from evals.plugin.keys import CONFIG_KEY, MODEL_KEY, RUN_DIR_KEY
from evals.plugin.options import EvalConfig, add_options
from evals.plugin.report import new_run_dir_name
from evals.plugin.endpoint import connect, endpoint_options
from evals.plugin.endpoint import to_json as endpoint_json
from evals.plugin.runs import rescore_model, run_options
from engine.adapters import fine_tune_name

# resume and rescore (response cache), --baseline gates, shards over xdist workers: evals/plugin/runs.py;
# --endpoint and its options (a remote OpenAI-compatible server as the backend): evals/plugin/endpoint.py
pytest_plugins = ("evals.plugin.runs", "evals.plugin.endpoint")

__all__ = ["eval_backend", "eval_config", "eval_gates", "eval_model", "eval_select", "evaluation"]

COLLECTOR = "rwkveval-collector"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _inspect_only(config: pytest.Config) -> bool:
    """Runs that evaluate nothing (help, collection listings) need no model."""
    option = config.option
    return any(getattr(option, name, False) for name in
               ("help", "version", "collectonly", "showfixtures", "show_fixtures_per_test", "markers"))


def pytest_configure(config: pytest.Config) -> None:
    cfg = EvalConfig.from_pytest(config)
    config.stash[CONFIG_KEY] = cfg
    if _inspect_only(config):
        return
    # --rescore: the cached model (with these adapters), nothing loaded
    resolved = rescore_model(config, cfg.model, cfg.dtype, cfg.adapters)
    remote = endpoint_options(config)
    if resolved is None and remote is not None:  # --endpoint: wait for the server, name its model
        resolved = connect(config, remote)
    if resolved is None and cfg.model is None:
        raise pytest.UsageError("no model given. " + models.HOW_TO_GET_ONE.format(names=", ".join(sorted(models.OFFICIAL))))
    try:
        if resolved is None:
            resolved = models.resolve(cfg.model, cfg.model_cache, cfg.hub_url)
            if cfg.adapters:  # a fine-tune is named base+adapter (reports, thresholds, the cache's naming)
                resolved = dataclasses.replace(resolved, name=fine_tune_name(resolved.name, cfg.adapters))
    except (models.ModelSpecError, DownloadError) as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[MODEL_KEY] = resolved
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # an xdist worker: reports go to the controller's run folder
        config.stash[RUN_DIR_KEY] = Path(workerinput["rwkveval_run_dir"])
        return
    run_dir = cfg.report_dir / new_run_dir_name(cfg.report_dir, resolved.name)
    config.stash[RUN_DIR_KEY] = run_dir
    options = {**cfg.to_json(), **run_options(config).to_json(), **endpoint_json(remote)}
    envelope = {"command": list(config.invocation_params.args), "options": options,
                "model": {"spec": resolved.spec, "name": resolved.name, "path": str(resolved.path),
                          "source": resolved.source}}
    config.pluginmanager.register(RunCollector(run_dir, envelope), COLLECTOR)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist: tell each worker the controller's run folder (for progress.log)."""
    run_dir = node.config.stash.get(RUN_DIR_KEY, None)
    if run_dir is not None:
        node.workerinput["rwkveval_run_dir"] = str(run_dir)
