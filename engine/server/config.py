"""The server's settings: where it listens, who may call it, and the limits that keep it up.

Every limit is a plain number in one frozen :class:`ServerConfig`, set from ``rwkveval serve``'s
options. A request past a limit gets 400 (or 429/413) naming the limit and the value it found;
none of them ever reaches the engine.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def limits(self) -> dict[str, int]:
        """The limits as plain JSON (served by /stats and /v1/models)."""
        data = asdict(self)
        return {k: v for k, v in data.items() if k.startswith(("max_", "retry_after"))}
