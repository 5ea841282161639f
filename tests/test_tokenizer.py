"""Tests of engine/tokenizer.py.

The World tokenizer is checked against the official ``rwkv.rwkv_tokenizer.TRIE_TOKENIZER`` (the
oracle). Hypothesis generates text of every kind, and every text field of the shared benchmark
files is encoded by both tokenizers. Linear time is checked two ways: the greedy matcher's trie
step count, which is deterministic, and the CPU time of ``encode`` at 1x and 8x the input length.
"""
from __future__ import annotations

import csv
import json
import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarkdata import shared_root
from conftest import require_shared
from engine.tokenizer import (
    CACHE_MAX_ENTRIES,
    ByteTokenizer,
    WorldTokenizer,
    default_world_vocab,
    get_tokenizer,
    read_world_vocab,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return get_tokenizer(65536)


@pytest.fixture(scope="module")
def official():
    module = pytest.importorskip("rwkv.rwkv_tokenizer")
    return module.TRIE_TOKENIZER(str(default_world_vocab()))


def assert_same_as_official(world: WorldTokenizer, official, text: str) -> None:
    ids = world.encode(text)
    expected = official.encode(text)
    assert ids == expected, f"ids differ for {text!r}"
    assert world.decode(ids) == text


# --------------------------------------------------------------------------- strategies

CJK = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), st.sampled_from("，。！？：；“”《》、（）　的了是")),
    max_size=300,
)
EMOJI = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
        st.characters(min_codepoint=0x1F1E6, max_codepoint=0x1F1FF),  # regional indicators (flags)
        st.sampled_from(["\u200d", "\ufe0f", "\u20e3", "\U0001F3FB", "\U0001F3FF", "#", "1", " ", "a"]),
    ),
    max_size=100,
)
WHITESPACE_RUNS = st.lists(
    st.tuples(st.sampled_from([" ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u3000", "x", "的"]),
              st.integers(1, 300)),
    max_size=12,
).map(lambda runs: "".join(piece * count for piece, count in runs))
SCRIPTS = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF), (0x600, 0x6FF),
           (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0xAC00, 0xD7A3), (0x4E00, 0x9FFF), (0x300, 0x36F)]
MIXED_SCRIPTS = st.text(
    alphabet=st.one_of(*[st.characters(min_codepoint=lo, max_codepoint=hi) for lo, hi in SCRIPTS]), max_size=300
)
CODE_FRAGMENTS = [
    "def ", "class ", "return ", "import ", "for ", " in ", "if ", "else:", "while ", "lambda ", "self", ".", ",",
    "(", ")", "[", "]", "{", "}", ":", ";", " = ", " == ", "+=", "->", "=>", "!=", "&&", "||", "//", "/*", "*/", "#",
    "'", '"', '"""', "\\n", "\n", "\n    ", "\n        ", "\t", "    ", "  ", "x", "foo_bar", "i", "0", "42", "3.14",
    "printf(\"%d\\n\", x);", "std::vector<int>", "<div class=\"a\">", "</div>", "SELECT * FROM t WHERE id = 1;",
    "    # comment\n", "}\n", "{\n", "\r\n", "fn main() {", "let mut v = Vec::new();", "console.log(x)", "@property",
]
CODE = st.lists(st.sampled_from(CODE_FRAGMENTS), max_size=80).map("".join)
# Newlines next to every kind of byte exercise the forced-boundary split that encode() relies on.
NEWLINE_HEAVY = st.lists(
    st.sampled_from(["\n", "\n\n", " ", "\t", "\r", "a", "Q", "1", "#", "的", "é", "😀", "\x00", "\xa0", "\u3000"]), max_size=200
).map("".join)


# --------------------------------------------------------------------------- World vs the official tokenizer

@pytest.mark.oracle
@PROPERTY
@given(text=st.text(max_size=300))
def test_world_matches_official_on_any_text(world, official, text):
    assert_same_as_official(world, official, text)


@pytest.mark.oracle
@PROPERTY
@given(text=st.one_of(CJK, EMOJI, WHITESPACE_RUNS, MIXED_SCRIPTS, CODE, NEWLINE_HEAVY))
def test_world_matches_official_on_structured_text(world, official, text):
    assert_same_as_official(world, official, text)


