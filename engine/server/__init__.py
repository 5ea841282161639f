"""An OpenAI-compatible HTTP server over one engine model (``rwkveval serve``).

- :mod:`.app`        the FastAPI app: thin routes, error handlers, middleware
- :mod:`.serving_completion`, :mod:`.serving_chat`, :mod:`.serving_models`, :mod:`.serving_tokenization`
                     one module per endpoint group (as vLLM splits its OpenAI server)
- :mod:`.server`     the state behind the routes and the shared request plumbing (auth, JSON, jobs)
- :mod:`.streaming`  server-sent events
- :mod:`.schemas`    request bodies and their checks (400 with an OpenAI-style error body)
- :mod:`.scheduler`  the worker thread that batches every concurrent request into the engine
                     (on the shared decoding core, :mod:`engine.decoding`)
- :mod:`.tokens`     token strings for ``logprobs`` (byte-level tokens included)
- :mod:`.chat`       the RWKV chat format
- :mod:`.config`     limits and settings
- :mod:`.peers`      slow, vanishing and flooding clients, the key, the uvicorn setup
- :mod:`.background` run an app on a loopback port in a thread (tests, benchmarks, notebooks)
- :mod:`.command`    the ``serve`` subcommand

README.md ("The OpenAI-compatible server") documents the endpoints, the limits and the lm-evaluation-harness recipe.
"""
from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(model, config: ServerConfig | None = None):
    """The FastAPI app serving ``model`` (imported lazily: the engine does not need FastAPI)."""
    from .app import create_app as _create_app

    return _create_app(model, config)
