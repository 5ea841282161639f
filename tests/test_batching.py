"""How scoring batches its work: shared-prefix plans, packing by a token budget, the automatic
budget, and the head run only for rows that need logits; the numbers never change with it."""
from __future__ import annotations

import types

import pytest
import torch

import engine
from engine import prefixes
from engine.batching import Budget, advance, auto_budget, auto_decode_rows, free_memory, pack
from helpers import SMALL


@pytest.fixture(scope="module")
def small():
    return engine.random_model(SMALL, seed=3)


# ---------------------------------------------------------------------------------------------
# shared-prefix plans


def _plan(contexts):
    contexts = sorted(tuple(c) for c in contexts)
    nodes, starts = prefixes.plan(contexts)
    return contexts, nodes, starts


def test_a_few_shot_header_per_category_is_one_node_each():
    header = {c: [0] + [c] * 40 for c in (1, 2, 3)}  # three categories, 41-token headers
    contexts = [header[c] + [100 + q, 7, 8] for c in header for q in range(5)]
    contexts, nodes, starts = _plan(contexts)
    assert len(nodes) == 3 and all(n.parent is None and n.end == 41 for n in nodes)
    for ctx, (node, length) in zip(contexts, starts):
        assert nodes[node].tokens == tuple(ctx[:length]) and length < len(ctx)


def test_nested_prefixes_make_a_tree_and_every_context_keeps_a_token():
    system = list(range(1, 31))  # shared by all
    contexts = [system + [200 + g] * 20 + [q] for g in range(2) for q in range(3)] + [system + [9]]
    contexts, nodes, starts = _plan(contexts)
    root = [k for k, n in enumerate(nodes) if n.parent is None]
    assert len(root) == 1 and nodes[root[0]].end == 30
    children = [n for n in nodes if n.parent == root[0]]
    assert len(children) == 2 and all(n.start == 30 and n.end == 50 and n.depth == 1 for n in children)
    for ctx, (node, length) in zip(contexts, starts):
        assert length < len(ctx)
        if node is not None:
            assert prefixes.chain(nodes, node)[0] == root[0]
            assert tuple(ctx[:length]) == nodes[node].context[:nodes[node].end]


def test_short_or_rare_shared_prefixes_are_not_worth_a_node():
    contexts, nodes, starts = _plan([[0, 5, 6, 7, q] for q in range(8)])  # 4 tokens x 7 = 28 < 32
    assert nodes == [] and all(s == (None, 0) for s in starts)
    contexts, nodes, starts = _plan([[0] + list(range(1, 40)) + [q] for q in range(2)])  # 40 x 1 >= 32
    assert len(nodes) == 1 and nodes[0].end == 40
    contexts, nodes, starts = _plan([[1, 2, 3], [1, 2, 3], [4]])
    assert nodes == [] and starts == [(None, 0)] * 3
    assert prefixes.plan([]) == ([], [])


def test_shards_bound_the_prefix_states_held_at_once():
    contexts = [[g] * 40 + [q] for g in range(1, 7) for q in range(2)]  # six nodes of two contexts
    contexts, nodes, starts = _plan(contexts)
    assert len(nodes) == 6
    parts = prefixes.shards(nodes, starts, 4)
    assert [len(p) for p in parts] == [8, 4] and parts[0].start == 0 and parts[-1].stop == len(contexts)
    assert prefixes.shards(nodes, starts, 100) == [range(0, 12)]
    assert prefixes.shards(nodes, starts, 1) == [range(i, i + 2) for i in range(0, 12, 2)]


# ---------------------------------------------------------------------------------------------
# packing and budgets


