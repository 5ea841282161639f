"""Token strings for the OpenAI ``logprobs`` object, for any tokenizer (byte-level included).

A token of a byte-level model (or a World token that splits a character) need not be valid UTF-8
on its own, so a token's string cannot simply be its bytes decoded. Two representations are used:

``token_pieces`` (for ``logprobs.tokens`` and ``text_offset``): the text each token adds when the
whole byte stream is decoded left to right with an incremental UTF-8 decoder (``errors="replace"``).
A byte that starts a multi-byte character adds ``""``; the byte that completes it adds the whole
character. So ``"".join(tokens) == text`` and ``text[text_offset[i]:][:len(tokens[i])] == tokens[i]``
hold exactly, and a client finds where a continuation starts as the first token whose
``text_offset`` is at least the length of the context in characters.

``token_key`` (for the keys of ``top_logprobs``): one distinct string per token id, so that top
alternatives never collide in the dict: the token's bytes as text when they are valid UTF-8 on
their own, otherwise ``"bytes:"`` followed by ``\\xNN`` escapes (the convention OpenAI uses for
partial tokens), and ``"<|endoftext|>"`` or ``"<|unused:ID|>"`` for ids without bytes.
"""
from __future__ import annotations

import codecs
from collections.abc import Sequence


def token_pieces(parts: Sequence[bytes], keep: int | None = None) -> list[str]:
    """The text each token adds to the decoded stream; ``keep`` cuts the stream after that many bytes.

    ``"".join(token_pieces(parts, keep)) == b"".join(parts)[:keep].decode("utf-8", "replace")``.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    used = 0
    for data in parts:
        if keep is not None:
            data = data[:max(0, keep - used)]
        used += len(data)
        pieces.append(decoder.decode(data))
    tail = decoder.decode(b"", final=True)  # a cut-off character at the very end: U+FFFD
    if tail and pieces:
        pieces[-1] += tail
    return pieces


def offsets(pieces: Sequence[str], start: int = 0) -> list[int]:
    """Character offset of each piece in their concatenation (plus ``start``)."""
    out, position = [], start
    for piece in pieces:
        out.append(position)
        position += len(piece)
    return out


def token_key(data: bytes, token: int) -> str:
    """A string naming token ``token`` (with bytes ``data``), distinct for every token id."""
    if not data:
        return "<|endoftext|>" if token == 0 else f"<|unused:{token}|>"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)
