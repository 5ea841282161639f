"""Reward models for test-time compute, chosen with ``--reward SPEC``.

Every reward scores answers to questions: ``reward.score([RewardInput(question, answer), ...])``
returns one float per answer. The same call scores a partial answer, so any reward is also a
process reward: :func:`evals.rewards.steps.step_scores` scores each prefix of an answer's steps
(split by a delimiter, default a blank line), one score per step. Specs:

- ``hf:NAME_OR_DIR`` (or a folder holding ``config.json``): a Hugging Face sequence-classification
  reward model through ``transformers`` (:mod:`.hf`), the form most published reward models take
  (Skywork-Reward, InternLM2-Reward, ArmoRM, ...); needs the ``reward`` extra.
- ``rwkv:PATH_OR_NAME`` (or a ``.pth``/``.safetensors`` file, or an official name such as
  ``rwkv7-g1-0.1b``): an RWKV checkpoint as a generative judge (:mod:`.judge`): the probability
  that it answers "Yes" to a judge prompt, computed with the project's own engine.
- ``verifier``: the benchmark's own answer check (1 right, 0 wrong) as an oracle: metrics that
  use it are marked ``_oracle`` in reports; it knows the reference answer, so it measures the
  search, not a deployable ranking.

A Hugging Face reward model can also score plain texts in a layout of its own, one forward each
(:mod:`.plain`, CharacterEval's BaichuanCharRM).

``identity()`` is what a reward's scores depend on (a checkpoint's hash, a hub revision, the judge
prompt...): stored rewards are keyed by it, so a changed reward model is never mistaken for the
old one. ``weight(score)`` maps a score to [0, 1] for reward-weighted votes.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

INSTALL_HINT = ("pip install 'rwkveval[reward]' (or pip install transformers) to use a Hugging Face reward model")


class RewardError(ValueError):
    """A --reward spec that cannot be used: what was expected and what was found."""


@dataclass(frozen=True)
class RewardInput:
    """One answer to score. ``history``: earlier (role, text) turns of a chat, oldest first.
    ``check``: the benchmark's answer check for this question (used by the verifier only)."""

    question: str
    answer: str
    history: tuple[tuple[str, str], ...] = ()
    check: Callable[[str], bool] | None = field(default=None, compare=False, hash=False, repr=False)

    def messages(self) -> list[dict[str, str]]:
        turns = [{"role": role, "content": text} for role, text in self.history]
        return turns + [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.answer}]


class Reward(Protocol):
    kind: str
    oracle: bool

    def identity(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def score(self, inputs: Sequence[RewardInput]) -> list[float]: ...

    def weight(self, score: float) -> float: ...


@dataclass(frozen=True)
class RewardOptions:
    """How to load a reward model (``--reward-device``, ``--reward-batch-size``, ...)."""

    device: str = "cpu"
    batch_size: int = 8
    trust_remote_code: bool = False
    judge_prompt: str | None = None  # None: the default judge prompt
    dtype: str = "float32"  # the RWKV judge's weights


@dataclass(frozen=True)
class RewardSpec:
    kind: str  # "hf" | "rwkv" | "verifier"
    target: str  # the folder, hub name, checkpoint or official name ("" for the verifier)
    text: str  # as given


def parse_spec(text: str) -> RewardSpec:
    """Read ``--reward``: ``verifier``, ``hf:...``, ``rwkv:...``, or a path / name (see the module doc)."""
    text = text.strip()
    if text == "verifier":
        return RewardSpec("verifier", "", text)
    for prefix in ("hf:", "rwkv:"):
        if text.startswith(prefix):
            target = text[len(prefix):]
            if not target:
                raise RewardError(f"--reward {text!r}: expected {prefix}NAME_OR_PATH, found nothing after {prefix!r}")
            return RewardSpec(prefix[:-1], target, text)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return RewardSpec("hf", text, text)
        raise RewardError(f"--reward {text!r}: the folder holds no config.json (expected a Hugging Face model folder)")
    if path.suffix in (".pth", ".safetensors"):
        return RewardSpec("rwkv", text, text)
    from evals.models import OFFICIAL

    if text in OFFICIAL:
        return RewardSpec("rwkv", text, text)
    if text.count("/") == 1 and not path.exists():
        return RewardSpec("hf", text, text)  # a hub name, OWNER/NAME
    raise RewardError(f"--reward {text!r}: expected 'verifier', hf:NAME_OR_DIR, rwkv:CHECKPOINT, a Hugging Face "
                      f"model folder, a .pth/.safetensors checkpoint, or a hub name OWNER/NAME")


def check_available(spec: RewardSpec) -> None:
    """Fail early (at option parsing) when a spec needs a package that is not installed."""
    if spec.kind == "hf" and importlib.util.find_spec("transformers") is None:
        raise RewardError(f"--reward {spec.text}: a Hugging Face reward model needs the transformers package, "
                          f"which is not installed; {INSTALL_HINT}")


class VerifierReward:
    """The benchmark's own answer check: 1.0 for a right answer, 0.0 otherwise (an oracle)."""

    kind = "verifier"
    oracle = True

    def identity(self) -> str:
        return "verifier"

    def describe(self) -> dict[str, Any]:
        return {"kind": "verifier", "oracle": True,
                "what": "the benchmark's answer check against the reference (1 right, 0 wrong)"}

    def score(self, inputs: Sequence[RewardInput]) -> list[float]:
        out = []
        for item in inputs:
            if item.check is None:
                raise RewardError("the verifier reward needs the benchmark's answer check; it scores benchmark "
                                  "answers only (not chat replies)")
            out.append(float(bool(item.check(item.answer))))
        return out

    def weight(self, score: float) -> float:
        return score


_LOADED: dict[tuple, Reward] = {}


def load(spec: RewardSpec | str, options: RewardOptions = RewardOptions()) -> Reward:
    """The reward model of ``spec``, loaded once per process (benchmarks share it)."""
    if isinstance(spec, str):
        spec = parse_spec(spec)
    key = (spec, options)
    if key not in _LOADED:
        if spec.kind == "verifier":
            _LOADED[key] = VerifierReward()
        elif spec.kind == "hf":
            check_available(spec)
            from evals.rewards.hf import HFReward

            _LOADED[key] = HFReward(spec.target, device=options.device, batch_size=options.batch_size,
                                    trust_remote_code=options.trust_remote_code)
        else:
            from evals.rewards.judge import JudgeReward

            _LOADED[key] = JudgeReward.load(spec.target, device=options.device, dtype=options.dtype,
                                            batch_size=options.batch_size, template=options.judge_prompt)
    return _LOADED[key]