def test_pack_keeps_tokens_and_rows_within_the_budget():
    lengths = [100, 90, 90, 50, 40, 40, 40, 10, 3]
    parts = pack(lengths, tokens=200, rows=3, max_padding=1.0)  # padding not limited
    assert [list(p) for p in parts] == [[0, 1], [2, 3], [4, 5, 6], [7, 8]]
    for p in parts:
        assert len(p) <= 3 and (len(p) == 1 or len(p) * lengths[p.start] <= 200)
    # padding limited to 10% of a batch's token slots (the default): 90 beside 100 wastes 5%, 50
    # beside 90 would waste 22%, 40 beside 50 10% (the limit), 10 beside 40, 40 37%, 3 beside 10 35%
    parts = pack(lengths, tokens=200, rows=3)
    assert [list(p) for p in parts] == [[0, 1], [2], [3, 4], [5, 6], [7], [8]]
    for p in parts:
        longest = lengths[p.start]
        assert len(p) == 1 or len(p) * longest - sum(lengths[i] for i in p) <= 0.1 * len(p) * longest
    assert pack([500, 2], tokens=100, rows=8) == [range(0, 1), range(1, 2)]  # too long: alone
    assert pack([], 10, 10) == []
    # a model that drops the padding (ragged): the rows' own tokens count, with no padding limit
    parts = pack(lengths, tokens=200, rows=3, ragged=True)
    assert [list(p) for p in parts] == [[0, 1], [2, 3, 4], [5, 6, 7], [8]]
    assert all(sum(lengths[i] for i in p) <= 200 for p in parts)
    assert pack([500, 2], tokens=100, rows=8, ragged=True) == [range(0, 1), range(1, 2)]


def test_auto_budget_follows_free_memory_and_the_batch_size(small, monkeypatch):
    assert free_memory(small.device) > 0
    budget = auto_budget(small)
    assert 256 <= budget.tokens <= engine.batching.MAX_TOKENS_PER_CALL and 1 <= budget.rows <= engine.batching.MAX_ROWS
    assert auto_budget(small, rows=3).rows == 3
    monkeypatch.setattr(engine.batching, "free_memory", lambda device: 64 << 20)  # 64 MiB free
    tight = auto_budget(types.SimpleNamespace(config=engine.official_config("0.1B"), device=torch.device("cpu")))
    assert tight.tokens == 256 and tight.rows < budget.rows and tight.prefix_states == 8
    assert auto_decode_rows(small) <= engine.batching.MAX_DECODE_ROWS
    with pytest.raises(engine.InputError, match="tokens must be an int >= 1, found 0"):
        Budget(0, 1, 1)


def test_logit_rows_runs_the_head_for_the_last_rows_only(small):
    toks = torch.randint(0, SMALL.vocab_size, (4, 5), generator=torch.Generator().manual_seed(1))
    full, s_full = small.forward(toks, logits="last")
    part, s_part = small.forward(toks, logits="last", logit_rows=2)
    assert part.shape == (2, 1, SMALL.vocab_size) and torch.allclose(part, full[2:], atol=1e-5)  # other row count, maybe another form
    assert torch.equal(s_part.wkv, s_full.wkv)
    every, _ = small.forward(toks, logit_rows=1)
    assert every.shape == (1, 5, SMALL.vocab_size)
    for bad, mode in [(0, "last"), (5, "last"), (2, "none")]:
        with pytest.raises(engine.InputError, match="logit_rows must be an int in"):
            small.forward(toks, logits=mode, logit_rows=bad)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "segments"])
def test_ragged_batches_get_each_rows_last_logits(small, padded, monkeypatch):
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(0, SMALL.vocab_size, (n,), generator=g).tolist() for n in (7, 3, 3, 1, 5)]
    calls = []
    real = small.forward

    def spy(tokens, *args, **kwargs):
        calls.append((tuple(tokens.shape), kwargs.get("logit_rows"), kwargs.get("logits"), kwargs.get("lengths")))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(small, "forward", spy)
    monkeypatch.setattr(small, "padded_rows", padded)
    _, last = advance(small, seqs, want_last=True)
    monkeypatch.undo()
    for seq, row in zip(seqs, last):
        want, _ = small.forward(torch.tensor([seq]), logits="last")
        assert torch.allclose(row, want[0, 0], atol=1e-5)
    if padded:  # one call: every row to the longest one's end, the others padded, each row's own last logits
        assert calls == [((5, 7), None, "last", [7, 5, 3, 3, 1])]
    else:  # rows end at 1, 3 and 5: the head runs for the ending rows, never for the ones going on
        assert calls == [((5, 1), 1, "last", None), ((4, 2), 2, "last", None), ((2, 2), 1, "last", None),
                         ((1, 2), None, "last", None)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "torch"])
