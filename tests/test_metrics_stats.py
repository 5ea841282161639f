"""Aggregations, standard errors, intervals, the chance interval and the --limit sample."""
from __future__ import annotations

import math

import pytest

from evals.metrics import aggregate_one, poisson_binomial_interval, wilson_interval
from evals.sampling import Limit, allocate, select


def test_mean_stderr_uses_sample_variance():
    m = aggregate_one([1, 0, 1, 1], "mean")
    assert m.value == 0.75 and m.n == 4
    assert m.stderr == pytest.approx(math.sqrt(0.25 / 4))  # sd (n-1) = 0.5
    assert m.ci95 == pytest.approx(wilson_interval(3, 4))


def test_single_value_has_no_stderr():
    m = aggregate_one([1.0], "mean")
    assert m.stderr is None


def test_perplexity_delta_method():
    m = aggregate_one([-1.0, -3.0], "perplexity")
    assert m.value == pytest.approx(math.exp(2))
    se_mean = math.sqrt(2.0 / 2)  # sample variance of (-1, -3) is 2
    assert m.stderr == pytest.approx(math.exp(2) * se_mean)
    assert m.ci95[0] < m.value < m.ci95[1]


def test_unknown_aggregation_and_empty_are_errors():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate_one([1.0], "median")
    with pytest.raises(ValueError, match="empty"):
        aggregate_one([], "mean")


def test_wilson_known_value():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_poisson_binomial_equals_binomial_for_equal_p():
    lo, hi = poisson_binomial_interval([0.1] * 100, 0.99)
    # binomial(100, 0.1): P(X <= 2) = 0.0019 < 0.005 < P(X <= 3) = 0.0078; P(X >= 19) = 0.0034, P(X >= 18) = 0.0078
    assert (lo, hi) == (3, 18)


@pytest.mark.parametrize("text, expected", [("200", Limit(count=200)), ("0.1", Limit(fraction=0.1)),
                                            ("1.0", Limit(fraction=1.0))])
def test_limit_parse(text, expected):
    assert Limit.parse(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "abc", "0.0"])
def test_limit_parse_rejects(text):
    with pytest.raises(ValueError, match="--limit"):
        Limit.parse(text)


def test_allocate_proportional_with_minimum_one():
    sizes = {"big": 1000, "mid": 100, "small": 3, "empty": 0}
    counts = allocate(sizes, 50)
    assert sum(counts.values()) == 50
    assert counts["empty"] == 0 and counts["small"] >= 1 and counts["mid"] >= 1
    assert counts["big"] > counts["mid"] > 0
    assert allocate(sizes, 2) == {"big": 1, "mid": 1, "small": 1, "empty": 0}  # every non-empty case gets one
    assert allocate(sizes, 10**6) == sizes


def test_select_is_seeded_sorted_and_spread():
    sizes = {f"c{i}": 50 + i for i in range(14)}
    a = select(sizes, Limit(count=28), seed=1, benchmark="b")
    assert a == select(sizes, Limit(count=28), seed=1, benchmark="b")
    assert a != select(sizes, Limit(count=28), seed=2, benchmark="b")
    assert sum(map(len, a.values())) == 28 and all(len(v) == 2 for v in a.values())
    assert all(v == sorted(v) and len(set(v)) == len(v) for v in a.values())
    assert a["c0"] != [0, 1] or a["c1"] != [0, 1]  # not the first rows
    fraction = select(sizes, Limit(fraction=0.1), seed=1, benchmark="b")
    assert sum(map(len, fraction.values())) == round(0.1 * sum(sizes.values()))
    assert select(sizes, None, 1, "b") == {c: list(range(n)) for c, n in sizes.items()}
