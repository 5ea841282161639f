"""Service endpoints: ``GET /health``, ``GET /v1/models``, ``GET /stats``."""
from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import JSONResponse

from .server import Server, error_response


async def health(server: Server) -> JSONResponse:
    config = server.config
    if not server.scheduler.running:
        return error_response(503, "the engine is not running", kind="server_error",
                              headers={"Retry-After": str(config.retry_after_s)})
    return JSONResponse({"status": "ok", "model": config.model_name})


async def list_models(server: Server, request: Request) -> JSONResponse:
    config = server.config
    return JSONResponse({"object": "list", "data": [{
        "id": config.model_name, "object": "model", "created": server.created, "owned_by": "rwkveval",
        "max_model_len": config.max_model_len,
        "rwkveval": {**server.model.info(), "limits": config.limits()},
    }]})


async def show_stats(server: Server, request: Request) -> JSONResponse:
    config = server.config
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
