"""Steps of an answer and their process-reward scores.

An answer is split into steps at a delimiter (``--step-delimiter``, default a blank line) the way
the search splits its steps (:mod:`engine.search`): a step ends right after a delimiter that
follows some non-blank text of its own, so joining the steps gives the answer back. A process
reward scores every prefix of the steps with the same reward model: the score of step i is the
reward of the answer up to and including step i, so the last step's score is the whole answer's.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from evals.rewards import Reward, RewardInput

DEFAULT_DELIMITER = "\n\n"


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """``text`` cut after each delimiter that follows non-blank text; ``"".join(steps) == text``."""
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    steps, start, at = [], 0, 0
    while True:
        at = text.find(delimiter, at)
        if at < 0:
            break
        if text[start:at].strip():
            steps.append(text[start:at + len(delimiter)])
            start = at + len(delimiter)
            at = start
        else:
            at += 1
    if text[start:] or not steps:
        steps.append(text[start:])
    return steps


def prefixes(steps: Sequence[str]) -> list[str]:
    """The answer up to each step (trailing whitespace of the delimiter dropped)."""
    out, text = [], ""
    for step in steps:
        text += step
        out.append(text.rstrip())
    return out


def step_scores(reward: Reward, question: str, steps: Sequence[str],
                check: Callable[[str], bool] | None = None) -> list[float]:
    """One process-reward score per step (see the module docstring)."""
    return reward.score([RewardInput(question, p, check=check) for p in prefixes(steps)])
