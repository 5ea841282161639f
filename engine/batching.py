"""Running many sequences of different lengths through the model together.

An RNN has no attention mask, so padding would change the state. Instead, rows are sorted by
length (longest first) and run in segments: each segment feeds every row that still has tokens,
for as many tokens as the shortest of them has left. The rows still running are always a prefix
of the batch, so their state is a view that the model updates in place; no token is wasted.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import InputError
from .state import State

# Logits of one forward call are at most this many floats (512 MiB), whatever the vocabulary.
LOGIT_BUDGET = 1 << 27
# Tokens in one forward call: bounds activation memory on long prompts.
MAX_TOKENS_PER_CALL = 8192

# on_logits(rows, starts, logits): rows are the caller's row indices, starts the position in each
# row's sequence of logits[:, 0], logits float32 [len(rows), T, V] (the logits after each token).
LogitsCallback = Callable[[list[int], list[int], torch.Tensor], None]
# on_tokens(prompt_tokens, generated_tokens): what the engine just ran, so callers can show honest
# rates (a shared prefix counts once, a cached continuation not at all)
TokensCallback = Callable[[int, int], None]


def max_tokens_per_call(vocab_size: int, want_logits: bool) -> int:
    if not want_logits:
        return MAX_TOKENS_PER_CALL
    return max(1, min(MAX_TOKENS_PER_CALL, LOGIT_BUDGET // vocab_size))


def advance(model, seqs: Sequence[Sequence[int]], state: State | None = None, *,
            on_logits: LogitsCallback | None = None, want_last: bool = False,
            on_tokens: TokensCallback | None = None) -> tuple[State, torch.Tensor | None]:
    """Run ``seqs[i]`` from row i of ``state`` (zeros if None) to its end.

    Returns the final state (row i for seqs[i]; the input state is not changed) and, with
    ``want_last``, the logits after each sequence's last token, float32 [n, V]. An empty sequence
    keeps its row's state (its last logits are then undefined: NaN).
    ``on_logits`` receives the logits of every position, segment by segment, so that callers
    reduce them at once (log-probabilities of targets) instead of keeping [n, T, V] around.
    ``on_tokens(count, 0)`` is told the tokens of each forward call as it returns.
    """
    n = len(seqs)
    if n == 0:
        raise InputError("advance: expected at least one sequence, found none")
    cfg = model.config
    if state is None:
        state = model.zero_state(n)
    elif state.batch_size != n:
        raise InputError(f"advance: {n} sequences but the state has batch size {state.batch_size}")
    lengths = [len(s) for s in seqs]
    order = sorted(range(n), key=lambda i: -lengths[i])  # longest first: running rows are a prefix
    work = state.select(order)  # a copy, updated in place below
    last = torch.full((n, cfg.vocab_size), float("nan")) if want_last else None
    budget = max_tokens_per_call(cfg.vocab_size, on_logits is not None or want_last)
    pos = 0  # every running row has consumed the same number of tokens
    running = sum(1 for L in lengths if L > 0)
    while running:
        rows = order[:running]
        remaining = lengths[rows[-1]] - pos  # the shortest running row
        seg = max(1, min(remaining, budget // running))
        tokens = torch.tensor([list(seqs[i][pos:pos + seg]) for i in rows], dtype=torch.long)
        ends_here = seg == remaining
        mode = "all" if on_logits is not None else ("last" if want_last and ends_here else "none")
        view = State(work.att_x[:, :running], work.wkv[:, :running], work.ffn_x[:, :running])
        logits, _ = model.forward(tokens, view, logits=mode, inplace=True)
        if on_tokens is not None:
            on_tokens(tokens.numel(), 0)
        if on_logits is not None:
            on_logits(rows, [pos] * running, logits)
        if want_last and ends_here:
            final = logits[:, -1]
            for j, i in enumerate(rows):
                if lengths[i] == pos + seg:
                    last[i] = final[j]
        pos += seg
        while running and lengths[order[running - 1]] <= pos:
            running -= 1
    inverse = [0] * n
    for j, i in enumerate(order):
        inverse[i] = j
    return work.select(inverse), last


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs``."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n
