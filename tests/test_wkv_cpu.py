"""The compiled CPU WKV kernel against the torch reference, and its input checks."""
from __future__ import annotations

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
@pytest.mark.parametrize("M", [1, 2, 3, 8, 32])
@pytest.mark.parametrize("R,C", [(768, 768), (13, 7), (4, 64), (1, 1), (65, 3072), (6, 33)])
def test_matvec_matches_linear(M, R, C, wdtype, xdtype):
    g = torch.Generator().manual_seed(M * 100 + R + C)
    W, x = torch.randn(R, C, generator=g).to(wdtype), torch.randn(M, C, generator=g).to(xdtype)
    y = cpu.matvec(x, W)
    # the bf16 weights (and x) exactly as stored, widened: the kernel's only error is float32
    # accumulation (bf16 times bf16 is exact in float32, in the AVX512_BF16 kernel too)
    ref = torch.nn.functional.linear(x.double(), W.double()).float()
    assert y.shape == (M, R) and y.dtype == torch.float32
    assert (y - ref).abs().max().item() <= 2e-6 * C ** 0.5 * max(1.0, ref.abs().max().item())


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
