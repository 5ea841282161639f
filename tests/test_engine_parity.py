"""Seeded random models of several shapes against the official rwkv package (cpu fp32)."""
from __future__ import annotations

import pytest
import torch

import engine
from helpers import SHAPES
from oracle import load_official

pytestmark = pytest.mark.oracle

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(SHAPES), ids=sorted(SHAPES))
def pair(request, tmp_path_factory):
    cfg = SHAPES[request.param]
    sd = engine.random_state_dict(cfg, seed=7)
    ours = engine.from_state_dict(sd)
    official = load_official(sd, tmp_path_factory.mktemp(request.param))
    return cfg, ours, official


def _tokens(cfg, n, seed):
    return torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_single_token(pair):
    cfg, ours, official = pair
    for tok in _tokens(cfg, 3, 1):
        ref, _ = official.forward([tok], None)
        got, _ = ours.forward(torch.tensor([[tok]]))
        assert ref.abs().max() > 0.1  # the comparison is not between two near-zero vectors
        assert (got[0, 0] - ref).abs().max().item() <= TOL


def test_sequence_last_logits_and_state(pair):
    cfg, ours, official = pair
    toks = _tokens(cfg, 24, 2)
    ref, ref_state = official.forward(toks, None)
    got, state = ours.forward(torch.tensor([toks]), logits="last")
    assert (got[0, 0] - ref).abs().max().item() <= TOL
    for layer in range(cfg.n_layer):
        assert torch.allclose(state.wkv[layer, 0], ref_state[layer * 3 + 1], atol=TOL, rtol=0)
        assert torch.allclose(state.att_x[layer, 0], ref_state[layer * 3 + 0], atol=TOL, rtol=0)
        assert torch.allclose(state.ffn_x[layer, 0], ref_state[layer * 3 + 2], atol=TOL, rtol=0)


def test_full_per_position_output(pair):
    cfg, ours, official = pair
    toks = _tokens(cfg, 17, 3)
    ref, _ = official.forward(toks, None, full_output=True)
    got, _ = ours.forward(torch.tensor([toks]))
    assert got.shape == (1, 17, cfg.vocab_size)
    assert (got[0] - ref).abs().max().item() <= TOL


def test_continue_from_official_state(pair):
    """A state from the official package, carried over token by token, gives the same logits."""
    cfg, ours, official = pair
    toks = _tokens(cfg, 10, 4)
    _, ref_state = official.forward(toks[:6], None)
    ref, _ = official.forward(toks[6:], [s.clone() for s in ref_state])
    state = None
    for t in toks[:6]:
        _, state = ours.forward(torch.tensor([[t]]), state)
    got, _ = ours.forward(torch.tensor([toks[6:]]), state, logits="last")
    assert (got[0, 0] - ref).abs().max().item() <= TOL
