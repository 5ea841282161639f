"""Progress while a case runs: ``progress.log`` lines, a live terminal line, and totals over workers.

The backend reports every finished request and the tokens the model ran (:class:`Listener`), so
progress moves inside one long backend call. :class:`CaseProgress` turns those events into a line
``time worker benchmark/case kind done/total requests (~docs), docs/s, tokens/s, elapsed, ETA``:

- appended to ``<run>/progress.log`` at most every ``interval`` seconds (and when a call ends),
  so ``tail -f reports/<run>/progress.log`` follows a run of hours; each line is one ``write`` of
  a whole line to a file opened for appending, so xdist workers' lines never interleave;
- on a terminal, shown on one live line that is cleared when the call ends; when stdout is not
  a terminal (CI logs, ``nohup``), printed as a plain line every ``plain_interval`` seconds;
- in an xdist worker, also written as ``<run>/.progress/<worker>.json``, which the controller's
  :class:`WorkerTotals` reads to print the total across workers every ``plain_interval``.

The ETA is the requests left over the rate so far; for generation, the token budget left over
the generation rate since the first token. It converges as the call goes on.
"""
from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from evals.backend import Listener
from evals.plugin.writers.atomic import atomic_path


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


@dataclass
class Snapshot:
    """Where one backend call stands."""

    label: str
    done: int
    total: int
    documents: int  # documents the call serves (requests are spread over them evenly)
    prompt_tokens: int
    generated_tokens: int
    elapsed: float
    tokens_left: int | None = None  # generation: at most this many tokens still to generate
    generating: float | None = None  # generation: seconds since the first token was generated

    @property
    def documents_done(self) -> float:
        return self.done * self.documents / self.total if self.total else 0.0

    def eta(self) -> float | None:
        if self.done >= self.total:
            return 0.0  # finished: the last line says ETA 0m00s, not "-"
        if self.elapsed <= 0:
            return None
        if self.tokens_left is not None and self.generated_tokens > 0:
            # generation: the token budget left over the generation rate, an upper bound that
            # tightens as sequences finish (requests alone would say nothing while a batch of
            # sequences that all run to their budget is decoding); the rate since the first token,
            # so minutes of prompt prefill before it do not make the first ETAs hours long
            seconds = self.generating if self.generating else self.elapsed
            return self.tokens_left * seconds / self.generated_tokens
        if self.done <= 0:
            return None
        return (self.total - self.done) * self.elapsed / self.done

    def line(self) -> str:
        elapsed = max(self.elapsed, 1e-9)
        eta = self.eta()
        tokens = (self.prompt_tokens + self.generated_tokens) / elapsed
        generated = f" (generated {_rate(self.generated_tokens / elapsed)}/s)" if self.generated_tokens else ""
        return (f"{self.label} {self.done}/{self.total} requests (~{self.documents_done:.0f}/{self.documents} docs), "
                f"{_rate(self.documents_done / elapsed)} docs/s, {_rate(tokens)} tokens/s{generated}, "
                f"elapsed {duration(self.elapsed)}, ETA {duration(eta) if eta is not None else '-'}")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CaseProgress(Listener):
    """The listener of one process's backend calls; see the module docstring."""

    log: Path | None
    worker: str = "main"
    live: Callable[[str], None] | None = None  # writes to the live terminal line (a TTY)
    plain: Callable[[str], None] | None = None  # writes a whole line to the terminal (not a TTY)
    status: Path | None = None  # the worker's JSON status file for the controller (xdist)
    interval: float = 2.0
    plain_interval: float = 30.0
    clock: Callable[[], float] = time.monotonic
    label: str = ""
    total: int = 0
    documents: int = 0
    done: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    started: float = 0.0
    _last_log: float = field(default=0.0, repr=False)
    _last_plain: float = field(default=0.0, repr=False)
    _dirty: bool = field(default=False, repr=False)  # events since the last line
    budgets: list[int] | None = field(default=None, repr=False)
    _budget_left: int = field(default=0, repr=False)
    _finished_generated: int = field(default=0, repr=False)
    _first_generated: float | None = field(default=None, repr=False)  # when this call's first token came

    def start(self, label: str, total: int, documents: int, budgets: Sequence[int] | None = None) -> None:
        """A new backend call of ``total`` requests serving ``documents`` documents; ``budgets``:
        each generation request's token budget (for an ETA by tokens)."""
        self.label, self.total, self.documents = label, total, documents or total
        self.done = self.prompt_tokens = self.generated_tokens = 0
        self.budgets = list(budgets) if budgets is not None else None
        self._budget_left = sum(self.budgets) if self.budgets is not None else 0
        self._finished_generated = 0
        self._first_generated = None
        self.started = self._last_log = self._last_plain = self.clock()
        self._emit(force=True)

    def on_result(self, index: int, response: Any) -> None:
        self.done += 1
        if self.budgets is not None:
            self._budget_left -= self.budgets[index]
            self._finished_generated += getattr(response, "generated_tokens", 0)
        self._dirty = True
        self._emit(force=False)

    def advance(self, count: int) -> None:
        """``count`` more requests done (work that does not go through a backend: a search)."""
        self.done += count
        self._dirty = True
        self._emit(force=False)

    def on_tokens(self, prompt: int, generated: int) -> None:
        if generated and self._first_generated is None:
            self._first_generated = self.clock()
        self.prompt_tokens += prompt
        self.generated_tokens += generated
        self._dirty = True
        self._emit(force=False)

    def snapshot(self) -> Snapshot:
        tokens_left = None
        if self.budgets is not None:  # the unfinished sequences' budgets less what they generated so far
            in_flight = max(0, self.generated_tokens - self._finished_generated)  # low when answers came from the cache
            tokens_left = max(0, self._budget_left - in_flight)
        now = self.clock()
        generating = now - self._first_generated if self._first_generated is not None else None
        return Snapshot(self.label, self.done, self.total, self.documents, self.prompt_tokens,
                        self.generated_tokens, now - self.started, tokens_left, generating)

    def _emit(self, force: bool) -> None:
        now = self.clock()
        if not force and now - self._last_log < self.interval:
            return
        self._last_log, self._dirty = now, False
        snapshot = self.snapshot()
        text = snapshot.line()
        try:
            if self.log is not None:
                stamp = datetime.now().isoformat(timespec="seconds")
                with open(self.log, "a", encoding="utf-8") as handle:
                    handle.write(f"{stamp} {self.worker} {text}\n")
            if self.status is not None:
                with atomic_path(self.status) as tmp:
                    tmp.write_text(json.dumps(snapshot.to_json()), encoding="utf-8")
        except OSError as error:  # a full disk must not fail the evaluation: progress is best effort
            warnings.warn(f"progress is no longer written to {self.log.parent if self.log else self.status}: "
                          f"{error}", stacklevel=2)
            self.log = self.status = None
        if self.live is not None:
            self.live(f"\r    {text}\x1b[K")
        elif self.plain is not None and (force or now - self._last_plain >= self.plain_interval):
            self._last_plain = now
            self.plain(f"    {text}")

    def finish(self) -> None:
        """The call is over: its last line (final counts), then the live line is cleared."""
        if self._dirty:
            self._emit(force=True)
        if self.live is not None:
            self.live("\r\x1b[K")


