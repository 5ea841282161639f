"""A tuned initial state (RWKV-PEFT's state tuning, ``blocks.N.att.time_state``) loaded with
``adapters=`` against the official ``rwkv`` package started from the same state.

The official package takes a state in ``forward(tokens, state)``; its WKV entry is [H, N, N] with
value index first, key index second, and the state file's tensors go in as they are. Our logits
must equal its logits (<= 1e-4) in scoring and generation, for every row of a batch (each row
starts from the tuned state, also after prefix sharing), and through the server.
"""
from __future__ import annotations

import httpx
import pytest
import torch

import engine
from engine.batching import advance
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from helpers import SHAPES
from oracle import load_official
from peft_reference import make_time_state

pytestmark = pytest.mark.oracle
TOL = 1e-4


def setup(kind: str, folder, tiny_model_path):
    """(ours with the state adapter, ours without, the official package, the state tensors)."""
    if kind == "tiny":
        base = tiny_model_path
        sd = torch.load(base, map_location="cpu", weights_only=True)
    else:
        sd = engine.random_state_dict(SHAPES["2x128-h2"], seed=13)  # the World vocabulary
        base = folder / "world.pth"
        torch.save(sd, base)
    cfg = engine.checkpoint.infer_config(sd)
    states = make_time_state(cfg.n_layer, cfg.n_head, cfg.head_size, seed=21)
    torch.save(states, folder / "state.pth")
    ours = engine.load_model(base, adapters=[folder / "state.pth"])
    return ours, engine.load_model(base), load_official(sd, folder), states


@pytest.fixture(scope="module", params=["tiny", "world"])
def tuned(request, tmp_path_factory, tiny_model_path):
    return setup(request.param, tmp_path_factory.mktemp(f"state-{request.param}"), tiny_model_path)


@pytest.fixture(scope="module")
def tuned_tiny(tmp_path_factory, tiny_model_path):
    """The tiny model only: its byte tokenizer keeps the server's texts comparable token for token."""
    return setup("tiny", tmp_path_factory.mktemp("state-server"), tiny_model_path)


def official_start(official, states: dict, n_layer: int) -> list[torch.Tensor]:
    """The official package's state with the tuned WKV matrices put in, untransposed."""
    state = official.generate_zero_state()
    for layer in range(n_layer):
        state[layer * 3 + 1] = states[f"blocks.{layer}.att.time_state"].float().clone()
    return state


def official_logits(official, states, n_layer, toks: list[int]) -> torch.Tensor:
    """[T, V] logits after each token, from the tuned state."""
    logits, _ = official.forward(toks, official_start(official, states, n_layer), full_output=True)
    return logits.view(len(toks), -1)


def official_greedy(official, states, n_layer, prompt: list[int], n: int) -> list[int]:
    state = official_start(official, states, n_layer)
    logits, state = official.forward(prompt, state)
    out = []
    for _ in range(n):
        token = int(torch.argmax(logits))
        if token == 0:  # our generation stops at token 0 (end of document)
            break
        out.append(token)
        logits, state = official.forward([token], state)
    return out


def some_tokens(vocab: int, n: int, seed: int) -> list[int]:
    return torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_logits_equal_official_from_the_same_state(tuned):
    ours, plain, official, states = tuned
    L, V = ours.config.n_layer, ours.config.vocab_size
    toks = [0] + some_tokens(V, 19, 1)
    want = official_logits(official, states, L, toks)
    got, state = ours.forward(torch.tensor([toks]))
    assert (got[0] - want).abs().max().item() <= TOL
    without, _ = plain.forward(torch.tensor([toks]))
    assert (without[0] - want).abs().max().item() > 100 * TOL  # the state matters to every position
    official_state = official.forward(toks, official_start(official, states, L))[1]
    assert (state.wkv[:, 0] - torch.stack(official_state[1::3])).abs().max().item() <= TOL


def test_scoring_with_shared_prefixes_equals_official(tuned):
    """loglikelihood runs a shared few-shot prefix once and fans its state out; every row still
    starts from the tuned state. Rolling scoring batches texts of different lengths."""
    ours, _, official, states = tuned
    L, V = ours.config.n_layer, ours.config.vocab_size
    header = [0] + some_tokens(V, 12, 2)
    pairs = [(header + some_tokens(V, 3 + i, 10 + i), some_tokens(V, 1 + i % 3, 20 + i)) for i in range(7)]
    got = ours.loglikelihood(pairs, batch_size=3)
    for (ctx, cont), (logprob, _) in zip(pairs, got):
        lp = torch.log_softmax(official_logits(official, states, L, ctx + cont[:-1]).double(), -1)
        want = sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        assert abs(logprob - want) <= TOL * len(cont)
    texts = [some_tokens(V, n, 30 + n) for n in (5, 17, 9)]
    rolling = ours.loglikelihood_rolling(texts, batch_size=2)
    for text, value in zip(texts, rolling):
        lp = torch.log_softmax(official_logits(official, states, L, [0] + text[:-1]).double(), -1)
        assert abs(value - sum(lp[j, t].item() for j, t in enumerate(text))) <= TOL * len(text)


def test_generation_equals_official_in_any_batch(tuned):
    ours, _, official, states = tuned
    L, V = ours.config.n_layer, ours.config.vocab_size
    prompts = [[0] + some_tokens(V, n, 40 + n) for n in (3, 8, 1, 5, 12)]
    want = [official_greedy(official, states, L, p, 10) for p in prompts]
    assert any(want)
    for batch_size in (1, 2, 5):  # rows join as others finish: each new row starts from the tuned state
        assert [g.tokens for g in ours.generate(prompts, 10, batch_size=batch_size)] == want


def test_advance_gives_every_row_the_tuned_state(tuned):
    ours, _, official, states = tuned
    L, V = ours.config.n_layer, ours.config.vocab_size
    seqs = [[0] + some_tokens(V, n, 50 + n) for n in (6, 2, 9)]
    _, last = advance(ours, seqs, want_last=True)
    for seq, row in zip(seqs, last):
        assert (row - official_logits(official, states, L, seq)[-1]).abs().max().item() <= TOL


def test_server_starts_every_request_from_the_tuned_state(tuned_tiny):
    ours, _, official, states = tuned_tiny
    L = ours.config.n_layer
    prompts = ["The cat sat on the", "Once upon a time", "1, 2, 3,"]
    want = [bytes(official_greedy(official, states, L, list(p.encode()), 8)).decode("utf-8", "replace")
            for p in prompts]
    ctx = [0] + list(b"The quick brown fox")
    lp = torch.log_softmax(official_logits(official, states, L, ctx).double(), -1)
    echo_want = [lp[j, t].item() for j, t in enumerate(ctx[1:])]
    with torch_threads(1), serve_in_thread(create_app(ours, ServerConfig(model_name="tuned"))) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            body = {"model": "tuned", "prompt": prompts, "max_tokens": 8, "temperature": 0}
            choices = client.post("/v1/completions", json=body).json()["choices"]
            echo = client.post("/v1/completions", json={"model": "tuned", "prompt": ctx, "max_tokens": 0,
                                                        "echo": True, "logprobs": 1}).json()
            info = client.get("/v1/models").json()["data"][0]["rwkveval"]
    assert [c["text"] for c in choices] == want
    assert echo["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(echo_want, abs=TOL)
    assert info["adapters"][0]["kind"] == "state" and info["initial_state"].startswith("tuned")
