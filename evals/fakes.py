"""A deterministic stand-in backend: runs every benchmark without weights or an engine.

Its answers are pseudo-random but a pure function of the request text (a sha256), so two runs,
or two xdist workers, give identical responses. Used by the plugin's own tests and handy when
writing a new benchmark: override the ``eval_backend`` fixture with ``FakeBackend()``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evals.backend import (
    GenerateRequest, GenerateResponse, LoglikelihoodRequest, LoglikelihoodResponse, Listener, RollingRequest,
    RollingResponse, SILENT,
)


def _unit(*parts: str) -> float:
    """A number in [0, 1) fixed by ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class FakeBackend:
    """``answers``: generated texts cycle through these (default: a CoT-looking answer by hash)."""

    name: str = "fake"
    answers: tuple[str, ...] = ()

    def info(self) -> dict[str, Any]:
        return {"backend": "fake", "name": self.name, "sha256": None, "config": None, "dtype": None, "device": None}

    def count_tokens(self, text: str, bos: bool = True) -> int:
        return len(text.encode("utf-8")) + int(bos)

    def _report(self, out: list, listener: Listener, prompt: int, generated: int = 0) -> list:
        for i, response in enumerate(out):
            listener.on_result(i, response)
        listener.on_tokens(prompt, generated)
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      listener: Listener = SILENT) -> list[LoglikelihoodResponse]:
        out = []
        for r in requests:
            u = _unit(r.context, r.continuation, str(r.bos))
            n = len(r.continuation.encode("utf-8"))
            out.append(LoglikelihoodResponse(-n * (0.5 + 4 * u), u < 0.3, self.count_tokens(r.context, r.bos), n))
        return self._report(out, listener, sum(r.context_tokens + r.continuation_tokens for r in out))

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              listener: Listener = SILENT) -> list[RollingResponse]:
        out = [RollingResponse(-len(r.text) * (1 + _unit(r.text)), len(r.text.encode("utf-8"))) for r in requests]
        return self._report(out, listener, sum(r.tokens for r in out))

    def generate(self, requests: Sequence[GenerateRequest],
                 listener: Listener = SILENT) -> list[GenerateResponse]:
        out = []
        for i, r in enumerate(requests):
            if self.answers:
                text = self.answers[i % len(self.answers)]
            else:
                u = _unit(r.context)
                letter = "ABCDEFGHIJ"[int(u * 10)]
                text = f"Some reasoning. The answer is ({letter})." if u < 0.7 else "I am not sure."
            text = text[: r.max_new_tokens * 4]
            out.append(GenerateResponse(text, self.count_tokens(r.context, r.bos), len(text), "stop"))
        return self._report(out, listener, sum(r.prompt_tokens for r in out), sum(r.generated_tokens for r in out))


# A conftest for pytester runs of the plugin against the fake backend (no model is loaded).
PLUGIN_CONFTEST = '''
import pytest
from evals.fakes import FakeBackend

pytest_plugins = ["evals.plugin"]

def pytest_configure(config):
    from evals.plugin.keys import NO_CHECKPOINT_KEY
    config.stash[NO_CHECKPOINT_KEY] = "the backend is evals.fakes.FakeBackend"

@pytest.fixture(scope="session")
def eval_backend():
    return FakeBackend()
'''
