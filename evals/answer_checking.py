"""Comparing an extracted answer with a reference: as a number, or as normalised text.

Numbers (GSM8K, and the custom module's ``numbers`` normalisation): thousands separators, a
currency sign, a trailing full stop and trailing zeros do not matter, so ``"$1,000.50"``,
``"1000.5"`` and ``"1000.50."`` are the same number; a trailing unit word (``"18 dollars"``) is
dropped. Comparison is exact (``Decimal``), never by float rounding.

Text (the custom module's exact match): the normalisations named in ``--match-normalize``, applied
in a fixed order to both sides: ``strip`` (outer whitespace), ``lower``, ``punctuation`` (ASCII and
Unicode punctuation removed), ``articles`` (English a/an/the removed, as SQuAD does),
``whitespace`` (runs collapsed to one space), ``numbers`` (equal if both read as the same number).

Choice letters (MMLU-Pro's CoT, the custom ``choice_letter`` checker): TIGER-Lab's three patterns
(``evaluate_from_local.py``) over the letters in play, :func:`extract_choice`.

Boxed LaTeX answers (MATH-500, the custom checkers ``boxed_last``/``boxed_any``/``math_equiv``):
the content of ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces matched) or ``\\boxed x``, parsed
as LaTeX by math-verify (HF, ``parse``/``verify``: sympy equivalence), never compared as strings.
"""
from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

NORMALIZATIONS = ("strip", "lower", "punctuation", "articles", "whitespace", "numbers")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_UNIT = re.compile(r"^(.*?\d)\s*[A-Za-z%]+\.?$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BOX = re.compile(r"\\(?:boxed|fbox)")


def parse_number(text: str | None) -> Decimal | None:
    """The number a short answer string means, or None: ``" $1,234.50. "`` -> Decimal('1234.5')."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").replace("€", "").replace("£", "")
    cleaned = cleaned.rstrip(".").strip()
    unit = _UNIT.match(cleaned)
    if unit and not _NUMBER.match(cleaned):
        cleaned = unit.group(1)
    if not _NUMBER.match(cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value.normalize() if value != 0 else Decimal(0)


def numbers_equal(a: str | None, b: str | None) -> bool:
    x, y = parse_number(a), parse_number(b)
    return x is not None and y is not None and x == y


def normalize_text(text: str, steps: Iterable[str]) -> str:
    steps = set(steps)
    unknown = steps - set(NORMALIZATIONS)
    if unknown:
        raise ValueError(f"unknown normalisation {sorted(unknown)}; expected some of {NORMALIZATIONS}")
    if "strip" in steps:
        text = text.strip()
    if "lower" in steps:
        text = text.lower()
    if "punctuation" in steps:
        text = "".join(ch for ch in text if ch not in string.punctuation
                       and not unicodedata.category(ch).startswith("P"))
    if "articles" in steps:
        text = _ARTICLES.sub(" ", text)
    if "whitespace" in steps:
        text = " ".join(text.split())
    return text


def exact_match(prediction: str, reference: str, steps: Iterable[str]) -> bool:
    steps = tuple(steps)
    if "numbers" in steps and numbers_equal(prediction, reference):
        return True
    return normalize_text(prediction, steps) == normalize_text(reference, steps)


def match_key(answer: str, steps: Iterable[str]) -> str | None:
    """What answers vote by (``--samples`` majorities, ``--strategy`` votes) under ``exact_match``
    with normalisations ``steps``: with ``numbers``, an answer that reads as a number is that number
    (``"1,000.5"`` and ``"1000.50"`` are one vote: ``"1000.5"``); otherwise the normalised text. An
    answer that is empty once normalised does not vote (None)."""
    steps = tuple(steps)
    if "numbers" in steps:
        number = parse_number(answer)
        if number is not None:
            return str(number)
    key = normalize_text(answer, steps)
    return key if key.strip() else None


@functools.cache
def choice_patterns(letters: str = "ABCDEFGHIJ") -> tuple[re.Pattern, re.Pattern, re.Pattern]:
    """MMLU-Pro's extraction patterns for the contiguous ``letters`` (A-J: TIGER-Lab's own text):
    ``answer is \\(?([A-J])\\)?``; ``.*[aA]nswer:\\s*([A-J])`` (greedy, so the last ``Answer:`` with a
    letter on the first line that has one); the last standalone letter, across lines."""
    group = f"[{letters[0]}-{letters[-1]}]"
    return (re.compile(rf"answer is \(?({group})\)?"), re.compile(rf".*[aA]nswer:\s*({group})"),
            re.compile(rf"\b{group}\b(?!.*\b{group}\b)", re.DOTALL))


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> tuple[str | None, str | None]:
    """(letter, which pattern found it: "first" | "second" | "final"), or (None, None): the
    patterns of :func:`choice_patterns` in order, as TIGER-Lab's ``extract_answer`` tries them."""
    first, second, final = choice_patterns(letters)
    for stage, pattern in (("first", first), ("second", second)):
        match = pattern.search(text)
        if match:
            return match.group(1), stage
    match = final.search(text)
    return (match.group(0), "final") if match else (None, None)


def _box_at(text: str, at: int) -> str | None:
    """The box whose command ends at ``at``: ``{...}`` with nested braces, or `` x`` up to a space
    or dollar sign; None when its braces never close."""
    if text.startswith(" ", at):
        return re.split(r"[\s$]", text[at + 1:], maxsplit=1)[0] or None
    if not text.startswith("{", at):
        return None
    depth = 0
    for i in range(at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[at + 1:i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{..}``/``\\fbox{..}`` (nested braces matched) or ``\\boxed x``;
    None when there is none or its braces never close."""
    starts = [m.end() for m in _BOX.finditer(text)]
    return _box_at(text, starts[-1]) if starts else None


def boxed_answers(text: str) -> list[str]:
    """The content of every box in ``text``, in order (boxes whose braces never close left out)."""
    found = (_box_at(text, m.end()) for m in _BOX.finditer(text))
    return [box for box in found if box is not None]


@functools.lru_cache(maxsize=4096)
def parse_latex(answer: str) -> tuple:
    """math-verify's reading of one answer (empty when it cannot parse it); cached: references and
    votes repeat."""
    from math_verify import LatexExtractionConfig, parse

    return tuple(parse("\\boxed{" + answer + "}", extraction_config=[LatexExtractionConfig()]))


def equivalent(answer: str, reference: str) -> bool:
    """``answer`` and ``reference`` (LaTeX) are the same mathematical object for math-verify."""
    from math_verify import verify

    parsed, gold = parse_latex(answer), parse_latex(reference)
    return bool(parsed and gold) and bool(verify(list(gold), list(parsed)))
