"""CPU tests of the kernel layer: the wrappers' input checks, the loader, and the plain-PyTorch
twins against per-element loops written straight from the formulas (in float64).

Nothing here needs CuPy or a GPU; tests/test_kernels_gpu.py compares the kernels to the twins.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from engine.kernels import SOURCES, loader, ops, reference
from helpers import VECTORS, wkv_inputs


def check_wkv(d, *, step=False, out=None, device_type="cpu"):
    return ops.check_wkv7("wkv7_forward", d["state"], {n: d[n] for n in VECTORS},
                          step=step, out=out, device_type=device_type)


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).square().mean().sqrt() / ref.square().mean().sqrt()).item()


# ---------------------------------------------------------------------------------------------
# WKV-7 validation


def test_wkv_valid_inputs_give_dims():
    dims = check_wkv(wkv_inputs(B=2, T=3, H=4, N=64, dtype=torch.bfloat16))
    assert dims == ops.WkvDims(B=2, T=3, H=4, N=64, dtype=torch.bfloat16)
    dims = check_wkv(wkv_inputs(B=5, H=1, N=32, step=True), step=True)
    assert (dims.B, dims.T, dims.H, dims.N) == (5, 1, 1, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_wkv_accepts_every_kernel_dtype(dtype):
    assert check_wkv(wkv_inputs(dtype=dtype)).dtype == dtype


def test_wkv_rejects_unsupported_dtype():
    d = wkv_inputs()
    d.update({n: d[n].double() for n in VECTORS})
    with pytest.raises(ValueError, match=r"expected r of dtype float32, float16, bfloat16, found float64"):
        check_wkv(d)


def test_wkv_rejects_mixed_dtypes():
    d = wkv_inputs()
    d["w"] = d["w"].half()
    with pytest.raises(ValueError, match=r"share one dtype, found r float32 and w float16"):
        check_wkv(d)


def test_wkv_rejects_non_float32_state():
    d = wkv_inputs()
    d["state"] = d["state"].bfloat16()
    with pytest.raises(ValueError, match=r"expected state of dtype float32, found bfloat16"):
        check_wkv(d)


def test_wkv_rejects_non_contiguous():
    d = wkv_inputs(B=2, T=3, H=2, N=64)
    d["k"] = torch.randn(2, 2, 3, 64).transpose(1, 2)  # [B, T, H, N] with strides of [B, H, T, N]
    with pytest.raises(ValueError, match=r"expected k C-contiguous \(the kernel ignores strides\), "
                                         r"found shape \(2, 3, 2, 64\) with strides"):
        check_wkv(d)


def test_wkv_rejects_non_contiguous_state():
    d = wkv_inputs(B=2, T=3, H=2, N=64)
    d["state"] = d["state"].transpose(2, 3)  # S^T: same shape, wrong memory order
    with pytest.raises(ValueError, match=r"expected state C-contiguous"):
        check_wkv(d)


def test_wkv_rejects_wrong_rank():
    d = wkv_inputs()
    with pytest.raises(ValueError, match=r"expected r with 4 dims \[B, T, H, N\], found shape \(2, 3, 128\)"):
        ops.check_wkv7("wkv7_forward", d["state"],
                       {n: d[n].reshape(2, 3, 128) for n in VECTORS}, step=False, device_type="cpu")
    with pytest.raises(ValueError, match=r"expected r with 3 dims \[B, H, N\], found shape \(2, 3, 2, 64\)"):
        check_wkv(d, step=True)


def test_wkv_rejects_mismatched_shapes():
    d = wkv_inputs(B=2, T=3, H=2, N=64)
    d["v"] = torch.randn(2, 4, 2, 64)
    with pytest.raises(ValueError, match=re.escape(
            "expected v of shape [B, T, H, N] like r = (2, 3, 2, 64), found (2, 4, 2, 64)")):
        check_wkv(d)


def test_wkv_rejects_state_head_size_mismatch():
    d = wkv_inputs(B=2, T=3, H=2, N=64)
    d["state"] = torch.zeros(2, 2, 32, 32)
    with pytest.raises(ValueError, match=re.escape(
            "expected state of shape [B, H, N, N] = (2, 2, 64, 64), found (2, 2, 32, 32)")):
        check_wkv(d)


def test_wkv_rejects_unsupported_head_size():
    d = wkv_inputs(N=48)
    with pytest.raises(ValueError, match=r"expected head size N in \(32, 64, 96, 128\).*found N = 48"):
        check_wkv(d)


def test_wkv_rejects_non_tensor():
    d = wkv_inputs()
    d["a"] = d["a"].tolist()
    with pytest.raises(ValueError, match=r"expected a to be a torch.Tensor, found list"):
        check_wkv(d)


def test_wkv_rejects_wrong_device():
    d = wkv_inputs()
    with pytest.raises(ValueError, match=r"expected every tensor on a cuda device, found state on cpu"):
        check_wkv(d, device_type="cuda")
    d["b"] = d["b"].to("meta")
    with pytest.raises(ValueError, match=r"expected every tensor on a cpu device, found b on meta"):
        check_wkv(d)


def test_wkv_checks_out():
    d = wkv_inputs(B=2, T=3, H=2, N=64, dtype=torch.float16)
    check_wkv(d, out=torch.empty(2, 3, 2, 64))
    with pytest.raises(ValueError, match=r"expected out of dtype float32, found float16"):
        check_wkv(d, out=torch.empty(2, 3, 2, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=re.escape("expected out of shape [B, T, H, N] = (2, 3, 2, 64)")):
        check_wkv(d, out=torch.empty(2, 3, 2, 65))


def test_wkv_accepts_empty_batch():
    assert check_wkv(wkv_inputs(B=0)).B == 0


def test_wkv_forward_rejects_unknown_kernel_choice():
    d = wkv_inputs()
    with pytest.raises(ValueError, match=r"expected kernel 'auto', 'sequence' or 'step', found 'fast'"):
        ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)), kernel="fast")


# ---------------------------------------------------------------------------------------------
# The public wrappers validate before touching CuPy: CPU tensors fail on the device check.


def _wrapper_calls():
    d = wkv_inputs()
    s = wkv_inputs(step=True)
    gn = reference.random_groupnorm_inputs(2, 3, 2, 64)
    ts = reference.random_token_shift_inputs(6, 2, 3, 128)
    return {
        "wkv7_forward": lambda: ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS))),
        "wkv7_step": lambda: ops.wkv7_step(*(s[n] for n in ("state", *VECTORS))),
        "groupnorm_bonus_gate": lambda: ops.groupnorm_bonus_gate(**gn),
        "token_shift_mix": lambda: ops.token_shift_mix(**ts),
    }


@pytest.mark.parametrize("name", list(_wrapper_calls()))
def test_wrappers_reject_cpu_tensors(name):
    with pytest.raises(ValueError, match=rf"^{name}: expected every tensor on a cuda device, found \w+ on cpu"):
        _wrapper_calls()[name]()


# ---------------------------------------------------------------------------------------------
# Group norm + bonus + gate, token shift validation


def check_gn(d, **kw):
    return ops.check_groupnorm_bonus_gate(**d, eps=kw.pop("eps", 64e-5), device_type="cpu", **kw)


def test_groupnorm_valid_inputs():
    d = reference.random_groupnorm_inputs(2, 3, 4, 64, dtype=torch.bfloat16)
    assert check_gn(d) == ops.WkvDims(B=2, T=3, H=4, N=64, dtype=torch.bfloat16)
    d["r_k"] = d["r_k"].reshape(-1)  # a loader may keep r_k flat as [C]
    check_gn(d)


def test_groupnorm_rejects_bad_inputs():
    d = reference.random_groupnorm_inputs(2, 3, 4, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"expected y of dtype float32, found float16"):
        check_gn({**d, "y": d["y"].half()})
    with pytest.raises(ValueError, match=r"share one dtype, found r float16 and ln_w float32"):
        check_gn({**d, "ln_w": d["ln_w"].float()})
    with pytest.raises(ValueError, match=re.escape("expected r_k of shape [H, N] (or [H * N]) = (4, 64), found (4, 32)")):
        check_gn({**d, "r_k": d["r_k"][:, :32].contiguous()})
    with pytest.raises(ValueError, match=re.escape("expected ln_b of shape [H * N] = (256,), found (255,)")):
        check_gn({**d, "ln_b": d["ln_b"][:255]})
    with pytest.raises(ValueError, match=r"expected g C-contiguous"):
        check_gn({**d, "g": torch.randn(2, 4, 3, 64).half().transpose(1, 2)})
    with pytest.raises(ValueError, match=r"expected eps a positive float, found -1.0"):
        check_gn(d, eps=-1.0)
    with pytest.raises(ValueError, match=r"expected head size N in .* found N = 16"):
        check_gn(reference.random_groupnorm_inputs(2, 3, 4, 16))


def check_ts(d, **kw):
    return ops.check_token_shift_mix(**d, device_type="cpu", **kw)


def test_token_shift_valid_inputs():
    d = reference.random_token_shift_inputs(6, 2, 3, 100, dtype=torch.float16)
    assert check_ts(d) == ops.MixDims(M=6, B=2, T=3, C=100, dtype=torch.float16)


def test_token_shift_rejects_bad_inputs():
    d = reference.random_token_shift_inputs(6, 2, 3, 100, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"expected x_prev of dtype float32, found bfloat16"):
        check_ts({**d, "x_prev": d["x_prev"].bfloat16()})
    with pytest.raises(ValueError, match=re.escape("expected x_prev of shape [B, C] = (2, 100), found (3, 100)")):
        check_ts({**d, "x_prev": torch.zeros(3, 100)})
    with pytest.raises(ValueError, match=re.escape("expected mix of shape [M, C] = (6, 100), found (6, 99)")):
        check_ts({**d, "mix": d["mix"][:, :99].contiguous()})
    with pytest.raises(ValueError, match=r"at least one mix \(M >= 1\)"):
        check_ts({**d, "mix": d["mix"][:0]})
    with pytest.raises(ValueError, match=r"expected x C-contiguous"):
        check_ts({**d, "x": torch.randn(2, 100, 3).bfloat16().transpose(1, 2)})
    with pytest.raises(ValueError, match=re.escape("expected out of shape [M, B, T, C] = (6, 2, 3, 100)")):
        check_ts(d, out=torch.empty(2, 3, 100, dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# Sources and loader (no CuPy needed to read sources)


@pytest.mark.parametrize("name", SOURCES)
def test_sources_are_self_contained_for_nvrtc(name):
    source = loader.read_source(name)
    assert not re.search(r"^\s*#\s*include", source, flags=re.M), \
        f"{name}: every #include must be a local header the loader pastes in (NVRTC has no system headers)"
    assert source.count("#define WARP_SIZE") == 1  # common.cuh pasted exactly once


def test_read_source_names_missing_file():
    with pytest.raises(FileNotFoundError, match=r"kernel source not found: expected .*missing\.cu"):
        loader.read_source("missing.cu")


@pytest.mark.parametrize("name, value, source", [
    ("WKV7_STEP_ROWS", ops.WKV7_STEP_ROWS, "wkv7.cu"),
    ("WKV7_STEP_WARPS", ops.WKV7_STEP_WARPS, "wkv7.cu"),
    ("GROUPNORM_BLOCK", ops.GROUPNORM_BLOCK, "fused.cu"),
    ("TOKEN_SHIFT_BLOCK", ops.TOKEN_SHIFT_BLOCK, "fused.cu"),
])
def test_launch_geometry_matches_sources(name, value, source):
    found = re.findall(rf"#define {name} (\d+)", loader.read_source(source))
    assert found == [str(value)], f"ops.{name} = {value} but {source} defines {found}"


@pytest.mark.parametrize("source", SOURCES)
def test_every_wrapped_function_is_defined(source):
    text = loader.read_source(source)
    defined = {f"{m.group(1)}_{m.group(2)}"
               for m in re.finditer(r"^DEFINE_(\w+)\((\w+), \w+\)$", text, flags=re.M)}
    defined = {name.lower() for name in defined}
    assert set(ops.KERNEL_FUNCTIONS[source]) <= defined


# ---------------------------------------------------------------------------------------------
# Twins against per-element loops (float64)


def naive_wkv7(state, r, w, k, v, a, b):
    """Scalar loops from the formulas; returns (y, new_state) as float64 tensors."""
    B, T, H, N = r.shape
    S = state.double().tolist()
    r, w, k, v, a, b = (x.double().tolist() for x in (r, w, k, v, a, b))
    y = [[[[0.0] * N for _ in range(H)] for _ in range(T)] for _ in range(B)]
    for bi in range(B):
        for h in range(H):
            s = S[bi][h]
            for t in range(T):
                rt, wt, kt, vt, at, bt = (x[bi][t][h] for x in (r, w, k, v, a, b))
                for i in range(N):
                    sa = sum(s[i][j] * at[j] for j in range(N))
                    s[i] = [s[i][j] * wt[j] + sa * bt[j] + vt[i] * kt[j] for j in range(N)]
                    y[bi][t][h][i] = sum(s[i][j] * rt[j] for j in range(N))
    return torch.tensor(y, dtype=torch.float64), torch.tensor(S, dtype=torch.float64)


def test_reference_wkv7_matches_naive_loop():
    d = reference.random_wkv7_inputs(2, 4, 3, 8, dtype=torch.float64)
    d["state"] = d["state"].double()
    y_naive, s_naive = naive_wkv7(*(d[n] for n in ("state", *VECTORS)))
    y = reference.wkv7_forward(*(d[n] for n in ("state", *VECTORS)))
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, y_naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d["state"], s_naive, rtol=1e-12, atol=1e-12)


def test_reference_wkv7_log_decay_equals_decay():
    d = reference.random_wkv7_inputs(2, 5, 2, 8, dtype=torch.float64)
    d_log = reference.random_wkv7_inputs(2, 5, 2, 8, dtype=torch.float64, w_log=True)
    torch.testing.assert_close(d_log["w"].exp(), d["w"])  # the same draw, as log decay
    d_log = {**d, "w": d["w"].log()}
    y = reference.wkv7_forward(*(d[n].double() for n in ("state", *VECTORS)))
    y_log = reference.wkv7_forward(*(d_log[n].double() for n in ("state", *VECTORS)), w_log=True)
    torch.testing.assert_close(y_log, y, rtol=1e-12, atol=1e-12)


def test_reference_sequence_equals_steps_and_chunks():
    d = reference.random_wkv7_inputs(2, 6, 2, 16, dtype=torch.float64)
    s_seq, s_step, s_chunk = (d["state"].double().clone() for _ in range(3))
    y_seq = reference.wkv7_forward(s_seq, *(d[n] for n in VECTORS))
    y_step = torch.stack([reference.wkv7_step(s_step, *(d[n][:, t] for n in VECTORS))
                          for t in range(6)], dim=1)
    y_chunk = torch.cat([reference.wkv7_forward(s_chunk, *(d[n][:, lo:hi] for n in VECTORS))
                         for lo, hi in ((0, 2), (2, 3), (3, 6))], dim=1)
    for y, s in ((y_step, s_step), (y_chunk, s_chunk)):
        torch.testing.assert_close(y, y_seq, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s, s_seq, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_wkv7_half_inputs_compute_in_float32(dtype):
    d = reference.random_wkv7_inputs(2, 16, 2, 64, dtype=dtype)
    state64 = d["state"].double()
    y = reference.wkv7_forward(d["state"], *(d[n] for n in VECTORS))
    y64 = reference.wkv7_forward(state64, *(d[n].double() for n in VECTORS))
    assert y.dtype == torch.float32
    assert rel_rms(y, y64) < 1e-5
    assert rel_rms(d["state"], state64) < 1e-5


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_formulation_equals_the_recurrence(chunk):
    # the formulation GPU_PLAN.md proposes for the prefill kernel, in float64 against the steps
    d = reference.random_wkv7_inputs(2, 37, 3, 32, dtype=torch.float64, seed=chunk)
    d["state"] = d["state"].double()
    state_steps, state_chunks = d["state"].clone(), d["state"].clone()
    y_steps = reference.wkv7_forward(state_steps, *(d[n] for n in VECTORS))
    y_chunks = reference.wkv7_chunked(state_chunks, *(d[n] for n in VECTORS), chunk=chunk)
    assert rel_rms(y_chunks, y_steps) <= 1e-10
    assert rel_rms(state_chunks, state_steps) <= 1e-10


def test_chunked_formulation_in_float32_with_chunks_of_16():
    # a kernel would compute in float32: chunks of 16 keep e^(-g) at most e^9.8 (decay >= e^-0.61)
    d = reference.random_wkv7_inputs(1, 256, 2, 64, seed=3)
    exact_state = d["state"].double()
    y_exact = reference.wkv7_forward(exact_state, *(d[n].double() for n in VECTORS))
    state = d["state"].clone()
    y = reference.wkv7_chunked(state, *(d[n] for n in VECTORS), chunk=16)
    assert y.dtype == torch.float32
    assert rel_rms(y, y_exact) <= 1e-5 and rel_rms(state, exact_state) <= 1e-5


def test_reference_wkv7_matches_engine_reference():
    """The twin (the model's recurrence behind the kernels' dtype rule) gives what the model's own
    WKV step gives on the model's float32 inputs, so ops.wkv7_forward can replace the latter."""
    from engine.model import wkv7_reference

    d = reference.random_wkv7_inputs(2, 7, 3, 64)
    state = d["state"].clone()
    y_model = wkv7_reference(state, *(d[n] for n in VECTORS))
    y = reference.wkv7_forward(d["state"], *(d[n] for n in VECTORS))
    assert rel_rms(y, y_model) < 1e-5
    assert rel_rms(d["state"], state) < 1e-5