def test_padded_rows_equal_each_row_run_alone(dtype, fast):
    """forward(lengths=...): each row's state and "last" logits are those of its own tokens run
    alone, padding after them changes nothing (on the kernels' path and the plain torch path)."""
    sd = engine.random_state_dict(SMALL, seed=9)
    model = engine.from_state_dict(sd, dtype=dtype, fast=fast)
    g = torch.Generator().manual_seed(3)
    lengths = [6, 2, 6, 1, 4]
    toks = torch.randint(0, SMALL.vocab_size, (5, 6), generator=g)
    start = model.forward(torch.randint(0, SMALL.vocab_size, (5, 3), generator=g))[1]  # not from zeros
    logits, state = model.forward(toks, start, logits="last", lengths=lengths)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for b, n in enumerate(lengths):
        want, alone = model.forward(toks[b:b + 1, :n], start.select([b]), logits="last")
        assert (logits[b, 0] - want[0, 0]).abs().max().item() <= tol * max(1.0, want.abs().max().item()), b
        for got, ref in ((state.wkv[:, b], alone.wkv[:, 0]), (state.att_x[:, b], alone.att_x[:, 0]),
                         (state.ffn_x[:, b], alone.ffn_x[:, 0])):
            assert (got - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item()), b
    every, _ = model.forward(toks, start, lengths=lengths)  # "all": each row's positions up to its end
    for b, n in enumerate(lengths):
        want, _ = model.forward(toks[b:b + 1, :n], start.select([b]))
        assert (every[b, :n] - want[0]).abs().max().item() <= tol * max(1.0, want.abs().max().item()), b
    part, _ = model.forward(toks, start, lengths=lengths, logit_rows=2)  # the last two rows' logits
    assert part.shape == (2, 6, SMALL.vocab_size)
    for j, b in enumerate((3, 4)):
        n = lengths[b]
        assert (part[j, :n] - every[b, :n]).abs().max().item() <= tol * max(1.0, every.abs().max().item()), b
    assert model.ragged_rows == fast  # the CPU kernels drop the padding; the plain path computes it


def test_a_ragged_batch_runs_its_rows_own_tokens_within_the_budget(small, monkeypatch):
    # rows of 60, 30 and 10 tokens: their own 100 tokens fit a budget of 100 in one call (padded to
    # the longest they would have been 3 x 60, so 3 calls of 33 tokens or fewer)
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(1, SMALL.vocab_size, (n,), generator=g).tolist() for n in (60, 30, 10)]
    calls = []
    real = small.forward
    monkeypatch.setattr(small, "forward", lambda tokens, *a, **k: calls.append((tuple(tokens.shape), k.get("lengths")))
                        or real(tokens, *a, **k))
    state, last = advance(small, seqs, want_last=True, max_tokens=100)
    assert small.ragged_rows and calls == [((3, 60), [60, 30, 10])]
    calls.clear()
    advance(small, seqs, want_last=True, max_tokens=80)  # 80 tokens: 40 + 30 + 10, then the last 20
    assert calls == [((3, 40), [40, 30, 10]), ((1, 20), None)]
    for i, seq in enumerate(seqs):
        logits, alone = real(torch.tensor([seq]), logits="last")
        assert torch.allclose(last[i], logits[0, -1], atol=2e-4)
        assert torch.allclose(state.select([i]).wkv, alone.wkv, atol=2e-4)


