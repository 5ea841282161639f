"""The OpenAI-compatible HTTP API over one model: routes, authentication, errors, streaming.

Endpoints (README.md, "The OpenAI-compatible server", has the full contract):

- ``POST /v1/completions``        text or token-id prompts; ``echo`` + ``logprobs`` for scoring
- ``POST /v1/chat/completions``   the RWKV chat format (:mod:`engine.server.chat`), SSE streaming
- ``GET /v1/models``, ``GET /health``, ``GET /stats``
- ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize`` (lm-evaluation-harness's
  remote tokenizer)

Bodies are read and parsed here, not by FastAPI, so that every malformed body (bad JSON, deep
nesting, wrong types, oversized) becomes a 400 or 413 with an OpenAI-style error body; a 500 can
only come from a bug. The request schemas still appear in ``/openapi.json``. The key, slow and
vanishing clients and the connection cap are handled below the routes (:mod:`engine.server.peers`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import chat as chat_format
from .config import ServerConfig
from .peers import RequireKey, client_gone
from .scheduler import Job, QueueFull, RowResult, Sampling, Scheduler, Stopped
from .schemas import (
    CHARS_PER_TOKEN_BOUND, ApiError, ChatRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, check_model,
    check_refused, check_sampling, check_token_ids, parse, prompt_token_lists,
)
from .tokens import offsets, token_key, token_pieces

log = logging.getLogger("rwkveval.server")

# how often a handler waiting for a non-streamed result checks whether its client is still there
DISCONNECT_POLL_S = 0.25


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _check_strings(body: Any) -> None:
    """Every string in ``body`` must be encodable as UTF-8: JSON can carry lone surrogates
    (``"\\ud800"``), which no tokenizer or stop-string search can take."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(f"the request holds a string that is not valid Unicode (a lone surrogate "
                               f"escape): {item[:40]!r}") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _body_schema(model) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body (the app parses it itself)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


