"""The CUDA kernels against their plain-PyTorch twins (engine/kernels/reference.py) on a GPU.

The twins run on the CPU in float64 from the very same (rounded) inputs, so the tolerances
bound the kernels' own error: relative RMS 1e-4 for float32 inputs and outputs, 1e-2 where a
result is rounded to float16 / bfloat16. Skips, with the reason, without CUDA or CuPy (fails
instead under RWKVEVAL_REQUIRE_GPU=1, as docs/perf/run_gpu.sh runs it).

    python -m pytest tests/test_kernels_gpu.py -q
"""
from __future__ import annotations

import pytest
import torch

from engine.kernels import loader, ops, reference

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_ready")]  # skips without a GPU (fails in the GPU run)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
VECTORS = ("r", "w", "k", "v", "a", "b")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    return ((x - ref).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()


def assert_close_rms(x: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{what}: kernel output has non-finite values"
    err = rel_rms(x, ref)
    assert err <= tol, f"{what}: relative RMS error {err:.3e} > tolerance {tol:.0e}"


def cuda_inputs(B, T, H, N, dtype, *, w_log=False, seed=0):
    return reference.random_wkv7_inputs(B, T, H, N, dtype=dtype, device="cuda", seed=seed, w_log=w_log)


def reference_wkv(d, *, w_log=False):
    """float64 twin on the CPU from the same inputs: (y, final state)."""
    state = d["state"].cpu().double()
    y = reference.wkv7_forward(state, *(d[n].cpu().double() for n in VECTORS), w_log=w_log)
    return y, state


@pytest.fixture(autouse=True, scope="module")
def _fresh_loader():
    loader.clear_cache()
    yield
    loader.clear_cache()


# ---------------------------------------------------------------------------------------------
# WKV-7


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("H", [1, 4])
@pytest.mark.parametrize("T", [1, 16, 65])
@pytest.mark.parametrize("B", [1, 3])
def test_wkv7_forward_matches_reference(B, T, H, dtype):
    d = cuda_inputs(B, T, H, 64, dtype)
    y_ref, state_ref = reference_wkv(d)
    y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)))
    torch.cuda.synchronize()
    assert y.dtype == torch.float32 and y.is_contiguous()
    assert_close_rms(y, y_ref, TOLERANCE[dtype], "y")
    assert_close_rms(d["state"], state_ref, TOLERANCE[dtype], "state (updated in place)")


@pytest.mark.parametrize("N", [32, 64, 128])
@pytest.mark.parametrize("kernel", ["sequence", "step"])
def test_wkv7_head_sizes_and_kernels(N, kernel):
    T = 1 if kernel == "step" else 9
    d = cuda_inputs(2, T, 3, N, torch.float32, seed=N)
    y_ref, state_ref = reference_wkv(d)
    y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)), kernel=kernel)
    assert_close_rms(y, y_ref, 1e-4, f"y (N={N}, {kernel})")
    assert_close_rms(d["state"], state_ref, 1e-4, f"state (N={N}, {kernel})")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_wkv7_log_decay(dtype):
    d = cuda_inputs(2, 33, 2, 64, dtype, w_log=True)
    y_ref, state_ref = reference_wkv(d, w_log=True)
    y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)), w_log=True)
    assert_close_rms(y, y_ref, TOLERANCE[dtype], "y (log decay)")
    assert_close_rms(d["state"], state_ref, TOLERANCE[dtype], "state (log decay)")
    s = cuda_inputs(2, 1, 2, 64, dtype, w_log=True, seed=1)
    y_ref, state_ref = reference_wkv(s, w_log=True)
    y = ops.wkv7_step(s["state"], *(s[n][:, 0].contiguous() for n in VECTORS), w_log=True)
    assert_close_rms(y, y_ref[:, 0], TOLERANCE[dtype], "step y (log decay)")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_wkv7_sequence_equals_step_by_step(dtype):
    B, T, H, N = 3, 24, 4, 64
    d = cuda_inputs(B, T, H, N, dtype)
    state_seq, state_step = d["state"].clone(), d["state"].clone()
    y_seq = ops.wkv7_forward(state_seq, *(d[n] for n in VECTORS), kernel="sequence")
    y_step = torch.stack([ops.wkv7_step(state_step, *(d[n][:, t].contiguous() for n in VECTORS))
                          for t in range(T)], dim=1)
    assert_close_rms(y_step, y_seq, 1e-5, "y: steps vs sequence")
    assert_close_rms(state_step, state_seq, 1e-5, "state: steps vs sequence")


