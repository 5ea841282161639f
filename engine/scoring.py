"""Log-likelihood scoring: of continuations given contexts, and of whole texts.

A context is run once however many continuations it has (the options of a multiple-choice
question), and a prefix many contexts share (a few-shot header) is run once for all of them
(:mod:`engine.prefixes`). Contexts are then sorted by the length left to run and packed into
batches by a token budget (:func:`engine.batching.pack`), so the rows of a batch end together:
sorted lexicographically instead, a batch held contexts of every length, and each row ending
left a forward call over the rest, paying a pass over every weight for a few tokens (profiled on
the 0.1B shape: a 48-context LAMBADA batch ran 2 long calls and 30 one-token calls, and was no
faster than one context per call). Continuations are sorted and packed the same way.

Logits are reduced on the CPU (a GPU model is seen through :func:`engine.batching.on_host`), in
float64, chunk by chunk (:func:`target_logprobs`); the server's prompt log-probabilities are the
same reduction (:class:`TargetScorer` with ``positions``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import prefixes
from .batching import Budget, TokensCallback, advance, auto_budget, check_batch_size, on_host, pack, runs_ragged
from .errors import InputError, check_ids
from .state import State

Pair = tuple[Sequence[int], Sequence[int]]
# on_result(index, value): request ``index`` is finished (called as each batch completes, in any order)
ResultCallback = Callable[[int, Any], None]


def top_alternatives(lp: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely (id, logprob) of one position's log-probabilities lp [V]."""
    if k <= 0:
        return []
    values, ids = torch.topk(lp, min(k, lp.numel()))
    return list(zip(ids.tolist(), values.tolist()))


# log-softmax over at most this many floats at once (64 MiB of float64), whatever the vocabulary
LOGPROB_CHUNK = 1 << 23


def target_logprobs(logits: torch.Tensor, targets: Sequence[int], top: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, list[list[tuple[int, float]]] | None]:
    """How likely each target was: logits [n, V] (position p predicts ``targets[p]``, n = len(targets))
    -> (log p(targets[p]) [n] float64, whether targets[p] was the argmax [n] bool, and with ``top``
    the ``top`` most likely (id, log p) at each position). Reduced chunk by chunk in float64 (sums
    over long texts stay exact), so a long row never holds a float64 copy of all its logits."""
    n, V = len(targets), logits.shape[-1]
    chunk = max(1, LOGPROB_CHUNK // V)
    chosen, greedy, alternatives = [], [], [] if top is not None else None
    for a in range(0, n, chunk):
        lp = torch.log_softmax(logits[a:a + chunk].double(), dim=-1)  # (b - a, V)
        idx = torch.tensor(targets[a:a + chunk], dtype=torch.long).unsqueeze(1)  # (b - a, 1)
        picked = lp.gather(1, idx).squeeze(1)  # (b - a,)
        chosen.append(picked)
        greedy.append(picked >= lp.max(dim=-1).values)
        if alternatives is not None:
            alternatives.extend(top_alternatives(row, top) for row in lp)
    if not chosen:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool), alternatives
    return torch.cat(chosen), torch.cat(greedy), alternatives


class TargetScorer:
    """An ``advance`` callback (:data:`engine.batching.LogitsCallback`) scoring row i's
    ``targets[i]``: the logits after token p of row i's sequence predict ``targets[i][p]``
    (targets = the sequence shifted by one). Accumulates log p(targets) and whether every target
    was the argmax; with ``positions`` also each position's log-probability and its ``top[i]``
    most likely alternatives (the server's prompt log-probabilities)."""

    def __init__(self, targets: list[list[int]], *, positions: bool = False, top: list[int] | None = None):
        self.targets = targets
        self.logprob = [0.0] * len(targets)
        self.greedy = [True] * len(targets)
        self.positions: list[list[float]] | None = [[] for _ in targets] if positions else None
        self.top = top
        self.alternatives: list[list[list[tuple[int, float]]]] | None = [[] for _ in targets] if top else None

    def __call__(self, rows: list[int], starts: list[int], logits: torch.Tensor) -> None:
        T = logits.shape[1]
        for j, (i, s) in enumerate(zip(rows, starts)):
            tgt = self.targets[i][s:s + T]
            if tgt:
                self.add(i, logits[j, :len(tgt)], tgt)

    def add(self, i: int, logits: torch.Tensor, tgt: Sequence[int]) -> None:
        """logits: [len(tgt), V] predicting ``tgt``, the next of row i's targets."""
        chosen, greedy, alternatives = target_logprobs(logits, tgt, None if self.top is None else self.top[i])
        self.logprob[i] += float(chosen.sum())
        self.greedy[i] = self.greedy[i] and bool(greedy.all())
        if self.positions is not None:
            self.positions[i].extend(chosen.tolist())
        if self.alternatives is not None and alternatives is not None:
            self.alternatives[i].extend(alternatives)


