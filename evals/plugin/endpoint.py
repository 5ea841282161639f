"""``--endpoint``: run the benchmarks against an OpenAI-compatible server instead of the local engine.

Options (group ``rwkveval``): ``--endpoint``, ``--endpoint-model``, ``--api-key``, ``--api-key-file``,
``--api-mode``, ``--chat-template``, ``--concurrency``, ``--max-retries``, ``--timeout`` (also
``--endpoint-timeout``, the only name where pytest-timeout owns ``--timeout``), ``--endpoint-wait``;
read once into :class:`evals.remote.RemoteOptions` (the API key is never written to a report).
With ``--endpoint``, ``pytest_configure`` waits (bounded by ``--endpoint-wait``) until the server
answers and lists the model, and the ``eval_backend`` fixture hands out
:class:`evals.remote.RemoteBackend` instead of loading the engine.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from evals.models import ResolvedModel
from evals.plugin.options import MODEL_ENV
from evals.remote import API_MODES, CHAT_TEMPLATES, RemoteBackend, RemoteError, RemoteOptions
from engine.argtypes import positive_seconds

OPTIONS_KEY = pytest.StashKey["RemoteOptions | None"]()
BACKEND_KEY = pytest.StashKey[RemoteBackend]()


def _count(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {value}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    add = parser.getgroup("rwkveval", "rwkveval evaluation suite").addoption
    add("--endpoint", default=None, metavar="URL",
        help="evaluate an OpenAI-compatible server (http://host:port, with or without /v1) instead of "
             "--model (default: the local engine)")
    add("--endpoint-model", default=None, metavar="ID",
        help="the model id to use when the server lists several (default: the only one listed)")
    add("--api-key", default=None, metavar="KEY",
        help="sent as 'Authorization: Bearer KEY' (default: none; prefer --api-key-file)")
    add("--api-key-file", type=Path, default=None, metavar="FILE", help="read the API key from FILE (default: none)")
    add("--api-mode", choices=API_MODES, default="completion",
        help="completion: /v1/completions for everything; chat: generation through /v1/chat/completions, "
             "log-likelihood benchmarks unavailable (default: %(default)s)")
    add("--chat-template", choices=sorted(CHAT_TEMPLATES), default=None,
        help="completion mode: wrap each generation context as one user turn of this chat format "
             "(default: none, the context as is)")
    add("--concurrency", type=lambda t: _count(t, 1), default=8,
        help="HTTP requests in flight (default: %(default)s)")
    add("--max-retries", type=lambda t: _count(t, 0), default=5,
        help="retries per request on connection errors, 429 and 5xx, with exponential backoff and jitter "
             "(default: %(default)s)")
    timeout = dict(type=positive_seconds, default=300.0, metavar="SECONDS", dest="endpoint_timeout",
                   help="seconds per HTTP request to the endpoint (default: %(default)s)")
    try:
        add("--timeout", "--endpoint-timeout", **timeout)
    except ValueError:  # pytest-timeout owns --timeout (a test's time limit): keep only the long name
        add("--endpoint-timeout", **timeout)
    add("--endpoint-wait", type=positive_seconds, default=60.0, metavar="SECONDS",
        help="how long to wait for the server to answer and list the model (default: %(default)s)")


def endpoint_options(config: pytest.Config) -> RemoteOptions | None:
    """The ``--endpoint`` options, checked once (None without ``--endpoint``)."""
    if OPTIONS_KEY in config.stash:
        return config.stash[OPTIONS_KEY]
    get = config.getoption
    url = get("endpoint")
    remote_only = {"--endpoint-model": get("endpoint_model"), "--api-key": get("api_key"),
                   "--api-key-file": get("api_key_file"), "--chat-template": get("chat_template")}
    options = None
    if url is None:
        given = [name for name, value in remote_only.items() if value is not None]
        if given or get("api_mode") != "completion":
            raise pytest.UsageError(f"{', '.join(given) or '--api-mode'} only applies with --endpoint URL")
    else:
        if _model_given(config):
            raise pytest.UsageError("--endpoint and --model name two models: pass one of them")
        if get("api_key") is not None and get("api_key_file") is not None:
            raise pytest.UsageError("pass --api-key or --api-key-file, not both")
        api_key = get("api_key")
        if get("api_key_file") is not None:
            try:
                api_key = get("api_key_file").read_text().strip()
            except OSError as error:
                raise pytest.UsageError(f"--api-key-file {get('api_key_file')}: {error}") from None
            if not api_key:
                raise pytest.UsageError(f"--api-key-file {get('api_key_file')}: the file is empty")
        if get("chat_template") is not None and getattr(config.option, "template", "completion") != "completion":
            raise pytest.UsageError("--chat-template wraps contexts for the server and --template rwkv renders "
                                    "them as chat turns already: pass one of them")
        try:
            options = RemoteOptions(url, api_key=api_key, api_mode=get("api_mode"), model=get("endpoint_model"),
                                    chat_template=get("chat_template"), concurrency=get("concurrency"),
                                    max_retries=get("max_retries"), timeout=get("endpoint_timeout"),
                                    wait=get("endpoint_wait"))
        except ValueError as error:
            raise pytest.UsageError(f"--endpoint: {error}") from None
    config.stash[OPTIONS_KEY] = options
    return options


def _model_given(config: pytest.Config) -> bool:
    """--model on the command line (a model from $RWKV_MODEL alone does not conflict)."""
    model = config.getoption("model")
    return bool(model) and model != os.environ.get(MODEL_ENV)


def connect(config: pytest.Config, options: RemoteOptions) -> ResolvedModel:
    """Wait for the server and list its model; the backend is kept for ``eval_backend``."""
    backend = RemoteBackend(options)
    try:
        backend.wait_ready()
    except RemoteError as error:
        raise pytest.UsageError(f"--endpoint {options.url}: {error}") from None
    config.stash[BACKEND_KEY] = backend
    # the "path" of an endpoint is its URL (reports print it; nothing is loaded from it)
    return ResolvedModel(options.url, backend.model or "endpoint", backend.url, "endpoint")  # type: ignore[arg-type]


def remote_backend(config: pytest.Config) -> RemoteBackend | None:
    return config.stash.get(BACKEND_KEY, None)


def to_json(options: RemoteOptions | None) -> dict[str, Any]:
    """The options for results.json: everything but the key itself."""
    if options is None:
        return {"endpoint": None}
    return {"endpoint": options.url, "endpoint_model": options.model, "api_key": bool(options.api_key),
            "api_mode": options.api_mode, "chat_template": options.chat_template,
            "concurrency": options.concurrency, "max_retries": options.max_retries, "timeout": options.timeout,
            "endpoint_wait": options.wait}