@pytest.mark.oracle
@PROPERTY
@given(data=st.binary(max_size=300))
def test_world_matches_official_on_arbitrary_bytes(world, official, data):
    ids = world.encode_bytes(data)
    assert ids == official.encodeBytes(data)
    assert world.decode_bytes(ids) == data


@pytest.mark.oracle
@PROPERTY
@given(tokens=st.lists(st.integers(1, 65529), max_size=40))
def test_world_matches_official_on_concatenated_vocabulary_entries(world, official, tokens):
    # Joined entries walk deep into the trie (128-space runs, '#' and '-' rulers, partial UTF-8).
    data = b"".join(world.token_bytes(t) for t in tokens)
    assert world.encode_bytes(data) == official.encodeBytes(data)
    assert world.decode_bytes(tokens) == data


@PROPERTY
@given(text=st.one_of(NEWLINE_HEAVY, CODE, WHITESPACE_RUNS))
def test_split_and_cache_equal_plain_greedy_match(world, text):
    data = text.encode("utf-8")
    assert world.encode_bytes(data) == world.greedy_match(data)[0]


EDGE_CASES = {
    "empty": "",
    "nul": "\x00",
    "spaces-127-128-129": " " * 127 + "x" + " " * 128 + "x" + " " * 129,
    "spaces-1000": " " * 1000 + "a",
    "newlines-300": "\n" * 300,
    "crlf": "a\r\nb\r\n\r\n  c",
    "tabs": "\t" * 70 + "x\n\t\t",
    "rulers": "#" * 200 + "\n" + "-" * 161 + "\n" + "=" * 300 + "*" * 77,
    "combining": "e" + "\u0301" * 40,
    "zwj-family": "👨‍👩‍👧‍👦 🇺🇳 1️⃣",
    "bom-and-max": "\ufeffa\U0010FFFF\u2028b\x85",
    "chinese": "在农业生产中被当作极其重要的劳动对象发挥作用，最主要的不可替代的基本生产资料是土地。",
    "mixed": "Hello, 世界! Привет мир. مرحبا بالعالم. नमस्ते. こんにちは。안녕하세요.",
    "code": "def f(x):\n    return {'a': [x, x ** 2]}\n\n\nclass A:\n\tpass\n",
}


