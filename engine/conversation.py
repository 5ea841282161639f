"""A multi-turn chat kept as RNN state: each turn runs only its new message.

The transcript is RWKV's chat format (:mod:`engine.server.chat`): ``System: ...``, ``User: ...``
and ``Assistant: ...`` turns separated by a blank line. It starts with token 0, then the system
message (if any); a turn feeds ``User: {message}\\n\\nAssistant:`` from the state the conversation
is in, and the reply is decoded (:class:`engine.decoding.Decoder`) until the blank line that ends
it (or token 0, or the budget). The reply's tokens, the blank line included, stay in the state, so
the next turn again feeds only its own message. Each piece is tokenized on its own, as RWKV's
chat demos do, so the transcript's tokens are exactly those that were fed: a greedy
``model.generate`` over them gives the same reply. The pieces are those of
:func:`engine.server.chat.render_tokens`, so ``/v1/chat/completions`` runs the same tokens for
the same messages (up to the reply tokens the model sampled; see that module).

``undo`` returns to the state before the last turn (a copy is kept per turn); ``save``/``load``
write and read the conversation (its turns as text, its tokens, its state) as one file that
``torch.load(weights_only=True)`` reads. A saved state means something only to the model that
made it, so a file records the model's identity (checkpoint sha256, adapters, initial state) and
``load`` refuses it for any other.
"""
from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .decoding import FINISH_REASONS, Decoder, Row, Settings, TextStream, random_base_seed, row_seed
from .errors import InputError
from .server.chat import TURN_END, system_turn, user_turn
from .state import State