def test_wkv7_chunked_prefill_carries_state():
    d = cuda_inputs(2, 40, 2, 64, torch.bfloat16)
    state_whole, state_chunks = d["state"].clone(), d["state"].clone()
    y_whole = ops.wkv7_forward(state_whole, *(d[n] for n in VECTORS))
    y_chunks = torch.cat([ops.wkv7_forward(state_chunks, *(d[n][:, lo:hi].contiguous() for n in VECTORS))
                          for lo, hi in ((0, 1), (1, 17), (17, 40))], dim=1)
    assert_close_rms(y_chunks, y_whole, 1e-5, "y: chunks vs whole")
    assert_close_rms(state_chunks, state_whole, 1e-5, "state: chunks vs whole")


def test_wkv7_writes_into_out_and_runs_on_the_current_stream():
    d = cuda_inputs(2, 8, 2, 64, torch.float32)
    y_ref, _ = reference_wkv(d)
    out = torch.full((2, 8, 2, 64), float("nan"), device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)), out=out)
        y_copy = y.clone()  # ordered after the kernel only if it ran on `stream`
    torch.cuda.current_stream().wait_stream(stream)
    assert y.data_ptr() == out.data_ptr()
    assert_close_rms(y_copy, y_ref, 1e-4, "y on a side stream")


def test_wkv7_empty_batch_launches_nothing():
    d = cuda_inputs(0, 5, 2, 64, torch.float32)
    assert ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS))).shape == (0, 5, 2, 64)


def test_wkv7_rejects_tensors_on_two_devices():
    d = cuda_inputs(1, 2, 1, 64, torch.float32)
    d["k"] = d["k"].cpu()
    with pytest.raises(ValueError, match=r"expected every tensor on a cuda device, found k on cpu"):
        ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)))


# ---------------------------------------------------------------------------------------------
# Fused kernels


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("B, T, H, N", [(1, 1, 1, 64), (3, 17, 4, 64), (2, 5, 3, 32), (2, 5, 2, 128)])
def test_groupnorm_bonus_gate_matches_reference(B, T, H, N, dtype):
    d = reference.random_groupnorm_inputs(B, T, H, N, dtype=dtype, device="cuda")
    expected = reference.groupnorm_bonus_gate(**{name: t.cpu().double() for name, t in d.items()})
    out = ops.groupnorm_bonus_gate(**d)
    assert out.dtype == dtype and out.shape == (B, T, H, N)
    assert_close_rms(out, expected, TOLERANCE[dtype], "groupnorm_bonus_gate")
    d["r_k"] = d["r_k"].reshape(-1)  # flat [H * N] is the same memory
    assert_close_rms(ops.groupnorm_bonus_gate(**d), expected, TOLERANCE[dtype], "flat r_k")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("M, B, T, C", [(6, 1, 1, 64), (6, 3, 17, 256), (1, 2, 33, 100)])
def test_token_shift_mix_matches_reference(M, B, T, C, dtype):
    d = reference.random_token_shift_inputs(M, B, T, C, dtype=dtype, device="cuda")
    expected = reference.token_shift_mix(**{name: t.cpu().double() for name, t in d.items()})
    out = ops.token_shift_mix(**d)
    assert out.dtype == dtype and out.shape == (M, B, T, C)
    assert_close_rms(out, expected, TOLERANCE[dtype], "token_shift_mix")


def test_token_shift_mix_grid_stride_covers_large_inputs():
    # more positions than TOKEN_SHIFT_MAX_BLOCKS * TOKEN_SHIFT_BLOCK, so threads loop
    C = 4096
    T = -(-ops.TOKEN_SHIFT_MAX_BLOCKS * ops.TOKEN_SHIFT_BLOCK // C) + 3
    d = reference.random_token_shift_inputs(1, 1, T, C, dtype=torch.float32, device="cuda")
    expected = reference.token_shift_mix(**d)
    torch.testing.assert_close(ops.token_shift_mix(**d), expected, rtol=1e-6, atol=1e-6)