def test_random_wkv7_inputs_look_like_a_model():
    d = reference.random_wkv7_inputs(2, 8, 3, 64)
    assert ((d["w"] > math.exp(-math.exp(-0.5))) & (d["w"] < 1)).all()  # decay bounds of RWKV-7
    torch.testing.assert_close(d["a"].norm(dim=-1), torch.ones(2, 8, 3))  # a = -kk, unit norm
    assert ((d["b"] * d["a"]) <= 0).all()  # b = kk * a_gate with a_gate in (0, 1)
    again = reference.random_wkv7_inputs(2, 8, 3, 64, dtype=torch.bfloat16)
    torch.testing.assert_close(again["r"].float(), d["r"], rtol=1e-2, atol=1e-2)  # same draw


def test_reference_groupnorm_bonus_gate_matches_naive():
    B, T, H, N = 2, 3, 4, 8
    d = reference.random_groupnorm_inputs(B, T, H, N, dtype=torch.float64)
    d["y"] = d["y"].double()
    out = reference.groupnorm_bonus_gate(**d)
    C = H * N
    normed = F.group_norm(d["y"].reshape(B * T, C), H, d["ln_w"], d["ln_b"], eps=64e-5).view(B, T, H, N)
    expected = torch.empty(B, T, H, N, dtype=torch.float64)
    for bi in range(B):
        for t in range(T):
            for h in range(H):
                bonus = sum(d["r"][bi, t, h, j] * d["k"][bi, t, h, j] * d["r_k"][h, j] for j in range(N))
                for i in range(N):
                    expected[bi, t, h, i] = (normed[bi, t, h, i] + bonus * d["v"][bi, t, h, i]) * d["g"][bi, t, h, i]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_reference_groupnorm_keeps_storage_dtype():
    d = reference.random_groupnorm_inputs(2, 3, 2, 64, dtype=torch.bfloat16)
    out = reference.groupnorm_bonus_gate(**d)
    assert out.dtype == torch.bfloat16
    d64 = {name: t.double() for name, t in d.items()}
    assert rel_rms(out, reference.groupnorm_bonus_gate(**d64)) < 1e-2


def test_reference_token_shift_matches_naive():
    M, B, T, C = 6, 2, 4, 5
    d = reference.random_token_shift_inputs(M, B, T, C, dtype=torch.float64)
    out = reference.token_shift_mix(**d)
    x, prev, mix = d["x"], d["x_prev"].double(), d["mix"]
    expected = torch.empty(M, B, T, C, dtype=torch.float64)
    for m in range(M):
        for bi in range(B):
            for t in range(T):
                before = prev[bi] if t == 0 else x[bi, t - 1]
                expected[m, bi, t] = x[bi, t] + (before - x[bi, t]) * mix[m]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_reference_token_shift_keeps_storage_dtype():
    d = reference.random_token_shift_inputs(1, 2, 3, 8, dtype=torch.float16)
    assert reference.token_shift_mix(**d).dtype == torch.float16
