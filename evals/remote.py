"""A remote OpenAI-compatible endpoint behind the :class:`evals.backend.Backend` interface.

``pytest evals --endpoint URL`` runs every benchmark against any server that speaks the OpenAI
API (``rwkveval serve``, vLLM, llama.cpp, a hosted API). The three request kinds map to:

- log-likelihood and rolling log-likelihood: ``POST /v1/completions`` with ``echo: true``,
  ``logprobs: 1`` and ``max_tokens: 1``; the prompt tokens' log-probabilities are summed over the
  continuation. A server that does not return them is a :class:`RemoteProtocolError`, never a
  silent chance-level score.
- generation: ``POST /v1/completions`` (``--api-mode completion``, optionally wrapped in a chat
  template, :data:`CHAT_TEMPLATES`) or ``POST /v1/chat/completions`` (``--api-mode chat``, the
  context as one user message).

Token ids. When the server has the tokenizer endpoints (``/tokenizer_info``, ``/tokenize``;
``rwkveval serve`` and vLLM do), context and continuation are tokenized separately, exactly as
:class:`evals.backend.LocalBackend` does, and sent as token ids, so the scores equal the local
engine's. Otherwise prompts go as text and the continuation starts at the first token whose
``text_offset`` reaches the end of the context. Requests that start with RWKV's token 0
(``bos=True``, the suite's default) need token ids and a server whose end-of-document token is 0
(it says ``"eos_token_id": 0`` in ``/tokenizer_info``); elsewhere the run stops with an error that
says to pass ``--no-bos``.

Failures. Each HTTP request is retried on connection errors, 429 and 5xx with exponential
backoff and jitter (honouring ``Retry-After``), up to ``max_retries`` times. Requests that still
fail (or get another 4xx) are collected; when the batch is over, :class:`RemoteFailures` names
every failed request and why, and no response is returned for any of them, so nothing is scored.
A wrong API key or a server without prompt log-probabilities stops the batch at once.
"""
from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from evals.backend import (
    GenerateRequest, GenerateResponse, LoglikelihoodRequest, LoglikelihoodResponse, Listener, RollingRequest,
    RollingResponse, SILENT,
)

API_MODES = ("completion", "chat")


@dataclass(frozen=True)
class ChatTemplate:
    """Wraps a generation context as one user turn and opens the assistant's turn."""

    prefix: str
    suffix: str
    stop: tuple[str, ...]

    def render(self, context: str) -> str:
        return self.prefix + context + self.suffix


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "rwkv": ChatTemplate("User: ", "\n\nAssistant:", ("\n\nUser:",)),
    "chatml": ChatTemplate("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>",)),
    # Qwen2.5's template with its default system message
    "qwen": ChatTemplate("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                         "<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n",
                         ("<|im_end|>", "<|endoftext|>")),
    # DeepSeek-R1: the reply opens with its reasoning; the text is returned whole
    "r1": ChatTemplate("<｜begin▁of▁sentence｜><｜User｜>", "<｜Assistant｜><think>\n", ("<｜end▁of▁sentence｜>",)),
}


class RemoteError(RuntimeError):
    """The endpoint cannot be used as configured (unreachable, wrong key, unknown model, bad option)."""


class RemoteProtocolError(RemoteError):
    """The server answered, but not with what the request kind needs (e.g. no prompt logprobs)."""


class RequestFailed(Exception):
    """One request failed for good: retries exhausted, or an error that retrying cannot fix."""


class RemoteFailures(RemoteError):
    """Some requests of a batch failed; ``failed`` maps their index to the reason, nothing was scored."""

    def __init__(self, kind: str, total: int, failed: dict[int, str], requests: Sequence[Any], url: str):
        self.kind, self.total, self.failed, self.requests = kind, total, dict(sorted(failed.items())), requests
        lines = []
        for i, reason in list(self.failed.items())[:10]:
            request = requests[i]
            text = getattr(request, "context", None) or getattr(request, "text", "")
            what = f"context ending {text[-60:]!r}"
            if getattr(request, "continuation", None):
                what += f", continuation {request.continuation[:40]!r}"
            lines.append(f"  [{i}] {what}: {reason}")
        more = f"\n  ... and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""
        super().__init__(f"{len(self.failed)} of {total} {kind} requests to {url} failed; none of them is "
                         f"scored:\n" + "\n".join(lines) + more)


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
    timeout: float = 300.0  # seconds per HTTP request
    wait: float = 60.0  # seconds to wait for the server to answer and list the model
    backoff: float = 0.5  # first retry delay in seconds, doubled each retry
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        if self.api_mode not in API_MODES:
            raise ValueError(f"api_mode must be one of {API_MODES}, found {self.api_mode!r}")
        if self.chat_template is not None and self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"chat_template must be one of {sorted(CHAT_TEMPLATES)}, found {self.chat_template!r}")
        if self.chat_template is not None and self.api_mode == "chat":
            raise ValueError("a chat template applies to --api-mode completion; in chat mode the server "
                             "applies its own")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.wait < 0:
            raise ValueError(f"expected concurrency >= 1, max_retries >= 0, timeout > 0 and wait >= 0, found "
                             f"{self.concurrency}, {self.max_retries}, {self.timeout}, {self.wait}")
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


