"""``POST /v1/completions``: text or token-id prompts, whole or streamed; ``echo`` + ``logprobs``
score the prompt (lm-evaluation-harness's ``local-completions``)."""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .scheduler import Job, Sampling
from .schemas import ApiError, CompletionRequest, check_model, check_refused, check_sampling, parse, prompt_token_lists
from .server import Server
from .streaming import job_events, sse


async def create_completion(server: Server, request: Request):
    config = server.config
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
        return StreamingResponse(stream_completion(server, job, ident, created, echo, include_usage),
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


async def stream_completion(server: Server, job: Job, ident: str, created: int, echo: bool,
                             include_usage: bool) -> AsyncIterator[str]:
    name = server.config.model_name

    def chunk(index: int, text: str, reason: str | None) -> str:
        return sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]})

    if echo:
        for i, prompt in enumerate(job.prompts):
            yield chunk(i, server.tokenizer.decode(prompt), None)
    results = []
    async for event in job_events(job):
        if event[0] == "delta":
            yield chunk(event[1], event[2], None)
        elif event[0] == "done":
            results.append(event[2])
            yield chunk(event[1], "", event[2].finish_reason)
        else:
            yield sse({"error": {"message": event[2], "type": "server_error", "param": None, "code": None}})
            return
    if include_usage:
        yield sse({"id": ident, "object": "text_completion", "created": created, "model": name,
                   "choices": [], "usage": server.usage(results)})
    yield "data: [DONE]\n\n"
