"""Errors raised by the engine, and the checks of token ids every entry point shares. Each message
names what was expected and what was found."""
from __future__ import annotations

from typing import Any


class EngineError(ValueError):
    """Base class for the engine's errors about bad input."""


class CheckpointError(EngineError):
    """A checkpoint file that cannot be used as an RWKV-7 model."""


class InputError(EngineError):
    """Tokens, states or options handed to the model that do not fit it."""


def out_of_vocabulary(token: int, vocab_size: int, what: str = "") -> InputError:
    """The error for a token id outside [0, vocab_size)."""
    where = f"{what}: " if what else ""
    return InputError(f"{where}token id {token} is out of the vocabulary: expected ids in [0, {vocab_size})")


def check_ids(ids: Any, vocab_size: int, what: str) -> list[int]:
    """``ids`` (a list or tuple of ints, or a 1-D integer tensor) as a list of ints, each in
    [0, vocab_size); raises InputError naming ``what`` and the first bad id. Scoring, generation,
    search and the model's ``forward`` (through ``out_of_vocabulary``) check ids with this."""
    if hasattr(ids, "tolist") and hasattr(ids, "dim"):  # a tensor, without importing torch here
        if ids.dim() != 1:
            raise InputError(f"{what}: expected a 1-D list of token ids, found a tensor of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise InputError(f"{what}: expected a list of token ids, found {type(ids).__name__}")
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool):
            raise InputError(f"{what}: expected int token ids, found {type(t).__name__} {t!r}")
        if not 0 <= t < vocab_size:
            raise out_of_vocabulary(t, vocab_size, what)
    return list(ids)
