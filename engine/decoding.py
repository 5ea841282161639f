"""The decoding core: one batch of live sequences, each sampled, stopped and finished on its own.

Every caller that generates goes through :class:`Decoder`: ``model.generate``
(:mod:`engine.generate`), the server's scheduler (:mod:`engine.server.scheduler`), step-level
search (:mod:`engine.search`) and ``rwkveval chat``. A :class:`Row` is one sequence with its own
settings (budget, temperature, top-p, top-k, seed, stop ids, stop strings, a step delimiter). It
starts either from token ids prefilled from zeros, or from a given :class:`~engine.state.State`
(and the logits after it): a forked search node or a chat's conversation so far, which is never
run again. ``Decoder.step`` samples one token for every live row, checks each row's stops and
budget, and feeds the survivors back in one ``forward`` call; a finished row leaves the batch, so
a caller admits a waiting row into its slot (continuous batching, :meth:`Decoder.run`).

Sampling draws from one generator per row, seeded by the caller (:func:`row_seed` is the formula
``model.generate`` and the server use: ``seed * 1_000_003 + index``), so a seeded row gives the
same tokens whatever else shares its batch (up to float rounding: the product forms, and so the
last bits of the logits, depend on the batch's row count). A row whose ``keep_state`` names its
finish reason hands back the state and logits after its last token when it finishes (its final
token is fed in the same batched call as the survivors), which is how a search node or a chat
turn continues later without a re-prefill.

The decoder works on the CPU side: it sees its model through :func:`engine.batching.on_host`, so
the logits it samples from, and those it hands to ``on_logits`` callbacks, are CPU tensors
whatever the model's device (the state stays there). :class:`TextStream` streams a row's text,
held back while it could still begin a stop string.
"""
from __future__ import annotations

import codecs
import functools
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import LogitsCallback, TokensCallback, advance, check_batch_size, on_host
from .errors import InputError, out_of_vocabulary
from .scoring import top_alternatives
from .state import State

DOCUMENT_END = 0  # token 0 separates documents: generation always stops there
FINISH_REASONS = frozenset({"stop", "step", "length"})
__all__ = ["DOCUMENT_END", "FINISH_REASONS", "Decoder", "Row", "Settings", "TextStream", "hold_back",
           "random_base_seed", "row_seed", "sample_token", "top_alternatives"]


def row_seed(base: int, index: int) -> int:
    """The seed of row ``index`` of a call seeded ``base`` (the formula every caller shares, so a
    seeded run is reproducible whatever the batch size, up to float rounding, and cached responses
    stay valid)."""
    return (base * 1_000_003 + index) % (2**63)


