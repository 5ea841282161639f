"""Errors raised by the engine. Each message names what was expected and what was found."""
from __future__ import annotations


class EngineError(ValueError):
    """Base class for the engine's errors about bad input."""


class CheckpointError(EngineError):
    """A checkpoint file that cannot be used as an RWKV-7 model."""


class InputError(EngineError):
    """Tokens, states or options handed to the model that do not fit it."""
