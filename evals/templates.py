"""Prompt templates for generation and custom tasks: plain completion, or RWKV's chat format.

``--template completion`` (default) keeps each benchmark's published completion prompt.
``--template rwkv`` renders the same exemplars and question as RWKV chat turns, the way RWKV's
instruction-tuned checkpoints (World, G1) were trained::

    User: <exemplar question>\\n\\nAssistant: <exemplar answer>\\n\\nUser: <question>\\n\\nAssistant:

A blank line separates turns, so blank lines inside a message are collapsed to one newline (as
RWKV's own chat code does), and generation stops at the next ``\\n\\nUser:``.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

TEMPLATES = ("completion", "rwkv")
RWKV_STOP = ("\n\nUser:",)
_BLANK_LINES = re.compile(r"\n\s*\n")


def clean_message(text: str) -> str:
    """One chat message: CRLF to LF, blank lines collapsed, outer whitespace stripped."""
    return _BLANK_LINES.sub("\n", text.replace("\r\n", "\n")).strip()


def rwkv_chat(turns: Sequence[tuple[str, str]], question: str) -> str:
    """Exemplar (question, answer) turns and the question, ending with the cue ``Assistant:``."""
    shots = "".join(f"User: {clean_message(q)}\n\nAssistant: {clean_message(a)}\n\n" for q, a in turns)
    return shots + f"User: {clean_message(question)}\n\nAssistant:"
