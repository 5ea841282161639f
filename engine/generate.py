"""Batched generation: every sequence stops on its own, and a waiting prompt takes its slot.

Decoding runs all live sequences as one batch, one token per step. When a sequence finishes
(a stop token, a stop string, or its token budget), its row leaves the batch and the next
waiting prompt is prefilled into the batch, so the batch stays full until the queue is empty.
Sampling draws from one generator per prompt, seeded from ``seed`` and the prompt's index, so
a seeded run is reproducible whatever the batch size or the order in which slots free up.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .batching import TokensCallback, advance
from .errors import InputError
from .scoring import ResultCallback, _check_ids
from .state import State

DOCUMENT_END = 0  # token 0 separates documents: generation always stops there


@dataclass
class Generation:
    """One prompt's output. ``text`` is cut before a stop string; ``tokens`` holds every token
    generated (a stop token id excluded). finish_reason: "stop" or "length"."""

    tokens: list[int]
    text: str
    finish_reason: str
    stop: str | int | None = None
    prompt_tokens: int = 0


@dataclass
class _Live:
    index: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                 generator: torch.Generator | None) -> int:
    """One token from logits [V]: argmax at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits.double() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the tokens ranked above each one
        sorted_p[before >= top_p] = 0.0  # keep the smallest set reaching top_p (at least one token)
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _check_options(max_new_tokens, temperature, top_p, top_k, batch_size) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens must be an int >= 0, found {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise InputError(f"temperature must be >= 0, found {temperature!r}")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], found {top_p!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be an int >= 0 (0 = off), found {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, found {batch_size!r}")


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop=None,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
             batch_size: int = 16, *, on_result: ResultCallback | None = None,
             on_tokens: TokensCallback | None = None) -> list[Generation]:
    """Generate for every prompt (token ids); see the module docstring for the batching.

    ``on_result(i, generation)`` is called the moment prompt i finishes (so a caller can store
    it before the batch ends); ``on_tokens(prompt_tokens, generated_tokens)`` after each prefill
    and each decoding step."""
    _check_options(max_new_tokens, temperature, top_p, top_k, batch_size)
    V = model.config.vocab_size
    checked = []
    for n, p in enumerate(prompts):
        ids = _check_ids(p, V, f"prompt {n}")
        if not ids:
            raise InputError(f"prompt {n} is empty; expected at least one token (start with token 0)")
        checked.append(ids)
    stop_ids, stop_strs = {DOCUMENT_END}, []
    for s in ([] if stop is None else ([stop] if isinstance(stop, (str, int)) else list(stop))):
        if isinstance(s, bool) or not isinstance(s, (int, str)):
            raise InputError(f"stop entries must be token ids (int) or strings, found {type(s).__name__} {s!r}")
        if isinstance(s, int):
            stop_ids.add(_check_ids([s], V, "stop token")[0])
        elif s == "":
            raise InputError("stop strings must not be empty")
        else:
            stop_strs.append(s)
    stop_bytes = [(s, s.encode("utf-8")) for s in stop_strs]
    longest_stop = max((len(b) for _, b in stop_bytes), default=0)
    tok = model.tokenizer
    base_seed = seed if seed is not None else int(torch.randint(0, 2**62, (1,)))

    results: list[Generation | None] = [None] * len(checked)
    if max_new_tokens == 0:
        results = [Generation([], "", "length", None, len(p)) for p in checked]
        for i, generation in enumerate(results):
            if on_result is not None:
                on_result(i, generation)
        return results
    queue = deque(range(len(checked)))
    live: list[_Live] = []
    state: State | None = None
    logits: torch.Tensor | None = None  # [len(live), V]: the logits for each live row's next token

    def finish(item: _Live, reason: str, cut: int | None, what) -> None:
        data = bytes(item.data if cut is None else item.data[:cut])
        results[item.index] = Generation(item.tokens, data.decode("utf-8", errors="replace"), reason, what,
                                         len(checked[item.index]))
        if on_result is not None:
            on_result(item.index, results[item.index])

    while queue or live:
        if queue and len(live) < batch_size:
            admit = [queue.popleft() for _ in range(min(batch_size - len(live), len(queue)))]
            new_state, new_logits = advance(model, [checked[i] for i in admit], want_last=True, on_tokens=on_tokens)
            for i in admit:
                gen = None
                if temperature > 0:
                    gen = torch.Generator().manual_seed((base_seed * 1_000_003 + i) % (2**63))
                live.append(_Live(i, gen))
            state = new_state if state is None else State.cat([state, new_state])
            logits = new_logits if logits is None else torch.cat([logits, new_logits])

        keep, next_tokens = [], []
        if on_tokens is not None:
            on_tokens(0, len(live))  # one token sampled per live row (a stop token included)
        for row, item in enumerate(live):
            t = sample_token(logits[row], temperature, top_p, top_k, item.generator)
            if t in stop_ids:
                finish(item, "stop", None, t)
                continue
            item.tokens.append(t)
            before = len(item.data)
            item.data += tok.token_bytes(t)
            hit = None
            if stop_bytes:
                window_start = max(0, before - longest_stop + 1)
                found = [(item.data.find(b, window_start), s) for s, b in stop_bytes]
                found = [(at, s) for at, s in found if at >= 0]
                hit = min(found) if found else None
            if hit is not None:
                finish(item, "stop", hit[0], hit[1])
            elif len(item.tokens) >= max_new_tokens:
                finish(item, "length", None, None)
            else:
                keep.append(row)
                next_tokens.append(t)
        if len(keep) < len(live):
            live = [live[r] for r in keep]
            state = state.select(keep) if keep else None
            logits = None
        if live:
            step = torch.tensor(next_tokens, dtype=torch.long).unsqueeze(1)  # (B, 1)
            out, state = model.forward(step, state, logits="last", inplace=True)
            logits = out[:, 0]
    return results  # type: ignore[return-value]
