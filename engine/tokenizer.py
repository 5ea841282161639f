"""Tokenizers for RWKV models: the RWKV World tokenizer (vocabulary 65536) and a byte tokenizer (256).

``get_tokenizer(vocab_size)`` picks one by the model's vocabulary size. Both have the same interface:
``vocab_size``, ``name``, ``encode(text) -> list[int]``, ``encode_bytes(data)``, ``decode(ids) -> str``,
``decode_bytes(ids) -> bytes`` and ``token_bytes(id) -> bytes``. ``decode`` reads bytes as UTF-8 with
``errors="replace"``, so a cut-off multi-byte character never raises; a valid round trip is exact.

World tokenizer
---------------
The official tokenizer (``rwkv.rwkv_tokenizer.TRIE_TOKENIZER``) takes, at every position of the UTF-8
bytes, the longest vocabulary entry that matches there (greedy longest match). This module does the
same with a byte trie and gives the same ids on every string. The vocabulary,
``rwkv_vocab_v20230424.txt``, is read from the installed official ``rwkv`` package rather than kept
here. Each line is ``<id> <python str or bytes literal> <byte length>``, parsed with
``ast.literal_eval`` (the official loader calls ``eval``).

Why not HF ``tokenizers``: its only greedy longest-match model is WordPiece. WordPiece is exact here
when given the whole text as one word over a byte-to-character mapped vocabulary (checked). But for
each token it tries the rest of the word from the longest candidate down, hashing each one, and by
default it replaces any word over 100 characters with ``[UNK]``. With that cap removed, 250 / 500 /
1000 / 2000 CJK characters took 0.03 / 0.18 / 0.97 / 6.9 s on the 2-core reference machine, so
100 KB of text in one word would take hours. A pre-tokenizer could keep WordPiece linear only if the
pieces it cuts are bounded in length. The only provably safe cuts are the forced boundaries
described under "Speed", and a piece between them can be as long as the input. A run of spaces,
or a ``====`` or ``----`` ruler, has no forced boundary, because every pair of adjacent bytes in it
also occurs inside some vocabulary entry. So the matcher here is our own. HF ``tokenizers`` would
add nothing to decoding, which is a byte lookup and join.

Linear time: a trie walk never goes deeper than the longest entry (``max_token_bytes``, 128 bytes),
and each walk emits one token of at least one byte. The work is therefore at most 128 steps per
input byte, whatever the input. Every trie node stores the id of the longest vocabulary entry that
is a prefix of its path, so the walk can simply stop at the first byte with no child, with no
backtracking. ``greedy_match`` returns its step count, so tests can check the bound without a clock.

Speed: ``encode`` splits the bytes at forced boundaries and caches each piece (a bounded dict).
A position p is a forced boundary if no vocabulary entry holds the byte pair ``data[p-1], data[p]``
as adjacent bytes. No token can then cross p, so greedy matching on the whole text ends a token at
p. A walk that starts before p cannot find a longer match by reading past p, and the walk that
starts at p sees only the bytes from p on. Cutting the text at p therefore changes no token. The
cuts are made after ``\n`` when the next byte never follows ``\n`` inside an entry (in this
vocabulary, anything except tab, newline, CR or space). That set is computed from the vocabulary
when it is loaded, not written in by hand. Each piece is then a line. Few-shot prompts repeat
their exemplar lines on every call, so most pieces come from the cache. One pass over 1000
distinct 5-shot MMLU-Pro prompts (about 5 KB each) ran at about 18 MB/s with the cache and about
6 MB/s without it. The official tokenizer ran at about 3 MB/s. Text that does not repeat loses
10-20% to the splitting and the cache lookups. Splitting into words as well gained nothing, because in Python the
cost of handling a piece is about the cost of matching a short word.

Vocabulary facts (checked in tests/test_tokenizer.py): ids 1..65529 are assigned, 0 and
65530..65535 are not. Id 0 is RWKV's end-of-document token and is never produced by ``encode``;
decoding any unassigned id gives no bytes, so a sampled id never breaks a decode. All 256 single
bytes are entries (ids 1..256), so every input can be encoded. 486 entries are bytes literals that are
not valid UTF-8. They include 11 two-byte entries that start with a UTF-8 continuation byte
(ids 2412..2422), so a token boundary can fall inside a character. No entry holds two CJK
ideographs (U+4000..U+9FFF) in a row, so Chinese text takes at least one token per character.

Byte tokenizer
--------------
For vocabulary-256 models, such as the tiny rwkv.cpp test model: the token id is the byte value.
Token 0 is both the byte 0x00 and RWKV's end-of-document token. It decodes to ``b"\\x00"``, so every
byte string round-trips exactly.
"""
from __future__ import annotations

import ast
import functools
import importlib.resources
import operator
import re
from collections.abc import Iterable
from pathlib import Path

WORLD_VOCAB_SIZE = 65536
BYTE_VOCAB_SIZE = 256
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"

