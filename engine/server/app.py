"""The OpenAI-compatible HTTP API over one model: the app, its routes, errors and middleware.

Endpoints (README.md, "The OpenAI-compatible server", has the full contract), each a thin route
over a function of :class:`~engine.server.server.Server` and the request, split by endpoint the
way vLLM splits its OpenAI server:

- ``POST /v1/completions``        :mod:`.serving_completion` (text or token-id prompts; ``echo`` +
  ``logprobs`` for scoring)
- ``POST /v1/chat/completions``   :mod:`.serving_chat` (the RWKV chat format, SSE streaming)
- ``GET /v1/models``, ``GET /health``, ``GET /stats``   :mod:`.serving_models`
- ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``   :mod:`.serving_tokenization`
  (lm-evaluation-harness's remote tokenizer)

Request bodies and their checks are :mod:`.schemas` (vLLM's ``protocol``); the shared plumbing
(reading JSON, queueing a job, response pieces) is :mod:`.server`. Bodies are
read and parsed there, not by FastAPI, so that every malformed body (bad JSON, deep nesting, wrong
types, oversized) becomes a 400 or 413 with an OpenAI-style error body; a 500 can only come from a
bug. The request schemas still appear in ``/openapi.json``. The key, slow and vanishing clients
and the connection cap are handled below the routes (:mod:`engine.server.peers`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import serving_chat, serving_completion, serving_models, serving_tokenization
from .config import ServerConfig
from .peers import RequireKey, client_gone
from .schemas import ApiError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .server import Server, error_response

log = logging.getLogger("rwkveval.server")


def _body_schema(model) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (the app parses it itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


def create_app(model, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (an engine model); its scheduler starts with the app."""
    config = config or ServerConfig()
    server = Server(model, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.stop()

    app = FastAPI(title="rwkveval OpenAI-compatible server", version="1", lifespan=lifespan)
    app.state.server = server
    app.add_middleware(RequireKey, key=config.api_key)  # inside the counter, so 401s are counted
    app.add_middleware(_CountStatus, counts=server.status_counts)
    app.add_exception_handler(ClientDisconnect, client_gone)

    @app.exception_handler(ApiError)
    async def invalid(request: Request, error: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(config.retry_after_s)} if error.status in (429, 503) else None
        return error_response(error.status, error.message, error.kind, error.param, error.code, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal server error: {type(error).__name__}", kind="server_error")

    # ------------------------------------------------------------------ service endpoints

    @app.get("/health")
    async def health() -> JSONResponse:
        return await serving_models.health(server)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return await serving_models.list_models(server, request)

    @app.get("/stats")
    async def stats(request: Request) -> JSONResponse:
        return await serving_models.show_stats(server, request)

    # ------------------------------------------------------------------ tokenizer endpoints

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> JSONResponse:
        return await serving_tokenization.tokenizer_info(server, request)

    @app.post("/tokenize", openapi_extra=_body_schema(TokenizeRequest))
    async def tokenize(request: Request) -> JSONResponse:
        return await serving_tokenization.tokenize(server, request)

    @app.post("/detokenize", openapi_extra=_body_schema(DetokenizeRequest))
    async def detokenize(request: Request) -> JSONResponse:
        return await serving_tokenization.detokenize(server, request)

    # ------------------------------------------------------------------ completions and chat

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request):
        return await serving_completion.create_completion(server, request)

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request):
        return await serving_chat.create_chat_completion(server, request)

    return app


class _CountStatus:
    """Pure ASGI middleware counting responses by status for /stats (BaseHTTPMiddleware would hide
    the client's disconnect from the handlers)."""

    def __init__(self, app, counts: dict[str, int]):
        self.app, self.counts = app, counts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                key = str(message["status"])
                self.counts[key] = self.counts.get(key, 0) + 1
            await send(message)

        await self.app(scope, receive, counting_send)
