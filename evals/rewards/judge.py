"""An RWKV checkpoint as a generative judge (``--reward rwkv:PATH_OR_NAME``).

The reward of an answer is the probability that the judge model replies "Yes" rather than "No"
to a judge prompt holding the question and the answer:

    p = P(" Yes" | prompt) / (P(" Yes" | prompt) + P(" No" | prompt)) = sigmoid(lp_yes - lp_no)

with both log-probabilities computed by the project's engine (``model.loglikelihood``, the prompt
run once for both continuations and starting with token 0). The prompt is the RWKV chat format
(a blank line ends a turn, so blank lines inside the question and answer are folded into single
newlines); ``--judge-prompt FILE`` replaces it with any text holding ``{question}`` and
``{answer}``. A chat's earlier turns are not shown to the judge.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from evals.rewards import RewardError, RewardInput
from engine.server.chat import fold

DEFAULT_PROMPT = ("User: Here is a question and a proposed answer. Is the answer correct? Reply Yes or No.\n"
                  "Question: {question}\n"
                  "Proposed answer: {answer}\n\n"
                  "Assistant:")
YES, NO = " Yes", " No"


def check_template(template: str, where: str = "--judge-prompt") -> str:
    for field in ("{question}", "{answer}"):
        if field not in template:
            raise RewardError(f"{where}: the judge prompt must hold {field}; found {template[:120]!r}")
    try:
        template.format(question="q", answer="a")
    except (KeyError, IndexError, ValueError) as error:
        raise RewardError(f"{where}: the judge prompt has a placeholder other than {{question}} and {{answer}} "
                          f"({error}); write a literal brace as {{{{ or }}}}") from None
    return template


class JudgeReward:
    kind = "rwkv"
    oracle = False

    def __init__(self, model, *, batch_size: int = 8, template: str | None = None, name: str = ""):
        self.model, self.batch_size, self.name = model, batch_size, name
        self.template = check_template(template) if template is not None else DEFAULT_PROMPT
        tok = model.tokenizer
        self.yes, self.no = list(tok.encode(YES)), list(tok.encode(NO))

    @classmethod
    def load(cls, spec: str, *, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
             template: str | None = None) -> JudgeReward:
        import engine
        from evals.models import ModelSpecError, resolve

        try:
            resolved = resolve(spec)
        except ModelSpecError as error:
            raise RewardError(f"--reward rwkv:{spec}: {error}") from None
        return cls(engine.load_model(resolved.path, device=device, dtype=dtype), batch_size=batch_size,
                   template=template, name=resolved.name)

    def prompt(self, item: RewardInput) -> str:
        return self.template.format(question=fold(item.question), answer=fold(item.answer))

    def identity(self) -> str:
        info = self.model.info()
        template = hashlib.sha256(self.template.encode()).hexdigest()[:16]
        return f"rwkv:{info.get('sha256')}|dtype:{info.get('dtype')}|prompt:{template}"

    def describe(self) -> dict[str, Any]:
        info = self.model.info()
        return {"kind": "rwkv", "oracle": False, "model": self.name or info.get("path"), "sha256": info.get("sha256"),
                "dtype": info.get("dtype"), "prompt": self.template, "yes": YES, "no": NO,
                "score": "sigmoid(log P(' Yes') - log P(' No')) after the judge prompt (token 0 first)"}

    def score(self, inputs: Sequence[RewardInput]) -> list[float]:
        tok = self.model.tokenizer
        pairs = []
        for item in inputs:
            context = [0] + list(tok.encode(self.prompt(item)))
            pairs += [(context, self.yes), (context, self.no)]
        values = self.model.loglikelihood(pairs, batch_size=self.batch_size)
        return [_sigmoid(values[2 * i][0] - values[2 * i + 1][0]) for i in range(len(inputs))]

    def weight(self, score: float) -> float:
        return score


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0
