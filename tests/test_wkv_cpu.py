"""The compiled CPU WKV kernel against the torch reference, and its input checks."""
from __future__ import annotations

import itertools
import platform

import pytest
import torch

from benchmarkdata import in_ci
from engine.kernels import cpu
from engine.model import wkv7_reference


@pytest.fixture(scope="module", autouse=True)
def kernel():
    lib = cpu.load()
    if lib is None:
        if in_ci():
            pytest.fail(f"CI machines have a C compiler, but the CPU WKV kernel did not build: {cpu.UNAVAILABLE_REASON}")
        pytest.skip(f"CPU WKV kernel unavailable: {cpu.UNAVAILABLE_REASON}")
    return lib


def _inputs(B, T, H, N, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(scale=1.0):
        return torch.randn(B, T, H, N, generator=g) * scale

    kk = torch.nn.functional.normalize(rnd(), dim=-1)
    a_gate = torch.rand(B, T, H, N, generator=g)
    decay = 0.55 + 0.45 * torch.rand(B, T, H, N, generator=g)
    state = torch.randn(B, H, N, N, generator=g) * 0.3
    return state, (rnd(0.5), decay, rnd(0.5), rnd(0.5), -kk, kk * a_gate)


# T < 4 runs row by row, T >= 4 on the transposed state: both forms are covered
@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 17, 64])
@pytest.mark.parametrize("B,H,N", [(1, 1, 64), (2, 3, 32), (3, 2, 64), (1, 2, 128), (2, 1, 16)])
def test_matches_reference(B, T, H, N):
    state, xs = _inputs(B, T, H, N, seed=B * 1000 + T * 10 + H)
    s_ref, s_c = state.clone(), state.clone()
    y_ref = wkv7_reference(s_ref, *xs)
    y_c = cpu.wkv7_cpu(s_c, *xs)
    assert y_c.shape == (B, T, H, N) and y_c.dtype == torch.float32
    scale = y_ref.abs().max().item()
    assert scale > 0.1
    assert (y_c - y_ref).abs().max().item() <= 1e-5 * max(1.0, scale)
    assert (s_c - s_ref).abs().max().item() <= 1e-5 * max(1.0, s_ref.abs().max().item())


def test_sequence_equals_steps():
    state, xs = _inputs(2, 12, 2, 64, seed=5)
    s_seq, s_step = state.clone(), state.clone()
    y_seq = cpu.wkv7_cpu(s_seq, *xs)
    y_steps = torch.cat([cpu.wkv7_cpu(s_step, *(x[:, t:t + 1] for x in xs)) for t in range(12)], 1)
    assert torch.allclose(y_seq, y_steps, atol=1e-5, rtol=0)
    assert torch.allclose(s_seq, s_step, atol=1e-5, rtol=0)


def test_input_checks():
    state, xs = _inputs(1, 3, 2, 32, seed=1)
    with pytest.raises(ValueError, match="state: expected a contiguous float32 CPU tensor .*float64"):
        cpu.wkv7_cpu(state.double(), *xs)
    with pytest.raises(ValueError, match="contiguous=False"):
        cpu.wkv7_cpu(state.transpose(2, 3), *xs)
    with pytest.raises(ValueError, match=r"k: expected shape \[B=1, T, H=2, N=32\], found \(1, 3, 2, 16\)"):
        cpu.wkv7_cpu(state, xs[0], xs[1], xs[2][..., :16].contiguous(), *xs[3:])
    with pytest.raises(ValueError, match="w: expected T=3 like r, found 2"):
        cpu.wkv7_cpu(state, xs[0], xs[1][:, :2].contiguous(), *xs[2:])
    with pytest.raises(ValueError, match=r"N <= 128, found \(1, 1, 256, 256\)"):
        cpu.check_inputs(torch.zeros(1, 1, 256, 256))


def test_build_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    bad = tmp_path / "broken.c"
    bad.write_text("this is not C\n")
    with pytest.raises((RuntimeError, OSError)):
        cpu.build(bad, tmp_path)


