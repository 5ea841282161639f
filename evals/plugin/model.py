"""Which model a run evaluates, found and checked before any work (``pytest_configure``).

Three sources, each checked so that a mistake is one usage error in a second, not one traceback
per test after a long load:

- ``--rescore``: a model stored in the response cache (nothing is loaded);
- ``--endpoint``: the server is asked, within ``--endpoint-wait``, to list its model;
- ``--model``: a checkpoint file (or an official name, downloaded), whose keys and shapes are
  read without its weights and checked as the engine will load them
  (:func:`engine.adapters.prepare_checkpoint`), on a device that exists. Under xdist only the
  controller does this (and hashes the file); its workers get the result (``checked``).

The result, :class:`RunModel`, also carries what gates are matched by (name and sha256).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from benchmarkdata.hub import DownloadError
from evals import models
from evals.cache import CacheError, ResponseCache, choose_model
from evals.models import ResolvedModel
from evals.plugin.options import EvalConfig
from evals.remote import RemoteBackend, RemoteError


@dataclass(frozen=True)
class RunModel:
    resolved: ResolvedModel
    sha256: str | None  # of the checkpoint (for an endpoint: what the server says it serves)
    info: dict[str, Any]  # what is known before loading: the shape, the stored or served description
    remote: RemoteBackend | None = None  # --endpoint: the connected backend
    stored: tuple[str, dict[str, Any]] | None = None  # --rescore: (model id, cache entry)
    adapter_sha256s: tuple[str, ...] = ()  # --adapter files (a fine-tune is another model for gates)


def find(config: pytest.Config, cfg: EvalConfig, checkpoint_check: bool = True,
         checked: Mapping[str, Any] | None = None) -> RunModel:
    """The run's model, or a ``pytest.UsageError`` that says what is wrong and what to do.

    ``checked``: in an xdist worker, what the controller found of the ``--model`` checkpoint
    (``sha256``, ``info``, ``adapter_sha256s``); the files are then neither inspected nor hashed again."""
    if checked is not None:
        adapter_sha256s = tuple(checked["adapter_sha256s"])
    else:
        adapter_sha256s = tuple(models.checkpoint_sha256(Path(p)) for p in cfg.adapters)
    if cfg.rescore:
        return _stored(cfg, adapter_sha256s)
    if cfg.remote is not None:
        return _endpoint(cfg)
    if cfg.model is None:
        raise pytest.UsageError("no model given. " + models.HOW_TO_GET_ONE.format(names=", ".join(sorted(models.OFFICIAL))))
    _check_device(cfg.device, cfg.dtype)
    capture = config.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():  # the download's bar
            resolved = models.resolve(cfg.model, cfg.model_cache, cfg.hub_url, offline=cfg.offline)
    except (models.ModelSpecError, DownloadError) as error:
        raise pytest.UsageError(str(error)) from None
    if cfg.adapters:  # a fine-tune is named base+adapter (reports, thresholds, the cache's naming)
        from engine.adapters import fine_tune_name

        resolved = replace(resolved, name=fine_tune_name(resolved.name, cfg.adapters))
    if checked is not None:
        return RunModel(resolved, checked["sha256"], dict(checked["info"]), adapter_sha256s=adapter_sha256s)
    info: dict[str, Any] = {}
    if checkpoint_check:
        info["config"] = _check_checkpoint(cfg, resolved.path)
    try:
        sha256 = models.checkpoint_sha256(resolved.path)
    except OSError as error:
        raise pytest.UsageError(f"--model {cfg.model}: cannot read {resolved.path}: {error}") from None
    return RunModel(resolved, sha256, info, adapter_sha256s=adapter_sha256s)


def _check_checkpoint(cfg: EvalConfig, path: Path) -> dict[str, int]:
    """Keys and shapes of the checkpoint, and of the adapters against it, from their headers
    (the adapters merged on empty tensors: every key, shape and rank is checked, nothing computed)."""
    from engine.adapters import AdapterError, prepare_checkpoint
    from engine.checkpoint import checkpoint_shapes
    from engine.errors import CheckpointError

    try:
        # as engine.load_model reads it: a merged tuned state (blocks.N.att.time_state) split off
        # first, then every key and shape checked, then the adapters (if any) merged
        config, _ = prepare_checkpoint(checkpoint_shapes(path), cfg.adapter_options(), f"checkpoint {path}")
    except AdapterError as error:
        raise pytest.UsageError(f"{'--adapter' if cfg.adapters else f'--model {cfg.model}'}: {error}") from None
    except CheckpointError as error:
        raise pytest.UsageError(f"--model {cfg.model}: {error}") from None
    return config.to_dict()


def _check_device(device: str, dtype: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise pytest.UsageError(f"--device {device}: torch sees no CUDA GPU on this machine (torch "
                                f"{torch.__version__}, CUDA build {torch.version.cuda}); run with --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise pytest.UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise pytest.UsageError(f"--dtype bfloat16: {torch.cuda.get_device_name(index)} has no bfloat16; "
                                "use --dtype float16")


def _stored(cfg: EvalConfig, adapter_sha256s: tuple[str, ...]) -> RunModel:
    try:
        cache = ResponseCache.open(cfg.cache_dir, create=False)
        try:
            model_id, entry = choose_model(cache.models(), cfg.model, cfg.dtype, cache.path, adapter_sha256s)
        finally:
            cache.close()
    except CacheError as error:
        raise pytest.UsageError(str(error)) from None
    info, named = entry.get("info", {}), entry.get("resolved", {})
    name = named.get("name") or info.get("name") or model_id
    resolved = ResolvedModel(named.get("spec") or name, name, Path(named.get("path") or info.get("path") or name),
                             named.get("source") or info.get("backend") or "cache")
    sha256 = info.get("sha256") or (info.get("server_model") or {}).get("sha256")
    return RunModel(resolved, sha256, info, stored=(model_id, entry), adapter_sha256s=adapter_sha256s)


def _endpoint(cfg: EvalConfig) -> RunModel:
    backend = RemoteBackend(cfg.remote)
    try:
        backend.wait_ready()
    except RemoteError as error:
        backend.close()
        raise pytest.UsageError(f"--endpoint {cfg.remote.url}: {error}") from None
    # the "path" of an endpoint is its URL (reports print it; nothing is loaded from it)
    resolved = ResolvedModel(cfg.remote.url, backend.model or "endpoint", Path(backend.url), "endpoint")
    served = backend.info().get("server_model") or {}
    return RunModel(resolved, served.get("sha256"), backend.info(), remote=backend)
