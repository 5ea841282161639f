"""Prompt templates: plain completion, RWKV's chat format, and the chat formats of other models.

``--template completion`` (default) keeps each benchmark's published completion prompt.
``--template rwkv`` renders the same exemplars and question as RWKV chat turns, the way RWKV's
instruction-tuned checkpoints (World, G1) were trained, after an optional ``System:`` turn
(``--system-prompt``)::

    System: <system prompt>\\n\\nUser: <exemplar question>\\n\\nAssistant: <exemplar answer>\\n\\nUser: <question>\\n\\nAssistant:

A blank line separates turns, so blank lines inside a message are collapsed to one newline (as
RWKV's own chat code does), and generation stops at the next ``\\n\\nUser:``. The text is the
server's own rendering (:func:`engine.server.chat.render`), so a benchmark's ``--template rwkv``
prompt, ``--chat-template rwkv`` and ``rwkveval serve``'s chat endpoint give the same text for
the same messages.

:data:`CHAT_TEMPLATES` are the formats ``--chat-template`` wraps a generation context in before it
goes to a remote server's ``/v1/completions`` (one user turn, the assistant's turn opened, the
template's end-of-turn strings added to the stops): ``rwkv``, ``chatml``, ``qwen``, ``r1`` and
``internthinker``. A template with a system turn takes ``--system-prompt`` there (replacing its
default system message, if it has one). ``rwkv`` is the format above, rendered by the same
function: the context is one user message, its blank lines folded like any message's.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from engine.server.chat import render as render_rwkv_messages

TEMPLATES = ("completion", "rwkv")
RWKV_STOP = ("\n\nUser:",)


def rwkv_chat(turns: Sequence[tuple[str, str]], question: str, system: str | None = None) -> str:
    """Exemplar (question, answer) turns and the question, ending with the cue ``Assistant:``,
    after a ``System:`` turn when ``system`` is given (non-empty)."""
    messages = [("system", system)] if system else []
    for q, a in turns:
        messages += [("user", q), ("assistant", a)]
    return render_rwkv_messages(messages + [("user", question)])


@dataclass(frozen=True)
class ChatTemplate:
    """Wraps a generation context as one user turn and opens the assistant's turn.

    ``system``: the system turn with ``{system}`` in it, or None when the format has none;
    ``default_system``: the system message used when the caller gives none (None: no system turn);
    ``rwkv``: RWKV's own format, rendered by :func:`rwkv_chat` (every message folded) instead of
    ``prefix``/``suffix``.
    """

    prefix: str
    suffix: str
    stop: tuple[str, ...]
    system: str | None = None
    default_system: str | None = None
    rwkv: bool = False

    def render(self, context: str, system: str | None = None) -> str:
        """The prompt text: system turn (``system``, else the default), user turn, assistant cue."""
        if system is not None and self.system is None:
            raise ValueError("this chat template has no system turn")
        message = self.default_system if system is None else system
        if self.rwkv:
            return rwkv_chat((), context, message)
        opening = self.system.format(system=message) if message is not None and self.system else ""
        return self.prefix.replace("{system_turn}", opening) + context + self.suffix


_IM = "<|im_start|>system\n{system}<|im_end|>\n"  # ChatML's system turn
_R1_BOS = "<｜begin▁of▁sentence｜>"

CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    "rwkv": ChatTemplate("", "", RWKV_STOP, system="System: {system}\n\n", rwkv=True),
    "chatml": ChatTemplate("{system_turn}<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>",),
                           system=_IM),
    # Qwen2.5's template with its default system message
    "qwen": ChatTemplate("{system_turn}<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n",
                         ("<|im_end|>", "<|endoftext|>"), system=_IM,
                         default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    # DeepSeek-R1: a system prompt follows the BOS token with no marker (its tokenizer_config's
    # template); the reply opens with its reasoning, and the text is returned whole
    "r1": ChatTemplate(_R1_BOS + "{system_turn}<｜User｜>", "<｜Assistant｜><think>\n", ("<｜end▁of▁sentence｜>",),
                       system="{system}"),
    # InternThinker (Shanghai AI Lab): InternLM2's ChatML turns (InternLM/InternLM chat/chat_format.md)
    # with the default system message and stop words of InternLM/InternBootcamp's evaluation script,
    # examples/unittests/run_eval.py, TEMPLATE_MAP["internthinker"] (commit 1a8477c8)
    "internthinker": ChatTemplate(
        "{system_turn}<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>", "<|endoftext|>"),
        system=_IM, default_system=(
            "You are an expert reasoner with extensive experience in mathematical and code competitions. You "
            "approach problems through systematic thinking and rigorous reasoning. Your response should reflect "
            "deep understanding and precise logical thinking, making your solution path and reasoning clear to "
            "others. Please put your thinking process within <think>...</think> tags.")),
}


def chat_messages(context: str, system: str | None = None) -> list[dict[str, str]]:
    """The messages of a chat-mode request: an optional system message, then the context as the user's."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": context}]


def as_sent(context: str, api_mode: str = "completion", chat_template: str | None = None,
            system: str | None = None) -> str:
    """What a server receives for a generation context: the context itself, wrapped in a chat
    template, or (chat mode) the messages as JSON (the server applies its own format)."""
    if api_mode == "chat":
        return json.dumps(chat_messages(context, system), ensure_ascii=False)
    if chat_template is not None:
        return CHAT_TEMPLATES[chat_template].render(context, system)
    if system:
        raise ValueError("a system prompt needs a chat template or chat mode to go in")
    return context
