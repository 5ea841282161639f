"""A decode step's blocks in one kernel call each (engine/kernels/block_cpu.c, cpu.BlockStep).

The block step runs the same kernels as the per-call path, in the same order and dtypes, so its
logits and state equal that path's: to float32 rounding in float32 (the layer norms sum in another
order), within a bf16 rounding in bf16; and over several steps they follow the plain torch path.
It runs only where the plan runs the rows' products by the matvec kernel, the model has the fused
time mix, and the state's rows can be written in place; elsewhere forward runs its lines.
"""
from __future__ import annotations

import pytest
import torch

import engine
from benchmarkdata import in_ci
from engine.kernels import cpu
from engine.kernels.cpu import POINTS, CPUPath, Plan
from engine.model import _LN_X_EPS
from helpers import SHAPES


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if cpu.load() is None:
        if in_ci():
            pytest.fail(f"CI machines have a C compiler, but the CPU kernels did not build: {cpu.UNAVAILABLE_REASON}")
        pytest.skip(f"the CPU kernels are unavailable here: {cpu.UNAVAILABLE_REASON}")


def _model(shape: str, dtype: str, linear: str = "matvec", lora: str = "matvec", seed: int = 0):
    """A random model whose plan runs every row count's products in ``linear`` (LoRA pairs in ``lora``)."""
    model = engine.random_model(SHAPES[shape], seed=seed, dtype=dtype)
    model.kernels = CPUPath(Plan((linear,) * len(POINTS), (lora,) * len(POINTS)), cpu.wkv7_cpu, "C kernel",
                            fused=True)
    return model


def _per_call(model):
    """The same model with the block step turned off: forward runs each block's lines."""
    model.kernels.block_step = lambda *a: None
    return model


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: str, what: str) -> None:
    scale = max(1.0, want.abs().max().item())
    tol = 2e-6 if dtype == "float32" else 2 ** -7  # float32 rounding; one bf16 rounding of the largest
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol * scale, f"{what}: {err} > {tol} x {scale}"


@pytest.mark.parametrize("inplace", [True, False], ids=["inplace", "copy"])
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", ["2x128-h2", "3x96-h3n32"])
def test_a_block_step_equals_the_per_call_path(shape, dtype, rows, inplace, monkeypatch):
    fused, plain = _model(shape, dtype), _per_call(_model(shape, dtype))
    cfg = SHAPES[shape]
    calls = []
    real = cpu.BlockStep.__call__
    monkeypatch.setattr(cpu.BlockStep, "__call__", lambda self, *a: calls.append(a[0]) or real(self, *a))
    g = torch.Generator().manual_seed(rows)
    prompt = torch.randint(0, cfg.vocab_size, (rows, 5), generator=g)
    _, start = plain.forward(prompt)
    for step in range(3):
        token = torch.randint(0, cfg.vocab_size, (rows, 1), generator=g)
        s_fused, s_plain = start.clone(), start.clone()
        before = s_fused.clone()
        got, new_fused = fused.forward(token, s_fused, logits="all", inplace=inplace)
        want, new_plain = plain.forward(token, s_plain, logits="all", inplace=inplace)
        assert got.shape == want.shape == (rows, 1, cfg.vocab_size)
        _assert_close(got, want, dtype, f"logits, step {step}")
        for name in ("att_x", "wkv", "ffn_x"):
            _assert_close(getattr(new_fused, name), getattr(new_plain, name), dtype, f"state {name}, step {step}")
        assert (new_fused is s_fused) == inplace
        if not inplace:  # the state passed in is left as it was
            for name in ("att_x", "wkv", "ffn_x"):
                assert torch.equal(getattr(s_fused, name), getattr(before, name))
        start = new_plain
    assert calls == list(range(cfg.n_layer)) * 3  # every block of every step ran in one call


@pytest.mark.parametrize("rows", [1, 3])
def test_a_bf16_block_step_without_the_bf16_dot_kernel_widens_as_the_per_call_path_does(rows, monkeypatch):
    """On a CPU without AVX512_BF16 (faked here) the block's products read float32 x (kind 1), as
    the per-call path's matvec and lora_rows then do: the same numbers again."""
    monkeypatch.setattr(cpu, "_bf16_dot", False)
    fused, plain = _model("2x128-h2", "bfloat16"), _per_call(_model("2x128-h2", "bfloat16"))
    cfg = SHAPES["2x128-h2"]
    state = engine.State.zeros(cfg, rows)
    step = fused.kernels.block_step(fused, torch.zeros(rows, 1, cfg.n_embd, dtype=torch.bfloat16), state, state,
                                    _LN_X_EPS)
    assert step.kind == 1
    g = torch.Generator().manual_seed(11)
    _, start = plain.forward(torch.randint(0, cfg.vocab_size, (rows, 4), generator=g))
    token = torch.randint(0, cfg.vocab_size, (rows, 1), generator=g)
    got, new_fused = fused.forward(token, start.clone(), logits="last")
    want, new_plain = plain.forward(token, start.clone(), logits="last")
    _assert_close(got, want, "bfloat16", "logits")
    _assert_close(new_fused.wkv, new_plain.wkv, "bfloat16", "state wkv")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoding_by_block_steps_follows_the_torch_path(dtype):
    """Twelve greedy steps from a prompt: the block steps' logits stay within float32 (bf16)
    rounding of the plain torch path's, step after step, and pick the same tokens."""
    cfg = SHAPES["2x128-h2"]
    fused = _model("2x128-h2", dtype, seed=3)
    plain = engine.random_model(cfg, seed=3, dtype=dtype, fast=False)
    prompt = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))
    lf, sf = fused.forward(prompt, logits="last")
    lp, sp = plain.forward(prompt, logits="last")
    tol = 1e-4 if dtype == "float32" else 0.06
    for step in range(12):
        token = lp[:, -1].argmax(-1, keepdim=True)
        lf, sf = fused.forward(token, sf, logits="last", inplace=True)
        lp, sp = plain.forward(token, sp, logits="last", inplace=True)
        err = (lf - lp).abs().max().item()
        assert err <= tol * max(1.0, lp.abs().max().item()), f"step {step}: {err}"
        if dtype == "float32":
            assert torch.equal(lf.argmax(-1), lp.argmax(-1))