def random_base_seed() -> int:
    return int(torch.randint(0, 2**62, (1,)))


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                 generator: torch.Generator | None) -> int:
    """One token from logits [V]: argmax at temperature 0, else top-k / nucleus sampling."""
    if temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits.double() / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_p, 0) - sorted_p  # mass of the tokens ranked above each one
        sorted_p[before >= top_p] = 0.0  # keep the smallest set reaching top_p (at least one token)
        probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class Settings:
    """How one row is decoded. ``stop_ids`` always holds token 0. A stop string ends the row
    (finish_reason "stop", text cut before it); the ``delimiter`` ends it as a finished step
    (finish_reason "step", the delimiter kept in the text) once the step holds some non-blank text."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # this row's own seed (see row_seed); None with temperature > 0: random
    stop_ids: frozenset[int] = frozenset({DOCUMENT_END})
    stop_strs: tuple[str, ...] = ()
    delimiter: str | None = None
    logprobs: int | None = None  # record log p of each sampled token and this many alternatives
    # the finish reasons ("stop", "step", "length") after which the row hands back the state and
    # logits after its last token: each costs a forward row and a state copy, so a search keeps
    # only finished steps, a chat every turn's end
    keep_state: frozenset[str] = frozenset()

    def check(self, vocab_size: int) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) or self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be an int >= 0, found {self.max_new_tokens!r}")
        if (not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool)
                or not math.isfinite(self.temperature) or self.temperature < 0):
            raise InputError(f"temperature must be a finite number >= 0, found {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], found {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an int >= 0 (0 = off), found {self.top_k!r}")
        if DOCUMENT_END not in self.stop_ids:
            raise InputError("stop_ids must hold token 0 (the end of a document always stops)")
        for t in self.stop_ids:
            if not isinstance(t, int) or isinstance(t, bool):
                raise InputError(f"stop token ids must be ints, found {type(t).__name__} {t!r}")
            if not 0 <= t < vocab_size:
                raise out_of_vocabulary(t, vocab_size, "stop token")
        for s in self.stop_strs + ((self.delimiter,) if self.delimiter is not None else ()):
            if not isinstance(s, str) or not s:
                raise InputError(f"stop strings and the step delimiter must be non-empty strings, found {s!r}")
        if not isinstance(self.keep_state, frozenset) or not self.keep_state <= FINISH_REASONS:
            raise InputError(f"keep_state must be a frozenset of finish reasons from {sorted(FINISH_REASONS)}, "
                             f"found {self.keep_state!r}")


@dataclass(eq=False)
class Row:
    """One sequence. Give ``prompt`` (token ids to run first; may be empty) and optionally ``start``
    (a batch-1 State to run it from; zeros when None) and ``start_logits`` [V] (the logits after
    ``start``; needed when ``prompt`` is empty, since nothing is run). ``history``: bytes of text
    before this row (an earlier search step) in which a stop string may have begun.

    After finishing: ``tokens`` holds every sampled token (a final stop token id included, see
    ``stop_token``), ``data`` their bytes (stop ids add none), ``text_bytes`` how many of them are
    text (a stop string cuts earlier; negative when the stop began inside ``history``),
    ``finish_reason`` "stop" | "step" | "length" and ``stop`` the stop string or id that ended it;
    ``state`` and ``logits`` when ``settings.keep_state`` holds that finish reason.
    """

    settings: Settings
    prompt: list[int] = field(default_factory=list)
    start: State | None = None
    start_logits: torch.Tensor | None = None
    tag: Any = None  # the caller's handle (a job and index, a search node...)
    history: bytes = b""
    tokens: list[int] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    finish_reason: str | None = None
    stop: str | int | None = None
    stop_token: bool = False
    text_bytes: int = 0
    state: State | None = None  # keep_state: after the last token
    logits: torch.Tensor | None = None  # keep_state: [V] float32 on the CPU, the logits after the last token
    generator: torch.Generator | None = None

    @property
    def generated(self) -> list[int]:
        """The generated tokens without a final stop token id."""
        return self.tokens[:-1] if self.stop_token else self.tokens

    def text(self) -> str:
        return bytes(self.data[:max(0, self.text_bytes)]).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1024)
def _stop_window(settings: Settings) -> list[tuple[bytes, str, str]]:
    """(bytes, string, finish reason) of every stop string and the delimiter."""
    out = [(s.encode("utf-8"), s, "stop") for s in settings.stop_strs]
    if settings.delimiter is not None:
        out.append((settings.delimiter.encode("utf-8"), settings.delimiter, "step"))
    return out


@functools.lru_cache(maxsize=1024)
def hold_back(settings: Settings) -> int:
    """Bytes at the end of a row's text that may still turn out to begin a stop string (which is
    cut from the text), so a stream must not send them yet: the longest stop string's length - 1."""
    return max(0, max((len(s.encode("utf-8")) for s in settings.stop_strs), default=0) - 1)


class TextStream:
    """A row's text as it is decoded: give :meth:`token` as a Decoder's ``on_token`` and
    :meth:`finish` as (part of) its ``on_finish``. ``send(text)`` receives the UTF-8 text
    decoded incrementally, never a byte that a stop string could still claim (:func:`hold_back`),
    and at the finish the rest of the row's text (cut before its stop string)."""

    def __init__(self, send: Callable[[str], None]):
        self.send = send
        self.sent = 0  # bytes of the row's data already decoded
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def token(self, row: Row) -> None:
        self._send(row, len(row.data) - hold_back(row.settings))

    def finish(self, row: Row) -> None:
        self._send(row, max(0, row.text_bytes))
        tail = self.decoder.decode(b"", final=True)  # a character cut off at the end: U+FFFD
        if tail:
            self.send(tail)

    def _send(self, row: Row, end: int) -> None:
        if end > self.sent:
            text = self.decoder.decode(bytes(row.data[self.sent:end]))
            self.sent = end
            if text:
                self.send(text)


