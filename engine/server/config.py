"""The server's settings: where it listens, who may call it, and the limits that keep it up.

Every limit is a plain number in one frozen :class:`ServerConfig`, set from ``rwkveval serve``'s
options. A request past a limit gets 400 (or 429/413) naming the limit and the value it found;
none of them ever reaches the engine. The connection limits (a deadline to receive a request, a
cap on open connections) are enforced below the routes, by :mod:`engine.server.peers`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


def connection_limits(open_files: int | None = None) -> tuple[int, int]:
    """(max_connections, listen backlog) that keep the server under its open-file limit.

    ``open_files``: the soft ``RLIMIT_NOFILE`` (default: this process's). An eighth of it, at
    least 64, is kept for what else the process opens (the checkpoint, logs, other threads'
    sockets) and for the connections asyncio accepts before the cap sees them: up to a backlog at
    a time, a few times over, hence a backlog of a quarter of the reserve.
    """
    if open_files is None:
        open_files = 1024
        if resource is not None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            open_files = soft if soft != resource.RLIM_INFINITY else 1 << 16
    reserve = max(64, open_files // 8)
    return max(16, open_files - reserve), max(16, min(2048, reserve // 4))


@dataclass(frozen=True)
class ServerConfig:
    """What the HTTP layer and the scheduler need to know; defaults suit a CPU test run."""

    model_name: str = "rwkv7"
    api_key: str | None = None  # None: no authentication
    # request limits (checked before a request is queued)
    max_prompt_tokens: int = 16384  # tokens in one prompt
    max_tokens: int = 4096  # generated tokens per prompt
    max_prompts: int = 256  # prompts in one request (lm-eval batches them)
    max_logprobs: int = 20  # top alternatives per position
    max_stop: int = 16  # stop strings per request
    max_body_bytes: int = 32 << 20  # request body size
    # scheduling
    max_batch: int = 32  # sequences decoded together in one engine call
    max_queue: int = 1024  # prompts waiting for a batch slot; past it: 429 with Retry-After
    retry_after_s: int = 1
    chat_stop: tuple[str, ...] = ("\n\nUser:", "\n\nSystem:")  # ends an assistant turn
    # connections (engine/server/peers.py)
    receive_timeout_s: float = 30.0  # a request's headers and body must arrive within this of its first byte
    max_connections: int | None = None  # open connections at once; None: from the open-file limit

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_tokens", "max_prompts", "max_batch", "max_queue",
                     "max_body_bytes", "max_stop", "retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerConfig.{name} must be an int >= 1, found {value!r}")
        if not isinstance(self.max_logprobs, int) or self.max_logprobs < 0:
            raise ValueError(f"ServerConfig.max_logprobs must be an int >= 0, found {self.max_logprobs!r}")
        if self.max_queue < self.max_prompts:
            raise ValueError(f"ServerConfig.max_queue ({self.max_queue}) must hold at least one full request "
                             f"(max_prompts = {self.max_prompts})")
        if self.api_key is not None and not self.api_key:
            raise ValueError("ServerConfig.api_key must be None (no key) or a non-empty string")
        if not isinstance(self.receive_timeout_s, (int, float)) or not self.receive_timeout_s > 0:
            raise ValueError(f"ServerConfig.receive_timeout_s must be a number > 0, found {self.receive_timeout_s!r}")
        if self.max_connections is not None and (not isinstance(self.max_connections, int) or self.max_connections < 1):
            raise ValueError(f"ServerConfig.max_connections must be None or an int >= 1, found {self.max_connections!r}")

    @property
    def max_model_len(self) -> int:
        """The context length the server reports everywhere (/v1/models, /tokenizer_info, /tokenize):
        the longest prompt it takes. An RNN has no context window, so generation is limited on its
        own: a request is refused for its length only when its prompt is longer than this or its
        max_tokens exceeds ``max_tokens`` (a client keeping prompt plus generation within this
        length, as lm-evaluation-harness does, can still ask for more than ``max_tokens``)."""
        return self.max_prompt_tokens

    def connection_cap(self) -> int:
        """max_connections, or the one derived from the open-file limit."""
        return self.max_connections or connection_limits()[0]

    def limits(self) -> dict[str, int | float]:
        """The limits as plain JSON (served by /stats and /v1/models)."""
        data = {**asdict(self), "max_connections": self.connection_cap()}
        return {k: v for k, v in data.items() if k.startswith(("max_", "retry_after", "receive_timeout"))}
