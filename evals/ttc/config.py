"""The test-time compute options, read once into a frozen :class:`TTCConfig` (``EvalConfig.ttc``).

The options themselves are declared in :mod:`evals.plugin.options` (one block); this module
parses and cross-checks them, so that a strategy that cannot run stops the session at once with a
usage error naming the options, never half way through a run.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

STRATEGIES = ("greedy", "sample", "best_of_n", "beam", "mcts")
SEARCHES = ("beam", "mcts")  # need the local engine's states
NEEDS_REWARD = ("best_of_n", "beam", "mcts")


def step_delimiter(text: str) -> str:
    """``--step-delimiter``: backslash escapes are read (``'\\n\\n'`` is a blank line)."""
    import argparse

    try:
        value = codecs.decode(text, "unicode_escape") if "\\" in text else text
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"cannot read the escapes in {text!r}: {error}") from None
    if not value:
        raise argparse.ArgumentTypeError("expected a non-empty delimiter such as '\\n\\n', found an empty string")
    return value


@dataclass(frozen=True)
class TTCConfig:
    strategy: str = "greedy"
    n: int = 4
    beam_width: int = 4
    expand: int = 4
    max_steps: int = 8
    simulations: int = 16
    step_delimiter: str = "\n\n"
    mcts_rollout: bool = False
    reward: str | None = None
    reward_device: str | None = None  # None: the engine's --device
    reward_batch_size: int = 8
    trust_remote_code: bool = False
    judge_prompt: str | None = None  # the file's path

    @property
    def active(self) -> bool:
        return self.strategy != "greedy"

    @classmethod
    def from_pytest(cls, get, device: str) -> TTCConfig:
        from evals.rewards import RewardError, check_available, parse_spec

        strategy, reward = get("strategy"), get("reward")
        judge_prompt = get("judge_prompt")
        # --reward with greedy is checked at collection (evals/plugin/collection.py): a benchmark that
        # scores with a reward model itself (CharacterEval) reads it without a strategy
        if strategy in NEEDS_REWARD and reward is None:
            raise pytest.UsageError(f"--strategy {strategy} needs --reward SPEC: hf:NAME_OR_DIR, rwkv:CHECKPOINT, "
                                    f"or verifier (the benchmark's own check, an oracle)")
        if strategy in SEARCHES and get("endpoint", None):
            raise pytest.UsageError(f"--strategy {strategy} searches over the local engine's RNN states, which an "
                                    f"--endpoint does not expose; over HTTP use --strategy sample or best_of_n")
        spec = None
        if reward is not None:
            try:
                spec = parse_spec(reward)
                check_available(spec)
            except RewardError as error:
                raise pytest.UsageError(str(error)) from None
        if judge_prompt is not None:
            if spec is None or spec.kind != "rwkv":
                raise pytest.UsageError("--judge-prompt is the prompt of an RWKV judge; it needs --reward rwkv:CHECKPOINT")
            if not Path(judge_prompt).is_file():
                raise pytest.UsageError(f"--judge-prompt {judge_prompt}: no such file")
            from evals.rewards.judge import check_template

            try:
                check_template(Path(judge_prompt).read_text(encoding="utf-8"), f"--judge-prompt {judge_prompt}")
            except RewardError as error:
                raise pytest.UsageError(str(error)) from None
        if get("mcts_rollout") and strategy != "mcts":
            raise pytest.UsageError("--mcts-rollout evaluates MCTS nodes by rollouts; it needs --strategy mcts")
        if get("trust_remote_code") and (spec is None or spec.kind != "hf"):
            raise pytest.UsageError("--trust-remote-code lets a Hugging Face reward model run its own code; it needs "
                                    "--reward hf:NAME_OR_DIR")
        return cls(strategy=strategy, n=get("n"), beam_width=get("beam_width"), expand=get("expand"),
                   max_steps=get("max_steps"), simulations=get("simulations"), step_delimiter=get("step_delimiter"),
                   mcts_rollout=get("mcts_rollout"), reward=reward,
                   reward_device=get("reward_device") or device, reward_batch_size=get("reward_batch_size"),
                   trust_remote_code=get("trust_remote_code"),
                   judge_prompt=str(judge_prompt) if judge_prompt is not None else None)

    def reward_options(self):
        from evals.rewards import RewardOptions

        prompt = Path(self.judge_prompt).read_text(encoding="utf-8") if self.judge_prompt else None
        return RewardOptions(device=self.reward_device or "cpu", batch_size=self.reward_batch_size,
                             trust_remote_code=self.trust_remote_code, judge_prompt=prompt)

    def settings(self) -> dict[str, Any]:
        """The knobs of this strategy that change its result (for the protocol)."""
        out: dict[str, Any] = {"strategy": self.strategy, "step_delimiter": self.step_delimiter}
        if self.strategy in ("sample", "best_of_n"):
            out["n"] = self.n
        elif self.strategy == "beam":
            out.update(beam_width=self.beam_width, expand=self.expand, max_steps=self.max_steps)
        elif self.strategy == "mcts":
            out.update(simulations=self.simulations, expand=self.expand, max_steps=self.max_steps,
                       evaluation="rollout scored by the outcome reward" if self.mcts_rollout
                       else "process reward of the new step's prefix")
        return out
