"""An OpenAI-compatible HTTP server over one engine model (``rwkveval serve``).

- :mod:`.app`        FastAPI routes, authentication, errors, streaming
- :mod:`.schemas`    request bodies and their checks (400 with an OpenAI-style error body)
- :mod:`.scheduler`  the worker thread that batches every concurrent request into the engine
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