class Decoder:
    """Live rows, their states [B] and next-token logits [B, V] (on the CPU), decoded together.

    ``max_batch`` rows at most are live at once. ``on_finish(row)`` is called the moment a row finishes; ``on_token(row)`` after a token is
    appended to a row that goes on (streaming); ``on_tokens(prompt_tokens, generated_tokens)``
    after each prefill call and each decoding step (the tokens sampled in it).
    """

    def __init__(self, model, *, max_batch: int = 16, on_finish: Callable[[Row], None] | None = None,
                 on_token: Callable[[Row], None] | None = None, on_tokens: TokensCallback | None = None,
                 token_bytes: Callable[[int], bytes] | None = None):
        check_batch_size(max_batch, "max_batch", automatic=False)
        self.model = on_host(model)  # logits come back on the CPU: the one place they move
        self.max_batch = max_batch
        self.on_finish, self.on_token, self.on_tokens = on_finish, on_token, on_tokens
        self.token_bytes = token_bytes or self.model.tokenizer.token_bytes
        self.live: list[Row] = []
        self.state: State | None = None
        self.logits: torch.Tensor | None = None  # [len(live), V] float32, on the CPU

    def __len__(self) -> int:
        return len(self.live)

    @property
    def free_slots(self) -> int:
        return max(0, self.max_batch - len(self.live))

    # ------------------------------------------------------------------ admission

    def admit(self, rows: list[Row], on_logits: LogitsCallback | None = None) -> None:
        """Prefill ``rows`` (their prompts from their start states, in one ``advance`` call) and
        add them to the batch; rows with a zero budget finish here. ``on_logits`` receives every
        prompt position's logits (row indices into ``rows``; rows without a prompt run nothing)."""
        if not rows:
            return
        V = self.model.config.vocab_size
        for row in rows:
            row.settings.check(V)
            if not row.prompt and (row.start is None or row.start_logits is None):
                raise InputError("a row without prompt tokens must start from a state and the logits after it")
        run = [j for j, r in enumerate(rows) if r.prompt]
        states: list[State | None] = [r.start for r in rows]
        logits: list[torch.Tensor | None] = [r.start_logits for r in rows]
        batch = None  # (state, logits) of all rows in order, when one prefill produced exactly that
        if run:
            zero = None
            if any(rows[j].start is not None for j in run):
                zero = self.model.zero_state(1)
                init = State.cat([rows[j].start if rows[j].start is not None else zero for j in run])
            else:
                init = None
            mapped = None
            if on_logits is not None:  # advance numbers the rows it runs: map them back to ``rows``
                def mapped(indices: list[int], starts: list[int], logits: torch.Tensor) -> None:
                    on_logits([run[k] for k in indices], starts, logits)
            new_state, last = advance(self.model, [rows[j].prompt for j in run], init, want_last=True,
                                      on_logits=mapped, on_tokens=self.on_tokens, consume=True)
            if len(run) == len(rows):
                batch = (new_state, last)
            for k, j in enumerate(run):
                states[j], logits[j] = new_state.select([k]) if batch is None else None, last[k]
        for row in rows:  # the start state is copied into the batch: drop the caller's reference
            row.start, row.start_logits = None, None
            if row.settings.temperature > 0:
                seed = row.settings.seed if row.settings.seed is not None else random_base_seed()
                row.generator = torch.Generator().manual_seed(seed)
            if row.settings.logprobs is not None:
                row.logprobs, row.top = [], []
        keep = []
        for j, row in enumerate(rows):
            if row.settings.max_new_tokens == 0:
                if "length" in row.settings.keep_state:
                    row.state = states[j] if batch is None else batch[0].select([j])
                    row.logits = logits[j].detach().to("cpu", torch.float32)  # as Row.logits promises
                self._finish(row, "length", None, None)
            else:
                keep.append(j)
        if not keep:
            return
        self.live.extend(rows[j] for j in keep)
        if batch is not None and len(keep) == len(rows):  # the common case: no per-row copies
            new_state, new_logits = batch[0], batch[1]
        elif batch is not None:
            new_state, new_logits = batch[0].select(keep), batch[1][keep]
        else:
            new_state = State.cat([states[j] for j in keep])
            # a caller's start logits may come from anywhere: taken to the CPU with the rest
            new_logits = torch.stack([logits[j].float().cpu() for j in keep])  # (n, V)
        self.state = new_state if self.state is None else State.cat([self.state, new_state])
        self.logits = new_logits if self.logits is None else torch.cat([self.logits, new_logits])

    # ------------------------------------------------------------------ decoding

    def drop(self, predicate: Callable[[Row], bool]) -> list[Row]:
        """Remove the live rows for which ``predicate`` holds (cancelled requests), unfinished."""
        flags = [bool(predicate(row)) for row in self.live]
        gone = [row for row, flag in zip(self.live, flags) if flag]
        if gone:
            self._keep([r for r, flag in enumerate(flags) if not flag])
        return gone

    def _keep(self, keep: list[int]) -> None:
        self.live = [self.live[r] for r in keep]
        self.state = self.state.select(keep) if keep else None
        self.logits = self.logits[keep] if keep else None

    def reset(self) -> list[Row]:
        """Forget every live row (after an engine error); returns them."""
        rows, self.live, self.state, self.logits = self.live, [], None, None
        return rows

    def step(self) -> int:
        """One token for every live row, then one forward call for the rows that go on (and for
        finishing rows that keep their state). Returns the number of tokens sampled."""
        n = len(self.live)
        if n == 0:
            return 0
        if self.on_tokens is not None:
            self.on_tokens(0, n)  # one token sampled per live row (a stop token included)
        keep: list[int] = []
        fed: list[int] = []  # finishing rows whose last token is fed to hand back their state
        next_tokens: list[int] = []
        fed_tokens: list[int] = []
        finished_now: list[tuple[Row, str, int | None, Any]] = []
        for r, row in enumerate(self.live):
            s = row.settings
            logits = self.logits[r]
            t = sample_token(logits, s.temperature, s.top_p, s.top_k, row.generator)
            if s.logprobs is not None:
                lp = torch.log_softmax(logits.double(), dim=-1)
                row.logprobs.append(float(lp[t]))
                row.top.append(top_alternatives(lp, s.logprobs))
            row.tokens.append(t)
            if t in s.stop_ids:
                row.stop_token = True
                if "stop" in s.keep_state:  # the state already holds every token before the stop id
                    row.state, row.logits = self.state.select([r]), logits.clone()
                self._finish(row, "stop", None, t)
                continue
            before = len(row.data)
            row.data += self.token_bytes(t)
            hit = self._find_stop(row, before)
            if hit is None and len(row.tokens) >= s.max_new_tokens:
                hit = ("length", None, None)
            if hit is None:
                keep.append(r)
                next_tokens.append(t)
                if self.on_token is not None:
                    self.on_token(row)
            elif hit[0] in s.keep_state:
                fed.append(r)
                fed_tokens.append(t)
                finished_now.append((row, *hit))
            else:
                self._finish(row, *hit)
        rows = keep + fed
        if not rows:
            self.live, self.state, self.logits = [], None, None
            return n
        state = self.state if rows == list(range(n)) else self.state.select(rows)
        step = torch.tensor(next_tokens + fed_tokens, dtype=torch.long).unsqueeze(1)  # (B, 1)
        out, state = self.model.forward(step, state, logits="last", inplace=True)
        logits = out[:, 0].float()  # (B, V), on the CPU (on_host)
        if fed:
            for k, (row, reason, cut, what) in enumerate(finished_now):
                at = len(keep) + k
                row.state, row.logits = state.select([at]), logits[at].clone()
                self._finish(row, reason, cut, what)
        self.live = [self.live[r] for r in keep]
        if not keep:
            self.state, self.logits = None, None
        elif fed:  # the rows that go on are a prefix of the batch: a view, no copy
            k = len(keep)
            self.state, self.logits = State(state.att_x[:, :k], state.wkv[:, :k], state.ffn_x[:, :k]), logits[:k]
        else:
            self.state, self.logits = state, logits
        return n

    @staticmethod
    def _find_stop(row: Row, before: int) -> tuple[str, int | None, str] | None:
        """(reason, cut, string) of the earliest stop string or delimiter that the newest token
        completed, searched in ``history + data``; None when there is none."""
        stops = _stop_window(row.settings)
        if not stops:
            return None
        buffer = row.history + bytes(row.data) if row.history else row.data
        offset = len(row.history)
        hits = []
        for data, text, reason in stops:
            at = buffer.find(data, max(0, offset + before - len(data) + 1))
            # a step needs text of its own: a delimiter right at its start (or after whitespace
            # only) does not end it, so a search never makes empty steps
            while at >= 0 and reason == "step" and not bytes(row.data[:max(0, at - offset)]).strip():
                at = buffer.find(data, at + 1)
            if at >= 0:
                hits.append((at, reason == "step", reason, text, len(data)))
        if not hits:
            return None
        at, _, reason, text, _ = min(hits)  # earliest; at the same place a stop beats the delimiter
        # a stop string is cut from the text; a finished step keeps all its bytes (the delimiter
        # and whatever its last token added), so that steps join into the generated text
        return reason, (at - offset if reason == "stop" else None), text

    def _finish(self, row: Row, reason: str, cut: int | None, what: Any) -> None:
        row.finish_reason, row.stop = reason, what
        row.text_bytes = len(row.data) if cut is None else cut
        if self.on_finish is not None:
            self.on_finish(row)

    # ------------------------------------------------------------------ the whole loop

    def run(self, rows: Iterable[Row]) -> None:
        """Decode ``rows`` to the end, admitting waiting ones as slots free up."""
        queue = deque(rows)
        while queue or self.live:
            if queue and self.free_slots:
                self.admit([queue.popleft() for _ in range(min(self.free_slots, len(queue)))])
            self.step()