class RemoteBackend:
    """A :class:`evals.backend.Backend` over HTTP; see the module docstring."""

    def __init__(self, options: RemoteOptions, *, rng: random.Random | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.options = options
        self.url = base_url(options.url)
        self._rng = rng or random.Random()
        self._sleep = sleep
        headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(options.timeout),
                                    limits=httpx.Limits(max_connections=options.concurrency + 2))
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
                response = self._client.get(f"{self.url}/v1/models", timeout=min(self.options.timeout, 10.0))
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
            response = self._client.get(f"{self.url}/tokenizer_info", timeout=min(self.options.timeout, 10.0))
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
        return {"backend": "remote", "endpoint": self.url, "name": self.model, "model": self.model,
                "api_mode": o.api_mode, "chat_template": o.chat_template, "token_ids": self.tokenized,
                "concurrency": o.concurrency, "max_retries": o.max_retries,
                "server_model": {k: v for k, v in self.server_info.items() if k != "limits"}}

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ HTTP with retries

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
                response = self._client.post(f"{self.url}{path}", json=body)
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
        succeeded even when others fail), with the tokens the server says it processed."""
        self._require_ready()
        results: list[Any] = [None] * len(requests)
        failed: dict[int, str] = {}
        with ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="rwkveval-remote") as pool:
            pending = {pool.submit(run, r): i for i, r in enumerate(requests)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    try:
                        results[i] = future.result()
                    except RequestFailed as error:
                        failed[i] = str(error)
                        continue
                    except BaseException:
                        for other in pending:
                            other.cancel()
                        raise
                    listener.on_result(i, results[i])
                    listener.on_tokens(*_usage(results[i]))
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

    def _echo(self, prompt: str | list[int]) -> tuple[list[float | None], list[Any], list[int] | None, int]:
        """Score a prompt: (token_logprobs, top_logprobs, text_offset, prompt token count)."""
        if self.options.api_mode == "chat":
            raise RemoteError("log-likelihood requests need /v1/completions with echo and logprobs; "
                              "--api-mode chat can only run generation benchmarks")
        data = self._post("/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1,
                                              "temperature": 0, "logprobs": 1, "echo": True})
        try:
            logprobs = data["choices"][0]["logprobs"]
            token_logprobs, top = logprobs["token_logprobs"], logprobs["top_logprobs"]
            if not isinstance(token_logprobs, list) or not isinstance(top, list):
                raise TypeError("token_logprobs and top_logprobs must be lists")
        except (KeyError, IndexError, TypeError) as error:
            raise RemoteProtocolError(
                f"{self.url}/v1/completions did not return the prompt's log-probabilities for a request with "
                f"echo=true and logprobs=1 ({type(error).__name__}: {error}); this server cannot score "
                "log-likelihood benchmarks") from None
        n_prompt = len(prompt) if isinstance(prompt, list) else data.get("usage", {}).get("prompt_tokens")
        if not isinstance(n_prompt, int):
            n_prompt = len(token_logprobs) - 1  # echo + max_tokens 1: the last entry is the generated token
        if len(token_logprobs) < n_prompt or len(top) < n_prompt:
            raise RemoteProtocolError(f"{self.url}/v1/completions echoed {len(token_logprobs)} log-probabilities "
                                      f"for a prompt of {n_prompt} tokens: it does not support echo with logprobs")
        return token_logprobs, top, logprobs.get("text_offset"), n_prompt

    def _sum(self, token_logprobs: list, top: list, start: int, end: int) -> tuple[float, bool]:
        total, greedy = 0.0, True
        for i in range(start, end):
            lp = token_logprobs[i]
            if not isinstance(lp, (int, float)) or isinstance(lp, bool):
                raise RemoteProtocolError(f"{self.url}: prompt token {i} has log-probability {lp!r}, expected a number")
            total += lp
            alternatives = top[i] if isinstance(top[i], dict) else {}
            if alternatives and lp < max(alternatives.values()):
                greedy = False
        return total, greedy

    def _loglikelihood_one(self, request: LoglikelihoodRequest) -> LoglikelihoodResponse:
        if self.tokenized:
            context = ([0] if request.bos else []) + self._tokenize(request.context)
            continuation = self._tokenize(request.continuation)
            if not context or not continuation:
                raise RequestFailed(f"empty {'context' if not context else 'continuation'} after tokenization")
            token_logprobs, top, _, _ = self._echo(context + continuation)
            logprob, greedy = self._sum(token_logprobs, top, len(context), len(context) + len(continuation))
            return LoglikelihoodResponse(logprob, greedy, len(context), len(continuation))
        if not request.context or not request.continuation:
            raise RequestFailed("text prompts need a non-empty context and continuation")
        token_logprobs, top, text_offset, n_prompt = self._echo(request.context + request.continuation)
        if not isinstance(text_offset, list) or len(text_offset) < n_prompt:
            raise RemoteProtocolError(f"{self.url}/v1/completions returned no text_offset: without token ids "
                                      "the continuation's tokens cannot be found")
        start = next((i for i in range(n_prompt) if text_offset[i] >= len(request.context)), n_prompt)
        if start == 0 or start == n_prompt:
            raise RequestFailed(f"the continuation {request.continuation!r} has no token of its own "
                                "in the echoed prompt")
        logprob, greedy = self._sum(token_logprobs, top, start, n_prompt)
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
            token_logprobs, top, _, _ = self._echo(prompt)
            n_prompt = len(prompt)
        else:
            token_logprobs, top, _, n_prompt = self._echo(request.text)
            ids = list(range(n_prompt))
        logprob, _ = self._sum(token_logprobs, top, 1, n_prompt)
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
            body["messages"] = [{"role": "user", "content": request.context}]
            path = "/v1/chat/completions"
        else:
            template = CHAT_TEMPLATES[o.chat_template] if o.chat_template else None
            text = template.render(request.context) if template else request.context
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