def test_advance_runs_in_a_state_its_caller_gives_up(small):
    # consume=True: rows that come longest first run in the caller's state (no copy), same numbers;
    # without it (or rows in another order) the caller's state is left as it was
    g = torch.Generator().manual_seed(6)
    seqs = [torch.randint(1, SMALL.vocab_size, (n,), generator=g).tolist() for n in (9, 5, 2)]
    start = small.forward(torch.randint(1, SMALL.vocab_size, (3, 4), generator=g))[1]
    kept = start.clone()
    copied, last = advance(small, seqs, start, want_last=True)
    assert torch.equal(start.wkv, kept.wkv) and copied.wkv.data_ptr() != start.wkv.data_ptr()
    given, last_given = advance(small, seqs, start, want_last=True, consume=True)
    assert given.wkv.data_ptr() == start.wkv.data_ptr() and torch.equal(last_given, last)
    for name in ("att_x", "wkv", "ffn_x"):
        assert torch.equal(getattr(given, name), getattr(copied, name)), name
    other = kept.clone()
    shuffled, _ = advance(small, seqs[::-1], other, want_last=True, consume=True)  # not longest first: copied
    assert torch.equal(other.wkv, kept.wkv)
    assert torch.equal(shuffled.wkv, advance(small, seqs[::-1], kept.clone(), want_last=True)[0].wkv)


def test_lengths_are_checked(small, monkeypatch):
    toks = torch.zeros(2, 3, dtype=torch.long)
    for bad in ([3], [0, 3], [3, 4], [2.0, 3], "ab", [True, 3]):
        with pytest.raises(engine.InputError, match=r"lengths: expected 2 ints in \[1, T=3\]"):
            small.forward(toks, lengths=bad)
    assert small.forward(toks, lengths=torch.tensor([3, 1]))[0].shape == (2, 3, SMALL.vocab_size)
    monkeypatch.setattr(small, "padded_rows", False)  # as the CUDA class
    with pytest.raises(engine.InputError, match="runs rows of one length only"):
        small.forward(toks, lengths=[3, 1])


# ---------------------------------------------------------------------------------------------
# scoring: the same numbers however it batches


def _pairs(seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randint(1, SMALL.vocab_size, (n,), generator=g).tolist()

    header = [0] + rnd(40)
    pairs = []
    for q in range(6):  # a shared few-shot header, questions of different lengths, four options each
        ctx = header + rnd(2 + 3 * q)
        pairs += [(ctx, rnd(1 + o % 3)) for o in range(4)]
    pairs += [([0] + rnd(n), rnd(2)) for n in (1, 9, 30)]  # loose contexts
    pairs.append((pairs[0][0], pairs[0][1]))  # a repeated request
    return pairs


def test_scores_do_not_depend_on_batch_size_or_budget(small):
    pairs = _pairs(4)
    plain = engine.random_model(SMALL, seed=3, fast=False)
    reference = [plain.loglikelihood([p], batch_size=1) for p in pairs]
    variants = [dict(batch_size=1), dict(batch_size=5), dict(), dict(budget=Budget(16, 4, 1)),
                dict(budget=Budget(8192, 512, 1024))]
    for kwargs in variants:
        got = small.loglikelihood(pairs, **kwargs)
        for (lp, greedy), ((want_lp, want_greedy),) in zip(got, reference):
            assert lp == pytest.approx(want_lp, abs=2e-4), kwargs
            assert greedy == want_greedy
    rolling = [t for _, t in pairs[:6]] + [[5] * 20]
    base = plain.loglikelihood_rolling(rolling, batch_size=1)
    for kwargs in variants:
        assert small.loglikelihood_rolling(rolling, **kwargs) == pytest.approx(base, abs=2e-4)


def test_a_shared_header_runs_once(small):
    pairs = _pairs(5)
    ran = []
    small.loglikelihood(pairs, on_tokens=lambda p, g: ran.append(p))
    contexts = {tuple(c) for c, _ in pairs}
    unshared = sum(len(c) for c in contexts) + sum(len(x) - 1 for _, x in pairs)
    # 6 questions share 41 header tokens: 5 x 41 fewer tokens run
    assert sum(ran) == unshared - 5 * 41
    with pytest.raises(engine.InputError, match="batch_size must be an int >= 1 or None"):
        small.loglikelihood(pairs, batch_size=0)


def test_a_model_on_an_accelerator_is_scored_from_logits_taken_to_the_host(small):
    # scoring reduces logits with CPU index tensors: a GPU model is seen through on_host
    from engine import scoring
    from engine.batching import HostLogits, on_host
    from helpers import AcceleratorStandIn

    there = AcceleratorStandIn(small)
    assert isinstance(on_host(there), HostLogits) and on_host(small) is small
    view = on_host(there)
    assert on_host(view) is view  # a view is not wrapped twice
    pairs = _pairs(6)[:10]
    got = scoring.loglikelihood(there, pairs, budget=Budget(64, 4, 2))
    want = scoring.loglikelihood(small, pairs, budget=Budget(64, 4, 2))
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-9)
    rolling = [t for _, t in pairs[:4]]
    assert scoring.loglikelihood_rolling(there, rolling) == pytest.approx(scoring.loglikelihood_rolling(small, rolling),
                                                                          abs=1e-9)


