"""The engine against itself: sequence vs steps, batch vs rows, prefix reuse, scoring, generation."""
from __future__ import annotations

import math

import pytest
import torch

import engine
from engine import State
from helpers import SHAPES, SMALL

ATOL = 2e-5


@pytest.fixture(scope="module", params=["2x128-h2", "3x96-h3n32"])
def model(request):
    return engine.random_model(SHAPES[request.param], seed=3)


@pytest.fixture(scope="module")
def small():
    return engine.random_model(SMALL, seed=11)


def _toks(model, B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


def test_one_call_equals_token_by_token(model):
    toks = _toks(model, 2, 12)
    full, state_full = model.forward(toks)
    state, steps = None, []
    for t in range(12):
        logits, state = model.forward(toks[:, t:t + 1], state)
        steps.append(logits)
    assert torch.allclose(full, torch.cat(steps, 1), atol=ATOL, rtol=0)
    assert torch.allclose(state_full.wkv, state.wkv, atol=ATOL, rtol=0)


def test_batch_equals_rows_alone(model):
    toks = _toks(model, 3, 9, seed=1)
    batch, bstate = model.forward(toks)
    for i in range(3):
        row, rstate = model.forward(toks[i:i + 1])
        assert torch.allclose(batch[i], row[0], atol=ATOL, rtol=0)
        assert torch.allclose(bstate.wkv[:, i], rstate.wkv[:, 0], atol=ATOL, rtol=0)


def test_prefix_then_rest_equals_whole(model):
    toks = _toks(model, 1, 15, seed=2)
    whole, _ = model.forward(toks)
    _, prefix_state = model.forward(toks[:, :6])
    rest, _ = model.forward(toks[:, 6:], prefix_state)
    assert torch.allclose(whole[:, 6:], rest, atol=ATOL, rtol=0)


def test_forward_leaves_input_state_unchanged(model):
    _, state = model.forward(_toks(model, 1, 4))
    before = state.clone()
    model.forward(_toks(model, 1, 3, seed=5), state)
    assert torch.equal(before.wkv, state.wkv) and torch.equal(before.att_x, state.att_x)


def test_shared_prefix_fans_out_with_select_and_cat(model):
    prefix, tails = _toks(model, 1, 7, seed=3), _toks(model, 3, 4, seed=4)
    _, pstate = model.forward(prefix)
    fanned, _ = model.forward(tails, pstate.expand(3))
    for i in range(3):
        alone, _ = model.forward(torch.cat([prefix, tails[i:i + 1]], 1))
        assert torch.allclose(fanned[i], alone[0, 7:], atol=ATOL, rtol=0)
    joined = State.cat([pstate.select([0]), pstate.select([0])])
    assert joined.batch_size == 2 and torch.equal(joined.wkv[:, 0], joined.wkv[:, 1])


def test_logits_last_equals_last_of_all(model):
    toks = _toks(model, 2, 5, seed=6)
    all_logits, _ = model.forward(toks)
    last, _ = model.forward(toks, logits="last")
    assert last.shape == (2, 1, model.config.vocab_size)
    assert torch.allclose(all_logits[:, -1:], last, atol=ATOL, rtol=0)


def _manual_loglikelihood(model, ctx, cont):
    logits, _ = model.forward(torch.tensor([ctx + cont]))
    lp = torch.log_softmax(logits[0].double(), -1)
    total, greedy = 0.0, True
    for j, tok in enumerate(cont):
        row = lp[len(ctx) - 1 + j]
        total += float(row[tok])
        greedy &= bool(row[tok] >= row.max())
    return total, greedy


def test_loglikelihood_matches_manual_and_shares_contexts(small):
    g = torch.Generator().manual_seed(9)
    few_shot = torch.randint(0, 256, (20,), generator=g).tolist()
    pairs = []
    for q in range(5):  # five questions sharing a few-shot prefix, four options each
        ctx = [0] + few_shot + torch.randint(0, 256, (3 + q,), generator=g).tolist()
        for opt in range(4):
            pairs.append((ctx, torch.randint(0, 256, (1 + opt % 3,), generator=g).tolist()))
    got = small.loglikelihood(pairs, batch_size=3)
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        want_lp, want_greedy = _manual_loglikelihood(small, ctx, cont)
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy
    other = small.loglikelihood(pairs, batch_size=64)  # another batching, another shared prefix
    assert [g for _, g in other] == [g for _, g in got]
    assert [lp for lp, _ in other] == pytest.approx([lp for lp, _ in got], abs=1e-4)


def test_loglikelihood_greedy_flag(small):
    ctx = [0, 5, 9, 14]
    logits, _ = small.forward(torch.tensor([ctx]))
    best = int(logits[0, -1].argmax())
    worst = int(logits[0, -1].argmin())
    (lp_best, g_best), (lp_worst, g_worst) = small.loglikelihood([(ctx, [best]), (ctx, [worst])])
    assert g_best and not g_worst and lp_best > lp_worst


def test_loglikelihood_rolling_matches_manual(small):
    texts = [[3, 7, 100, 42, 9], [250, 1], list(range(1, 40))]
    got = small.loglikelihood_rolling(texts)
    for toks, value in zip(texts, got):
        want, _ = _manual_loglikelihood(small, [0], toks)
        assert value == pytest.approx(want, abs=1e-4)
    no_bos = small.loglikelihood_rolling([texts[0]], bos=None)[0]
    assert no_bos == pytest.approx(_manual_loglikelihood(small, texts[0][:1], texts[0][1:])[0], abs=1e-4)


def _greedy_manual(model, prompt, n):
    toks, out = list(prompt), []
    for _ in range(n):
        logits, _ = model.forward(torch.tensor([toks]))
        t = int(logits[0, -1].argmax())
        if t == 0:
            break
        out.append(t)
        toks.append(t)
    return out


def test_generate_greedy_matches_manual_and_refills_slots(small):
    prompts = [[0, 72, 105], [0, 65], [0, 1, 2, 3, 4, 5], [0, 200, 100], [0, 33]]
    want = [_greedy_manual(small, p, 6) for p in prompts]
    for batch_size in (1, 2, 16):  # 2 < len(prompts): finished slots are refilled from the queue
        got = small.generate(prompts, max_new_tokens=6, batch_size=batch_size)
        assert [g.tokens for g in got] == want
        assert all(g.finish_reason in ("length", "stop") for g in got)


def test_generate_different_lengths_stop_on_their_own(small):
    prompts = [[0, 72, 105], [0, 65], [0, 1, 2]]
    ref = small.generate(prompts, max_new_tokens=8)
    stop_tok = ref[1].tokens[2]
    got = small.generate(prompts, max_new_tokens=8, stop=[stop_tok])
    assert got[1].finish_reason == "stop" and got[1].stop == stop_tok
    assert got[1].tokens == ref[1].tokens[: ref[1].tokens.index(stop_tok)]
    for g, r in zip(got, ref):  # the other rows ran on, unaffected
        if stop_tok not in r.tokens:
            assert g.tokens == r.tokens


def test_generate_stop_string_cuts_text(small):
    ref = small.generate([[0, 72, 105]], max_new_tokens=40)[0]
    data = bytes(ref.tokens)  # byte vocabulary: token id = byte
    # a two-byte ASCII window of the output (random weights emit arbitrary bytes)
    i = next(i for i in range(1, len(data) - 1) if data[i] < 128 and data[i + 1] < 128)
    stop = data[i:i + 2].decode()
    got = small.generate([[0, 72, 105]], max_new_tokens=40, stop=[stop])[0]
    assert got.finish_reason == "stop" and got.stop == stop
    assert got.text == data[: data.find(stop.encode())].decode("utf-8", errors="replace")
    assert len(got.tokens) == data.find(stop.encode()) + 2  # generation ended on the stop's last byte


def test_generate_sampling_is_reproducible_across_batching(small):
    prompts = [[0, 72, 105], [0, 65], [0, 1, 2, 3]]
    a = small.generate(prompts, 12, temperature=1.0, top_p=0.9, top_k=50, seed=123, batch_size=3)
    b = small.generate(prompts, 12, temperature=1.0, top_p=0.9, top_k=50, seed=123, batch_size=1)
    c = small.generate(prompts, 12, temperature=1.0, top_p=0.9, top_k=50, seed=124, batch_size=3)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in a] != [g.tokens for g in c]


