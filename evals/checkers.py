"""Answer checkers for the user's own task files: what a checker spec names, and how it scores.

A task file names its checker in a sidecar (``<file>.task.toml``: ``checker = "numeric"``), a row in
its own ``checker`` field; ``--custom-metric`` is the default for files that name none. A spec is

- a built-in: ``exact_match`` (after ``--match-normalize`` or the sidecar's ``normalize``),
  ``numeric`` (the output's last number against the answer, as numbers), ``math_equiv`` (the
  output's final mathematical answer against the answer, math-verify), ``choice_letter`` (the
  answer letter an output gives, by MMLU-Pro's extraction over the row's letters:
  ``answer is (B)``, else the last ``Answer: B`` of the first line holding one, else the last
  lone letter),
  ``contains`` (the normalised answer occurs in the normalised output), ``boxed_last`` /
  ``boxed_any`` (the last / any ``\\boxed{}`` of the output, math-verify), ``rouge`` (ROUGE-1/2/L
  F1), ``semantic`` (embedding cosine similarity), or ``multiple_choice`` (log-likelihood of each
  choice: a protocol of its own, no generation);
- ``regex:<pattern>``: the pattern's first match in the output (its group 1 when it has groups),
  compared with the answer after the normalisations;
- ``module:function``: the user's ``function(output, row) -> float | (float, extracted)``,
  imported from ``--checker-path`` and run in a worker process with a timeout
  (:mod:`evals.user_checkers`).

Every checker sees the output with outer whitespace stripped and answers per item a
:class:`Checked`: its scores, the answer it extracted, and the error that stopped it (then the
score is 0 and ``checker_error`` counts it: never a silent 0, never a crashed run).

Benchmark names: a file scored by one checker is a case of ``custom_<kind>`` (``custom_numeric``,
``custom_regex``, ``custom_fn_<function>``) reporting the checker's metrics; a file whose rows name
several checkers is a case of ``custom_mixed`` and reports ``score``.
"""
from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.answer_checking import (
    boxed_answers, equivalent, exact_match, extract_choice, last_boxed, normalize_text, numbers_equal, parse_latex,
    parse_number,
)
from evals.multiple_choice import ACC_AND_NORM
from evals.text_metrics import ROUGE_METRICS, resolve_segmentation, rouge

SCORED = ("exact_match", "numeric", "math_equiv", "choice_letter", "contains", "boxed_last", "boxed_any")
BUILTINS = SCORED + ("rouge", "semantic", "multiple_choice")
ERRORS = ("checker_errors", ("sum", "checker_error"))
_FUNCTION = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$")
_NUMBER = re.compile(r"-?[$€£]?[0-9][0-9,]*(?:\.[0-9]+)?")


class CheckerError(ValueError):
    """A checker spec that cannot be used (unknown name, bad pattern, a module that cannot be imported)."""


@dataclass(frozen=True)
class CheckerSpec:
    """One parsed checker spec; ``text`` is the spec as written."""

    kind: str  # a built-in name, "regex" or "function"
    text: str
    pattern: str | None = None  # regex
    module: str | None = None  # function
    function: str | None = None

    @property
    def benchmark(self) -> str:
        """The benchmark a file scored only by this checker records under."""
        return "custom_fn_" + str(self.function) if self.kind == "function" else "custom_" + self.kind

    @property
    def metric(self) -> str:
        """The name of its one score (for checkers with one)."""
        return {"function": "score", "semantic": "semantic_similarity"}.get(self.kind, self.kind)

    @property
    def single_score(self) -> bool:
        """One score per row: the checker can share a file with others (``custom_mixed``)."""
        return self.kind not in ("rouge", "multiple_choice")

    def metrics(self) -> dict[str, tuple[str, str]]:
        """{metric: (aggregation, score key)} of a file scored only by this checker."""
        if self.kind == "multiple_choice":
            return dict(ACC_AND_NORM)
        if self.kind == "rouge":
            names = dict(ROUGE_METRICS)  # F1 (rouge1, ...), precision and recall
        else:
            names = {self.metric: ("mean", self.metric)}
        return {**names, ERRORS[0]: ERRORS[1]}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("spec", self.text), ("pattern", self.pattern),
                                  ("module", self.module), ("function", self.function)) if v is not None}