class Server:
    """The state behind the routes: the model, its scheduler, the config."""

    def __init__(self, model, config: ServerConfig):
        self.model = model
        self.config = config
        self.tokenizer = model.tokenizer
        self.scheduler = Scheduler(model, max_batch=config.max_batch, max_queue=config.max_queue)
        self.token_bytes = self.scheduler.token_bytes
        self.created = int(time.time())
        self.status_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ request plumbing

    async def read_json(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            raise ApiError(f"the request body is larger than the server's limit of "
                           f"{self.config.max_body_bytes} bytes", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.config.max_body_bytes:
                raise ApiError(f"the request body is larger than the server's limit of "
                               f"{self.config.max_body_bytes} bytes", status=413)
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ApiError(f"the request body is not valid JSON: {str(error)[:200]}") from None
        _check_strings(body)
        return body

    def submit(self, prompts: list[list[int]], sampling: Sampling) -> Job:
        job = Job(prompts, sampling, asyncio.get_running_loop())
        try:
            self.scheduler.submit(job)
        except QueueFull as error:
            raise ApiError(f"the server is busy: {error}; retry later", status=429,
                           kind="rate_limit_error", code="queue_full") from None
        except Stopped as error:
            raise ApiError(str(error), status=503, kind="server_error", code="shutting_down") from None
        return job

    async def results(self, job: Job, request: Request) -> list[RowResult]:
        """Wait for every row of a non-streamed job; cancel it if the client disconnects."""
        out: list[RowResult | None] = [None] * len(job.prompts)
        remaining = len(out)
        try:
            while remaining:
                try:
                    event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        raise ApiError("the client disconnected", status=499) from None
                    continue
                if event[0] == "error":
                    raise ApiError(event[2], status=event[1], kind="server_error")
                if event[0] == "done":
                    out[event[1]] = event[2]
                    remaining -= 1
        finally:
            if remaining:
                job.cancel()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ response pieces

    def _generated_parts(self, result: RowResult) -> list[bytes]:
        parts = [self.token_bytes[t] for t in result.tokens]
        if result.stop_token:
            parts[-1] = b""  # token 0 ends the document and adds no text
        return parts

    def logprobs_object(self, result: RowResult, echo: bool) -> dict[str, Any]:
        """OpenAI's ``logprobs``: tokens, token_logprobs, top_logprobs, text_offset (see tokens.py)."""
        ids = (result.prompt if echo else []) + result.tokens
        prompt_parts = [self.token_bytes[t] for t in result.prompt] if echo else []
        pieces = token_pieces(prompt_parts + self._generated_parts(result),
                              sum(map(len, prompt_parts)) + result.text_bytes)
        lps = (list(result.prompt_logprobs) if echo else []) + list(result.logprobs or [])
        tops = (list(result.prompt_top) if echo else []) + list(result.top or [])
        top_dicts: list[dict[str, float] | None] = []
        for token, lp, top in zip(ids, lps, tops):
            if lp is None:
                top_dicts.append(None)
                continue
            entry = {token_key(self.token_bytes[t], t): v for t, v in top}
            entry.setdefault(token_key(self.token_bytes[token], token), lp)  # OpenAI: the chosen token is always there
            top_dicts.append(entry)
        return {"tokens": pieces, "token_logprobs": lps, "top_logprobs": top_dicts, "text_offset": offsets(pieces)}

    def text_of(self, result: RowResult, echo: bool) -> str:
        data = b"".join(self._generated_parts(result))[:result.text_bytes]
        if echo:
            data = b"".join(self.token_bytes[t] for t in result.prompt) + data
        return data.decode("utf-8", errors="replace")

    @staticmethod
    def usage(results: list[RowResult]) -> dict[str, int]:
        prompt = sum(len(r.prompt) for r in results)
        completion = sum(len(r.tokens) for r in results)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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
        return _error(error.status, error.message, error.kind, error.param, error.code, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal server error: {type(error).__name__}", kind="server_error")

    # ------------------------------------------------------------------ service endpoints

    @app.get("/health")
    async def health() -> JSONResponse:
        if not server.scheduler.running:
            return _error(503, "the engine is not running", kind="server_error",
                          headers={"Retry-After": str(config.retry_after_s)})
        return JSONResponse({"status": "ok", "model": config.model_name})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{
            "id": config.model_name, "object": "model", "created": server.created, "owned_by": "rwkveval",
            "max_model_len": config.max_model_len,
            "rwkveval": {**model.info(), "limits": config.limits()},
        }]})

    @app.get("/stats")
    async def stats(request: Request) -> JSONResponse:
        s = server.scheduler.stats
        uptime = max(time.time() - s.started, 1e-9)
        return JSONResponse({
            "uptime_s": uptime, "requests": s.requests, "responses_by_status": dict(server.status_counts),
            "rejected_queue_full": s.rejected_queue_full, "cancelled_prompts": s.cancelled,
            "prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens,
            "engine_busy_s": s.engine_seconds,
            "throughput": {"prompt_tokens_per_s": s.prompt_tokens / uptime,
                           "generated_tokens_per_s": s.generated_tokens / uptime,
                           "generated_tokens_per_busy_s": s.generated_tokens / max(s.engine_seconds, 1e-9)},
            "mean_decode_batch": s.rows_stepped / s.steps if s.steps else 0.0,
            "queue": server.scheduler.depth(), "limits": config.limits(),
        })

    # ------------------------------------------------------------------ tokenizer endpoints

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request) -> JSONResponse:
        end = server.token_bytes[0]
        return JSONResponse({
            "tokenizer_class": server.tokenizer.name, "vocab_size": server.tokenizer.vocab_size,
            # token 0 ends a document; it has a text form only where it is a byte (vocabulary 256)
            "eos_token": end.decode("latin-1") if end else None, "eos_token_id": 0,
            "bos_token": None, "pad_token": None, "model_max_length": config.max_model_len,
            "chat_template": chat_format.JINJA_TEMPLATE,
        })

    @app.post("/tokenize", openapi_extra=_body_schema(TokenizeRequest))
    async def tokenize(request: Request) -> JSONResponse:
        body = parse(TokenizeRequest, await server.read_json(request))
        check_model(body.model, config)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError("send exactly one of 'prompt' (text) and 'messages' (a chat)", param="prompt")
        text = body.prompt if body.prompt is not None else chat_format.render(
            [(m.role, m.text()) for m in body.messages])
        if len(text) > CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens:
            raise ApiError(f"the text has {len(text)} characters, more than /tokenize accepts "
                           f"({CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens})", param="prompt")
        tokens = list(server.tokenizer.encode(text))
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": config.max_model_len})

    @app.post("/detokenize", openapi_extra=_body_schema(DetokenizeRequest))
    async def detokenize(request: Request) -> JSONResponse:
        body = parse(DetokenizeRequest, await server.read_json(request))
        check_model(body.model, config)
        ids = check_token_ids(body.tokens, server.tokenizer.vocab_size, "tokens")
        return JSONResponse({"prompt": server.tokenizer.decode(ids)})

    # ------------------------------------------------------------------ completions

    @app.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(request: Request):
        body = parse(CompletionRequest, await server.read_json(request))
        check_model(body.model, config)
        check_refused(body)
        options = check_sampling(body, body.max_tokens if body.max_tokens is not None else 16, config)
        echo = bool(body.echo)
        if options["max_tokens"] == 0 and not echo:
            raise ApiError("max_tokens may be 0 only with echo (to score the prompt)", param="max_tokens")
        if body.logprobs is not None and not 0 <= body.logprobs <= config.max_logprobs:
            raise ApiError(f"logprobs must be in [0, {config.max_logprobs}], found {body.logprobs}",
                           param="logprobs")
        if body.stream and body.logprobs is not None:
            raise ApiError("logprobs are not supported with stream", param="logprobs")
        prompts = prompt_token_lists(body.prompt, server.tokenizer, config)
        sampling = Sampling(logprobs=body.logprobs, echo=echo, stream=bool(body.stream), **options)
        job = server.submit(prompts, sampling)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream_completion(server, job, ident, created, echo, include_usage),
                                     media_type="text/event-stream")
        results = await server.results(job, request)
        choices = []
        for i, result in enumerate(results):
            choices.append({
                "index": i, "text": server.text_of(result, echo),
                "logprobs": server.logprobs_object(result, echo) if body.logprobs is not None else None,
                "finish_reason": result.finish_reason,
            })
        return JSONResponse({"id": ident, "object": "text_completion", "created": created,
                             "model": config.model_name, "choices": choices, "usage": server.usage(results)})

    # ------------------------------------------------------------------ chat

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request):
        body = parse(ChatRequest, await server.read_json(request))
        check_model(body.model, config)
        check_refused(body)
        if body.logprobs:
            raise ApiError("logprobs are not supported on chat completions; use /v1/completions",
                           param="logprobs")
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise ApiError("send max_tokens or max_completion_tokens, not both", param="max_tokens")
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        options = check_sampling(body, limit, config)
        if options["max_tokens"] == 0:
            raise ApiError("max_tokens must be at least 1 for a chat reply", param="max_tokens")
        options["stop_strs"] = tuple(dict.fromkeys(config.chat_stop + options["stop_strs"]))
        text = chat_format.render([(m.role, m.text()) for m in body.messages])
        prompts = prompt_token_lists(text, server.tokenizer, config)
        job = server.submit(prompts, Sampling(stream=bool(body.stream), **options))
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream_chat(server, job, ident, created, include_usage),
                                     media_type="text/event-stream")
        (result,) = await server.results(job, request)
        return JSONResponse({
            "id": ident, "object": "chat.completion", "created": created, "model": config.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": server.text_of(result, False).lstrip()},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": server.usage([result]),
        })

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


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(job: Job) -> AsyncIterator[tuple]:
    """A streamed job's events until every row is done; cancels the job if the stream is abandoned."""
    remaining = len(job.prompts)
    try:
        while remaining:
            event = await job.events.get()
            if event[0] == "done":
                remaining -= 1
            yield event
            if event[0] == "error":
                return
    finally:
        if remaining:  # the client went away (the response was cancelled) or an error ended it
            job.cancel()


