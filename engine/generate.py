"""Batched generation: every sequence stops on its own, and a waiting prompt takes its slot.

``generate`` is :class:`engine.decoding.Decoder` over a list of prompts with one set of settings:
all live sequences decode as one batch, one token per step; when a sequence finishes (a stop
token, a stop string, or its token budget) its row leaves the batch and the next waiting prompt
is prefilled into it, so the batch stays full until the queue is empty. Sampling draws from one
generator per prompt, seeded ``row_seed(seed, i)`` from ``seed`` and the prompt's index, so a
seeded run is reproducible whatever the batch size or the order in which slots free up (up to
float rounding: the product forms are chosen per row count, so a near tie between two tokens can
go the other way in another batch size); a caller whose prompts are independent requests passes
one seed per prompt instead, used as given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .batching import TokensCallback, auto_decode_rows, check_batch_size
from .decoding import DOCUMENT_END, Decoder, Row, Settings, random_base_seed, row_seed, sample_token
from .errors import InputError, check_ids
from .scoring import ResultCallback

__all__ = ["DOCUMENT_END", "Generation", "generate", "parse_stop", "sample_token"]


@dataclass
class Generation:
    """One prompt's output. ``text`` is cut before a stop string; ``tokens`` holds every token
    generated (a stop token id excluded). finish_reason: "stop" or "length"."""

    tokens: list[int]
    text: str
    finish_reason: str
    stop: str | int | None = None
    prompt_tokens: int = 0


def _check_options(max_new_tokens, temperature, top_p, top_k, batch_size) -> None:
    Settings(max_new_tokens, temperature, top_p, top_k).check(2**31)
    check_batch_size(batch_size)


def parse_stop(stop, vocab_size: int) -> tuple[frozenset[int], tuple[str, ...]]:
    """``stop`` (None, a token id, a string, or a list of both) -> (stop ids with token 0, stop strings)."""
    stop_ids, stop_strs = {DOCUMENT_END}, []
    for s in ([] if stop is None else ([stop] if isinstance(stop, (str, int)) else list(stop))):
        if isinstance(s, bool) or not isinstance(s, (int, str)):
            raise InputError(f"stop entries must be token ids (int) or strings, found {type(s).__name__} {s!r}")
        if isinstance(s, int):
            stop_ids.add(check_ids([s], vocab_size, "stop token")[0])
        elif s == "":
            raise InputError("stop strings must not be empty")
        else:
            stop_strs.append(s)
    return frozenset(stop_ids), tuple(stop_strs)


def generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop=None,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | Sequence[int] | None = None,
             batch_size: int | None = 16, *, on_result: ResultCallback | None = None,
             on_tokens: TokensCallback | None = None) -> list[Generation]:
    """Generate for every prompt (token ids); see the module docstring for the batching.

    ``seed``: the call's base seed (prompt i samples with ``row_seed(seed, i)``; None: random), or a
    list of one seed per prompt, each prompt's own.

    ``on_result(i, generation)`` is called the moment prompt i finishes (so a caller can store
    it before the batch ends); ``on_tokens(prompt_tokens, generated_tokens)`` after each prefill
    and each decoding step. ``batch_size=None``: rows decoded together sized from the model and
    free memory (:func:`engine.batching.auto_decode_rows`)."""
    _check_options(max_new_tokens, temperature, top_p, top_k, batch_size)
    V = model.config.vocab_size
    checked = []
    for n, p in enumerate(prompts):
        ids = check_ids(p, V, f"prompt {n}")
        if not ids:
            raise InputError(f"prompt {n} is empty; expected at least one token (start with token 0)")
        checked.append(ids)
    stop_ids, stop_strs = parse_stop(stop, V)
    if isinstance(seed, (list, tuple)):
        if len(seed) != len(checked) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seed):
            raise InputError(f"seed must be an int or one int per prompt ({len(checked)}), found {seed!r:.80}")
        seeds = list(seed)
    else:
        base_seed = seed if seed is not None else random_base_seed()
        seeds = [row_seed(base_seed, i) for i in range(len(checked))]

    results: list[Generation | None] = [None] * len(checked)
    if max_new_tokens == 0:
        results = [Generation([], "", "length", None, len(p)) for p in checked]
        for i, generation in enumerate(results):
            if on_result is not None:
                on_result(i, generation)
        return results

    def finish(row: Row) -> None:
        i = row.tag
        results[i] = Generation(row.generated, row.text(), row.finish_reason, row.stop, len(checked[i]))
        if on_result is not None:
            on_result(i, results[i])

    rows = [Row(Settings(max_new_tokens, temperature, top_p, top_k,
                         seeds[i] if temperature > 0 else None, stop_ids, stop_strs),
                prompt=ids, tag=i) for i, ids in enumerate(checked)]
    if batch_size is None:
        batch_size = auto_decode_rows(model)
    Decoder(model, max_batch=batch_size, on_finish=finish, on_tokens=on_tokens).run(rows)
    return results  # type: ignore[return-value]
