"""Scoring plain texts with a Hugging Face reward model, the way a reward model trained on an input
layout of its own is run (CharacterEval's BaichuanCharRM in ``run_char_rm.py``): the text is
tokenized without special tokens, the tokenizer's EOS id appended, the ids cut to the last
``max_tokens`` (4096 there; the start of a long input is dropped), and each text is a forward
call of its own with ``input_ids`` only (batch 1: no padding, no attention mask, exactly what the
official script feeds).

The model's raw output value is returned (a benchmark maps it to its own scale): the single logit
of a transformers sequence-classification output, or element 1 of a tuple, which is what
``run_char_rm.py`` reads from BaichuanCharRM (``model(input_ids=...)[1].item()``); anything else,
or a value that is not one number, is an error naming what the model returned. The model is the
one ``--reward hf:...`` loads (:class:`evals.rewards.hf.HFReward`).

Values are stored under the reward model's identity (``reward|<identity>``) as ``reward``
entries keyed by the text and ``max_tokens`` (the test-time-compute rewards key question and
answer instead, so the two never meet), so a rerun, and a ``--rescore`` with the
same reward model, reuses them; a different reward model computes its own.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evals.rewards import RewardError

MAX_TOKENS = 4096  # run_char_rm.py's max_seq_length
KIND = "reward"  # the store's kind for reward values; these requests hold "text", never "question"


def encode(tokenizer: Any, text: str, max_tokens: int = MAX_TOKENS) -> list[int]:
    """``text``'s ids without special tokens, then EOS; the last ``max_tokens`` of them."""
    if tokenizer.eos_token_id is None:
        raise RewardError("the reward model's tokenizer has no EOS token, which this input layout ends with")
    ids = list(tokenizer.encode(text, add_special_tokens=False)) + [tokenizer.eos_token_id]
    return ids[-max_tokens:]


def output_value(output: Any) -> float:
    """The one number a forward call returned (see the module docstring)."""
    logits = getattr(output, "logits", None)
    if logits is not None:
        value, what = logits, "the output's logits"
    elif isinstance(output, (tuple, list)) and len(output) > 1:
        value, what = output[1], "element 1 of the output tuple"
    else:
        raise RewardError(f"the reward model returned {type(output).__name__}; expected a sequence-classification "
                          f"output (logits) or a tuple whose element 1 is the score (BaichuanCharRM)")
    if getattr(value, "numel", lambda: 0)() != 1:
        shape = tuple(getattr(value, "shape", ()))
        raise RewardError(f"{what} has shape {shape}; expected a single score for one input")
    return float(value.reshape(-1)[0])


def score_texts(reward: Any, texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> list[float]:
    """Raw output values of ``reward`` (an :class:`~evals.rewards.hf.HFReward`) for ``texts``."""
    import torch

    model, tokenizer = getattr(reward, "model", None), getattr(reward, "tokenizer", None)
    if model is None or tokenizer is None:
        raise RewardError(f"a {getattr(reward, 'kind', type(reward).__name__)} reward cannot score plain texts; "
                          f"this needs a Hugging Face model (--reward hf:NAME_OR_DIR)")
    out = []
    for text in texts:
        ids = torch.tensor([encode(tokenizer, text, max_tokens)], device=model.device)  # (1, T)
        with torch.inference_mode():
            out.append(output_value(model(input_ids=ids)))
    return out


def cached_scores(reward: Any, texts: Sequence[str], store: Any, max_tokens: int = MAX_TOKENS
                  ) -> tuple[list[float], list[bool]]:
    """(values, computed now?) for ``texts``: stored values reused, the others computed and stored
    (``store``: an :class:`evals.ttc.store.StrategyStore`, its ``stored_or_computed``)."""
    requests = [{"text": t, "max_tokens": max_tokens, "eos": True, "batch": 1} for t in texts]
    values, fresh = store.stored_or_computed(
        KIND, f"reward|{reward.identity()}", requests,
        lambda todo: score_texts(reward, [texts[i] for i in todo], max_tokens), "reward values")
    return [float(v) for v in values], fresh
