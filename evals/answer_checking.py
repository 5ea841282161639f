"""Comparing an extracted answer with a reference: as a number, or as normalised text.

Numbers (GSM8K, and the custom module's ``numbers`` normalisation): thousands separators, a
currency sign, a trailing full stop and trailing zeros do not matter, so ``"$1,000.50"``,
``"1000.5"`` and ``"1000.50."`` are the same number; a trailing unit word (``"18 dollars"``) is
dropped. Comparison is exact (``Decimal``), never by float rounding.

Text (the custom module's exact match): the normalisations named in ``--match-normalize``, applied
in a fixed order to both sides: ``strip`` (outer whitespace), ``lower``, ``punctuation`` (ASCII and
Unicode punctuation removed), ``articles`` (English a/an/the removed, as SQuAD does),
``whitespace`` (runs collapsed to one space), ``numbers`` (equal if both read as the same number).
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

NORMALIZATIONS = ("strip", "lower", "punctuation", "articles", "whitespace", "numbers")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
_UNIT = re.compile(r"^(.*?\d)\s*[A-Za-z%]+\.?$")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


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
