"""Stored searches and reward scores, in the run's response cache, so a killed search resumes.

This is the test-time compute part of the response cache (:mod:`evals.cache`), kept apart from
:class:`~evals.cache.CachedBackend`: it uses only the file's public ``get_many``/``put_many`` and
two request kinds of its own beside the backend's three:

- ``search``: a whole beam or MCTS search of one question, keyed by the rendered prompt, the
  token-0 flag, stop strings, budget, every search setting, the reward model's identity and the
  question text it is shown, under the policy model's id (the same id the backend's responses
  use). Stored as the search finishes (questions are searched in small chunks).
- ``reward``: one answer's reward, keyed by the question, the answer and earlier chat turns, under
  ``reward|<the reward model's identity>``, so every policy model's candidates share it. The
  search's process rewards go through it too: a search that was killed replays its steps (they
  are seeded) and finds their rewards stored.

Samples of ``sample``/``best_of_n`` are ordinary ``generate`` requests, cached by the backend.
With ``--rescore`` the store is read-only and a missing entry is an error, never a silent zero.
Without a cache (``--no-cache``) nothing is stored.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from evals.cache import CacheError, request_key


class StrategyStore:
    """``get``/``put`` of ``search`` and ``reward`` entries (see the module docstring)."""

    def __init__(self, cache: Any = None, model_id: str | None = None, read_only: bool = False):
        self.cache, self.model_id, self.read_only = cache, model_id, read_only
        self.reused = {"search": 0, "reward": 0}

    @classmethod
    def for_backend(cls, backend: Any) -> StrategyStore:
        """The store of a benchmark's backend: the response cache of a ``CachedBackend`` (read and
        write) or a ``ReplayBackend`` (``--rescore``, read only), else none (``--no-cache``)."""
        from evals.cache import ReplayBackend

        cache, model_id = getattr(backend, "cache", None), getattr(backend, "model_id", None)
        if cache is None or model_id is None or not hasattr(cache, "get_many"):
            return cls()
        return cls(cache, model_id, read_only=isinstance(backend, ReplayBackend))

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    def get(self, kind: str, owner: str | None, requests: Sequence[Mapping[str, Any]]) -> list[Any | None]:
        """The stored response (parsed JSON) of each request, or None."""
        if not self.enabled or not requests:
            return [None] * len(requests)
        keys = [request_key(kind, r)[0] for r in requests]
        found = self.cache.get_many(owner or self.model_id, keys)
        out = []
        for key in keys:
            if key in found:
                stored_kind, text = found[key]
                if stored_kind != kind:
                    raise CacheError(f"response cache {self.cache.path}: entry {key} is a {stored_kind!r}, "
                                     f"expected {kind!r}")
                out.append(json.loads(text))
                self.reused[kind] += 1
            else:
                out.append(None)
        return out

    def put(self, kind: str, owner: str | None, items: Sequence[tuple[Mapping[str, Any], Any]]) -> None:
        """Store (request, response) pairs in one transaction."""
        if not self.enabled or self.read_only or not items:
            return
        entries = []
        for request, response in items:
            key, canonical = request_key(kind, request)
            entries.append((key, kind, canonical, json.dumps(response, ensure_ascii=False)))
        self.cache.put_many(owner or self.model_id, entries)

    def stored_or_computed(self, kind: str, owner: str | None, requests: Sequence[Mapping[str, Any]],
                           compute: Callable[[list[int]], Sequence[Any]], what: str = "entries"
                           ) -> tuple[list[Any], list[bool]]:
        """(values, computed now?) of ``requests``: stored values reused, the others computed by
        ``compute(positions)`` and stored. Read only (``--rescore``): a missing one is an error."""
        values = self.get(kind, owner, requests)
        todo = [k for k, v in enumerate(values) if v is None]
        if todo and self.read_only:
            raise self.missing(what, len(todo), len(requests), requests[todo[0]])
        if todo:
            computed = list(compute(todo))
            if len(computed) != len(todo):
                raise RuntimeError(f"asked for {len(todo)} {what}, computed {len(computed)}")
            self.put(kind, owner, [(requests[k], v) for k, v in zip(todo, computed)])
            for k, v in zip(todo, computed):
                values[k] = v
        fresh = set(todo)
        return values, [k in fresh for k in range(len(requests))]

    def missing(self, what: str, count: int, total: int, example: Mapping[str, Any]) -> CacheError:
        text = json.dumps(example, ensure_ascii=False)[:200]
        return CacheError(f"--rescore: {count} of {total} {what} were never stored in {self.cache.path} "
                          f"(first: {text}); run without --rescore to compute them")
