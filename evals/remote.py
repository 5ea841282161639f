"""A remote OpenAI-compatible endpoint behind the :class:`evals.backend.Backend` interface.

``pytest evals --endpoint URL`` runs every benchmark against any server that speaks the OpenAI
API (``rwkveval serve``, vLLM, llama.cpp, a hosted API). The three request kinds map to:

- log-likelihood and rolling log-likelihood: ``POST /v1/completions`` with ``echo: true``,
  ``logprobs: 1`` and ``max_tokens: 1``; the prompt tokens' log-probabilities are summed over the
  continuation. A server that does not return them is a :class:`RemoteProtocolError`, never a
  silent chance-level score.
- generation: ``POST /v1/completions`` (``--api-mode completion``, optionally wrapped in a chat
  template, :data:`evals.templates.CHAT_TEMPLATES`) or ``POST /v1/chat/completions`` (``--api-mode
  chat``, the context as one user message). ``--system-prompt`` goes in the template's system turn
  or, in chat mode, as a system message (:func:`evals.templates.as_sent` says what is sent).

Token ids. When the server has the tokenizer endpoints (``/tokenizer_info``, ``/tokenize``;
``rwkveval serve`` and vLLM do), context and continuation are tokenized separately, exactly as
:class:`evals.backend.LocalBackend` does, and sent as token ids, so the scores equal the local
engine's. Otherwise prompts go as text and the continuation starts at the first token whose
``text_offset`` reaches the end of the context. Requests that start with RWKV's token 0
(``bos=True``, the suite's default) need token ids and a server whose end-of-document token is 0
(it says ``"eos_token_id": 0`` in ``/tokenizer_info``); elsewhere the run stops with an error that
says to pass ``--no-bos``.

Failures. Each HTTP request is retried on connection errors, 429 and 5xx with exponential
backoff and jitter (honouring ``Retry-After``), up to ``max_retries`` times, no wait longer than
``backoff_max`` (``--max-retry-delay``). ``timeout`` bounds
each attempt as a whole (connecting, sending, the headers and the whole body), not each read, so
a server that trickles its answer cannot hold a request past it. Requests that still fail (or get
another 4xx) are collected; when the batch is over, :class:`RemoteFailures` names every failed
request and why, and no response is returned for any of them, so nothing is scored or cached.
A wrong API key or a server without prompt log-probabilities stops the batch at once.

Answers that cannot be right. :func:`validate_echo` checks every scoring answer before it is
summed: each log-probability a finite number <= 0 (up to float rounding), each ``top_logprobs``
entry a mapping of token to such a number, and as many echoed entries as the prompt has tokens
(plus at most the one generated token; when the server marks its tokens as ``token_id:N``, the
same ids as sent). An answer that fails is :class:`evals.backend.InvalidResponse`: that request
fails with the reason, and is never retried, scored or cached.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import httpx

from evals.backend import (
    SILENT, FailedRequests, GenerateRequest, GenerateResponse, InvalidResponse, Listener, LoglikelihoodRequest,
    LoglikelihoodResponse, RollingRequest, RollingResponse, check_logprob,
)
from evals.templates import CHAT_TEMPLATES, ChatTemplate, as_sent, chat_messages  # noqa: F401 (re-exported)

API_MODES = ("completion", "chat")


class RemoteError(RuntimeError):
    """The endpoint cannot be used as configured (unreachable, wrong key, unknown model, bad option)."""


class RemoteProtocolError(RemoteError):
    """The server answered, but not with what the request kind needs (e.g. no prompt logprobs)."""


class RequestFailed(Exception):
    """One request failed for good: retries exhausted, or an error that retrying cannot fix."""


class RemoteFailures(RemoteError, FailedRequests):
    """Some requests of a batch failed; ``failed`` maps their index to the reason, nothing was scored."""

    def __init__(self, kind: str, total: int, failed: dict[int, str], requests: Sequence[Any], url: str):
        FailedRequests.__init__(self, kind, total, failed, requests, url)


class DeadlineExceeded(httpx.TimeoutException):
    """No complete answer within the request's total deadline (``RemoteOptions.timeout``)."""


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach and drive the endpoint (the ``--endpoint`` family of pytest options)."""

    url: str
    api_key: str | None = None
    api_mode: str = "completion"
    model: str | None = None  # None: the one model the server lists
    chat_template: str | None = None  # completion mode only: a key of CHAT_TEMPLATES
    concurrency: int = 8
    max_retries: int = 5
    timeout: float = 300.0  # seconds per HTTP request, the whole exchange (not per read)
    wait: float = 60.0  # seconds to wait for the server to answer and list the model
    backoff: float = 0.5  # first retry delay in seconds, doubled each retry
    backoff_max: float = 30.0  # --max-retry-delay: no wait between attempts is longer (Retry-After included)
    system_prompt: str | None = None  # chat mode or a chat template only: the system turn of every generation

    def __post_init__(self) -> None:
        if self.api_mode not in API_MODES:
            raise ValueError(f"api_mode must be one of {API_MODES}, found {self.api_mode!r}")
        if self.chat_template is not None and self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"chat_template must be one of {sorted(CHAT_TEMPLATES)}, found {self.chat_template!r}")
        if self.chat_template is not None and self.api_mode == "chat":
            raise ValueError("a chat template applies to --api-mode completion; in chat mode the server "
                             "applies its own")
        if self.system_prompt is not None and self.api_mode != "chat" and self.chat_template is None:
            raise ValueError("a system prompt goes in a chat template's system turn or a chat-mode system message: "
                             "pass --chat-template or --api-mode chat")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.wait < 0 or self.backoff_max <= 0:
            raise ValueError(f"expected concurrency >= 1, max_retries >= 0, timeout > 0, wait >= 0 and a retry delay "
                             f"cap > 0, found {self.concurrency}, {self.max_retries}, {self.timeout}, {self.wait}, "
                             f"{self.backoff_max}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"the endpoint must be an http:// or https:// URL, found {self.url!r}")


def _usage(response: Any) -> tuple[int, int]:
    """(input tokens, generated tokens) the server processed for one answer."""
    if isinstance(response, GenerateResponse):
        return response.prompt_tokens, response.generated_tokens
    if isinstance(response, LoglikelihoodResponse):
        return response.context_tokens + response.continuation_tokens, 0
    return response.tokens, 0


def base_url(url: str) -> str:
    """The server root of an endpoint URL given with or without ``/v1`` or a route."""
    url = url.rstrip("/")
    for tail in ("/v1/chat/completions", "/v1/completions", "/v1"):
        if url.endswith(tail):
            return url[: -len(tail)]
    return url


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = body["error"]["message"] if isinstance(body.get("error"), dict) else str(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text
    return f"HTTP {response.status_code}: {text[:200]}"


@dataclass(frozen=True)
class Echo:
    """A checked echo answer: per prompt token (then the generated one, if any) its log-probability
    and alternatives; entry 0 may be None (the first token has no context)."""

    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] | None
    n_prompt: int

    def sum(self, start: int, end: int) -> tuple[float, bool]:
        """(sum of the log-probabilities of tokens start..end-1, every one of them the top alternative)."""
        total, greedy = 0.0, True
        for i in range(start, end):
            lp, top = self.token_logprobs[i], self.top_logprobs[i]
            if lp is None or top is None:
                raise InvalidResponse(f"prompt token {i} has no log-probability")
            total += lp
            if lp < max(top.values()):
                greedy = False
        return total, greedy


def validate_echo(data: Any, prompt: str | list[int], where: str = "the server") -> Echo:
    """The prompt's log-probabilities from a ``/v1/completions`` answer ``data`` to ``prompt`` (sent
    with ``echo``, ``logprobs: 1``, ``max_tokens: 1``), checked. Pure: no I/O.

    :class:`RemoteProtocolError` when the answer holds no prompt log-probabilities at all (the server
    cannot score log-likelihoods); :class:`evals.backend.InvalidResponse` when they cannot be right:
    a log-probability that is not a finite number <= 0, an alternatives entry that is not a mapping of
    token to such a number, or echoed entries that do not line up with the prompt's tokens.
    """
    try:
        logprobs = data["choices"][0]["logprobs"]
        token_logprobs, top = logprobs["token_logprobs"], logprobs["top_logprobs"]
        if not isinstance(token_logprobs, list) or not isinstance(top, list):
            raise TypeError("token_logprobs and top_logprobs must be lists")
    except (KeyError, IndexError, TypeError) as error:
        raise RemoteProtocolError(
            f"{where} did not return the prompt's log-probabilities for a request with echo=true and "
            f"logprobs=1 ({type(error).__name__}: {error}); this server cannot score log-likelihood "
            "benchmarks") from None
    usage = data.get("usage") if isinstance(data, dict) else None
    counted = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    counted = counted if isinstance(counted, int) and not isinstance(counted, bool) else None
    if isinstance(prompt, list):
        n_prompt = len(prompt)
        if counted is not None and counted != n_prompt:
            raise InvalidResponse(f"usage.prompt_tokens is {counted}, but the request sent {n_prompt} token ids")
    else:  # echo + max_tokens 1: without a count, the last entry is the generated token
        n_prompt = counted if counted is not None and counted > 0 else len(token_logprobs) - 1
    n = len(token_logprobs)
    if n < n_prompt:
        raise RemoteProtocolError(f"{where} echoed {n} log-probabilities for a prompt of {n_prompt} tokens: "
                                  "it does not support echo with logprobs")
    if n > n_prompt + 1:
        raise InvalidResponse(f"{n} log-probabilities were echoed for a prompt of {n_prompt} tokens and at most "
                              "1 generated token: the answer does not line up with the prompt")
    tokens, text_offset = logprobs.get("tokens"), logprobs.get("text_offset")
    for name, values in (("top_logprobs", top), ("tokens", tokens), ("text_offset", text_offset)):
        if values is not None and (not isinstance(values, list) or len(values) != n):
            size = len(values) if isinstance(values, list) else type(values).__name__
            raise InvalidResponse(f"{name} has {size} entries where token_logprobs has {n}")
    if isinstance(prompt, list) and tokens and all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        for i, (sent, echoed) in enumerate(zip(prompt, tokens)):
            if echoed != f"token_id:{sent}":
                raise InvalidResponse(f"echoed token {i} is {echoed!r}, but the request sent token id {sent}")
    checked_lps: list[float | None] = []
    for i, lp in enumerate(token_logprobs):
        checked_lps.append(None if lp is None and i == 0 else check_logprob(lp, f"token_logprobs[{i}]"))
    checked_top: list[dict[str, float] | None] = []
    for i, entry in enumerate(top):
        if entry is None and i == 0:
            checked_top.append(None)
            continue
        if not isinstance(entry, dict) or not entry:
            raise InvalidResponse(f"top_logprobs[{i}] is {entry!r:.60}, expected a mapping of token to "
                                  "log-probability")
        checked_top.append({str(token): check_logprob(value, f"top_logprobs[{i}][{token!r}]")
                            for token, value in entry.items()})
    if text_offset is not None:
        if not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in text_offset) or \
                any(a > b for a, b in zip(text_offset, text_offset[1:])):
            raise InvalidResponse(f"text_offset must be non-decreasing character offsets, found {text_offset!r:.80}")
    return Echo(checked_lps, checked_top, text_offset, n_prompt)


class RemoteBackend:
    """A :class:`evals.backend.Backend` over HTTP; see the module docstring."""

    def __init__(self, options: RemoteOptions, *, rng: random.Random | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.options = options
        self.url = base_url(options.url)
        self._rng = rng or random.Random()
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        # One event loop thread owns the HTTP client: asyncio can cancel an exchange at any point
        # (connecting, headers, body), which is how each attempt gets one deadline; httpx's own
        # timeouts apply per read, so a trickling server would never trip them.
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(options.timeout),
                                         limits=httpx.Limits(max_connections=options.concurrency + 2))
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="rwkveval-remote-http", daemon=True)
        self._loop_thread.start()
        self._closed = threading.Event()  # close() began: no request starts, none is waited for
        self._lock = threading.Lock()
        self._token_cache: OrderedDict[str, list[int]] = OrderedDict()
        self.model: str | None = None
        self.server_info: dict[str, Any] = {}
        self.tokenizer_info: dict[str, Any] | None = None
        self.retries = 0  # retried HTTP requests, for the report

    # ------------------------------------------------------------------ setup

    def wait_ready(self) -> None:
        """Wait (at most ``options.wait`` seconds) until the server answers and lists the model."""
        deadline = time.monotonic() + self.options.wait
        last = "no answer yet"
        delay = 0.1
        while True:
            try:
                response = self._request("GET", f"{self.url}/v1/models", timeout=min(self.options.timeout, 10.0))
            except httpx.TransportError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if response.status_code in (401, 403):
                    raise RemoteError(f"{self.url}/v1/models refused the API key ({_message(response)}); "
                                      "pass the right one with --api-key")
                if response.status_code == 200:
                    if self._pick_model(response):
                        break
                    last = f"the model {self.options.model!r} is not listed yet"
                else:
                    last = _message(response)
            if time.monotonic() + delay > deadline:
                raise RemoteError(f"the server at {self.url} did not answer and list its model within "
                                  f"{self.options.wait:g} s (last: {last})")
            self._sleep(delay)
            delay = min(delay * 2, 2.0)
        self._read_tokenizer_info()

    def _pick_model(self, response: httpx.Response) -> bool:
        try:
            entries = [e for e in response.json()["data"] if isinstance(e, dict) and isinstance(e.get("id"), str)]
        except (ValueError, KeyError, TypeError) as error:
            raise RemoteProtocolError(f"{self.url}/v1/models did not return an OpenAI model list: {error}") from None
        ids = [e["id"] for e in entries]
        if self.options.model is not None:
            chosen = next((e for e in entries if e["id"] == self.options.model), None)
            if chosen is None:
                return False
        elif len(entries) == 1:
            chosen = entries[0]
        elif not entries:
            return False
        else:
            raise RemoteError(f"the server at {self.url} lists several models {ids}: choose one with --endpoint-model")
        self.model = chosen["id"]
        self.server_info = chosen.get("rwkveval", {}) if isinstance(chosen.get("rwkveval"), dict) else {}
        return True

    def _read_tokenizer_info(self) -> None:
        try:
            response = self._request("GET", f"{self.url}/tokenizer_info", timeout=min(self.options.timeout, 10.0))
            info = response.json() if response.status_code == 200 else None
        except (httpx.TransportError, ValueError):
            info = None
        self.tokenizer_info = info if isinstance(info, dict) else None

    @property
    def tokenized(self) -> bool:
        """Prompts go as token ids from the server's own /tokenize (else as text)."""
        return self.tokenizer_info is not None

    def _require_ready(self) -> None:
        if self.model is None:
            self.wait_ready()

    def info(self) -> dict[str, Any]:
        self._require_ready()
        o = self.options
        # what the server says of its model (rwkveval serve: path, sha256, shape) stays nested: the
        # response cache keys a checkpoint by its top-level sha256, and a remote run's answers also
        # depend on the API mode and template, which that key would not see
        info = {"backend": "remote", "endpoint": self.url, "name": self.model, "model": self.model,
                "api_mode": o.api_mode, "chat_template": o.chat_template, "token_ids": self.tokenized,
                "concurrency": o.concurrency, "max_retries": o.max_retries, "max_retry_delay": o.backoff_max,
                "server_model": {k: v for k, v in self.server_info.items() if k != "limits"}}
        if o.system_prompt is not None:  # absent otherwise, so earlier runs' cache identities still match
            info["system_prompt"] = o.system_prompt
        return info

    def close(self) -> None:
        """End the HTTP client. Exchanges still running (a Ctrl-C left them in flight) are
        cancelled; their threads get :class:`RequestFailed` at once."""
        if self._loop.is_closed():
            return
        self._closed.set()

        async def shutdown() -> None:
            running = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self._client.aclose()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(10)
        self._loop.close()

    # ------------------------------------------------------------------ HTTP with retries

    def _request(self, method: str, url: str, *, json: Any = None, timeout: float | None = None) -> httpx.Response:
        """One HTTP exchange, answered whole (body read) within ``timeout`` seconds in total, else
        :class:`DeadlineExceeded`; called from any thread."""
        total = self.options.timeout if timeout is None else timeout

        async def exchange() -> httpx.Response:
            try:
                return await asyncio.wait_for(self._client.request(method, url, json=json), total)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no complete answer within {total:g} s") from None

        closed = RequestFailed("the remote backend was closed (Ctrl-C or the end of the run) before this "
                               "request was answered")
        if self._closed.is_set():
            raise closed
        coroutine = exchange()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:  # the loop closed between the check and here
            coroutine.close()
            raise closed from None
        while True:  # waits in short slices, so a request caught by close() never blocks its thread
            try:
                return future.result(0.5)
            except concurrent.futures.TimeoutError:
                if self._closed.is_set():
                    raise closed from None
            except concurrent.futures.CancelledError:  # cancelled by close()
                raise closed from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter: half the delay fixed, half random."""
        delay = min(self.options.backoff_max, self.options.backoff * 2 ** attempt)
        delay = delay / 2 + self._rng.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.options.backoff_max))
        return delay

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reason = ""
        for attempt in range(self.options.max_retries + 1):
            retry_after = None
            try:
                response = self._request("POST", f"{self.url}{path}", json=body)
            except httpx.TransportError as error:  # refused, reset, dropped, timed out
                reason = f"{type(error).__name__}: {error or 'connection error'}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        reason = "HTTP 200 with a body that is not JSON"
                    else:
                        if isinstance(data, dict):
                            return data
                        reason = "HTTP 200 with a body that is not a JSON object"
                elif status in (401, 403):
                    raise RemoteError(f"{self.url}{path} refused the API key ({_message(response)})")
                elif status == 429 or status >= 500:
                    reason = _message(response)
                    header = response.headers.get("retry-after", "")
                    retry_after = float(header) if header.replace(".", "", 1).isdigit() else None
                else:  # another 4xx: this request is wrong, sending it again will not help
                    raise RequestFailed(_message(response))
            if attempt == self.options.max_retries:
                break
            with self._lock:
                self.retries += 1
            self._sleep(self._backoff(attempt, retry_after))
        attempts = self.options.max_retries + 1
        raise RequestFailed(f"{reason} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})")

    def _map(self, kind: str, requests: Sequence[Any], run: Callable[[Any], Any],
             listener: Listener) -> list[Any]:
        """``run`` every request with bounded concurrency; collect failures, stop at a fatal error.

        Each answer goes to ``listener`` as it arrives (so the cache keeps the requests that
        succeeded even when others fail, and progress moves during the batch), with the tokens
        the server says it processed. A fatal error, or Ctrl-C, drops the requests still queued
        at once instead of sending them."""
        self._require_ready()
        results: list[Any] = [None] * len(requests)
        failed: dict[int, str] = {}
        pool = ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="rwkveval-remote")
        try:
            pending = {pool.submit(run, r): i for i, r in enumerate(requests)}
            for future in as_completed(pending):
                i = pending[future]
                try:
                    results[i] = future.result()
                except RequestFailed as error:
                    failed[i] = str(error)
                    continue
                except InvalidResponse as error:  # never retried: the server answered, wrongly
                    failed[i] = f"invalid answer: {error}"
                    continue
                listener.on_result(i, results[i])
                listener.on_tokens(*_usage(results[i]))
        except BaseException:
            # the requests in flight end within their deadline; the queued ones are never sent
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        if failed:
            raise RemoteFailures(kind, len(requests), failed, requests, self.url)
        return results

    # ------------------------------------------------------------------ tokens

    def _tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        with self._lock:
            cached = self._token_cache.get(text)
        if cached is not None:
            return cached
        data = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        tokens = data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RemoteProtocolError(f"{self.url}/tokenize did not return a list of token ids: {str(data)[:200]}")
        with self._lock:
            self._token_cache[text] = tokens
            while len(self._token_cache) > 1 << 16:
                self._token_cache.popitem(last=False)
        return tokens

    def _check_bos(self, bos: bool) -> None:
        if not bos:
            return
        if not self.tokenized or self.tokenizer_info.get("eos_token_id") != 0:
            raise RemoteError(
                f"the requests start with RWKV's token 0 (end of document), but the server at {self.url} "
                + ("has no /tokenizer_info, so prompts cannot be sent as token ids"
                   if not self.tokenized else "does not say its end-of-document token is 0 (eos_token_id)")
                + "; pass --no-bos to evaluate without it")

    def count_tokens(self, text: str, bos: bool = True) -> int:
        self._require_ready()
        self._check_bos(bos)
        if not self.tokenized:
            raise RemoteError(f"counting tokens needs the server's /tokenize endpoint, which {self.url} lacks")
        return len(self._tokenize(text)) + (1 if bos else 0)

    # ------------------------------------------------------------------ scoring

    def _echo(self, prompt: str | list[int]) -> Echo:
        """Score a prompt: its checked log-probabilities (:func:`validate_echo`)."""
        if self.options.api_mode == "chat":
            raise RemoteError("log-likelihood requests need /v1/completions with echo and logprobs; "
                              "--api-mode chat can only run generation benchmarks")
        data = self._post("/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1,
                                              "temperature": 0, "logprobs": 1, "echo": True})
        return validate_echo(data, prompt, f"{self.url}/v1/completions")

    def _loglikelihood_one(self, request: LoglikelihoodRequest) -> LoglikelihoodResponse:
        if self.tokenized:
            context = ([0] if request.bos else []) + self._tokenize(request.context)
            continuation = self._tokenize(request.continuation)
            if not context or not continuation:
                raise RequestFailed(f"empty {'context' if not context else 'continuation'} after tokenization")
            echo = self._echo(context + continuation)
            logprob, greedy = echo.sum(len(context), len(context) + len(continuation))
            return LoglikelihoodResponse(logprob, greedy, len(context), len(continuation))
        if not request.context or not request.continuation:
            raise RequestFailed("text prompts need a non-empty context and continuation")
        echo = self._echo(request.context + request.continuation)
        text_offset, n_prompt = echo.text_offset, echo.n_prompt
        if text_offset is None:
            raise RemoteProtocolError(f"{self.url}/v1/completions returned no text_offset: without token ids "
                                      "the continuation's tokens cannot be found")
        start = next((i for i in range(n_prompt) if text_offset[i] >= len(request.context)), n_prompt)
        if start == 0 or start == n_prompt:
            raise RequestFailed(f"the continuation {request.continuation!r} has no token of its own "
                                "in the echoed prompt")
        logprob, greedy = echo.sum(start, n_prompt)
        return LoglikelihoodResponse(logprob, greedy, start, n_prompt - start)

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      listener: Listener = SILENT) -> list[LoglikelihoodResponse]:
        self._require_ready()
        for bos in {r.bos for r in requests}:
            self._check_bos(bos)
        return self._map("loglikelihood", requests, self._loglikelihood_one, listener)

    def _rolling_one(self, request: RollingRequest) -> RollingResponse:
        if self.tokenized:
            ids = self._tokenize(request.text)
            prompt: str | list[int] = ([0] if request.bos else []) + ids
            if len(prompt) < 2:
                raise RequestFailed("nothing to score: the text needs at least one token after the first")
            echo = self._echo(prompt)
        else:
            echo = self._echo(request.text)
            ids = list(range(echo.n_prompt))
        logprob, _ = echo.sum(1, echo.n_prompt)
        return RollingResponse(logprob, len(ids) if request.bos else len(ids) - 1)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              listener: Listener = SILENT) -> list[RollingResponse]:
        self._require_ready()
        for bos in {r.bos for r in requests}:
            self._check_bos(bos)
        return self._map("loglikelihood_rolling", requests, self._rolling_one, listener)

    # ------------------------------------------------------------------ generation

    def _generate_one(self, request: GenerateRequest) -> GenerateResponse:
        o = self.options
        stop = list(request.stop)
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_new_tokens,
                                "temperature": request.temperature, "top_p": request.top_p}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.top_k > 0:
            body["top_k"] = request.top_k  # not OpenAI's; vLLM and rwkveval serve take it
        if o.api_mode == "chat":
            body["messages"] = chat_messages(request.context, o.system_prompt)
            path = "/v1/chat/completions"
        else:
            template = CHAT_TEMPLATES[o.chat_template] if o.chat_template else None
            text = as_sent(request.context, o.api_mode, o.chat_template, o.system_prompt)
            stop += [s for s in (template.stop if template else ()) if s not in stop]
            body["prompt"] = [0] + self._tokenize(text) if request.bos else text
            path = "/v1/completions"
        if stop:
            body["stop"] = stop
        data = self._post(path, body)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if o.api_mode == "chat" else choice["text"]
            reason = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError) as error:
            raise RemoteProtocolError(f"{self.url}{path} returned no choices[0] text: "
                                      f"{type(error).__name__}: {error}") from None
        text = text or ""
        cuts = [text.find(s) for s in stop if s in text]  # servers that leave the stop string in the text
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return GenerateResponse(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                                "length" if reason == "length" else "stop")

    def generate(self, requests: Sequence[GenerateRequest],
                 listener: Listener = SILENT) -> list[GenerateResponse]:
        self._require_ready()
        if self.options.api_mode == "chat" and any(r.bos for r in requests):
            raise RemoteError("--api-mode chat sends text messages, which cannot start with RWKV's token 0; "
                              "pass --no-bos")
        if self.options.api_mode == "completion":
            for bos in {r.bos for r in requests}:
                self._check_bos(bos)
        return self._map("generate", requests, self._generate_one, listener)
