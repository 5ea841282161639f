"""``POST /v1/chat/completions``: messages rendered in the RWKV chat format (:mod:`.chat`, the
tokens ``rwkveval chat`` feeds), the reply whole or streamed, its leading whitespace dropped."""
from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .scheduler import Job, Sampling
from .schemas import ApiError, ChatRequest, chat_prompt_tokens, check_model, check_refused, check_sampling, parse
from .server import Server
from .streaming import job_events, sse


async def create_chat_completion(server: Server, request: Request):
    config = server.config
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
    prompt = chat_prompt_tokens([(m.role, m.text()) for m in body.messages], server.tokenizer, config)
    job = server.submit([prompt], Sampling(stream=bool(body.stream), **options))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(stream_chat(server, job, ident, created, include_usage),
                                 media_type="text/event-stream")
    (result,) = await server.results(job, request)
    return JSONResponse({
        "id": ident, "object": "chat.completion", "created": created, "model": config.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant",
                                             "content": server.text_of(result, False).lstrip()},
                     "logprobs": None, "finish_reason": result.finish_reason}],
        "usage": server.usage([result]),
    })


async def stream_chat(server: Server, job: Job, ident: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    name = server.config.model_name

    def chunk(delta: dict[str, Any], reason: str | None) -> str:
        return sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]})

    yield chunk({"role": "assistant", "content": ""}, None)
    started = False  # the reply's leading whitespace (after "Assistant:") is dropped, as in whole responses
    results = []
    async for event in job_events(job):
        if event[0] == "delta":
            text = event[2] if started else event[2].lstrip()
            if text:
                started = True
                yield chunk({"content": text}, None)
        elif event[0] == "done":
            results.append(event[2])
            yield chunk({}, event[2].finish_reason)
        else:
            yield sse({"error": {"message": event[2], "type": "server_error", "param": None, "code": None}})
            return
    if include_usage:
        yield sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
                   "choices": [], "usage": server.usage(results)})
    yield "data: [DONE]\n\n"