# Bounds of the World tokenizer's piece cache. Pieces are lines (see the module docstring); a
# longer piece is matched every time. When the cache is full it is emptied and refilled.
CACHE_MAX_PIECE_BYTES = 4096
CACHE_MAX_ENTRIES = 1 << 14


def _id_list(ids: Iterable[int]) -> list:
    """``ids`` as a list; tensors and arrays via ``tolist()`` so elements are plain ints."""
    tolist = getattr(ids, "tolist", None)
    return tolist() if callable(tolist) else list(ids)


class Tokenizer:
    """The shared interface and decoding. A subclass supplies ``encode_bytes`` and ``_table``.

    ``_table[id]`` is the bytes of token ``id`` (``b""`` for ids that are not vocabulary entries).
    """

    vocab_size: int
    name: str
    _table: list[bytes]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` encoded as UTF-8."""
        if not isinstance(text, str):
            hint = "; use encode_bytes() for bytes" if isinstance(text, (bytes, bytearray, memoryview)) else ""
            raise TypeError(f"{self.name} encode() expects str, found {type(text).__name__}{hint}")
        return self.encode_bytes(text.encode("utf-8"))

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw bytes (any bytes, not only UTF-8)."""
        raise NotImplementedError

    def _bytes_arg(self, data: bytes) -> bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            hint = "; use encode() for str" if isinstance(data, str) else ""
            raise TypeError(f"{self.name} encode_bytes() expects bytes, found {type(data).__name__}{hint}")
        return bytes(data)

    def _check_ids(self, ids: list) -> None:
        """Fast range check with min/max; on failure ``_reject`` names the offending id."""
        try:
            in_range = not ids or (min(ids) >= 0 and max(ids) < self.vocab_size)
        except TypeError:
            in_range = False
        if not in_range:
            self._reject(ids)

    def _reject(self, ids: list) -> None:
        """Raise TypeError for the first non-integer or ValueError for the first id out of range."""
        for token in ids:
            try:
                token = operator.index(token)
            except TypeError:
                raise TypeError(
                    f"{self.name}: token ids must be integers, found {type(token).__name__} {token!r}"
                ) from None
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"{self.name}: token id {token} is out of range for vocabulary size {self.vocab_size} "
                    f"(expected 0 <= id < {self.vocab_size})"
                )

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of the tokens ``ids``, concatenated."""
        ids = _id_list(ids)
        self._check_ids(ids)
        table = self._table
        try:
            return b"".join([table[token] for token in ids])
        except TypeError:
            self._reject(ids)  # e.g. floats that passed the min/max check
            raise

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: their bytes read as UTF-8, invalid sequences replaced with U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The bytes of one token (``b""`` for an id that is not a vocabulary entry, such as 0 in World)."""
        try:
            token = operator.index(token)
        except TypeError:
            raise TypeError(f"{self.name}: a token id must be an integer, found {type(token).__name__} {token!r}") from None
        self._check_ids([token])
        return self._table[token]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """Vocabulary 256: token id = byte value; 0 doubles as the end-of-document token."""

    def __init__(self) -> None:
        self.vocab_size = BYTE_VOCAB_SIZE
        self.name = "bytes"
        self._table = [bytes([b]) for b in range(BYTE_VOCAB_SIZE)]

    def encode_bytes(self, data: bytes) -> list[int]:
        return list(self._bytes_arg(data))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = _id_list(ids)
        self._check_ids(ids)
        try:
            return bytes(ids)
        except TypeError:
            self._reject(ids)
            raise


def default_world_vocab() -> Path:
    """Path of ``rwkv_vocab_v20230424.txt`` inside the installed official ``rwkv`` package."""
    try:
        package = importlib.resources.files("rwkv")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the RWKV World vocabulary ({WORLD_VOCAB_FILE}) is read from the official 'rwkv' package, "
            "which is not installed (pip install rwkv)"
        ) from None
    path = Path(str(package / WORLD_VOCAB_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"the installed 'rwkv' package has no {WORLD_VOCAB_FILE}: expected {path}")
    return path


def read_world_vocab(path: Path) -> dict[int, bytes]:
    """Parse a World vocabulary file: lines ``<id> <str or bytes literal> <byte length>``."""
    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    # Split on "\n" only: str.splitlines() would also split at characters such as U+2028 or \x1c.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line:
            continue
        where = f"{path}:{number}"
        first, last = line.find(" "), line.rfind(" ")
        try:
            if first <= 0 or last <= first:
                raise ValueError("fewer than three fields")
            token, literal, length = int(line[:first]), ast.literal_eval(line[first:last].strip()), int(line[last:])
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"{where}: expected '<id> <str or bytes literal> <byte length>', found {line!r} ({err})") from None
        data = literal.encode("utf-8") if isinstance(literal, str) else literal
        if not isinstance(data, bytes):
            raise ValueError(f"{where}: expected a str or bytes literal, found {type(literal).__name__}")
        if len(data) != length:
            raise ValueError(f"{where}: the entry has {len(data)} bytes but the line says {length}")
        if not data:
            raise ValueError(f"{where}: expected a non-empty entry, found {literal!r}")
        if not 0 < token < WORLD_VOCAB_SIZE:
            raise ValueError(f"{where}: expected an id in 1..{WORLD_VOCAB_SIZE - 1}, found {token}")
        if token in vocab or data in seen:
            raise ValueError(f"{where}: id {token} or its bytes {data!r} appear twice")
        vocab[token] = data
        seen[data] = token
    return vocab


class WorldTokenizer(Tokenizer):
    """The RWKV World tokenizer: greedy longest match over UTF-8 bytes, ids equal to the official ones."""

    def __init__(self, vocab_file: Path | str | None = None) -> None:
        path = Path(vocab_file) if vocab_file is not None else default_world_vocab()
        vocab = read_world_vocab(path)
        entries = set(vocab.values())
        missing = [b for b in range(256) if bytes([b]) not in entries]
        if missing:
            # Greedy matching needs every single byte as a fallback, or some inputs cannot be encoded.
            raise ValueError(f"{path}: expected all 256 single bytes as entries, missing {missing[:8]}")
        self.vocab_size = WORLD_VOCAB_SIZE
        self.name = path.stem
        self._table = [b""] * WORLD_VOCAB_SIZE
        for token, data in vocab.items():
            self._table[token] = data
        self._lengths = [len(data) for data in self._table]
        self.max_token_bytes = max(self._lengths)
        self._root = self._build_trie(vocab)
        self._splitter = self._build_splitter(vocab)
        self._cache: dict[bytes, list[int]] = {}

    @staticmethod
    def _build_trie(vocab: dict[int, bytes]) -> dict:
        """Nested dicts: ``node[byte] = (child, best_id, depth)``.

        ``best_id`` is the longest entry that is a prefix of the path to the child (the child
        itself if it is an entry). Entries are inserted shortest first, so when a node is
        created every entry that is a prefix of its path is already in the trie.
        """
        root: dict = {}
        for token, data in sorted(vocab.items(), key=lambda item: len(item[1])):
            node, best = root, 0
            for depth, byte in enumerate(data, start=1):
                entry = node.get(byte)
                if entry is None:
                    entry = node[byte] = [{}, best, depth]
                node, best = entry[0], entry[1]
            entry[1] = token

        def freeze(node: dict) -> dict:  # tuples unpack faster than lists in the hot loop
            return {byte: (freeze(child), best, depth) for byte, (child, best, depth) in node.items()}

        return freeze(root)

    @staticmethod
    def _build_splitter(vocab: dict[int, bytes]) -> re.Pattern[bytes]:
        """A zero-width pattern matching forced boundaries after ``\\n`` (see the module docstring)."""
        follows_newline = {data[k] for data in vocab.values() for k in range(1, len(data)) if data[k - 1] == 0x0A}
        free = b"".join(re.escape(bytes([b])) for b in range(256) if b not in follows_newline)
        return re.compile(b"(?<=\\n)(?=[" + free + b"])")

    def greedy_match(self, data: bytes) -> tuple[list[int], int]:
        """Greedy longest match over all of ``data``, with no splitting or cache: ``(ids, steps)``.

        ``steps`` counts trie edges followed, at most ``max_token_bytes`` per token emitted.
        """
        ids: list[int] = []
        append = ids.append
        root, lengths, window = self._root, self._lengths, self.max_token_bytes
        steps, position, end = 0, 0, len(data)
        while position < end:
            node = root
            # Every single byte is an entry of the root, so the loop sets best and depth at least once.
            for byte in data[position:position + window]:
                entry = node.get(byte)
                if entry is None:
                    break
                node, best, depth = entry
            steps += depth
            append(best)
            position += lengths[best]
        return ids, steps

    def encode_bytes(self, data: bytes) -> list[int]:
        """Token ids of raw bytes (any bytes, not only UTF-8); equal to ``greedy_match(data)[0]``."""
        data = self._bytes_arg(data)
        ids: list[int] = []
        cache = self._cache
        for piece in self._splitter.split(data):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self.greedy_match(piece)[0]
                if len(piece) <= CACHE_MAX_PIECE_BYTES:
                    if len(cache) >= CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def clear_cache(self) -> None:
        """Forget the cached pieces (to time cold encoding, or to free memory)."""
        self._cache.clear()


@functools.cache
def _world_tokenizer() -> WorldTokenizer:
    return WorldTokenizer()


def get_tokenizer(vocab_size: int) -> Tokenizer:
    """The tokenizer for a model with ``vocab_size`` outputs: 65536 -> World (shared instance), 256 -> bytes."""
    if vocab_size == WORLD_VOCAB_SIZE:
        return _world_tokenizer()
    if vocab_size == BYTE_VOCAB_SIZE:
        return ByteTokenizer()
    raise ValueError(
        f"no tokenizer for vocabulary size {vocab_size!r}: supported sizes are {WORLD_VOCAB_SIZE} "
        f"(RWKV World, {WORLD_VOCAB_FILE}) and {BYTE_VOCAB_SIZE} (bytes)"
    )
