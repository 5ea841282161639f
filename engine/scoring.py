"""Log-likelihood scoring: of continuations given contexts, and of whole texts.

Requests are batched, and a context is run once however many continuations it has (the options
of a multiple-choice question). Contexts are sorted so that neighbours share their prefix (a
few-shot header); a batch of contexts runs its common prefix once and fans its state out.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Callable, Sequence

import torch

from .batching import TokensCallback, advance, common_prefix
from .errors import InputError
from .state import State

Pair = tuple[Sequence[int], Sequence[int]]
# on_result(index, value): request ``index`` is finished (called as each batch completes, in any order)
ResultCallback = Callable[[int, Any], None]


def _check_ids(ids, vocab_size: int, what: str) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)):
        raise InputError(f"{what}: expected a list of token ids, found {type(ids).__name__}")
    for t in ids:
        if not isinstance(t, int) or isinstance(t, bool):
            raise InputError(f"{what}: expected int token ids, found {type(t).__name__} {t!r}")
        if not 0 <= t < vocab_size:
            raise InputError(f"{what}: token id {t} is out of the vocabulary: expected ids in [0, {vocab_size})")
    return list(ids)


class _TargetScorer:
    """Accumulates log p(target) and whether each target was the argmax, position by position."""

    def __init__(self, targets: list[list[int]]):
        self.targets = targets
        self.logprob = [0.0] * len(targets)
        self.greedy = [True] * len(targets)

    def __call__(self, rows: list[int], starts: list[int], logits: torch.Tensor) -> None:
        T = logits.shape[1]
        for j, (i, s) in enumerate(zip(rows, starts)):
            tgt = self.targets[i][s:s + T]
            if not tgt:
                continue
            self.add(i, logits[j, : len(tgt)], tgt)

    def add(self, i: int, logits: torch.Tensor, tgt: Sequence[int]) -> None:
        """logits: [len(tgt), V] predicting ``tgt``."""
        lp = torch.log_softmax(logits.double(), dim=-1)  # float64: sums over long texts stay exact
        idx = torch.tensor(tgt, dtype=torch.long).unsqueeze(1)
        chosen = lp.gather(1, idx).squeeze(1)
        self.logprob[i] += float(chosen.sum())
        self.greedy[i] = self.greedy[i] and bool((chosen >= lp.max(dim=-1).values).all())


def loglikelihood(model, pairs: Sequence[Pair], batch_size: int = 32, prefix_cache_size: int = 8, *,
                  on_result: ResultCallback | None = None, on_tokens: TokensCallback | None = None
                  ) -> list[tuple[float, bool]]:
    """For each (context_ids, continuation_ids): (sum of log p(continuation | context), is_greedy).

    ``is_greedy`` is True when every continuation token is the model's argmax choice.
    The context must hold at least one token: RWKV evaluations start with token 0.
    ``on_result(i, (logprob, is_greedy))`` is called as each batch finishes; ``on_tokens`` is told
    every token the engine runs (a shared prefix once).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, found {batch_size}")
    V = model.config.vocab_size
    checked: list[tuple[tuple[int, ...], list[int]]] = []
    for n, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"request {n}: expected a (context_ids, continuation_ids) pair, found {pair!r:.80}")
        ctx = _check_ids(pair[0], V, f"request {n} context")
        cont = _check_ids(pair[1], V, f"request {n} continuation")
        if not ctx:
            raise InputError(f"request {n}: the context is empty; it must hold at least one token "
                             "(start it with token 0, RWKV's document separator)")
        if not cont:
            raise InputError(f"request {n}: the continuation is empty; expected at least one token")
        checked.append((tuple(ctx), cont))
    results: list[tuple[float, bool] | None] = [None] * len(checked)
    by_ctx: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for n, (ctx, _) in enumerate(checked):
        by_ctx[ctx].append(n)
    contexts = sorted(by_ctx)  # lexicographic: neighbours share their few-shot prefix
    prefix_states: OrderedDict[tuple[int, ...], State] = OrderedDict()

    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        # run the shared prefix once, leaving every context at least one token of its own
        plen = min(common_prefix(chunk), min(len(c) for c in chunk) - 1)
        prefix = chunk[0][:plen]
        if plen:
            if prefix not in prefix_states:
                prefix_states[prefix], _ = advance(model, [prefix], on_tokens=on_tokens)
                while len(prefix_states) > prefix_cache_size:
                    prefix_states.popitem(last=False)
            prefix_states.move_to_end(prefix)
            init = prefix_states[prefix].expand(len(chunk))
        else:
            init = None
        ctx_states, ctx_last = advance(model, [c[plen:] for c in chunk], init, want_last=True, on_tokens=on_tokens)

        # every continuation of every context in this chunk: first token from the context's
        # last logits, the rest by running continuation[:-1] from the context's state
        jobs = [(j, n) for j, c in enumerate(chunk) for n in by_ctx[c]]
        for js in range(0, len(jobs), batch_size):
            part = jobs[js:js + batch_size]
            targets = [checked[n][1][1:] for _, n in part]
            scorer = _TargetScorer(targets)
            for row, (j, n) in enumerate(part):
                scorer.add(row, ctx_last[j].unsqueeze(0), checked[n][1][:1])
            feeds = [checked[n][1][:-1] for _, n in part]
            if any(feeds):
                advance(model, feeds, ctx_states.select([j for j, _ in part]), on_logits=scorer,
                        on_tokens=on_tokens)
            for row, (_, n) in enumerate(part):
                results[n] = (scorer.logprob[row], scorer.greedy[row])
                if on_result is not None:
                    on_result(n, results[n])
    return results  # type: ignore[return-value]


def loglikelihood_rolling(model, token_lists: Sequence[Sequence[int]], bos: int | None = 0,
                          batch_size: int = 16, *, on_result: ResultCallback | None = None,
                          on_tokens: TokensCallback | None = None) -> list[float]:
    """Sum of log p(token_i | tokens before it) over whole texts.

    With ``bos`` (default 0, RWKV's document separator) every token is scored, the first one
    conditioned on ``bos``; with ``bos=None`` the first token is context only. RWKV has no
    context window, so no rolling windows are needed: each text runs once, start to end.
    """
    V = model.config.vocab_size
    if bos is not None:
        _check_ids([bos], V, "bos")
    seqs: list[list[int]] = []
    for n, toks in enumerate(token_lists):
        ids = _check_ids(toks, V, f"text {n}")
        full = ([bos] if bos is not None else []) + ids
        if len(full) < 2:
            raise InputError(f"text {n}: nothing to score: expected at least one token after the first "
                             f"(found {len(ids)} tokens, bos={bos})")
        seqs.append(full)
    out: list[float] = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths batch together
    for start in range(0, len(order), batch_size):
        part = order[start:start + batch_size]
        scorer = _TargetScorer([seqs[i][1:] for i in part])
        advance(model, [seqs[i][:-1] for i in part], on_logits=scorer, on_tokens=on_tokens)
        for row, i in enumerate(part):
            out[i] = scorer.logprob[row]
            if on_result is not None:
                on_result(i, out[i])
    return out