def _budget(model, batch_size: int | None, budget: Budget | None) -> Budget:
    check_batch_size(batch_size)
    if budget is None:
        return auto_budget(model, batch_size)
    return budget if batch_size is None else Budget(budget.tokens, min(budget.rows, batch_size), budget.prefix_states)


def loglikelihood(model, pairs: Sequence[Pair], batch_size: int | None = None, *, budget: Budget | None = None,
                  on_result: ResultCallback | None = None, on_tokens: TokensCallback | None = None
                  ) -> list[tuple[float, bool]]:
    """For each (context_ids, continuation_ids): (sum of log p(continuation | context), is_greedy).

    ``is_greedy`` is True when every continuation token is the model's argmax choice.
    The context must hold at least one token: RWKV evaluations start with token 0.
    ``batch_size``: at most this many rows per batch (None: as many as the budget allows);
    ``budget``: tokens and rows per batch (default: :func:`engine.batching.auto_budget`).
    ``on_result(i, (logprob, is_greedy))`` is called as each batch finishes; ``on_tokens`` is told
    every token the engine runs (a shared prefix once).
    """
    model = on_host(model)  # a GPU model's logits are reduced on the CPU
    budget = _budget(model, batch_size, budget)
    V = model.config.vocab_size
    checked: list[tuple[tuple[int, ...], list[int]]] = []
    for n, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"request {n}: expected a (context_ids, continuation_ids) pair, found {pair!r:.80}")
        ctx = check_ids(pair[0], V, f"request {n} context")
        cont = check_ids(pair[1], V, f"request {n} continuation")
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
    contexts = sorted(by_ctx)  # lexicographic: neighbours share their prefixes
    nodes, starts = prefixes.plan(contexts)

    def finish(n: int, value: tuple[float, bool]) -> None:
        results[n] = value
        if on_result is not None:
            on_result(n, value)

    # continuations of more than one token wait, with their context's state, until a batch of them
    # is ready: run per context batch, LAMBADA's few multi-token words made calls of one or two
    # rows, each a pass over every weight
    waiting: list[Continuation] = []
    ready = min(budget.rows, budget.prefix_states)
    for shard in prefixes.shards(nodes, starts, budget.prefix_states):
        node_states = _run_prefixes(model, nodes, [starts[i][0] for i in shard], budget, on_tokens)
        order = sorted(shard, key=lambda i: -(len(contexts[i]) - starts[i][1]))  # longest left to run first
        lengths = [len(contexts[i]) - starts[i][1] for i in order]
        for part in pack(lengths, budget.tokens, budget.rows, ragged=runs_ragged(model)):
            rows = [order[k] for k in part]
            init = _start_states(model, [starts[i][0] for i in rows], node_states)
            ctx_states, ctx_last = advance(model, [contexts[i][starts[i][1]:] for i in rows], init, want_last=True,
                                           on_tokens=on_tokens, max_tokens=budget.tokens, consume=True)
            waiting += _score_first_tokens([by_ctx[contexts[i]] for i in rows], checked, ctx_states, ctx_last, finish)
            if len(waiting) >= ready:
                _score_continuations(model, waiting, checked, budget, finish, on_tokens)
                waiting = []
    if waiting:
        _score_continuations(model, waiting, checked, budget, finish, on_tokens)
    return results  # type: ignore[return-value]


def _run_prefixes(model, nodes: Sequence[prefixes.Node], wanted: Sequence[int | None], budget: Budget,
                  on_tokens: TokensCallback | None) -> dict[int, State]:
    """The states after the shared prefixes ``wanted`` (and their ancestors), depth by depth, the
    nodes of one depth batched (each row from its parent's state)."""
    need = sorted({k for node in wanted for k in prefixes.chain(nodes, node)}, key=lambda k: nodes[k].depth)
    states: dict[int, State] = {}
    for depth in sorted({nodes[k].depth for k in need}):
        level = sorted((k for k in need if nodes[k].depth == depth), key=lambda k: -len(nodes[k].tokens))
        lengths = [len(nodes[k].tokens) for k in level]
        for part in pack(lengths, budget.tokens, budget.rows, ragged=runs_ragged(model)):
            batch = [level[j] for j in part]
            init = _start_states(model, [nodes[k].parent for k in batch], states)
            out, _ = advance(model, [nodes[k].tokens for k in batch], init, on_tokens=on_tokens,
                             max_tokens=budget.tokens, consume=True)
            for j, k in enumerate(batch):
                states[k] = out.select([j])
    return states


