"""Request bodies of the OpenAI-compatible endpoints, and their checks.

Parsing is two steps. Pydantic checks the JSON types (strict: ``"5"`` is not a number, ``true`` is
not a token id); :func:`check_completion` and friends then check values and limits and turn the
body into the scheduler's plain :class:`~engine.server.scheduler.Sampling`. Either step raises
:class:`ApiError`, which the app answers with 400 and an OpenAI-style error body naming
the field. Fields that OpenAI clients send and that change nothing (``user``, ``stream_options``
...) are accepted; options that would change the output but are not implemented (penalties,
``logit_bias``, ``n > 1``) are refused rather than ignored.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from .config import ServerConfig

Number = Union[StrictInt, StrictFloat]
TokenIds = list[StrictInt]
# the OpenAI forms of `prompt`: text, texts, token ids, lists of token ids
Prompt = Union[StrictStr, list[StrictStr], TokenIds, list[TokenIds]]
Stop = Union[StrictStr, list[StrictStr], None]
STOP_MAX_CHARS = 1000
CHARS_PER_TOKEN_BOUND = 16


class ApiError(ValueError):
    """A request the server will not run (or cannot run now): answered with ``status`` (400 for bad
    input, 401, 404, 413, 429, 503) and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Body):
    include_usage: StrictBool = False


class CompletionRequest(_Body):
    model: StrictStr | None = None
    prompt: Prompt
    max_tokens: StrictInt | None = 16
    temperature: Number | None = 1.0
    top_p: Number | None = 1.0
    top_k: StrictInt | None = None  # vLLM's extension; -1 or 0: off
    stop: Stop = None
    seed: StrictInt | None = None
    logprobs: StrictInt | None = None
    echo: StrictBool | None = False
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = 1
    best_of: StrictInt | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Any] | None = None
    suffix: StrictStr | None = None
    user: StrictStr | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, list[TextPart]]
    name: StrictStr | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Body):
    model: StrictStr | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: Number | None = 1.0
    top_p: Number | None = 1.0
    top_k: StrictInt | None = None
    stop: Stop = None
    seed: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = 1
    logprobs: StrictBool | None = False
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    logit_bias: dict[str, Any] | None = None
    user: StrictStr | None = None


class TokenizeRequest(_Body):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[Message] | None = None
    add_special_tokens: StrictBool | None = False


class DetokenizeRequest(_Body):
    model: StrictStr | None = None
    tokens: TokenIds


# fields whose type is a union: pydantic reports one error per member, this says it in one line
UNION_HINTS = {
    "prompt": "expected a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "expected a string, a list of strings or null",
    "content": "expected a string or a list of {\"type\": \"text\", \"text\": ...} parts",
}


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate ``body`` (parsed JSON) as ``model``; the first problem becomes an ApiError."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, found {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        field = next((str(p) for p in first["loc"] if str(p) in UNION_HINTS), None)
        if field is not None and len(errors) > 1 and first["type"] != "missing":
            # the path up to the union field, without pydantic's member tags after it
            path = []
            for p in first["loc"]:
                path.append(str(p))
                if p == field:
                    break
            found = repr(_value_at(body, path))
            found = found if len(found) <= 80 else found[:77] + "..."
            raise ApiError(f"{'.'.join(path)}: {UNION_HINTS[field]}, found {found}", param=".".join(path)) from None
        found = repr(first.get("input"))
        found = found if len(found) <= 80 else found[:77] + "..."
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        if first["type"] == "missing":
            raise ApiError(f"{problem} (missing)", param=where) from None
        more = f" (and {error.error_count() - 1} more problems)" if error.error_count() > 1 else ""
        raise ApiError(f"{problem}, found {found}{more}", param=where) from None


def _value_at(body: Any, path: list[str]) -> Any:
    for p in path:
        if isinstance(body, dict):
            body = body.get(p)
        elif isinstance(body, list) and p.isdigit() and int(p) < len(body):
            body = body[int(p)]
        else:
            return None
    return body


# ---------------------------------------------------------------------- value checks


def check_model(name: str | None, config: ServerConfig) -> None:
    if name is not None and name != config.model_name:
        raise ApiError(f"the model {name!r} does not exist: this server serves {config.model_name!r}",
                       param="model", status=404, code="model_not_found")


def _number(value, name: str, lo: float, hi: float, default: float, lo_open: bool = False) -> float:
    if value is None:
        return default
    value = float(value)
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise ApiError(f"{name} must be in {bracket}{lo:g}, {hi:g}], found {value!r}", param=name)
    return value