def test_top_k_one_is_greedy(small):
    prompts = [[0, 72, 105]]
    greedy = small.generate(prompts, 8)[0].tokens
    assert small.generate(prompts, 8, temperature=1.5, top_k=1, seed=5)[0].tokens == greedy


def test_sample_token_respects_top_p():
    from engine.generate import sample_token

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    seen = {sample_token(logits, 1.0, 0.7, 0, torch.Generator().manual_seed(s)) for s in range(200)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are cut
    seen = {sample_token(logits, 1.0, 1.0, 0, torch.Generator().manual_seed(s)) for s in range(400)}
    assert seen == {0, 1, 2, 3}


def test_max_new_tokens_zero(small):
    out = small.generate([[0, 1]], 0)
    assert out[0].tokens == [] and out[0].finish_reason == "length"


def test_bfloat16_matches_float32_loosely():
    cfg = SHAPES["2x128-h2"]
    sd = engine.random_state_dict(cfg, seed=5)
    f32, bf16 = engine.from_state_dict(sd), engine.from_state_dict(sd, dtype="bfloat16")
    toks = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    a, sa = f32.forward(toks)
    b, sb = bf16.forward(toks)
    assert sb.wkv.dtype == torch.float32
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < 2e-2, rel
    # the fast path's bf16 products (in whichever forms it measured fastest) and the plain path's agree
    c, _ = engine.from_state_dict(sd, dtype="bfloat16", fast=False).forward(toks)
    assert ((b - c).norm() / a.norm()).item() < 2e-2
    assert math.isfinite(rel)


class _ForwardCounter:
    """Wraps ``model.forward`` to count the tokens the engine really runs (B * T per call, less
    the padding of rows shorter than T), and the padding (``padding``)."""

    def __init__(self, model):
        self.model, self.tokens, self.padding, self._forward = model, 0, 0, model.forward

    def __enter__(self):
        def counted(tokens, *args, **kwargs):
            real = sum(kwargs["lengths"]) if kwargs.get("lengths") is not None else tokens.numel()
            self.tokens += real
            self.padding += tokens.numel() - real
            return self._forward(tokens, *args, **kwargs)

        self.model.forward = counted
        return self

    def __exit__(self, *exc):
        del self.model.forward  # back to the class's method


def test_scoring_reports_each_result_and_the_tokens_it_ran(small):
    header = [0, 5, 9, 13, 2, 7, 7, 1]  # a shared few-shot-like prefix, run once
    pairs = [(header + [i, i + 1], [3, 4, i]) for i in range(6)] + [(header + [1, 2], [8])]
    results, tokens = {}, [0, 0]

    def on_tokens(prompt, generated):
        tokens[0] += prompt
        tokens[1] += generated

    with _ForwardCounter(small) as counter:
        out = small.loglikelihood(pairs, batch_size=3, on_result=results.__setitem__, on_tokens=on_tokens)
    assert results == dict(enumerate(out))
    assert tokens == [counter.tokens, 0]
    # sharing the prefix ran fewer tokens than the contexts and continuations hold
    assert counter.tokens < sum(len(c) + len(x) for c, x in pairs)


def test_rolling_scoring_reports_results_and_tokens(small):
    texts = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    results, tokens = {}, []
    with _ForwardCounter(small) as counter:
        out = small.loglikelihood_rolling(texts, batch_size=2, on_result=results.__setitem__,
                                          on_tokens=lambda p, g: tokens.append(p))
    assert results == dict(enumerate(out))
    assert sum(tokens) == counter.tokens == sum(len(t) for t in texts)  # token 0 plus all but the last


def test_generation_reports_each_sequence_as_it_finishes(small):
    prompts = [[0, 3, 4], [0, 5], [0, 6, 7, 8], [0, 9]]
    finished, generated, prompt_tokens = [], [0], [0]

    def on_result(i, generation):
        finished.append((i, len(generation.tokens)))

    def on_tokens(prompt, new):
        prompt_tokens[0] += prompt
        generated[0] += new

    with _ForwardCounter(small) as counter:
        out = small.generate(prompts, max_new_tokens=5, batch_size=2, on_result=on_result, on_tokens=on_tokens)
    assert sorted(i for i, _ in finished) == [0, 1, 2, 3]
    assert dict(finished) == {i: len(g.tokens) for i, g in enumerate(out)}
    assert prompt_tokens[0] == sum(len(p) for p in prompts)
    # every sampled token counts; each but a finishing one is fed back for the next step
    stops = sum(g.finish_reason == "stop" and isinstance(g.stop, int) for g in out)
    assert generated[0] == sum(len(g.tokens) for g in out) + stops
    assert counter.tokens == prompt_tokens[0] + generated[0] - len(prompts)