async def _stream_completion(server: Server, job: Job, ident: str, created: int, echo: bool,
                             include_usage: bool) -> AsyncIterator[str]:
    name = server.config.model_name

    def chunk(index: int, text: str, reason: str | None) -> str:
        return _sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                     "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]})

    if echo:
        for i, prompt in enumerate(job.prompts):
            yield chunk(i, server.tokenizer.decode(prompt), None)
    results = []
    async for event in _events(job):
        if event[0] == "delta":
            yield chunk(event[1], event[2], None)
        elif event[0] == "done":
            results.append(event[2])
            yield chunk(event[1], "", event[2].finish_reason)
        else:
            yield _sse({"error": {"message": event[2], "type": "server_error", "param": None, "code": None}})
            return
    if include_usage:
        yield _sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [], "usage": server.usage(results)})
    yield "data: [DONE]\n\n"


async def _stream_chat(server: Server, job: Job, ident: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    name = server.config.model_name

    def chunk(delta: dict[str, Any], reason: str | None) -> str:
        return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                     "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]})

    yield chunk({"role": "assistant", "content": ""}, None)
    started = False  # the reply's leading whitespace (after "Assistant:") is dropped, as in whole responses
    results = []
    async for event in _events(job):
        if event[0] == "delta":
            text = event[2] if started else event[2].lstrip()
            if text:
                started = True
                yield chunk({"content": text}, None)
        elif event[0] == "done":
            results.append(event[2])
            yield chunk({}, event[2].finish_reason)
        else:
            yield _sse({"error": {"message": event[2], "type": "server_error", "param": None, "code": None}})
            return
    if include_usage:
        yield _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [], "usage": server.usage(results)})
    yield "data: [DONE]\n\n"