def _start_states(model, start: Sequence[int | None], states: dict[int, State]) -> State | None:
    """The state each row starts from: its node's, or zeros (the model's initial state); None when
    every row starts from zeros."""
    if all(node is None for node in start):
        return None
    zero = model.zero_state(1) if any(node is None for node in start) else None
    return State.cat([states[node] if node is not None else zero for node in start])


@dataclass
class Continuation:
    """A request whose continuation has more than one token, after its first token is scored:
    row ``row`` of ``states`` is its context's state (the options of a question share one copy),
    ``first`` the first token's (log p, is greedy)."""

    request: int
    states: State
    row: int
    first: tuple[float, bool]


def _score_first_tokens(requests: Sequence[list[int]], checked, ctx_states: State, ctx_last: torch.Tensor,
                        finish: Callable[[int, tuple[float, bool]], None]) -> list[Continuation]:
    """The first token of every continuation of a batch of contexts (``requests[j]``: the requests
    of context row j), from the context's last logits [rows, V]. One-token continuations are
    finished here; the longer ones are returned, with a copy of the states of their contexts only."""
    last_lp = torch.log_softmax(ctx_last.double(), dim=-1)  # (rows, V); float64: sums stay exact
    last_max = last_lp.max(dim=-1).values
    longer: list[tuple[int, int, tuple[float, bool]]] = []  # (request, context row, first token)
    for j, ns in enumerate(requests):
        for n in ns:
            tok = checked[n][1][0]
            first = (float(last_lp[j, tok]), bool(last_lp[j, tok] >= last_max[j]))
            if len(checked[n][1]) > 1:
                longer.append((n, j, first))
            else:
                finish(n, first)
    if not longer:
        return []
    kept = {j: row for row, j in enumerate(sorted({j for _, j, _ in longer}))}  # context row -> row kept
    states = ctx_states.select(list(kept))
    return [Continuation(n, states, kept[j], first) for n, j, first in longer]


def _score_continuations(model, jobs: list[Continuation], checked, budget: Budget,
                         finish: Callable[[int, tuple[float, bool]], None], on_tokens: TokensCallback | None) -> None:
    """The rest of each continuation of ``jobs``: continuation[:-1] run from its context's state,
    longest first, packed by the budget."""
    jobs = sorted(jobs, key=lambda job: -len(checked[job.request][1]))
    lengths = [len(checked[job.request][1]) - 1 for job in jobs]
    for part in pack(lengths, budget.tokens, budget.rows, ragged=runs_ragged(model)):
        batch = [jobs[k] for k in part]
        scorer = TargetScorer([checked[job.request][1][1:] for job in batch])
        start = State.cat([job.states.row(job.row) for job in batch])  # one copy
        advance(model, [checked[job.request][1][:-1] for job in batch], start, on_logits=scorer, on_tokens=on_tokens,
                max_tokens=budget.tokens, consume=True)
        for row, job in enumerate(batch):
            lp, greedy = job.first
            finish(job.request, (lp + scorer.logprob[row], greedy and scorer.greedy[row]))


def loglikelihood_rolling(model, token_lists: Sequence[Sequence[int]], bos: int | None = 0,
                          batch_size: int | None = None, *, budget: Budget | None = None,
                          on_result: ResultCallback | None = None,
                          on_tokens: TokensCallback | None = None) -> list[float]:
    """Sum of log p(token_i | tokens before it) over whole texts.

    With ``bos`` (default 0, RWKV's document separator) every token is scored, the first one
    conditioned on ``bos``; with ``bos=None`` the first token is context only. RWKV has no
    context window, so no rolling windows are needed: each text runs once, start to end. Texts
    are sorted by length and packed by the budget, as contexts are in :func:`loglikelihood`.
    """
    model = on_host(model)
    budget = _budget(model, batch_size, budget)
    V = model.config.vocab_size
    if bos is not None:
        check_ids([bos], V, "bos")
    seqs: list[list[int]] = []
    for n, toks in enumerate(token_lists):
        ids = check_ids(toks, V, f"text {n}")
        full = ([bos] if bos is not None else []) + ids
        if len(full) < 2:
            raise InputError(f"text {n}: nothing to score: expected at least one token after the first "
                             f"(found {len(ids)} tokens, bos={bos})")
        seqs.append(full)
    out: list[float] = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths batch together
    for part in pack([len(seqs[i]) - 1 for i in order], budget.tokens, budget.rows, ragged=runs_ragged(model)):
        rows = [order[k] for k in part]
        scorer = TargetScorer([seqs[i][1:] for i in rows])
        advance(model, [seqs[i][:-1] for i in rows], on_logits=scorer, on_tokens=on_tokens, max_tokens=budget.tokens)
        for row, i in enumerate(rows):
            out[i] = scorer.logprob[row]
            if on_result is not None:
                on_result(i, out[i])
    return out
