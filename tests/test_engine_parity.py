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


@pytest.mark.parametrize("block", [True, False], ids=["block-step", "per-call"])
def test_decode_token_by_token(pair, block):
    """Eight decode steps, each token from the one before: the logits and the state equal the
    official package's, with each block in one kernel call (engine/kernels/block_cpu.c) and with
    its lines one call each (the plan here runs one row's products by the matvec kernel, where
    the block step applies)."""
    from benchmarkdata import in_ci
    from engine.kernels import cpu
    from engine.kernels.cpu import POINTS, CPUPath, Plan

    cfg, ours, official = pair
    if cpu.load() is None or ours.kernels.wkv_output is None:
        if in_ci():
            pytest.fail(f"CI machines have a C compiler, but the CPU kernels did not build: {cpu.UNAVAILABLE_REASON}")
        pytest.skip(f"the CPU kernels are unavailable here: {cpu.UNAVAILABLE_REASON}")
    kernels = ours.kernels
    ours.kernels = CPUPath(Plan(("matvec",) * len(POINTS), ("matvec",) * len(POINTS)), kernels.wkv, "C kernel",
                           fused=True)
    if not block:
        ours.kernels.block_step = lambda *a: None
    ran = []
    real = cpu.BlockStep.__call__
    try:
        cpu.BlockStep.__call__ = lambda self, *a: ran.append(a[0]) or real(self, *a)
        toks = _tokens(cfg, 9, 5)
        ref_state, state = None, None
        for tok in toks:
            ref, ref_state = official.forward([tok], ref_state)
            got, state = ours.forward(torch.tensor([[tok]]), state, logits="last", inplace=True)
            assert (got[0, 0] - ref).abs().max().item() <= TOL
        for layer in range(cfg.n_layer):
            assert torch.allclose(state.wkv[layer, 0], ref_state[layer * 3 + 1], atol=TOL, rtol=0)
            assert torch.allclose(state.att_x[layer, 0], ref_state[layer * 3 + 0], atol=TOL, rtol=0)
            assert torch.allclose(state.ffn_x[layer, 0], ref_state[layer * 3 + 2], atol=TOL, rtol=0)
    finally:
        cpu.BlockStep.__call__ = real
        ours.kernels = kernels
    assert len(ran) == (9 * cfg.n_layer if block else 0)
