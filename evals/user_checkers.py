"""A user's checker function ``module:function`` run in a worker subprocess, with a timeout per item.

``function(output, row) -> float | (float, extracted)`` is imported from the folders of
``--checker-path`` (then the usual import path) in a worker process started with this interpreter
(``python -m evals.user_checkers``). The suite sends it one item at a time and waits at most
``--checker-timeout`` seconds for the answer.

Why a subprocess, not a thread: a Python thread cannot be stopped, so a function stuck in a loop
(or in C code holding the GIL) would hold the run forever, or starve it; a process is killed at the
deadline and a fresh one serves the next item. It also keeps the user's imports, globals and
prints out of the suite's process. The costs: one interpreter start per checker (and per timeout),
and the row, the score and the extracted answer travel as JSON (rows are JSON already; an
extracted value that is not JSON is sent as its ``str``).

Protocol, one JSON object per line (ASCII: ``ensure_ascii``): the worker says ``{"ready": true}``
once the function is imported (or ``{"fatal": "..."}`` and exits); then for each numbered request
``{"n": k, "output": ..., "row": ...}`` it answers ``{"n": k, "score": x, "extracted": y}`` or
``{"n": k, "error": "TypeError: ..."}``. Before importing anything the worker moves the protocol to
a duplicate of its stdout and points file descriptor 1 itself at stderr (``os.dup2(2, 1)``), so
whatever the function prints, from Python, a C extension or a subprocess it starts, goes to stderr.
The suite's side still trusts nothing it reads: a line that is not a JSON object, or an answer
whose number is not the request's, is dropped, and only ``"ready": true`` counts as ready.

What goes wrong with one item (an exception, a bad return value, a timeout, the worker dying, a
worker that cannot be restarted after one of those) is that item's error; only a function that
cannot be imported when the checker first starts stops the case.
"""
from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

STARTUP_S = 60.0  # at least this long for the worker to import the user's module
_EXITED: dict[str, Any] = {"exit": True}  # the reader's own marker (by identity: a worker cannot forge it)


class UserCheckerError(ValueError):
    """The function cannot be used at all: its module or name cannot be imported."""


def _result(value: Any) -> dict[str, Any]:
    """The protocol answer for what the function returned."""
    extracted = None
    if isinstance(value, tuple) and len(value) == 2:
        value, extracted = value
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)):
        return {"error": f"returned {value!r:.80} ({type(value).__name__}); expected a number or "
                         "(number, extracted)"}
    if not math.isfinite(value):
        return {"error": f"returned {value!r}; expected a finite number"}
    try:
        json.dumps(extracted)
    except (TypeError, ValueError):
        extracted = str(extracted)
    return {"score": float(value), "extracted": extracted}


def worker_main(argv: Sequence[str]) -> int:
    """The worker: ``MODULE FUNCTION [PATH ...]``; reads items from stdin until it closes."""
    module_name, function_name, *paths = argv
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    # fd 1 itself now goes to stderr: writes by C code and child processes cannot reach the protocol
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message, ensure_ascii=True) + "\n")

    sys.path[:0] = paths
    try:
        import importlib

        function = getattr(importlib.import_module(module_name), function_name)
        if not callable(function):
            raise TypeError(f"{module_name}.{function_name} is a {type(function).__name__}, not a function")
    except Exception as error:  # noqa: BLE001 - anything the user's module raises is reported, whole
        send({"fatal": f"{type(error).__name__}: {error}"})
        return 1
    send({"ready": True})
    for line in sys.stdin:
        item = json.loads(line)
        try:
            answer = _result(function(item["output"], item["row"]))
        except Exception as error:  # noqa: BLE001 - the item's error, reported on its row
            answer = {"error": f"{type(error).__name__}: {error}"}
        send({"n": item["n"], **answer})
    return 0


class UserChecker:
    """The suite's side: one worker per ``module:function``, restarted after a timeout or a crash."""

    def __init__(self, module: str, function: str, paths: Sequence[Path] = (), timeout: float = 10.0):
        self.module, self.function, self.timeout = module, function, timeout
        self.paths = [str(Path(p).resolve()) for p in paths]
        self._process: subprocess.Popen | None = None
        self._answers: queue.Queue = queue.Queue()
        self._started = False  # True once a worker has imported the function: later failures are items' errors
        self._number = 0  # of the last request sent

    @property
    def name(self) -> str:
        return f"{self.module}:{self.function}"

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parent.parent)  # so the worker finds this package
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "evals.user_checkers", self.module, self.function, *self.paths],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, encoding="utf-8", bufsize=1)
        self._answers = queue.Queue()
        threading.Thread(target=self._read, args=(self._process, self._answers), daemon=True,
                         name=f"rwkveval-checker-{self.function}").start()
        ready = self._next(max(STARTUP_S, self.timeout), lambda m: m.get("ready") is True or "fatal" in m)
        if ready is None or ready is _EXITED or "fatal" in ready:
            process = self._process
            self.close()
            where = f" (--checker-path {os.pathsep.join(self.paths)})" if self.paths else ""
            if ready is None:
                what = "the worker did not start in time"
            else:
                what = ready.get("fatal") or f"the worker exited (code {process.returncode})"
            raise UserCheckerError(f"checker {self.name!r}: cannot import it{where}: {what}")
        self._started = True

    @staticmethod
    def _read(process: subprocess.Popen, answers: queue.Queue) -> None:
        with process.stdout:  # this thread alone reads (and closes) the worker's stdout
            for line in process.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # not a protocol line
                if isinstance(message, dict):
                    answers.put(message)
        answers.put(_EXITED)

    def _next(self, timeout: float, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The first message ``wanted`` accepts, or the worker's exit; None after ``timeout`` s.
        Other messages (answers to another request, stray objects) are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if message is _EXITED or wanted(message):
                return message

    def call(self, output: str, row: Any) -> tuple[float | None, Any, str | None]:
        """(score, extracted, error) for one item; error set when the item could not be checked."""
        if self._process is None:
            try:
                self._start()
            except UserCheckerError as error:
                if not self._started:
                    raise  # the function cannot be used at all: the case stops
                return None, None, f"the checker's worker could not be restarted: {error}"
        self._number += 1
        number = self._number
        try:
            self._process.stdin.write(json.dumps({"n": number, "output": output, "row": row}, ensure_ascii=True) + "\n")
            self._process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker has died: its exit is read below
        answer = self._next(self.timeout, lambda m: m.get("n") == number)
        if answer is None:
            self.close()
            return None, None, f"TimeoutError: no answer within {self.timeout:g} s (--checker-timeout)"
        if answer is _EXITED:
            process = self._process
            self.close()
            return None, None, f"the checker's worker process ended (exit code {process.returncode})"
        if "error" in answer:
            return None, None, str(answer["error"])
        if "score" not in answer:
            return None, None, f"the checker's worker answered {json.dumps(answer)[:120]}, not a score"
        return answer["score"], answer.get("extracted"), None

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        try:
            process.stdin.close()
        except OSError:  # a pipe whose reader is gone
            pass


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
