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
"""
from __future__ import annotations

import re
from collections.abc import Sequence

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
_BLANK_LINES = re.compile(r"\n(\s*\n)+")

# The same format as a Jinja template, served by /tokenizer_info for clients that render chats
# themselves (lm-evaluation-harness's remote tokenizer). It does not fold blank lines.
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


def render(messages: Sequence[tuple[str, str]]) -> str:
    """``[(role, content), ...]`` -> the prompt text. Roles must be keys of :data:`ROLES`."""
    turns = [f"{ROLES[role]}: {fold(content)}" for role, content in messages]
    if not messages or messages[-1][0] != "assistant":
        turns.append("Assistant:")
    return "\n\n".join(turns)