def test_model_uses_kernel_and_matches_reference():
    import engine
    from helpers import SHAPES

    sd = engine.random_state_dict(SHAPES["3x96-h3n32"], seed=4)
    fast = engine.from_state_dict(sd)
    assert fast.info()["wkv"].startswith("C kernel")
    slow = engine.from_state_dict(sd, fast=False)
    assert slow.kernels.wkv is wkv7_reference
    toks = torch.randint(0, 65536, (2, 9), generator=torch.Generator().manual_seed(0))
    a, sa = fast.forward(toks)
    b, sb = slow.forward(toks)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.allclose(sa.wkv, sb.wkv, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# the matvec kernel (engine/kernels/matvec_cpu.c): F.linear over a few rows, float32 or bf16 weights


@pytest.mark.parametrize("wdtype, xdtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                           (torch.bfloat16, torch.bfloat16)], ids=["f32", "bf16", "bf16-bf16"])
@pytest.mark.parametrize("M", [1, 2, 3, 6, 7, 8, 32])
@pytest.mark.parametrize("R,C", [(768, 768), (13, 7), (4, 64), (1, 1), (65, 3072), (6, 33), (5, 200)])
def test_matvec_matches_linear(M, R, C, wdtype, xdtype):
    g = torch.Generator().manual_seed(M * 100 + R + C)
    W, x = torch.randn(R, C, generator=g).to(wdtype), torch.randn(M, C, generator=g).to(xdtype)
    y = cpu.matvec(x, W)
    # the bf16 weights (and x) exactly as stored, widened: the kernel's only error is float32
    # accumulation (bf16 times bf16 is exact in float32, in the AVX512_BF16 kernel too)
    ref = torch.nn.functional.linear(x.double(), W.double()).float()
    assert y.shape == (M, R) and y.dtype == torch.float32
    assert (y - ref).abs().max().item() <= 2e-6 * C ** 0.5 * max(1.0, ref.abs().max().item())
    # asked for bf16, the kernel rounds the same sums as torch's .to(torch.bfloat16) does, bit for bit
    y16 = cpu.matvec(x, W, torch.bfloat16)
    assert y16.dtype == torch.bfloat16 and torch.equal(y16.view(torch.int16), y.to(torch.bfloat16).view(torch.int16))


def test_matvec_rounds_to_bf16_as_torch_does_at_ties_and_infinities():
    """One weight row per value, x = 1: y is each value itself (float32 sums from +0), rounded by the
    kernel on the way out: ties to even, overflow to infinity, as torch rounds; NaN stays NaN (torch's
    own NaN bits differ between its scalar and vector paths)."""
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F807FFF, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x00000001,
                         0xBF808000, 0x7FC00001], dtype=torch.int64).to(torch.int32)
    W, x = bits.view(torch.float32).view(-1, 1).contiguous(), torch.ones(1, 1)
    y, y16 = cpu.matvec(x, W), cpu.matvec(x, W, torch.bfloat16)
    assert torch.equal(y.view(torch.int32), bits.view(1, -1))
    assert torch.equal(y16[:, :-1].view(torch.int16), y[:, :-1].to(torch.bfloat16).view(torch.int16))
    assert [hex(b & 0xFFFF) for b in y16.view(torch.int16)[0, :4].tolist()] == ["0x3f80", "0x3f82", "0x3f80", "0x7f80"]
    assert torch.isnan(y16[0, -1])


