"""Progress while a case runs: lines appended to ``<run>/progress.log`` and a live terminal line.

Each backend call of a case reports the requests it has finished; at most every
``interval`` seconds (and at the end) a line ``time worker benchmark/case done/total rate ETA``
is appended to the log, so ``tail -f reports/latest/progress.log`` follows a long run, including
one spread over xdist workers (each appends whole lines). In a single-process run on a terminal
the same text is shown on one live line that is cleared when the case ends.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class ProgressLog:
    path: Path | None
    worker: str = "main"
    terminal: Any = None  # a TerminalWriter for the live line, or None
    capture: Any = None  # pytest's capture manager, suspended while writing the live line
    interval: float = 2.0
    label: str = ""
    total: int = 0
    done: int = 0
    started: float = field(default=0.0)
    last_write: float = field(default=0.0)

    def start(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = self.last_write = time.perf_counter()
        self._emit(force=True)

    def advance(self, count: int) -> None:
        self.done += count
        self._emit(force=self.done >= self.total)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done / elapsed
        eta = _eta((self.total - self.done) / rate) if rate > 0 and self.done < self.total else "-"
        return f"{self.label} {self.done}/{self.total} requests, {rate:.1f}/s, ETA {eta}"

    def _emit(self, force: bool) -> None:
        now = time.perf_counter()
        if not force and now - self.last_write < self.interval:
            return
        self.last_write = now
        text = self.line()
        if self.path is not None:
            stamp = datetime.now().isoformat(timespec="seconds")
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} {self.worker} {text}\n")
        if self.terminal is not None:
            self._live(f"\r    {text}\x1b[K")

    def finish(self) -> None:
        if self.terminal is not None:
            self._live("\r\x1b[K")

    def _live(self, text: str) -> None:
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                self.terminal.write(text, flush=True)
        else:
            self.terminal.write(text, flush=True)
