"""The backend interface: the three request kinds every benchmark speaks, and the local engine.

A benchmark renders documents into requests of exactly three kinds (plain frozen dataclasses of
TEXT, so they can be hashed, cached and sent over the wire):

- :class:`LoglikelihoodRequest`: log P(continuation | context); the leading space belongs to the
  continuation (``context="The cat sat on the"``, ``continuation=" mat"``).
- :class:`RollingRequest`: log P(text), every token scored.
- :class:`GenerateRequest`: greedy or sampled generation until a stop string or a token budget.

``bos=True`` means the context starts with RWKV's token 0 (end of document), as RWKV's own
evaluations do; ``bos=False`` matches lm-evaluation-harness's protocol for Hugging Face models.

A backend answers a list of requests of one kind at once (batching and shared-prefix reuse happen
below it) and returns responses in the same order. :class:`LocalBackend` drives the in-process
engine (``docs/ENGINE_API.md``); a remote OpenAI-compatible backend and a response cache wrap the
same :class:`Backend` protocol.

Answers are checked before anyone scores them (:func:`validate_response`): a log-likelihood must
be a finite number <= 0 (up to :data:`LOGPROB_TOLERANCE` per token for float rounding). A request
whose answer cannot be right fails with :class:`InvalidResponse`; a backend collects its failed
requests into one :class:`FailedRequests` when the batch is over and returns nothing for any of
them, so nothing of them is scored or cached.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Progress = Callable[[int], None]
"""Called with the number of requests just finished (an increment), so callers can show a rate."""


@dataclass(frozen=True)
class LoglikelihoodRequest:
    context: str
    continuation: str
    bos: bool = True


@dataclass(frozen=True)
class RollingRequest:
    text: str
    bos: bool = True


@dataclass(frozen=True)
class GenerateRequest:
    context: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    bos: bool = True

    def settings(self) -> tuple:
        """Everything but the context: requests that share it can run in one engine call."""
        return (self.stop, self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed)


@dataclass(frozen=True)
class LoglikelihoodResponse:
    logprob: float  # sum over the continuation tokens
    is_greedy: bool  # every continuation token was the argmax
    context_tokens: int
    continuation_tokens: int


@dataclass(frozen=True)
class RollingResponse:
    logprob: float
    tokens: int


@dataclass(frozen=True)
class GenerateResponse:
    text: str  # cut before the stop string
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str  # "stop" | "length"


LOGPROB_TOLERANCE = 1e-4
"""How far above 0 a log-probability may lie (float rounding of a log-softmax); per token."""


class InvalidResponse(ValueError):
    """A model's answer to one request that cannot be right (a log-probability that is NaN,
    infinite or positive, a malformed alternatives entry, misaligned echoed tokens)."""


class FailedRequests(RuntimeError):
    """Some requests of a batch failed; ``failed`` maps their index to the reason. The backend
    returned no response for any request of the batch, so none of them is scored or cached."""

    def __init__(self, kind: str, total: int, failed: dict[int, str], requests: Sequence[Any], where: str):
        self.kind, self.total, self.failed, self.requests = kind, total, dict(sorted(failed.items())), requests
        lines = []
        for i, reason in list(self.failed.items())[:10]:
            lines.append(f"  [{i}] {describe_request(requests[i])}: {reason}")
        more = f"\n  ... and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        super().__init__(f"{len(self.failed)} of {total} {kind} requests to {where} failed; none of them is "
                         f"scored:\n" + "\n".join(lines) + more)


def describe_request(request: Any) -> str:
    """A short description of a request for an error line: the end of its context, its continuation."""
    text = getattr(request, "context", None) or getattr(request, "text", "")
    what = f"context ending {text[-60:]!r}"
    if getattr(request, "continuation", None):
        what += f", continuation {request.continuation[:40]!r}"
    return what


def check_logprob(value: Any, what: str, tokens: int = 1) -> float:
    """``value`` as a float if it is a possible log-probability (of ``tokens`` tokens), else
    :class:`InvalidResponse` naming ``what`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidResponse(f"{what} is {value!r:.60}, expected a number")
    if not math.isfinite(value) or value > LOGPROB_TOLERANCE * max(tokens, 1):
        raise InvalidResponse(f"{what} is {value!r}, expected a finite number <= 0")
    return float(value)


def validate_response(response: Any) -> Any:
    """``response`` itself if it can be right, else :class:`InvalidResponse` (pure: no I/O)."""
    if isinstance(response, LoglikelihoodResponse):
        check_logprob(response.logprob, "the log-likelihood", response.continuation_tokens)
    elif isinstance(response, RollingResponse):
        check_logprob(response.logprob, "the rolling log-likelihood", response.tokens)
    elif isinstance(response, GenerateResponse) and not isinstance(response.text, str):
        raise InvalidResponse(f"the generated text is {type(response.text).__name__}, expected a string")
    return response


def validated(kind: str, requests: Sequence[Any], responses: Sequence[Any], where: str) -> list[Any]:
    """``responses`` if every one passes :func:`validate_response`, else one :class:`FailedRequests`
    listing each request whose answer cannot be right."""
    failed: dict[int, str] = {}
    for i, response in enumerate(responses):
        try:
            validate_response(response)
        except InvalidResponse as error:
            failed[i] = f"invalid answer: {error}"
    if failed:
        raise FailedRequests(kind, len(requests), failed, requests, where)
    return list(responses)


@runtime_checkable
class Backend(Protocol):
    """What a benchmark may ask of a model. Responses come back in request order."""

    def info(self) -> dict[str, Any]: ...

    def count_tokens(self, text: str, bos: bool = True) -> int: ...

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: Progress | None = None) -> list[LoglikelihoodResponse]: ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              progress: Progress | None = None) -> list[RollingResponse]: ...

    def generate(self, requests: Sequence[GenerateRequest],
                 progress: Progress | None = None) -> list[GenerateResponse]: ...


@dataclass
class LocalBackend:
    """The in-process engine behind the :class:`Backend` interface.

    Context and continuation are tokenized separately (so the continuation's tokens are exactly
    those of its own text) and handed to ``model.loglikelihood`` in chunks of ``chunk_size``
    requests; the chunks exist only so a progress line can move during a long case (the engine
    batches and shares prefixes inside each chunk). A log-likelihood that is not a finite number
    <= 0 (an overflow inside the model) fails its request (:class:`FailedRequests`), never a score.
    """

    model: Any
    batch_size: int = 16
    chunk_size: int = 512
    extra_info: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        return {"backend": "local", **self.model.info(), **self.extra_info}

    def _encode(self, text: str) -> list[int]:
        return list(self.model.tokenizer.encode(text)) if text else []

    def _context_ids(self, context: str, bos: bool) -> list[int]:
        return ([0] if bos else []) + self._encode(context)

    def count_tokens(self, text: str, bos: bool = True) -> int:
        return len(self._context_ids(text, bos))

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: Progress | None = None) -> list[LoglikelihoodResponse]:
        pairs = []
        for request in requests:
            context = self._context_ids(request.context, request.bos)
            continuation = self._encode(request.continuation)
            if not context:
                raise ValueError("a log-likelihood request without token 0 needs a non-empty context, "
                                 f"found context={request.context!r}")
            if not continuation:
                raise ValueError(f"empty continuation for context ending {request.context[-40:]!r}")
            pairs.append((context, continuation))
        responses: list[LoglikelihoodResponse] = []
        for start in range(0, len(pairs), self.chunk_size):
            chunk = pairs[start:start + self.chunk_size]
            for (context, continuation), (logprob, greedy) in zip(chunk, self.model.loglikelihood(chunk, batch_size=self.batch_size)):
                responses.append(LoglikelihoodResponse(float(logprob), bool(greedy),
                                                       len(context), len(continuation)))
            if progress:
                progress(len(chunk))
        return validated("loglikelihood", requests, responses, "the local engine")

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              progress: Progress | None = None) -> list[RollingResponse]:
        # With token 0 every token of the text is scored; without it the text's first token is
        # context only (the engine's bos=None).
        out: list[RollingResponse | None] = [None] * len(requests)
        for bos in (True, False):
            index = [i for i, r in enumerate(requests) if r.bos == bos]
            for start in range(0, len(index), self.chunk_size):
                part = index[start:start + self.chunk_size]
                token_lists = [self._encode(requests[i].text) for i in part]
                values = self.model.loglikelihood_rolling(token_lists, bos=0 if bos else None,
                                                          batch_size=self.batch_size)
                for i, tokens, value in zip(part, token_lists, values):
                    out[i] = RollingResponse(float(value), len(tokens) if bos else len(tokens) - 1)
                if progress:
                    progress(len(part))
        return validated("loglikelihood_rolling", requests, out, "the local engine")

    def generate(self, requests: Sequence[GenerateRequest],
                 progress: Progress | None = None) -> list[GenerateResponse]:
        out: list[GenerateResponse | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.settings(), []).append(i)
        for settings, index in groups.items():
            stop, max_new_tokens, temperature, top_p, top_k, seed = settings
            for start in range(0, len(index), self.chunk_size):
                part = index[start:start + self.chunk_size]
                prompts = [self._context_ids(requests[i].context, requests[i].bos) for i in part]
                generations = self.model.generate(
                    prompts, max_new_tokens, stop=list(stop) or None, temperature=temperature,
                    top_p=top_p, top_k=top_k, seed=seed, batch_size=self.batch_size)
                for i, prompt, generation in zip(part, prompts, generations):
                    out[i] = GenerateResponse(generation.text, len(prompt), len(generation.tokens),
                                              generation.finish_reason)
                if progress:
                    progress(len(part))
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]