def test_the_portable_matvec_loop_matches_linear(tmp_path, monkeypatch):
    """Without AVX-512 (an AVX2 CPU) the kernels are the portable simd loop, not the intrinsics
    with prefetch: built here with AVX-512 switched off, it equals F.linear too (one vector read row
    after row, on one thread and on two; more vectors four rows at a time), and says it has
    no bf16 dot kernel."""
    import ctypes

    monkeypatch.setattr(cpu, "FLAGS", [*cpu.FLAGS, "-mno-avx512f"])
    try:
        lib = ctypes.CDLL(str(cpu.build([s for s in cpu.SOURCES if s.name == "matvec_cpu.c"], tmp_path)))
    except RuntimeError as error:
        pytest.fail(f"the portable matvec did not build: {error}")
    assert lib.matvec_bf16_dot_available() == 0
    g = torch.Generator().manual_seed(5)
    for name, wdtype in (("matvec_f32", torch.float32), ("matvec_bf16", torch.bfloat16)):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
        for M, R, C in ((1, 13, 7), (1, 300, 257), (3, 65, 300), (2, 768, 768)):
            W, x = torch.randn(R, C, generator=g).to(wdtype), torch.randn(M, C, generator=g)
            y, y16 = torch.empty(M, R), torch.empty(M, R, dtype=torch.bfloat16)
            assert fn(R, C, M, 2, W.data_ptr(), x.data_ptr(), y.data_ptr(), 0) == 0
            assert fn(R, C, M, 2, W.data_ptr(), x.data_ptr(), y16.data_ptr(), 1) == 0
            ref = torch.nn.functional.linear(x.double(), W.double()).float()
            assert (y - ref).abs().max().item() <= 2e-6 * C ** 0.5 * max(1.0, ref.abs().max().item()), (name, M, R, C)
            assert torch.equal(y16.view(torch.int16), y.to(torch.bfloat16).view(torch.int16))


def test_the_bf16_dot_kernel_is_built_where_the_cpu_has_avx512_bf16():
    """On a CPU with AVX512_BF16, -march=native code has the vdpbf16ps kernel; elsewhere the bf16
    matvec widens x instead (the test above checks whichever ran)."""
    from engine.kernels.tuning import cpu_flags

    assert cpu.bf16_dot_available() == ("avx512_bf16" in cpu_flags())


def test_matvec_reads_strided_rows():
    g = torch.Generator().manual_seed(3)
    W, x = torch.randn(40, 24, generator=g), torch.randn(24, 5, generator=g).t()  # x not contiguous
    assert torch.allclose(cpu.matvec(x, W), torch.nn.functional.linear(x, W), atol=1e-5)


def test_matvec_input_checks():
    W, x = torch.zeros(8, 16), torch.zeros(2, 16)
    with pytest.raises(ValueError, match=r"x: expected \[M, 16\] to match W \(8, 16\), found \(2, 15\)"):
        cpu.matvec(x[:, :15], W)
    with pytest.raises(ValueError, match="W: expected a contiguous"):
        cpu.matvec(x, torch.zeros(16, 8).t())
    with pytest.raises(ValueError, match="x: expected a 2-D float32 CPU tensor for a torch.float32 W, found torch.float64"):
        cpu.matvec(x.double(), W)
    with pytest.raises(ValueError, match="x: expected a 2-D float32 CPU tensor for a torch.float32 W, found torch.bfloat16"):
        cpu.matvec(x.bfloat16(), W)
    with pytest.raises(ValueError, match=r"W: expected a 2-D float32 or bfloat16 CPU tensor, .*shape \(8, 16, 1\)"):
        cpu.matvec(x, W.unsqueeze(-1))
    with pytest.raises(ValueError, match="W: expected a 2-D float32 or bfloat16 CPU tensor, found torch.float16"):
        cpu.matvec(x, W.half())
    with pytest.raises(ValueError, match="out_dtype: expected torch.float32 or torch.bfloat16, found torch.float16"):
        cpu.matvec(x, W, torch.float16)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_model_products_equal_linear_for_any_row_count(dtype):
    """The model's linear() routes each row count to the form its plan chose (the matvec kernel,
    W @ x^T as a transposed view, F.linear, float32 upcast); whatever it chose equals F.linear,
    and reads back like a contiguous tensor (tests/test_cpu_products.py checks every form)."""
    import engine
    from helpers import SHAPES

    model = engine.from_state_dict(engine.random_state_dict(SHAPES["3x96-h3n32"], seed=4), dtype=dtype)
    linear = model.kernels.linear
    W = model.layers[1].ffn_key  # [F, C]
    g = torch.Generator().manual_seed(0)
    tol = 1e-5 if dtype == "float32" else 3e-2
    for B, T in [(1, 1), (1, 8), (3, 3), (2, 5), (64, 1), (1, 37), (4, 80)]:
        x = torch.randn(B, T, W.shape[1], generator=g).to(model.dtype)
        y = linear(x, W)
        ref = torch.nn.functional.linear(x.float(), W.float())
        assert y.shape == (B, T, W.shape[0]) and y.dtype == model.dtype
        assert (y.float() - ref).abs().max().item() <= tol * ref.abs().max().item(), (B, T)
        assert torch.equal(y.reshape(-1), y.contiguous().view(-1))
        yc = linear(x, W, contiguous=True)  # the head's form: row-major, built block by block
        assert yc.is_contiguous() and torch.allclose(yc, y, atol=1e-6, rtol=0)
    big = model.head  # [65536, 96]: more than one block of rows
    x = torch.randn(64, 1, big.shape[1], generator=g).to(model.dtype)
    ref = torch.nn.functional.linear(x.float(), big.float())
    y = linear(x, big, contiguous=True)
    assert y.is_contiguous() and y.shape == (64, 1, big.shape[0])
    assert (y.float() - ref).abs().max().item() <= tol * ref.abs().max().item()