REPLY_END = TURN_END  # a blank line ends a turn
FORMAT, VERSION = "rwkveval-chat", 2  # version 2: the model's identity holds its adapters and initial state


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
        opening = [0] + (list(self.model.tokenizer.encode(system_turn(self.system))) if self.system else [])
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
        return list(self.model.tokenizer.encode(prefix + user_turn(message)))

    # ------------------------------------------------------------------ a turn

    def say(self, message: str, on_text: Callable[[str], None] | None = None,
            on_tokens: Callable[[int, int], None] | None = None) -> Turn:
        """Feed ``message``, decode the reply (streamed through ``on_text``), keep the state."""
        new = self.message_tokens(message)
        before = self._point
        pending = before.tokens if before.state is None else []  # the opening, run with the first turn
        run = pending + new
        stream = TextStream(_ReplyText(on_text))
        # every turn's end, whatever ended it, is where the next turn starts
        row = Row(Settings(self.max_tokens, self.temperature, self.top_p, 0,
                           row_seed(self.seed, len(self.turns)) if self.temperature > 0 else None,
                           stop_strs=(REPLY_END,), keep_state=FINISH_REASONS),
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

    def identity(self) -> dict[str, Any]:
        """What a saved state depends on: the checkpoint's sha256, each adapter (sha256, kind,
        scale, PiSSA init) and whether sequences start from zeros or a tuned state, by a digest of
        its values (paths left out: the same files elsewhere are the same model)."""
        info = self.model.info()
        adapters = [{"sha256": a.get("sha256"), "kind": a.get("kind"), "scale": a.get("scale"),
                     "init": (a.get("init") or {}).get("sha256")} for a in info.get("adapters", [])]
        tuned = getattr(self.model, "initial_wkv", None)
        initial = "zeros" if tuned is None else "tuned " + hashlib.sha256(
            tuned.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return {"sha256": info.get("sha256"), "adapters": adapters, "initial_state": initial}

    def save(self, path: str | Path) -> None:
        def point(p: _Point) -> dict[str, Any]:
            state = None if p.state is None else {"att_x": p.state.att_x.cpu(), "wkv": p.state.wkv.cpu(),
                                                  "ffn_x": p.state.ffn_x.cpu()}
            return {"tokens": p.tokens, "state": state, "logits": None if p.logits is None else p.logits.cpu(),
                    "separate": p.separate}

        torch.save({"format": FORMAT, "version": VERSION, "model_identity": self.identity(),
                    "model": self.model.info().get("path"), "system": self.system,
                    "turns": [turn.__dict__ for turn in self.turns], "transcript": self.text(),
                    "settings": {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
                                 "seed": self.seed},
                    "point": point(self._point), "history": [point(p) for p in self._history]}, Path(path))

    def load(self, path: str | Path) -> None:
        """Replace this conversation with the one saved at ``path``; InputError naming the file when
        it is not a saved conversation, is damaged, or was saved with another model."""
        try:
            data = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, struct.error) as error:
            raise InputError(f"{path}: not a saved conversation ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path}: not a saved rwkveval conversation (format {FORMAT})")
        if data.get("version") != VERSION:
            raise InputError(f"{path}: a conversation saved in version {data.get('version')!r} of the format; "
                             f"this rwkveval reads version {VERSION} (save it again with this version)")
        saved, here = _field(data, "model_identity", dict, path), self.identity()
        if saved != here:
            what = next(k for k in [*here, *saved] if saved.get(k) != here.get(k))  # a key only one has too
            raise InputError(f"{path}: saved with another model ({what}: saved {str(saved.get(what))[:80]}, this "
                             f"model {str(here.get(what))[:80]}); its state means nothing to this model")
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise InputError(f"{path}: 'system' should be a string or None, found {type(system).__name__}")
        settings = _field(data, "settings", dict, path)
        try:
            turns = [Turn(**t) for t in _field(data, "turns", list, path)]
        except TypeError as error:
            raise InputError(f"{path}: a turn does not fit ({error})") from None
        current = self._read_point(_field(data, "point", dict, path), path)
        history = [self._read_point(p, path) for p in _field(data, "history", list, path)]
        values = [_field(settings, name, (int, float, type(None)), path, "settings.")
                  for name in ("temperature", "top_p", "max_tokens", "seed")]
        self.system, self.turns, self._point, self._history = system, turns, current, history
        self.temperature, self.top_p, self.max_tokens, self.seed = values

    def _read_point(self, d: Any, path: str | Path) -> _Point:
        if not isinstance(d, dict):
            raise InputError(f"{path}: a saved point should be a dict, found {type(d).__name__}")
        tokens = _field(d, "tokens", list, path, "point.")
        vocab = self.model.config.vocab_size
        bad = next((t for t in tokens if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab), None)
        if bad is not None:
            raise InputError(f"{path}: point.tokens should be token ids in [0, {vocab}), found {bad!r}")
        logits = _field(d, "logits", (torch.Tensor, type(None)), path, "point.")
        if logits is not None and (tuple(logits.shape) != (vocab,) or not logits.is_floating_point()):
            raise InputError(f"{path}: point.logits should be a float tensor of shape ({vocab},), found "
                             f"{logits.dtype} of shape {tuple(logits.shape)}")
        raw = _field(d, "state", (dict, type(None)), path, "point.")
        state = None
        if raw is not None:
            parts = [_field(raw, name, torch.Tensor, path, "point.state.") for name in ("att_x", "wkv", "ffn_x")]
            device = self.model.device
            state = State(*(t.to(device) for t in parts))
            state.check_fits(self.model.config, 1)
        return _Point(list(tokens), state, logits, bool(_field(d, "separate", bool, path, "point.")))


def _field(d: dict, key: str, kind: type | tuple[type, ...], path: str | Path, where: str = "") -> Any:
    """``d[key]``, which must be of ``kind``; InputError naming the file and the key otherwise."""
    if key not in d:
        raise InputError(f"{path}: the saved conversation lacks {where}{key!r} (damaged, or not written by rwkveval)")
    value = d[key]
    if not isinstance(value, kind):
        raise InputError(f"{path}: {where}{key!r} has the wrong type: found {type(value).__name__}")
    return value


class _ReplyText:
    """A reply's text for ``on_text``, its leading whitespace (after ``Assistant:``) dropped."""

    def __init__(self, on_text: Callable[[str], None] | None):
        self.on_text, self.started = on_text, False

    def __call__(self, text: str) -> None:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if text and self.on_text is not None:
            self.on_text(text)
