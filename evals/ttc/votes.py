"""Votes: choosing one answer from a question's candidates.

Each candidate has an extracted answer (``None`` when none could be read: it never wins), an
outcome reward (the reward model's score of the whole answer) and process-reward step scores
(the score of each prefix of its steps). Reward-weighted votes use each reward's ``weight`` (a
probability in [0, 1]: a judge's or verifier's score as it is, a Hugging Face logit through a
sigmoid). The names follow OpenR's aggregations (majority_vote, orm_vote, orm_max, prm_min_vote,
prm_last_vote):

- ``majority``: the answer given most often (today's ``maj@k`` with k = all candidates:
  :func:`evals.generation.majority`); ties go to the answer seen first.
- ``weighted``: each candidate votes for its answer with the weight of its outcome reward; the
  answer with the largest total wins (ties: first seen).
- ``best``: the answer of the candidate with the highest outcome reward (ties: the first).
- ``min_vote`` / ``last_vote``: weighted votes where a candidate's weight is the minimum (or the
  last) of its step scores: a chain is as good as its weakest step, or as its final judgement.

Each returns the index of the chosen candidate (the first candidate holding the chosen answer)
or None when no candidate has an answer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from evals.generation import majority

Same = Callable[[Any, Any], bool]
REWARD_VOTES = ("weighted", "best", "min_vote", "last_vote")
VOTES = ("majority",) + REWARD_VOTES
DEFINITIONS = {
    "majority": "most frequent extracted answer (maj@k over all candidates); ties to the first seen",
    "weighted": "answers weighted by the outcome reward (as a probability), largest total wins",
    "best": "the candidate with the highest outcome reward",
    "min_vote": "answers weighted by the minimum process-reward step score, largest total wins",
    "last_vote": "answers weighted by the last process-reward step score, largest total wins",
    "coverage": "1 when any candidate is right (an upper bound for every vote)",
}


def _eq(a: Any, b: Any) -> bool:
    return a == b


def vote_majority(answers: Sequence[Any], same: Same = _eq) -> int | None:
    chosen = majority(answers, same)
    if chosen is None:
        return None
    return next(i for i, a in enumerate(answers) if a is not None and same(a, chosen))


def vote_weighted(answers: Sequence[Any], weights: Sequence[float], same: Same = _eq) -> int | None:
    """Index of the first candidate of the answer group with the largest summed weight."""
    if len(answers) != len(weights):
        raise ValueError(f"one weight per candidate: {len(answers)} answers, {len(weights)} weights")
    groups: list[list[int]] = []  # candidate indices per distinct answer, in first-seen order
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for group in groups:
            if same(answers[group[0]], answer):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=lambda g: sum(weights[i] for i in g))  # max keeps the first of equal totals
    return best[0]


def vote_best(answers: Sequence[Any], rewards: Sequence[float]) -> int | None:
    """The candidate with the highest reward (ties: the first); None when it has no answer."""
    if not answers:
        return None
    i = max(range(len(answers)), key=lambda k: (rewards[k], -k))
    return i if answers[i] is not None else None


def choose(answers: Sequence[Any], rewards: Sequence[float] | None, step_scores: Sequence[Sequence[float]] | None,
           weight: Callable[[float], float] = float, same: Same = _eq) -> dict[str, int | None]:
    """Every vote's chosen candidate (reward votes only when rewards are given)."""
    out: dict[str, int | None] = {"majority": vote_majority(answers, same)}
    if rewards is None:
        return out
    out["weighted"] = vote_weighted(answers, [weight(r) for r in rewards], same)
    out["best"] = vote_best(answers, rewards)
    if step_scores is not None:
        out["min_vote"] = vote_weighted(answers, [weight(min(s)) for s in step_scores], same)
        out["last_vote"] = vote_weighted(answers, [weight(s[-1]) for s in step_scores], same)
    return out