def total_line(snapshots: dict[str, Snapshot]) -> str:
    """One line for the controller: each worker's current call and the sum over workers."""
    done = sum(s.done for s in snapshots.values())
    total = sum(s.total for s in snapshots.values())
    docs = sum(s.documents_done / max(s.elapsed, 1e-9) for s in snapshots.values())
    tokens = sum((s.prompt_tokens + s.generated_tokens) / max(s.elapsed, 1e-9) for s in snapshots.values())
    etas = [s.eta() for s in snapshots.values() if s.eta() is not None]
    parts = ", ".join(f"{worker} {s.label} {s.done}/{s.total}" for worker, s in sorted(snapshots.items()))
    eta = f", ETA of the running calls {duration(max(etas))}" if etas else ""
    return (f"{len(snapshots)} workers: {parts}; total {done}/{total} requests, {_rate(docs)} docs/s, "
            f"{_rate(tokens)} tokens/s{eta}")


class WorkerTotals:
    """In the xdist controller: every ``interval`` seconds, the workers' status files summed into
    one line, printed with ``write`` and appended to progress.log (as worker ``total``)."""

    def __init__(self, folder: Path, write: Callable[[str], None], log: Path | None, interval: float = 30.0):
        self.folder, self.write, self.log, self.interval = folder, write, log, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rwkveval-progress", daemon=True)

    def read(self) -> dict[str, Snapshot]:
        out = {}
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                out[path.stem] = Snapshot(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                continue  # a worker is replacing it (atomically) right now: read it next time
        return out

    def tick(self) -> str | None:
        snapshots = self.read()
        if not snapshots:
            return None
        line = total_line(snapshots)
        self.write(line)
        if self.log is not None:
            stamp = datetime.now().isoformat(timespec="seconds")
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp} total {line}\n")
        return line

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except OSError:
                continue  # a full disk: the report writer says so; progress is best effort

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)  # a tick in progress finishes its line; none starts after