@pytest.mark.oracle
@pytest.mark.parametrize("text", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_world_matches_official_on_edge_cases(world, official, text):
    assert_same_as_official(world, official, text)


@pytest.mark.oracle
def test_lone_surrogates_are_rejected_as_by_the_official_tokenizer(world, official):
    # They have no UTF-8 form; UnicodeEncodeError is a ValueError naming the character and position.
    with pytest.raises(UnicodeEncodeError):
        official.encode("a\ud800b")
    with pytest.raises(UnicodeEncodeError, match="position 1"):
        world.encode("a\ud800b")


# --------------------------------------------------------------------------- every text of the benchmark files

def _strings(value, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _strings(item, out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, out)


def benchmark_texts(path: Path) -> list[str]:
    """Every string in a data file (JSON values, CSV cells, parquet cells), each distinct one once."""
    out: list[str] = []
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    assert files, f"no CSV files in {path}"
    for file in files:
        if file.suffix == ".jsonl":
            with file.open(encoding="utf-8") as f:
                for line in f:
                    _strings(json.loads(line), out)
        elif file.suffix == ".csv":
            with file.open(encoding="utf-8", newline="") as f:
                for row in csv.reader(f):
                    out.extend(row)
        elif file.suffix == ".parquet":
            import pyarrow.parquet as pq

            _strings(pq.read_table(file).to_pylist(), out)
        else:
            raise AssertionError(f"unexpected data file {file}")
    return list(dict.fromkeys(out))


# Times are for the official tokenizer on the 2-core reference machine. The mmlu_pro parquet files
# are skipped because they hold the same rows as the jsonl files (SOURCES.md 1a).
_SLOW = pytest.mark.slow
BENCHMARK_FILES = [
    pytest.param("mmlu_pro/test.jsonl", marks=_SLOW),  # ~7 MB of text, ~6 s
    pytest.param("mmlu_pro/test_hf2026_tigerlab_eval_dump.jsonl", marks=_SLOW),
    "mmlu_pro/validation.jsonl",
    "lambada_openai/lambada_test.jsonl",
    "gsm8k/test.jsonl",
    pytest.param("gsm8k/train.jsonl", marks=_SLOW),
    "math500/test.jsonl",
    "arc/ARC-Easy-test.jsonl",
    "arc/ARC-Easy-validation.jsonl",
    "arc/ARC-Challenge-test.jsonl",
    "arc/ARC-Challenge-validation.jsonl",
    "piqa/valid.jsonl",
    "winogrande/dev_mosaicml_gauntlet.jsonl",
    "cmmlu/dev",
    "cmmlu/test",
    "mmlu/dev-00000-of-00001.parquet",
    "mmlu/validation-00000-of-00001.parquet",
    pytest.param("mmlu/test-00000-of-00001.parquet", marks=_SLOW),  # ~6 MB of text, ~6 s
]


@pytest.mark.oracle
@pytest.mark.parametrize("relative", BENCHMARK_FILES)
def test_world_matches_official_on_benchmark_file(world, official, relative):
    path = require_shared(shared_root() / "benchmarkdata" / relative)
    texts = benchmark_texts(path)
    assert texts, f"no text found in {path}"
    differ = []
    for text in texts:
        ids, expected = world.encode(text), official.encode(text)
        if ids != expected or world.decode(ids) != text:
            at = next((k for k, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
            differ.append(f"{text[:80]!r}: first difference at token {at}, ours {ids[at:at + 3]} official {expected[at:at + 3]}")
    assert not differ, f"{len(differ)} of {len(texts)} texts in {relative} differ, e.g.\n" + "\n".join(differ[:3])


# --------------------------------------------------------------------------- linear time

def _cjk(n_chars: int, seed: int) -> str:
    rng = random.Random(seed)
    common = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可"
    return "".join(rng.choice(common) if rng.random() < 0.5 else chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(n_chars))


def _whitespace(n_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    runs, size = [], 0
    while size < n_bytes:
        run = rng.choice(" \t\n") * rng.randint(1, 5000)
        runs.append(run)
        size += len(run)
    return "".join(runs)


def _code(n_bytes: int, seed: int) -> str:
    rng = random.Random(seed)
    lines, size, k = [], 0, 0
    while size < n_bytes:  # every line distinct, so the piece cache cannot hide the matching work
        indent = "    " * rng.randint(0, 4)
        line = f"{indent}value_{k} = compute(items[{k}], offset={rng.randint(0, 10**6)})  # step {k}\n"
        lines.append(line)
        size += len(line)
        k += 1
    return "".join(lines)


LONG_INPUTS = {"cjk-no-spaces": _cjk, "whitespace-runs": _whitespace, "code": _code}


@pytest.mark.parametrize("make", LONG_INPUTS.values(), ids=LONG_INPUTS.keys())
def test_greedy_match_steps_grow_linearly(world, make):
    large = make(160_000, seed=1).encode("utf-8")
    small = large[: len(large) // 8]
    per_byte = []
    for data in (small, large):
        ids, steps = world.greedy_match(data)
        # Each token consumes its length in trie edges, and no walk goes deeper than the longest entry.
        assert len(data) <= steps <= world.max_token_bytes * len(ids)
        per_byte.append(steps / len(data))
    assert per_byte[1] <= 1.05 * per_byte[0], per_byte
    assert per_byte[1] <= 2.0, per_byte


def _best_cpu_seconds(world: WorldTokenizer, text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        world.clear_cache()
        start = time.process_time()
        world.encode(text)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("make", LONG_INPUTS.values(), ids=LONG_INPUTS.keys())
def test_encode_time_grows_linearly(world, make):
    # CPU time (not wall time) and the best of three runs, so other jobs on the machine matter less.
    # A quadratic encoder would take 64x as long for 8x the input; linear takes about 8x.
    small, large = make(50_000, seed=3), make(400_000, seed=4)
    t_small, t_large = _best_cpu_seconds(world, small), _best_cpu_seconds(world, large)
    assert t_large < 20 * max(t_small, 1e-3), f"{t_small=:.4f}s {t_large=:.4f}s"


@pytest.mark.oracle
def test_long_chinese_text_encodes_quickly(world, official):
    text = _cjk(100_000, seed=5)  # 300 KB with no spaces or newlines: a single piece
    start = time.process_time()
    ids = world.encode(text)
    assert time.process_time() - start < 10.0
    assert ids == official.encode(text)


# --------------------------------------------------------------------------- World vocabulary and decoding

@pytest.mark.oracle
def test_world_vocabulary_equals_official(world, official):
    assert world.vocab_size == 65536
    assert world.name == "rwkv_vocab_v20230424"
    assert world.max_token_bytes == 128
    assigned = [t for t in range(world.vocab_size) if world.token_bytes(t)]
    assert assigned == list(range(1, 65530))
    assert all(world.token_bytes(t) == official.idx2token[t] for t in assigned)
    assert [world.token_bytes(b + 1) for b in range(256)] == [bytes([b]) for b in range(256)]


def test_world_vocabulary_quirks_stated_in_the_module_docstring(world):
    entries = {t: world.token_bytes(t) for t in range(1, 65530)}

    def is_utf8(data: bytes) -> bool:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    assert sum(not is_utf8(data) for data in entries.values()) == 486
    starts_mid_character = sorted(t for t, data in entries.items() if len(data) > 1 and 0x80 <= data[0] < 0xC0)
    assert starts_mid_character == list(range(2412, 2423))
    ideograph = re.compile("[\u4000-\u9fff]{2}")
    assert not [t for t, data in entries.items() if ideograph.search(data.decode("utf-8", errors="replace"))]


def test_world_token_zero_and_unassigned_ids_decode_to_nothing(world):
    assert world.token_bytes(0) == b""
    assert world.decode_bytes([0, 65530, 65535]) == b""
    assert world.decode([0]) == ""
    assert world.encode("\x00") == [1]  # the NUL byte is entry 1, never the separator


def test_world_decode_never_raises_on_partial_utf8(world):
    ids = world.encode("中文")
    first_byte = world.token_bytes(ids[0])[:1]
    partial = world.encode_bytes(first_byte)  # a lone UTF-8 lead byte
    assert world.decode_bytes(partial) == first_byte
    assert world.decode(partial) == "\ufffd"
    assert world.decode(partial + ids) == "\ufffd中文"


@pytest.mark.parametrize("bad", [65536, -1, 10**9])
def test_world_decode_rejects_ids_out_of_range(world, bad):
    with pytest.raises(ValueError, match=rf"token id {bad} is out of range for vocabulary size 65536"):
        world.decode([1, bad])
    with pytest.raises(ValueError, match=rf"token id {bad} "):
        world.token_bytes(bad)


@pytest.mark.parametrize("tokenizer", [get_tokenizer(256), "world"], ids=["bytes", "world"])
@pytest.mark.parametrize("bad", [1.5, "a", None])
def test_decode_rejects_non_integer_ids(world, tokenizer, bad):
    tokenizer = world if tokenizer == "world" else tokenizer
    with pytest.raises(TypeError, match="must be integers"):
        tokenizer.decode([1, bad])


def test_decode_accepts_tensors_and_arrays(world):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    ids = world.encode("RWKV-7 引擎")
    assert world.decode(np.array(ids)) == "RWKV-7 引擎"
    assert world.decode(torch.tensor(ids)) == "RWKV-7 引擎"
    assert world.token_bytes(np.int64(ids[0])) == world.token_bytes(ids[0])


@pytest.mark.parametrize("tokenizer", [get_tokenizer(256), "world"], ids=["bytes", "world"])
@pytest.mark.parametrize("value", [b"abc", None, 5, ["a"]])
def test_encode_rejects_non_str(world, tokenizer, value):
    tokenizer = world if tokenizer == "world" else tokenizer
    with pytest.raises(TypeError, match=rf"encode\(\) expects str, found {type(value).__name__}"):
        tokenizer.encode(value)


def test_encode_bytes_rejects_str(world):
    with pytest.raises(TypeError, match=r"encode_bytes\(\) expects bytes, found str; use encode\(\)"):
        world.encode_bytes("abc")


def test_piece_cache_is_bounded(world):
    for k in range(CACHE_MAX_ENTRIES + 100):
        world.encode(f"line {k}\n")
    assert 0 < len(world._cache) <= CACHE_MAX_ENTRIES  # private: the bound is an internal invariant


# --------------------------------------------------------------------------- the greedy rule on a small vocabulary

def _write_vocab(path: Path, extra: list[bytes]) -> Path:
    entries = [bytes([b]) for b in range(256)] + extra
    path.write_text("".join(f"{i} {e!r} {len(e)}\n" for i, e in enumerate(entries, start=1)), encoding="utf-8")
    return path


def test_greedy_falls_back_to_the_longest_entry_on_the_path(tmp_path):
    tok = WorldTokenizer(_write_vocab(tmp_path / "vocab.txt", [b"ab", b"abcd", b"bcx"]))
    ab, abcd, bcx = 257, 258, 259
    byte = {c: ord(c) + 1 for c in "abcdx"}
    assert tok.encode("abcd") == [abcd]
    # The walk reaches "abc" (a prefix of "abcd", not an entry), fails on "x", and emits "ab";
    # greedy matching does not look for "a" + "bcx".
    assert tok.encode("abcx") == [ab, byte["c"], byte["x"]]
    assert tok.encode("abcdabx") == [abcd, ab, byte["x"]]
    assert tok.greedy_match(b"abcx") == ([ab, byte["c"], byte["x"]], 3 + 1 + 1)
    assert tok.max_token_bytes == 4
    assert tok.name == "vocab"


def test_vocabulary_errors_name_the_line(tmp_path):
    path = _write_vocab(tmp_path / "vocab.txt", [b"ab"])
    with path.open("a", encoding="utf-8") as f:
        f.write("258 'abc' 4\n")
    with pytest.raises(ValueError, match=r"vocab.txt:258: the entry has 3 bytes but the line says 4"):
        read_world_vocab(path)
    path.write_text("1 not-a-literal 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt:1: expected '<id> <str or bytes literal> <byte length>'"):
        read_world_vocab(path)


def test_vocabulary_without_every_single_byte_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("1 'a' 1\n2 'ab' 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="expected all 256 single bytes"):
        WorldTokenizer(path)


# --------------------------------------------------------------------------- byte tokenizer and get_tokenizer

@PROPERTY
@given(data=st.binary(max_size=500))
def test_byte_tokenizer_round_trips_bytes(data):
    tok = ByteTokenizer()
    ids = tok.encode_bytes(data)
    assert ids == list(data)
    assert tok.decode_bytes(ids) == data


@PROPERTY
@given(text=st.text(max_size=300))
def test_byte_tokenizer_round_trips_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_ids_and_token_zero():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.name) == (256, "bytes")
    assert tok.encode('"in') == [34, 105, 110]  # the tiny rwkv.cpp model's test prompt
    assert tok.encode("\x00") == [0]
    assert tok.token_bytes(0) == b"\x00"
    assert [tok.token_bytes(b) for b in range(256)] == [bytes([b]) for b in range(256)]
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"  # a cut-off character does not raise
    assert tok.decode([0xE4, 0xB8, 0xAD]) == "中"


@pytest.mark.parametrize("bad", [256, -1])
def test_byte_tokenizer_rejects_ids_out_of_range(bad):
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=rf"token id {bad} is out of range for vocabulary size 256"):
        tok.decode([65, bad])
    with pytest.raises(ValueError, match=rf"token id {bad} "):
        tok.token_bytes(bad)


def test_get_tokenizer_picks_by_vocabulary_size():
    world = get_tokenizer(65536)
    assert isinstance(world, WorldTokenizer)
    assert get_tokenizer(65536) is world  # built once; the trie takes about a second
    assert isinstance(get_tokenizer(256), ByteTokenizer)


@pytest.mark.parametrize("size", [0, 255, 50277, 65529, 65535, 65537])
def test_get_tokenizer_rejects_other_sizes(size):
    with pytest.raises(ValueError, match=rf"vocabulary size {size}: supported sizes are 65536 .* and 256"):
        get_tokenizer(size)


GOLDEN = {  # ids from the official TRIE_TOKENIZER (rwkv 0.8.32), a readable anchor beside the properties
    "The quick brown fox jumps over the lazy dog.": [6699, 39418, 37917, 21704, 38828, 31601, 22590, 31261, 21551, 47],
    "你好，世界！": [10464, 11685, 19137, 10267, 14610, 19126],
    "\n\nQuestion: 2+2=?\nAnswer:": [261, 53648, 59, 285, 44, 51, 62, 64, 11, 40301, 59],
}


@pytest.mark.parametrize("text", GOLDEN, ids=range(len(GOLDEN)))
def test_world_golden_ids(world, text):
    assert world.encode(text) == GOLDEN[text]
    assert world.decode(GOLDEN[text]) == text
