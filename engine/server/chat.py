"""The RWKV chat format: ``System:``, ``User:`` and ``Assistant:`` turns separated by a blank line.

::

    System: You are a helpful assistant.

    User: What is 2 + 2?

    Assistant: 4.

    User: And 3 + 3?

    Assistant:

A blank line ends a turn, so blank lines inside a message are folded into single newlines (as
RWKV's own chat demos do) and the reply is cut at the next ``\\n\\nUser:`` (the server's
``chat_stop``). A conversation that ends with an assistant message is continued, not answered.

The prompt's tokens (:func:`render_tokens`) are token 0 (RWKV's document separator, which starts
every context the engine scores) and then the text in pieces, each tokenized on its own: a piece
ends before each ``System:``/``User:`` turn and right after each ``Assistant:`` header. That is
how ``rwkveval chat`` (:mod:`engine.conversation`) feeds a conversation, one message at a time
from the state so far, so ``/v1/chat/completions`` and the chat command run the same tokens for
the same messages. They can still differ after an assistant turn: the chat keeps the tokens its
model sampled for a reply, which need not be the tokenizer's tokens for the reply's text (and a
reply cut by its budget puts the blank line in the next piece); a server sees only the text.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
_BLANK_LINES = re.compile(r"\n(\s*\n)+")
TURN_END = "\n\n"  # a blank line ends a turn

# The same format as a Jinja template, served by /tokenizer_info for clients that render chats
# themselves (lm-evaluation-harness's remote tokenizer). It does not fold blank lines, and gives
# the text only: token 0 and the pieces are this module's (render_tokens).
JINJA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}\n\n{% endif %}"
    "{% if message['role'] == 'user' %}User: {% elif message['role'] == 'assistant' %}Assistant: "
    "{% else %}System: {% endif %}"
    "{{ message['content'] | trim }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}\n\nAssistant:{% endif %}"
)


def fold(content: str) -> str:
    """One message's text with blank lines folded, so it cannot end its turn early."""
    return _BLANK_LINES.sub("\n", content.replace("\r\n", "\n")).strip()


def system_turn(content: str) -> str:
    """The piece a system message is: its turn and the blank line after it."""
    return f"System: {fold(content)}{TURN_END}"


def user_turn(content: str) -> str:
    """The piece a user message is: its turn, the blank line, and the reply's ``Assistant:`` header."""
    return f"User: {fold(content)}{TURN_END}Assistant:"


def render_pieces(messages: Sequence[tuple[str, str]]) -> list[str]:
    """``[(role, content), ...]`` -> the prompt text in the pieces that are tokenized one by one
    (see the module docstring); ``"".join`` of them is :func:`render`. Roles must be keys of
    :data:`ROLES`."""
    turns: list[tuple[str, str | None]] = [(ROLES[role], fold(content)) for role, content in messages]
    if not messages or messages[-1][0] != "assistant":
        turns.append(("Assistant", None))  # the reply's header: the model answers from here
    pieces, current = [], ""
    for i, (name, content) in enumerate(turns):
        if i:
            current += TURN_END
        if name == "Assistant":  # the header ends its piece; the reply is a piece of its own
            pieces.append(current + "Assistant:")
            current = "" if content is None else f" {content}"
        else:
            if current:
                pieces.append(current)
            current = f"{name}: {content}"
    if current:
        pieces.append(current)
    return pieces


def render(messages: Sequence[tuple[str, str]]) -> str:
    """``[(role, content), ...]`` -> the prompt text. Roles must be keys of :data:`ROLES`."""
    return "".join(render_pieces(messages))


def render_tokens(messages: Sequence[tuple[str, str]], encode: Callable[[str], Sequence[int]]) -> list[int]:
    """The chat prompt's token ids: token 0, then each piece of :func:`render_pieces` encoded on its own."""
    tokens = [0]
    for piece in render_pieces(messages):
        tokens.extend(encode(piece))
    return tokens
