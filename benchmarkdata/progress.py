"""Download progress: a bar on a terminal, a few plain lines otherwise, nothing in tests.

A :data:`ProgressFactory` is called once per download as ``factory(label, total_bytes,
already_have_bytes)`` (``total_bytes`` may be unknown: ``None``) and returns a :class:`Bar` that
receives ``update(n_bytes)`` calls and one ``close()``. :func:`terminal` is the default of the
command line and of the pytest plugin: ``tqdm`` when the stream is a terminal, else a line at
every quarter (logs and CI output stay short).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TextIO


class Bar(Protocol):
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


ProgressFactory = Callable[[str, "int | None", int], Bar]


class _Silent:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def silent(label: str, total: int | None, initial: int) -> Bar:
    return _Silent()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


class LineBar:
    """Plain lines: a start line, one per 25% when the total is known, and an end line."""

    def __init__(self, label: str, total: int | None, initial: int, stream: TextIO, step: float = 0.25):
        self.label, self.total, self.done, self.stream, self.step = label, total, initial, stream, step
        self.next_mark = step
        resumed = f", resuming at {_mb(initial)}" if initial else ""
        size = _mb(total) if total is not None else "size unknown"
        self._say(f"downloading {label} ({size}{resumed})")
        if total:
            while self.next_mark <= initial / total:
                self.next_mark += step

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.total and self.done / self.total >= self.next_mark and self.done < self.total:
            self._say(f"  {self.label}: {int(100 * self.done / self.total)}% ({_mb(self.done)})")
            while self.next_mark <= self.done / self.total:
                self.next_mark += self.step

    def close(self) -> None:
        self._say(f"  {self.label}: {_mb(self.done)} received")


def terminal(label: str, total: int | None, initial: int, stream: TextIO | None = None) -> Bar:
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            from tqdm import tqdm
        except ImportError:  # the plain lines still say what happens
            pass
        else:
            return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                        file=stream, leave=True, dynamic_ncols=True)
    return LineBar(label, total, initial, stream)
