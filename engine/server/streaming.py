"""Server-sent events shared by the streamed endpoints: one ``data:`` line per chunk, and a
job's events until every row is done (the job is cancelled if the stream is abandoned)."""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

from .scheduler import Job


def sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def job_events(job: Job) -> AsyncIterator[tuple]:
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
