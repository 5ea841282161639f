"""The shared option-value parsers: accepted values, and messages naming expected and found."""
from __future__ import annotations

import argparse

import pytest

from engine.argtypes import non_negative_float, non_negative_int, positive_int, positive_seconds, probability


@pytest.mark.parametrize("parse, text, value", [
    (positive_int, "3", 3), (non_negative_int, "0", 0), (probability, "0.05", 0.05),
    (non_negative_float, "0", 0.0), (positive_seconds, "2.5", 2.5),
])
def test_accepts(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (positive_int, "0", "expected a positive integer, found 0"),
    (positive_int, "two", "expected a positive integer, found 'two'"),
    (non_negative_int, "-1", "expected an integer >= 0, found -1"),
    (probability, "1", r"expected a number in \(0, 1\), found 1.0"),
    (non_negative_float, "-0.5", "expected a number >= 0, found -0.5"),
    (positive_seconds, "0", "expected a number of seconds > 0, found 0.0"),
])
def test_rejects_with_message(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_argparse_reports_the_message():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--n", type=positive_int)
    with pytest.raises(argparse.ArgumentError, match="expected a positive integer, found -2"):
        parser.parse_args(["--n", "-2"])
