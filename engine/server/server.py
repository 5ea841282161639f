"""The state behind the routes and the request plumbing every endpoint shares.

:class:`Server` holds the model, its scheduler and the config; it checks the API key, reads and
checks a JSON body (every malformed body becomes a 400 or 413, never a 500), queues a job and
waits for its results, and builds the pieces of a response (text, ``logprobs``, ``usage``).
The endpoints themselves live in ``serving_*.py``; :mod:`.app` wires them to routes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from .config import ServerConfig
from .scheduler import Job, QueueFull, RowResult, Sampling, Scheduler, Stopped
from .schemas import ApiError
from .tokens import offsets, token_key, token_pieces

log = logging.getLogger("rwkveval.server")

# how often a handler waiting for a non-streamed result checks whether its client is still there
DISCONNECT_POLL_S = 0.25


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
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
