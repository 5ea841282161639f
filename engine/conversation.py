"""A multi-turn chat kept as RNN state: each turn runs only its new message.

The transcript is RWKV's chat format (:mod:`engine.server.chat`): ``System: ...``, ``User: ...``
and ``Assistant: ...`` turns separated by a blank line. It starts with token 0, then the system
message (if any); a turn feeds ``User: {message}\\n\\nAssistant:`` from the state the conversation
is in, and the reply is decoded (:class:`engine.decoding.Decoder`) until the blank line that ends
it (or token 0, or the budget). The reply's tokens, the blank line included, stay in the state, so
the next turn again feeds only its own message. Each piece is tokenized on its own, as RWKV's
chat demos do, so the transcript's tokens are exactly those that were fed: a greedy
``model.generate`` over them gives the same reply.

``undo`` returns to the state before the last turn (a copy is kept per turn); ``save``/``load``
write and read the conversation (its turns as text, its tokens, its state) as one file that
``torch.load(weights_only=True)`` reads.
"""
from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .decoding import Decoder, Row, Settings, random_base_seed, row_seed
from .errors import InputError
from .server.chat import fold
from .state import State

REPLY_END = "\n\n"  # a blank line ends a turn
FORMAT, VERSION = "rwkveval-chat", 1


@dataclass
class Turn:
    user: str
    reply: str
    finish_reason: str
    prompt_tokens: int  # tokens this turn ran before its reply: its message only
    generated_tokens: int


@dataclass
class _Point:
    """The conversation at one moment: every token fed, the state and logits after them."""

    tokens: list[int]
    state: State | None
    logits: torch.Tensor | None
    separate: bool = False  # the last reply did not end with a blank line: the next turn adds one


@dataclass
class Conversation:
    model: Any
    system: str | None = None
    temperature: float = 1.0
    top_p: float = 0.3
    max_tokens: int = 1024
    seed: int | None = None
    turns: list[Turn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seed = random_base_seed() if self.seed is None else self.seed
        self._history: list[_Point] = []
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Back to the start: token 0 and the system message, nothing said yet."""
        self.turns, self._history = [], []
        opening = [0] + (list(self.model.tokenizer.encode(f"System: {fold(self.system)}\n\n")) if self.system else [])
        self._point = _Point(opening, None, None)

    @property
    def tokens(self) -> list[int]:
        """Every token of the transcript so far (what a one-call ``generate`` would be given)."""
        return list(self._point.tokens)

    def text(self) -> str:
        return self.model.tokenizer.decode(self._point.tokens[1:])

    def message_tokens(self, message: str) -> list[int]:
        """What a turn feeds for ``message``."""
        if not message.strip():
            raise InputError("an empty message: say something")
        prefix = REPLY_END if self._point.separate else ""
        return list(self.model.tokenizer.encode(f"{prefix}User: {fold(message)}\n\nAssistant:"))

    # ------------------------------------------------------------------ a turn

    def say(self, message: str, on_text: Callable[[str], None] | None = None,
            on_tokens: Callable[[int, int], None] | None = None) -> Turn:
        """Feed ``message``, decode the reply (streamed through ``on_text``), keep the state."""
        new = self.message_tokens(message)
        before = self._point
        pending = before.tokens if before.state is None else []  # the opening, run with the first turn
        run = pending + new
        stream = _Stream(on_text)
        row = Row(Settings(self.max_tokens, self.temperature, self.top_p, 0,
                           row_seed(self.seed, len(self.turns)) if self.temperature > 0 else None,
                           stop_strs=(REPLY_END,), keep_state=True),
                  prompt=run, start=before.state)
        Decoder(self.model, max_batch=1, on_token=stream.token, on_finish=stream.finish, on_tokens=on_tokens).run([row])
        reply = row.text().strip()
        self._history.append(before)
        # the state holds every generated token but a final token 0 (which is never fed)
        self._point = _Point(before.tokens + new + row.generated, row.state, row.logits,
                             separate=not (row.finish_reason == "stop" and not row.stop_token))
        turn = Turn(message, reply, row.finish_reason, len(run), len(row.tokens))
        self.turns.append(turn)
        return turn

    def undo(self) -> Turn | None:
        """Forget the last turn (its message and reply); None when nothing was said."""
        if not self.turns:
            return None
        self._point = self._history.pop()
        return self.turns.pop()

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        def point(p: _Point) -> dict[str, Any]:
            state = None if p.state is None else {"att_x": p.state.att_x.cpu(), "wkv": p.state.wkv.cpu(),
                                                  "ffn_x": p.state.ffn_x.cpu()}
            return {"tokens": p.tokens, "state": state, "logits": None if p.logits is None else p.logits.cpu(),
                    "separate": p.separate}

        info = self.model.info()
        torch.save({"format": FORMAT, "version": VERSION, "model_sha256": info.get("sha256"),
                    "model": info.get("path"), "system": self.system,
                    "turns": [turn.__dict__ for turn in self.turns], "transcript": self.text(),
                    "settings": {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                                 "seed": self.seed},
                    "point": point(self._point), "history": [point(p) for p in self._history]}, Path(path))

    def load(self, path: str | Path) -> None:
        try:
            data = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, struct.error) as error:
            raise InputError(f"{path}: not a saved conversation ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise InputError(f"{path}: not a saved rwkveval conversation (format {FORMAT} version {VERSION})")
        sha = self.model.info().get("sha256")
        if data.get("model_sha256") != sha:
            raise InputError(f"{path}: saved with another model (sha256 {str(data.get('model_sha256'))[:12]}, this one "
                             f"{str(sha)[:12]}); its state means nothing to this model")

        def point(d: dict[str, Any]) -> _Point:
            state = None
            if d["state"] is not None:
                device = self.model.device
                state = State(d["state"]["att_x"].to(device), d["state"]["wkv"].to(device), d["state"]["ffn_x"].to(device))
                state.check_fits(self.model.config, 1)
            return _Point(list(d["tokens"]), state, d["logits"], bool(d["separate"]))

        self.system = data["system"]
        self.turns = [Turn(**t) for t in data["turns"]]
        self._point, self._history = point(data["point"]), [point(p) for p in data["history"]]
        settings = data["settings"]
        self.temperature, self.top_p = settings["temperature"], settings["top_p"]
        self.max_tokens, self.seed = settings["max_tokens"], settings["seed"]


class _Stream:
    """Text of a reply as it is decoded, held back while it could still be the blank line that
    ends the turn; the reply's leading whitespace is dropped."""

    def __init__(self, on_text: Callable[[str], None] | None):
        import codecs

        self.on_text, self.sent, self.started = on_text, 0, False
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def _send(self, data: bytes) -> None:
        text = self.decoder.decode(data)
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if text and self.on_text is not None:
            self.on_text(text)

    def token(self, row: Row) -> None:
        end = len(row.data) - (len(REPLY_END) - 1)
        if end > self.sent:
            self._send(bytes(row.data[self.sent:end]))
            self.sent = end

    def finish(self, row: Row) -> None:
        end = max(0, row.text_bytes)
        if end > self.sent:
            self._send(bytes(row.data[self.sent:end]))
        tail = self.decoder.decode(b"", final=True)
        if tail and self.on_text is not None and self.started:
            self.on_text(tail)