def test_the_block_step_runs_only_where_its_kernels_are_the_plan(monkeypatch):
    cfg = SHAPES["2x128-h2"]
    x = torch.zeros(1, 1, cfg.n_embd)
    state = engine.State.zeros(cfg, 1)
    model = _model("2x128-h2", "float32")
    assert isinstance(model.kernels.block_step(model, x, state, state, _LN_X_EPS), cpu.BlockStep)
    assert model.info()["cpu_products"]["decode_block_step"] == "one call per block at 1-2, 3-8, 9-32, 33-128, " \
        "129-512, >512 rows"
    assert _model("2x128-h2", "float32", linear="xwt").info()["cpu_products"]["decode_block_step"] == \
        "none (no row count runs matvec)"
    # products by another form at these rows, two tokens, a float16 model, no fused time mix
    assert _model("2x128-h2", "float32", linear="xwt").kernels.block_step(model, x, state, state, _LN_X_EPS) is None
    assert model.kernels.block_step(model, torch.zeros(1, 2, cfg.n_embd), state, state, _LN_X_EPS) is None
    half = _model("2x128-h2", "float16")
    assert half.kernels.block_step(half, x.half(), state, state, _LN_X_EPS) is None
    unfused = CPUPath(Plan(("matvec",) * len(POINTS), ("native",) * len(POINTS)), cpu.wkv7_cpu, "C kernel")
    assert unfused.block_step(model, x, state, state, _LN_X_EPS) is None
    assert engine.random_model(cfg, dtype="float32", fast=False).kernels.block_step(
        model, x, state, state, _LN_X_EPS) is None
    # a state whose layers' rows are not contiguous cannot be written in place: forward runs its lines
    zeros = engine.State.zeros(cfg, 1)
    strided = engine.State(torch.zeros(cfg.n_layer, 1, 2 * cfg.n_embd)[..., ::2], zeros.wkv, zeros.ffn_x)
    assert model.kernels.block_step(model, x, strided, strided, _LN_X_EPS) is None
    logits, new = model.forward(torch.tensor([[5]]), strided, logits="last", inplace=True)
    want, _ = _per_call(_model("2x128-h2", "float32")).forward(torch.tensor([[5]]), engine.State.zeros(cfg, 1),
                                                                 logits="last")
    assert torch.allclose(logits, want, atol=1e-5) and new.att_x.abs().sum() > 0


def test_a_failing_kernel_inside_the_block_is_an_error_not_a_wrong_number(monkeypatch):
    """block_step returns the first nonzero code of a kernel it calls; the wrapper raises it."""
    model = _model("2x128-h2", "bfloat16")
    monkeypatch.setattr(cpu.BlockStep, "__init__", _with_kind(cpu.BlockStep.__init__, 9))
    with pytest.raises(RuntimeError, match=r"block_step: a kernel it calls failed with code -1 \(kind 9\)"):
        model.forward(torch.tensor([[3]]))


def _with_kind(init, kind):
    def patched(self, *a, **k):
        init(self, *a, **k)
        self.kind = kind  # a kind no kernel has: lora_rows answers -1
    return patched


def test_a_layer_weight_replaced_after_a_step_is_read_in_the_next(kernel):
    """The block step keeps each block's weight pointers; a weight replaced on the layer is seen."""
    model = _model("2x128-h2", "float32")
    plain = _per_call(_model("2x128-h2", "float32"))
    token = torch.tensor([[7]])
    model.forward(token)
    for m in (model, plain):
        m.layers[1].W_o = (m.layers[1].W_o * 0.5).contiguous()
        m.layers[0].w1 = (m.layers[0].w1 * 2.0).contiguous()
    got, _ = model.forward(token, logits="last")
    want, _ = plain.forward(token, logits="last")
    _assert_close(got, want, "float32", "logits after the weights changed")