# ---------------------------------------------------------------------------------------------
# the fused time-mix output (wkv7_output in engine/kernels/wkv7_cpu.c) against the torch lines


VECTORS = ("w0", "r_k", "k_k", "k_a", "v0", "ln_x_w", "ln_x_b")


def _products(B, T, H, N, dtype, seed, layer0=False, w_scale=1.0):
    """A layer's products as the fused kernel takes them: rows r w k v a g v_first v_gate (the last
    two None in layer 0) and the layer's vectors (VECTORS; v0 None in layer 0), in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    C = H * N
    r, k, v, g_, v_first, v_gate = (torch.randn(B, T, C, generator=g) for _ in range(6))
    w = torch.randn(B, T, C, generator=g) * w_scale  # the decay's LoRA output: sigmoid saturates at large scales
    a = torch.rand(B, T, C, generator=g)
    vecs = dict(w0=torch.randn(C, generator=g) * 0.5 - 2, r_k=0.5 + 0.5 * torch.rand(C, generator=g),
                k_k=0.5 + 0.5 * torch.rand(C, generator=g), k_a=0.5 + 0.5 * torch.rand(C, generator=g),
                v0=torch.randn(C, generator=g) * 0.5, ln_x_w=1 + 0.1 * torch.randn(C, generator=g),
                ln_x_b=0.1 * torch.randn(C, generator=g))
    state = torch.randn(B, H, N, N, generator=g) * 0.1
    rows = [t.to(dtype) for t in (r, w, k, v, a, g_, v_first, v_gate)]
    vecs = {n: t.to(dtype) for n, t in vecs.items()}
    if layer0:
        rows[6:], vecs["v0"] = [None, None], None
    return state, rows, vecs


def _call(state, rows, vecs, eps=64e-5):
    return cpu.wkv7_output(state, *rows, *(vecs[n] for n in VECTORS), eps)


@pytest.mark.parametrize("layer0", [False, True], ids=["layer", "layer0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,T,H,N", [(1, 1, 12, 64), (3, 1, 2, 32), (2, 7, 3, 64), (1, 40, 2, 16), (2, 3, 1, 128)])
def test_the_fused_output_equals_the_torch_lines(B, T, H, N, dtype, layer0):
    """kernels.wkv_output equals RWKV7._mix_products then _wkv_output run op by op (the torch
    reference path) on the same numbers in float32: to float32 rounding for a float32 model, and
    within bf16's rounding of the result for a bf16 model (whose inputs widen to float32 exactly)."""
    import engine
    from engine.model import RWKV7, TorchPath, _LN_X_EPS

    state, rows, vecs = _products(B, T, H, N, dtype, seed=B * 1000 + T * 10 + N, layer0=layer0, w_scale=4.0)
    model = RWKV7.__new__(RWKV7)
    model.config = engine.ModelConfig(n_layer=1, n_embd=H * N, n_head=H, head_size=N, vocab_size=256,
                                      ffn_size=4 * H * N, rank_w=8, rank_a=8, rank_v=8, rank_g=8)
    model.kernels = TorchPath()
    p = type("P", (), {n: (t.float() if t is not None else None) for n, t in vecs.items()})()
    r, w, k, v, a, g, v_first, v_gate = (t.float() if t is not None else None for t in rows)
    s_ref = state.clone()
    k2, v2, kk = model._mix_products(p, k, v, a, v_first, v_gate)
    ref = model._wkv_output(p, s_ref, r, w, k2, v2, a, g, kk)
    s32 = state.clone()
    out = _call(s32, rows, vecs, _LN_X_EPS)
    assert out.shape == (B, T, H * N) and out.dtype == dtype
    scale = ref.abs().max().item()
    tol = 1e-5 if dtype == torch.float32 else 2 ** -8
    assert (out.float() - ref).abs().max().item() <= tol * max(1.0, scale)
    assert (s32 - s_ref).abs().max().item() <= 1e-5 * max(1.0, s_ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_the_fused_scratch_kept_between_calls_and_past_its_limit_gives_the_same_numbers(dtype):
    """wkv7_output keeps one scratch buffer per calling thread up to 64 MiB and allocates a larger
    one per call. Rows are independent, so a batch whose scratch passes the limit (2 x 2000 x 768:
    6 or 7 x 3.1 M floats, 74-86 MB) equals its rows run one by one (37-43 MB, kept), and a small
    call after them, reusing the kept buffer, equals the same call run first."""
    B, T, H, N = 2, 2000, 12, 64
    state, rows, vecs = _products(B, T, H, N, dtype, seed=7)
    s_small, small_rows, small_vecs = _products(1, 5, 1, 64, dtype, seed=8)
    s_first = s_small.clone()
    first = _call(s_first, small_rows, small_vecs)
    s_big = state.clone()
    big = _call(s_big, rows, vecs)
    for b in range(B):
        s_row = state[b:b + 1].clone()
        row = _call(s_row, [t[b:b + 1] for t in rows], vecs)
        assert torch.equal(row, big[b:b + 1]) and torch.equal(s_row, s_big[b:b + 1])
    s_again = s_small.clone()
    again = _call(s_again, small_rows, small_vecs)
    assert torch.equal(again, first) and torch.equal(s_again, s_first)


def test_the_fused_exp_is_float32_exact_to_an_ulp_or_two():
    """The kernel's own e^x (vectorisable, unlike libm's) over the decay's whole range: the decay
    exp(-exp(-0.5) * sigmoid(x)) for x from -90 to 90 equals torch's within 2 float32 ulps, read
    back through the state (S = 1, a = kk = 0, v = 0: one step leaves S[i, j] = w[j])."""
    from engine.model import _DECAY_SCALE

    C = 4096
    x = torch.linspace(-90, 90, C).view(1, 1, C)
    ones, zeros = torch.ones(1, 1, C), torch.zeros(1, 1, C)
    state = torch.ones(1, C // 64, 64, 64)
    vecs = {n: torch.zeros(C) for n in VECTORS}
    vecs.update(ln_x_w=torch.ones(C), v0=None)
    out = _call(state, [zeros, x, zeros, zeros, zeros, ones, None, None], vecs)
    assert torch.equal(out, torch.zeros(1, 1, C))  # y = S r = 0: normalised to 0, no bonus
    decay = state[0, :, 0, :].reshape(C)  # row 0 of each head's S: w[j] for key j
    ref = torch.exp(-_DECAY_SCALE * torch.sigmoid(x.view(C).double()))
    ulp = torch.finfo(torch.float32).eps * ref
    assert ((decay.double() - ref).abs() <= 2 * ulp).all()


def test_the_fused_output_checks_its_inputs():
    state, rows, vecs = _products(1, 2, 2, 16, torch.float32, seed=0)
    bad = list(rows)
    bad[2] = rows[2][..., :31]
    with pytest.raises(ValueError, match=r"k: expected a torch.float32 CPU tensor \[B=1, T=2, C=32\], found torch.float32 on cpu, shape \(1, 2, 31\)"):
        _call(state, bad, vecs)
    bad = list(rows)
    bad[5] = rows[5].bfloat16()
    with pytest.raises(ValueError, match="g: expected a torch.float32 CPU tensor .* found torch.bfloat16"):
        _call(state, bad, vecs)
    with pytest.raises(ValueError, match="r_k: expected a torch.float32 CPU tensor of 32 numbers, found .* shape \\(16,\\)"):
        _call(state, rows, {**vecs, "r_k": vecs["r_k"][:16]})
    with pytest.raises(ValueError, match="v_gate, v0 and v_first: expected all three"):
        _call(state, rows, {**vecs, "v0": None})
    with pytest.raises(ValueError, match="state: expected a contiguous float32 CPU tensor"):
        _call(state.double(), rows, vecs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,T,J", [(1, 1, 6), (3, 1, 6), (2, 7, 6), (2, 5, 1), (1, 300, 6)])
def test_the_token_shift_kernel_equals_the_torch_lines(B, T, J, dtype):
    """kernels.token_shift equals RWKV7._token_shift run in torch (in float32 on the same numbers):
    exactly up to float32 rounding, and within one bf16 rounding for a bf16 model."""
    from engine.model import RWKV7, TorchPath

    g = torch.Generator().manual_seed(B * 100 + T + J)
    C = 96
    x, x_prev, mix = torch.randn(B, T, C, generator=g).to(dtype), torch.randn(B, C, generator=g), \
        torch.rand(J, C, generator=g).to(dtype)
    model = RWKV7.__new__(RWKV7)
    model.kernels = TorchPath()
    ref = model._token_shift(x.float(), x_prev, mix.float())
    out = cpu.token_shift_mix(x, x_prev, mix)
    assert out.shape == (J, B, T, C) and out.dtype == dtype
    # float32: one rounding of each term (the kernel may fuse the multiply-add); bf16: one more, of the result
    prev = torch.cat((x_prev.unsqueeze(1), x[:, :-1].float()), 1)
    terms = (x.float().abs() + prev.abs()).unsqueeze(0)
    bound = 2e-7 * terms + (0 if dtype == torch.float32 else 2 ** -8 * ref.abs())
    assert ((out.float() - ref).abs() <= bound).all()
    # the first token mixes with x_prev, the others with the token before them
    assert torch.allclose(ref[:, :, 0], x[:, 0].float() + (x_prev - x[:, 0].float()) * mix.float().view(J, 1, C))


def test_the_token_shift_kernel_checks_its_inputs():
    x, x_prev, mix = torch.zeros(2, 3, 8), torch.zeros(2, 8), torch.zeros(6, 8)
    with pytest.raises(ValueError, match=r"x_prev: expected a float32 CPU tensor \[B=2, C=8\], found torch.float32 on cpu, shape \(1, 8\)"):
        cpu.token_shift_mix(x, x_prev[:1], mix)
    with pytest.raises(ValueError, match="mix: expected a torch.float32 CPU tensor \\[J, C=8\\], found torch.bfloat16"):
        cpu.token_shift_mix(x, x_prev, mix.bfloat16())
    with pytest.raises(ValueError, match="x: expected a float32 or bfloat16 CPU tensor \\[B, T, C\\], found torch.float64"):
        cpu.token_shift_mix(x.double(), x_prev, mix)


# ragged batches: rows of different lengths one after another, told by their offsets (starts)


def _starts(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)


@pytest.mark.parametrize("layer0", [False, True], ids=["layer", "layer0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_ragged_batch_equals_its_rows_run_alone(dtype, layer0):
    """wkv7_output and token_shift_mix over a ragged batch (rows of 7, 1, 3, 5 and 4 tokens one after
    another; rows of fewer than 4 run row by row, the others transposed) give each row, bitwise,
    what it gives run alone: its outputs, its state, its mixes (the first from its own x_prev)."""
    lengths = [7, 1, 3, 5, 4]
    R, H, N, n = len(lengths), 2, 64, sum(lengths)
    _, rows, vecs = _products(1, n, H, N, dtype, seed=11, layer0=layer0)
    states = torch.randn(R, H, N, N, generator=torch.Generator().manual_seed(12)) * 0.1
    starts = _starts(lengths)
    s_all = states.clone()
    out = cpu.wkv7_output(s_all, *rows, *(vecs[v] for v in VECTORS), 64e-5, starts)
    assert out.shape == (1, n, H * N) and out.dtype == dtype
    x_prev = torch.randn(R, H * N, generator=torch.Generator().manual_seed(13))
    mix = torch.rand(6, H * N, generator=torch.Generator().manual_seed(14)).to(dtype)
    mixed = cpu.token_shift_mix(rows[0], x_prev, mix, starts)
    assert mixed.shape == (6, 1, n, H * N)
    for b, (lo, hi) in enumerate(zip(starts[:-1].tolist(), starts[1:].tolist())):
        s_row = states[b:b + 1].clone()
        alone = _call(s_row, [t[:, lo:hi] if t is not None else None for t in rows], vecs)
        assert torch.equal(alone, out[:, lo:hi]) and torch.equal(s_row, s_all[b:b + 1]), b
        assert torch.equal(cpu.token_shift_mix(rows[0][:, lo:hi], x_prev[b:b + 1], mix), mixed[:, :, lo:hi]), b


def test_ragged_offsets_are_checked():
    _, rows, vecs = _products(1, 6, 1, 16, torch.float32, seed=0, layer0=True)
    state = torch.zeros(2, 1, 16, 16)
    for bad in (_starts([3, 3])[:-1], torch.tensor([0, 4, 4, 6]), torch.tensor([0, 2, 5]), torch.tensor([1, 3, 6]),
                _starts([3, 3]).int()):
        with pytest.raises(ValueError, match=r"starts: expected int64 CPU row offsets \[3\] rising from 0 to n=6"):
            cpu.wkv7_output(state, *rows, *(vecs[v] for v in VECTORS), 64e-5, bad)
    with pytest.raises(ValueError, match=r"starts: expected int64 CPU row offsets \[4\] rising from 0 to n=6"):
        cpu.token_shift_mix(rows[0], torch.zeros(3, 16), torch.zeros(6, 16), torch.tensor([0, 4, 4, 6]))
    with pytest.raises(ValueError, match=r"x: a ragged batch \(starts\) is one row of all its tokens \[1, n, C\]"):
        cpu.token_shift_mix(torch.zeros(2, 3, 16), torch.zeros(2, 16), torch.zeros(6, 16), _starts([3, 3]))


def test_the_library_key_follows_the_headers_the_sources_include(tmp_path, monkeypatch):
    """A changed bf16_cpu.h (included by both sources) is another library: built again, never a stale .so."""
    import shutil

    header = tmp_path / "bf16_cpu.h"
    shutil.copy(cpu.HEADERS[0], header)
    monkeypatch.setattr(cpu, "HEADERS", (header,))
    before = cpu.library_key()
    header.write_text(header.read_text() + "\n/* changed */\n")
    assert cpu.library_key() != before