def check_refused(body: BaseModel) -> None:
    """Options that would change the output and are not implemented: refused, never ignored."""
    if (getattr(body, "n", 1) or 1) != 1:
        raise ApiError(f"n must be 1 (one choice per prompt), found {body.n}", param="n")
    if getattr(body, "best_of", None) not in (None, 1):
        raise ApiError(f"best_of is not supported, found {body.best_of}", param="best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name, None)
        if value not in (None, 0):
            raise ApiError(f"{name} is not supported (only 0), found {value!r}", param=name)
    if getattr(body, "logit_bias", None):
        raise ApiError("logit_bias is not supported", param="logit_bias")
    if getattr(body, "suffix", None):
        raise ApiError("suffix is not supported", param="suffix")


def check_stop(stop: Stop, config: ServerConfig) -> tuple[str, ...]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > config.max_stop:
        raise ApiError(f"stop holds at most {config.max_stop} strings, found {len(stops)}", param="stop")
    for s in stops:
        if not s or len(s) > STOP_MAX_CHARS:
            raise ApiError(f"stop strings must hold 1 to {STOP_MAX_CHARS} characters, found {len(s)}",
                           param="stop")
    return tuple(stops)


def check_sampling(body, max_tokens: int | None, config: ServerConfig) -> dict[str, Any]:
    """The sampling fields shared by both endpoints, checked."""
    if max_tokens is None:
        max_tokens = config.max_tokens
    if not 0 <= max_tokens <= config.max_tokens:
        raise ApiError(f"max_tokens must be in [0, {config.max_tokens}] (the server's limit), "
                       f"found {max_tokens}", param="max_tokens")
    top_k = body.top_k if body.top_k is not None else 0
    if top_k < -1 or top_k > 1 << 30:
        raise ApiError(f"top_k must be -1 or 0 (off) or a positive count, found {top_k}", param="top_k")
    return {
        "max_tokens": max_tokens,
        "temperature": _number(body.temperature, "temperature", 0.0, 2.0, 1.0),
        "top_p": _number(body.top_p, "top_p", 0.0, 1.0, 1.0, lo_open=True),
        "top_k": max(0, top_k),
        "seed": None if body.seed is None else body.seed % (1 << 63),
        "stop_strs": check_stop(body.stop, config),
    }


def check_token_ids(ids: list[int], vocab_size: int, param: str) -> list[int]:
    for t in ids:
        if not 0 <= t < vocab_size:
            raise ApiError(f"{param}: token id {t} is out of the vocabulary: expected ids in [0, {vocab_size})",
                                 param=param)
    return ids


def chat_prompt_tokens(messages: list[tuple[str, str]], tokenizer, config: ServerConfig, *,
                       limit: bool = True) -> list[int]:
    """The chat prompt of ``messages`` as token ids (:func:`engine.server.chat.render_tokens`, as
    ``rwkveval chat`` feeds them), checked against the server's limits (without ``limit``, only the
    bound on characters: ``/tokenize`` counts a prompt too long to run, as it does a text)."""
    from .chat import render_tokens

    chars = sum(len(content) for _, content in messages)
    if chars > CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens:
        raise ApiError(f"the messages hold {chars} characters, far more than the limit of "
                       f"{config.max_prompt_tokens} tokens can hold", param="messages")
    ids = render_tokens(messages, tokenizer.encode)
    if limit and len(ids) > config.max_prompt_tokens:
        raise ApiError(f"the chat prompt has {len(ids)} tokens; the server's limit is {config.max_prompt_tokens}",
                       param="messages")
    return ids


def prompt_token_lists(prompt: Prompt, tokenizer, config: ServerConfig) -> list[list[int]]:
    """The prompts of a completion request as token-id lists, each checked against the limits."""
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]  # one prompt of token ids
    else:
        items = list(prompt)
    if not items:
        raise ApiError("prompt holds no prompts: expected a string, token ids, or a non-empty list of them",
                       param="prompt")
    if len(items) > config.max_prompts:
        raise ApiError(f"prompt holds {len(items)} prompts; the server's limit is {config.max_prompts} "
                       "per request", param="prompt")
    out = []
    for n, item in enumerate(items):
        if isinstance(item, str):
            # bounds the tokenizer's work before the token count is known (text averages ~4 characters a token)
            if len(item) > CHARS_PER_TOKEN_BOUND * config.max_prompt_tokens:
                raise ApiError(f"prompt {n} has {len(item)} characters, far more than the limit of "
                               f"{config.max_prompt_tokens} tokens can hold", param="prompt")
            ids = list(tokenizer.encode(item))
        else:
            ids = check_token_ids(list(item), tokenizer.vocab_size, "prompt")
        if not ids:
            raise ApiError(f"prompt {n} is empty: expected at least one token", param="prompt")
        if len(ids) > config.max_prompt_tokens:
            raise ApiError(f"prompt {n} has {len(ids)} tokens; the server's limit is "
                           f"{config.max_prompt_tokens}", param="prompt")
        out.append(ids)
    return out