def test_a_cpu_forward_call_runs_at_most_its_token_cap(small, monkeypatch):
    # on the CPU a call's six token-shift mixes fit CPU_CALL_BYTES; advance splits longer rows
    cap = 100
    monkeypatch.setattr(engine.batching, "CPU_CALL_BYTES", 6 * SMALL.n_embd * 4 * cap)
    assert engine.batching.call_tokens(small) == cap and auto_budget(small).tokens <= cap
    seqs = [torch.randint(1, SMALL.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).tolist()
            for n in (250, 40)]
    shapes = []
    real = small.forward

    def spy(tokens, *args, **kwargs):  # (B, T) and the tokens the call runs: the rows' own (ragged)
        shapes.append((*tokens.shape, sum(kwargs.get("lengths") or [tokens.numel()])))
        return real(tokens, *args, **kwargs)

    monkeypatch.setattr(small, "forward", spy)
    state, last = advance(small, seqs, want_last=True)
    assert all(n <= cap for _, _, n in shapes) and sum(min(t, 250) for _, t, _ in shapes) >= 250
    for i, seq in enumerate(seqs):  # the same as each row in one call
        logits, alone = real(torch.tensor([seq]), logits="last")
        assert torch.allclose(last[i], logits[0, -1], atol=2e-4)
        assert torch.allclose(state.select([i]).wkv, alone.wkv, atol=2e-4)
    monkeypatch.setattr(engine.batching, "CPU_CALL_BYTES", 1)
    assert engine.batching.call_tokens(small) == 64  # never fewer than 64 tokens a call


def test_continuations_of_many_context_batches_run_together(small, monkeypatch):
    # contexts packed into several batches; their multi-token continuations wait and run in one call
    g = torch.Generator().manual_seed(8)
    pairs = [([0] + torch.randint(1, SMALL.vocab_size, (n,), generator=g).tolist(),
              torch.randint(1, SMALL.vocab_size, (3,), generator=g).tolist()) for n in range(5, 29, 2)]
    modes = []
    real = small.forward
    monkeypatch.setattr(small, "forward",
                        lambda tokens, *a, **k: modes.append(k.get("logits", "all")) or real(tokens, *a, **k))
    got = small.loglikelihood(pairs, budget=Budget(40, 64, 64))
    context_calls = modes.count("last") + modes.count("none")
    assert context_calls >= 4 and modes.count("all") == 1  # the continuations: one call
    want = [small.loglikelihood([p], batch_size=1)[0] for p in pairs]
    for (lp, greedy), (want_lp, want_greedy) in zip(got, want):
        assert lp == pytest.approx(want_lp, abs=2e-4) and greedy == want_greedy