MIXED_METRICS = {"score": ("mean", "score"), ERRORS[0]: ERRORS[1]}


def parse_checker(text: str) -> CheckerSpec:
    """A spec string as a :class:`CheckerSpec`, or :class:`CheckerError` saying what is accepted."""
    if not isinstance(text, str):
        raise CheckerError(f"a checker is a string, found {text!r:.60}")
    text = text.strip()
    if text in BUILTINS:
        return CheckerSpec(text, text)
    if text.startswith("regex:"):
        pattern = text[len("regex:"):]
        try:
            re.compile(pattern)
        except re.error as error:
            raise CheckerError(f"checker {text!r}: the pattern does not compile ({error})") from None
        if not pattern:
            raise CheckerError("checker 'regex:' needs a pattern after the colon")
        return CheckerSpec("regex", text, pattern=pattern)
    match = _FUNCTION.match(text)
    if match:
        return CheckerSpec("function", text, module=match[1], function=match[2])
    raise CheckerError(f"unknown checker {text!r}; expected one of {', '.join(BUILTINS)}, 'regex:<pattern>' or "
                       "'module:function' (a function on --checker-path)")


@dataclass(frozen=True)
class Checked:
    """One item's verdict: its scores, the answer the checker extracted, and the error if it failed."""

    scores: dict[str, float]
    extracted: Any = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # more fields for the row (rouge: its segmentation)


@dataclass(frozen=True)
class CheckOptions:
    """What the built-in checkers read besides the output and the row."""

    normalize: tuple[str, ...] = ("strip",)
    embedding_model: Path | None = None
    checker_path: tuple[Path, ...] = ()
    timeout: float = 10.0
    rouge_segmentation: str = "auto"  # evals/text_metrics.py: by script (Chinese: jieba words)


# ---- targets: what each built-in accepts as a row's answer (checked when the file is read)

def target_text(spec: CheckerSpec, answer: Any, choices: Sequence[str] | None) -> Any:
    """The reference a checker compares with, from a row's ``answer``; ValueError saying what is
    expected when the answer cannot be one (the caller adds file:line)."""
    kind = spec.kind
    if kind == "function":
        return answer  # any JSON value: the user's function reads the row itself
    if kind == "choice_letter":
        return answer_letter(answer, choices)
    number = isinstance(answer, (int, float)) and not isinstance(answer, bool)
    if kind in ("numeric", "math_equiv", "boxed_last", "boxed_any") and number:
        return str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"'answer' must be the reference text{' or a number' if kind != 'exact_match' else ''} "
                         f"for checker {spec.text!r}, found {answer!r:.60}")
    if kind == "numeric" and parse_number(answer) is None:
        raise ValueError(f"'answer' must be a number for checker 'numeric', found {answer!r:.60}")
    return answer


def letters_for(choices: Sequence[str] | None) -> str:
    return string.ascii_uppercase[:len(choices)] if choices else "ABCDEFGHIJ"


def answer_letter(answer: Any, choices: Sequence[str] | None) -> str:
    letters = letters_for(choices)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(letters) and choices:
        return letters[answer]
    if isinstance(answer, str):
        match = re.fullmatch(r"\s*\(?([A-Z])\)?\.?\s*", answer)
        if match and match[1] in letters:
            return match[1]
        if choices and answer in choices:
            return letters[list(choices).index(answer)]
    raise ValueError(f"'answer' must be a choice letter {letters[0]}-{letters[-1]}"
                     + (", a choice index or one of the choices" if choices else "") + f", found {answer!r:.60}")


# ---- extraction and scoring, one item at a time

def extract_number(output: str) -> str | None:
    matches = _NUMBER.findall(output)
    return matches[-1] if matches else None


def extract_letter(output: str, choices: Sequence[str] | None) -> str | None:
    """The letter an output gives among the choices' (A-J without choices): MMLU-Pro's extraction
    (:func:`evals.answer_checking.extract_choice`), the same patterns its CoT protocol uses."""
    return extract_choice(output, letters_for(choices))[0]


def _math_reference(answer: str) -> list:
    from math_verify import parse

    gold = list(parse_latex(answer)) or parse(answer)
    if not gold:
        raise ValueError(f"math-verify cannot read the reference {answer!r:.60}")
    return gold


