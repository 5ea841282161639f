"""The backend interface: the three request kinds every benchmark speaks, and the local engine.

A benchmark renders documents into requests of exactly three kinds (plain frozen dataclasses of
TEXT, so they can be hashed, cached and sent over the wire):

- :class:`LoglikelihoodRequest`: log P(continuation | context); the leading space belongs to the
  continuation (``context="The cat sat on the"``, ``continuation=" mat"``).
- :class:`RollingRequest`: log P(text), every token scored.
- :class:`GenerateRequest`: greedy or sampled generation until a stop string or a token budget.

While it works, a backend reports each finished request and the tokens it ran to a
:class:`Listener` (the response cache stores each response as it arrives; the recorder shows progress).

Answers are checked before anyone scores them (:func:`validate_response`): a log-likelihood must
be a finite number <= 0 (up to :data:`LOGPROB_TOLERANCE` per token for float rounding). A request
whose answer cannot be right fails with :class:`InvalidResponse` and is never reported to the
listener; a backend collects its failed requests into one :class:`FailedRequests` when the batch
is over, so none of them is scored or cached, while those that succeeded are kept.

``bos=True`` means the context starts with RWKV's token 0 (end of document), as RWKV's own
evaluations do; ``bos=False`` matches lm-evaluation-harness's protocol for Hugging Face models.

A backend answers a list of requests of one kind at once (batching and shared-prefix reuse happen
below it) and returns responses in the same order. :class:`LocalBackend` drives the in-process
engine (``docs/ENGINE_API.md``); a remote OpenAI-compatible backend and a response cache wrap the
same :class:`Backend` protocol.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class Listener:
    """What a backend tells its caller while it works; every method is a no-op here.

    A backend calls :meth:`on_result` for every request the moment its response exists (in any
    order; a request answered from a cache too), so a caller can store it at once and show
    progress, and :meth:`on_tokens` with the tokens the model really ran (a shared prefix once,
    a stored response not at all), so rates are honest.
    """

    def on_result(self, index: int, response: Any) -> None:
        """Request ``index`` of the current call is answered with ``response``."""

    def on_tokens(self, prompt: int, generated: int) -> None:
        """The model ran ``prompt`` input tokens and generated ``generated`` tokens since the last call."""


SILENT = Listener()


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
    """Some requests of a batch failed; ``failed`` maps their index to the reason. None of them is
    scored or cached (those that succeeded were reported to the listener, so the cache keeps them)."""

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
                      listener: Listener = SILENT) -> list[LoglikelihoodResponse]: ...

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              listener: Listener = SILENT) -> list[RollingResponse]: ...

    def generate(self, requests: Sequence[GenerateRequest],
                 listener: Listener = SILENT) -> list[GenerateResponse]: ...


@dataclass
class LocalBackend:
    """The in-process engine behind the :class:`Backend` interface.

    Context and continuation are tokenized separately (so the continuation's tokens are exactly
    those of its own text) and handed to the engine in one call per kind (the engine batches and
    shares prefixes); the engine reports each finished request and the tokens it ran, which go
    straight to the listener.
    """

    model: Any
    batch_size: int | None = None  # None: the engine packs by its token budget (scoring) or sizes the batch (generation)
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
                      listener: Listener = SILENT) -> list[LoglikelihoodResponse]:
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
        out: list[LoglikelihoodResponse | None] = [None] * len(pairs)
        failed: dict[int, str] = {}

        def on_result(i: int, value: tuple[float, bool]) -> None:
            context, continuation = pairs[i]
            out[i] = LoglikelihoodResponse(float(value[0]), bool(value[1]), len(context), len(continuation))
            try:
                validate_response(out[i])
            except InvalidResponse as error:
                failed[i] = str(error)  # never passed on: not stored, not scored
                return
            listener.on_result(i, out[i])

        self.model.loglikelihood(pairs, batch_size=self.batch_size, on_result=on_result,
                                 on_tokens=listener.on_tokens)
        if failed:
            raise FailedRequests("loglikelihood", len(pairs), failed, requests, "the local engine")
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              listener: Listener = SILENT) -> list[RollingResponse]:
        # With token 0 every token of the text is scored; without it the text's first token is
        # context only (the engine's bos=None).
        out: list[RollingResponse | None] = [None] * len(requests)
        failed: dict[int, str] = {}
        for bos in (True, False):
            index = [i for i, r in enumerate(requests) if r.bos == bos]
            if not index:
                continue
            token_lists = [self._encode(requests[i].text) for i in index]

            def on_result(j: int, value: float, index=index, token_lists=token_lists, bos=bos) -> None:
                scored = len(token_lists[j]) if bos else len(token_lists[j]) - 1
                out[index[j]] = RollingResponse(float(value), scored)
                try:
                    validate_response(out[index[j]])
                except InvalidResponse as error:
                    failed[index[j]] = str(error)
                    return
                listener.on_result(index[j], out[index[j]])

            self.model.loglikelihood_rolling(token_lists, bos=0 if bos else None, batch_size=self.batch_size,
                                             on_result=on_result, on_tokens=listener.on_tokens)
        if failed:
            raise FailedRequests("loglikelihood_rolling", len(requests), failed, requests, "the local engine")
        return out  # type: ignore[return-value]

    def generate(self, requests: Sequence[GenerateRequest],
                 listener: Listener = SILENT) -> list[GenerateResponse]:
        out: list[GenerateResponse | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.settings(), []).append(i)
        for settings, index in groups.items():
            stop, max_new_tokens, temperature, top_p, top_k, seed = settings
            prompts = [self._context_ids(requests[i].context, requests[i].bos) for i in index]
            if temperature > 0 and seed is not None:
                from engine.decoding import row_seed

                # each request seeded as a server seeds a one-prompt request, so a sampled answer
                # depends on its request alone (the cache key), not on which requests share the call
                seed = [row_seed(seed, 0)] * len(index)

            def on_result(j: int, generation, index=index, prompts=prompts) -> None:
                out[index[j]] = GenerateResponse(generation.text, len(prompts[j]), len(generation.tokens),
                                                 generation.finish_reason)
                listener.on_result(index[j], out[index[j]])

            self.model.generate(prompts, max_new_tokens, stop=list(stop) or None, temperature=temperature,
                                top_p=top_p, top_k=top_k, seed=seed, batch_size=self.batch_size,
                                on_result=on_result, on_tokens=listener.on_tokens)
        return out  # type: ignore[return-value]
