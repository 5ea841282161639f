"""Value parsers for command-line options (argparse ``type=``), shared by the ``rwkveval`` command
and the pytest plugin's options. A bad value raises ``argparse.ArgumentTypeError`` naming what was
expected and what was found; pytest turns it into a usage error."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def checked(kind: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """A parser converting with ``kind`` and accepting values for which ``ok`` holds."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {value}")
        return value

    parse.__name__ = expected  # argparse names the type by it in its own messages
    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
non_negative_int = checked(int, lambda v: v >= 0, "an integer >= 0")
probability = checked(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
non_negative_float = checked(float, lambda v: v >= 0, "a number >= 0")
positive_float = checked(float, lambda v: 0 < v < math.inf, "a finite number > 0")
positive_seconds = checked(float, lambda v: v > 0, "a number of seconds > 0")