def check_one(spec: CheckerSpec, output: str, target: Any, choices: Sequence[str] | None,
              options: CheckOptions) -> tuple[float, Any]:
    """(score, extracted) of one output by a per-item built-in; raises on what it cannot check."""
    steps = options.normalize
    kind = spec.kind
    if kind == "exact_match":
        return float(exact_match(output, target, steps)), normalize_text(output, steps)
    if kind == "numeric":
        found = extract_number(output)
        return float(numbers_equal(found, target)), found
    if kind == "math_equiv":
        from math_verify import parse, verify

        parsed = parse(output)
        extracted = str(parsed[-1]) if parsed else None
        return float(bool(parsed) and bool(verify(_math_reference(target), parsed))), extracted
    if kind == "choice_letter":
        letter = extract_letter(output, choices)
        return float(letter == target), letter
    if kind == "contains":
        needle, haystack = normalize_text(target, steps), normalize_text(output, steps)
        found = bool(needle) and needle in haystack
        return float(found), needle if found else None
    if kind == "boxed_last":
        box = last_boxed(output)
        return float(box is not None and bool(parse_latex(box)) and equivalent(box, target)), box
    if kind == "boxed_any":
        boxes = boxed_answers(output)
        right = next((b for b in boxes if parse_latex(b) and equivalent(b, target)), None)
        return float(right is not None), right if right is not None else (boxes[-1] if boxes else None)
    if kind == "regex":
        match = re.search(spec.pattern, output)
        found = None if match is None else (match.group(1) if match.re.groups else match.group(0))
        return float(found is not None and exact_match(found, target, steps)), found
    raise CheckerError(f"checker {spec.text!r} does not score one item at a time")


@dataclass
class Checkers:
    """Scores outputs with any mix of checkers; user functions' workers are started on first use
    and kept until :meth:`close`."""

    options: CheckOptions = field(default_factory=CheckOptions)
    _workers: dict[str, Any] = field(default_factory=dict)

    def check(self, spec: CheckerSpec, outputs: Sequence[str], targets: Sequence[Any],
              rows: Sequence[Any], choices: Sequence[Sequence[str] | None]) -> list[Checked]:
        """One :class:`Checked` per output (already stripped), in order."""
        if spec.kind == "multiple_choice":
            raise CheckerError("multiple_choice scores choices by log-likelihood, not generated outputs")
        if spec.kind == "rouge":
            segmentation = self.options.rouge_segmentation
            return self._each(outputs, lambda i: Checked(rouge(outputs[i], targets[i], segmentation), details={
                "rouge_segmentation": resolve_segmentation(segmentation, outputs[i], targets[i])}))
        if spec.kind == "semantic":
            from evals.text_metrics import semantic_similarity

            values = semantic_similarity(list(outputs), list(targets), self.options.embedding_model)
            return [Checked({"semantic_similarity": v}) for v in values]
        if spec.kind == "function":
            worker = self._worker(spec)
            return [self._scored(spec, *worker.call(output, row)) for output, row in zip(outputs, rows)]

        def one(i: int) -> Checked:
            score, extracted = check_one(spec, outputs[i], targets[i], choices[i], self.options)
            return Checked({spec.metric: score}, extracted)

        return self._each(outputs, one)

    @staticmethod
    def _each(outputs: Sequence[str], run: Callable[[int], Checked]) -> list[Checked]:
        out = []
        for i in range(len(outputs)):
            try:  # a built-in that trips over one output (a math-verify error, say) fails that item only
                out.append(run(i))
            except Exception as error:  # noqa: BLE001 - reported on the item, never a crashed run
                out.append(Checked({}, None, f"{type(error).__name__}: {error}"))
        return out

    @staticmethod
    def _scored(spec: CheckerSpec, score: float | None, extracted: Any, error: str | None) -> Checked:
        if error is not None:
            return Checked({}, extracted, error)
        if score is None or not math.isfinite(score):
            return Checked({}, extracted, f"the checker returned {score!r}, expected a finite number")
        return Checked({spec.metric: float(score)}, extracted)

    def _worker(self, spec: CheckerSpec):
        from evals.user_checkers import UserChecker

        if spec.text not in self._workers:
            self._workers[spec.text] = UserChecker(spec.module, spec.function, self.options.checker_path,
                                                   self.options.timeout)
        return self._workers[spec.text]

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()
        self._workers.clear()

    def __enter__(self) -> Checkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
