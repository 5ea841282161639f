"""Plain-PyTorch twins of the CUDA kernels, and random inputs shaped like a real model's.

Each twin has the signature and layout of the wrapper in ``ops.py`` and runs anywhere. They
compute in float32 (float64 when given float64, for golden values), so on the same inputs a
kernel and its twin differ only by summation order and the final rounding to the storage dtype.
The GPU tests compare kernels against these; tests/test_kernels_validation.py checks these
against per-element loops written straight from the formulas.
"""
from __future__ import annotations

import math

import torch

from engine.model import wkv7_reference


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (the kernels' arithmetic)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def wkv7_forward(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    w_log: bool = False,
) -> torch.Tensor:
    """WKV-7 over a sequence; twin of ``ops.wkv7_forward``.

    state [B, H, N, N] (S[i, j]: i value, j key) is updated in place;
    r w k v a b [B, T, H, N] -> y [B, T, H, N] (contiguous) in the compute dtype.
    The recurrence is the model's own, :func:`engine.model.wkv7_reference`; this adds the
    kernels' dtype rule and their log-decay input.
    """
    dt = _compute_dtype(state, r)
    S = state.to(dt).contiguous()                             # [B, H, N, N]; state itself if it fits
    w = w.to(dt).exp() if w_log else w.to(dt)                 # decay in (0, 1)
    y = wkv7_reference(S, *(x.to(dt) for x in (r, w, k, v, a, b)))
    state.copy_(S)
    return y.contiguous()


def wkv7_step(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    w_log: bool = False,
) -> torch.Tensor:
    """One WKV-7 step; twin of ``ops.wkv7_step``: r w k v a b [B, H, N] -> y [B, H, N]."""
    seq = [x[:, None] for x in (r, w, k, v, a, b)]            # [B, 1, H, N]
    return wkv7_forward(state, *seq, w_log=w_log)[:, 0]


def wkv7_chunked(
    state: torch.Tensor,
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    chunk: int = 16,
) -> torch.Tensor:
    """WKV-7 over a sequence in chunks of ``chunk`` steps: the formulation docs/perf/GPU_PLAN.md
    proposes for a tensor-core prefill kernel (the twin of that kernel once it exists).

    Same contract as :func:`wkv7_forward` with the decay ``w`` in (0, 1). Within a chunk that
    starts from state S0, with g_t the cumulative sum of log w over the chunk up to t (per key
    index), a~_t = a_t e^(g_(t-1)), r~_t = r_t e^(g_t), b^_s = b_s e^(-g_s), k^_s = k_s e^(-g_s):

        X = (I - A_b)^-1 (A~ S0^T + A_k V)     A_b[t, s] = a~_t . b^_s, A_k[t, s] = a~_t . k^_s (s < t)
        Y = R~ S0^T + Q_b X + Q_k V            Q_b[t, s] = r~_t . b^_s, Q_k[t, s] = r~_t . k^_s (s <= t)
        S_L = S0 diag(e^(g_L)) + X^T (b e^(g_L - g)) + V^T (k e^(g_L - g))

    where the rows of X are x_t = S_(t-1) a_t. Only the S0 terms and the state update are serial
    across chunks; everything else is per chunk, matrix products of chunk x N and chunk x chunk.
    """
    dt = _compute_dtype(state, r)
    B, T, H, N = r.shape
    S = state.to(dt).reshape(B * H, N, N).clone()                  # [BH, N(value), N(key)]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.to(dt).permute(0, 2, 1, 3).reshape(B * H, T, N)   # [BH, T, N]

    r_, w_, k_, v_, a_, b_ = (heads(x) for x in (r, w, k, v, a, b))
    y = torch.empty(B * H, T, N, dtype=dt, device=r.device)
    for lo in range(0, T, chunk):
        hi = min(lo + chunk, T)
        L = hi - lo
        lw = w_[:, lo:hi].log()                                     # [BH, L, N]
        g = lw.cumsum(1)                                            # inclusive: g_t
        g_prev = g - lw                                             # exclusive: g_(t-1)
        a_t, r_t = a_[:, lo:hi] * g_prev.exp(), r_[:, lo:hi] * g.exp()
        b_h, k_h = b_[:, lo:hi] * (-g).exp(), k_[:, lo:hi] * (-g).exp()
        V = v_[:, lo:hi]                                            # [BH, L, N]
        strict = torch.ones(L, L, dtype=torch.bool, device=r.device).tril(-1)
        causal = torch.ones(L, L, dtype=torch.bool, device=r.device).tril()
        A_b = (a_t @ b_h.transpose(1, 2)) * strict                  # [BH, L, L]
        A_k = (a_t @ k_h.transpose(1, 2)) * strict
        eye = torch.eye(L, dtype=dt, device=r.device)
        X = torch.linalg.solve_triangular(eye - A_b, a_t @ S.transpose(1, 2) + A_k @ V,
                                          upper=False, unitriangular=True)  # [BH, L, N]: x_t rows
        Q_b = (r_t @ b_h.transpose(1, 2)) * causal
        Q_k = (r_t @ k_h.transpose(1, 2)) * causal
        y[:, lo:hi] = r_t @ S.transpose(1, 2) + Q_b @ X + Q_k @ V
        to_end = (g[:, -1:] - g).exp()                              # e^(g_L - g_s)  [BH, L, N]
        S = S * g[:, -1].exp()[:, None, :] + X.transpose(1, 2) @ (b_[:, lo:hi] * to_end) \
            + V.transpose(1, 2) @ (k_[:, lo:hi] * to_end)
    state.copy_(S.view(B, H, N, N))
    return y.view(B, H, T, N).permute(0, 2, 1, 3).contiguous()


def groupnorm_bonus_gate(
    y: torch.Tensor,
    r: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    r_k: torch.Tensor,
    *,
    eps: float = 64e-5,
) -> torch.Tensor:
    """Twin of ``ops.groupnorm_bonus_gate``: y [B, T, H, N] -> out [B, T, H, N] in r's dtype.

    ln_w ln_b [H * N]; r_k [H, N] or [H * N].
    """
    dt = _compute_dtype(y, r)
    out_dtype = r.dtype                                       # the storage dtype, as the kernel
    B, T, H, N = y.shape
    y, r, k, v, g = (x.to(dt) for x in (y, r, k, v, g))
    mean = y.mean(-1, keepdim=True)                           # [B, T, H, 1]
    var = (y - mean).square().mean(-1, keepdim=True)          # biased, as F.group_norm
    normed = (y - mean) / torch.sqrt(var + eps)               # eps = 64e-5 in RWKV-7's ln_x
    normed = normed * ln_w.to(dt).view(H, N) + ln_b.to(dt).view(H, N)
    bonus = (r * k * r_k.to(dt).view(H, N)).sum(-1, keepdim=True)  # [B, T, H, 1]
    return ((normed + bonus * v) * g).to(out_dtype)


def token_shift_mix(x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Twin of ``ops.token_shift_mix``: x [B, T, C], x_prev [B, C], mix [M, C] -> [M, B, T, C]."""
    dt = _compute_dtype(x, mix)
    xc = x.to(dt)
    shifted = torch.cat([x_prev.to(dt)[:, None], xc[:, :-1]], dim=1)  # [B, T, C] token before each
    out = xc[None] + (shifted - xc)[None] * mix.to(dt)[:, None, None, :]  # [M, B, T, C]
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Random inputs with the statistics of a trained model's (decays in (exp(-e^-0.5), 1),
# a = -kk and b = kk * a_gate with kk unit-norm per head), so long sequences stay bounded.


def random_wkv7_inputs(
    B: int,
    T: int,
    H: int,
    N: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    w_log: bool = False,
) -> dict[str, torch.Tensor]:
    """state [B, H, N, N] float32 and r w k v a b [B, T, H, N] in ``dtype`` on ``device``.

    Drawn on the CPU from ``seed``, so every device and dtype sees the same values.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    log_decay = -math.exp(-0.5) * torch.sigmoid(2.0 * randn(B, T, H, N))  # log w, in (-0.61, 0)
    kk = torch.nn.functional.normalize(randn(B, T, H, N), dim=-1)        # unit norm per head
    a_gate = torch.sigmoid(randn(B, T, H, N))
    vectors = {
        "r": randn(B, T, H, N),
        "w": log_decay if w_log else log_decay.exp(),
        "k": randn(B, T, H, N) / math.sqrt(N),
        "v": randn(B, T, H, N),
        "a": -kk,
        "b": kk * a_gate,
    }
    out = {"state": (0.1 * randn(B, H, N, N)).to(device)}
    out.update({name: t.to(device=device, dtype=dtype) for name, t in vectors.items()})
    return out


def random_groupnorm_inputs(
    B: int,
    T: int,
    H: int,
    N: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """y [B, T, H, N] float32; r k v g [B, T, H, N], ln_w ln_b [H * N], r_k [H, N] in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    params = {
        "r": randn(B, T, H, N),
        "k": randn(B, T, H, N) / math.sqrt(N),
        "v": randn(B, T, H, N),
        "g": torch.sigmoid(randn(B, T, H, N)),
        "ln_w": 1.0 + 0.1 * randn(H * N),
        "ln_b": 0.1 * randn(H * N),
        "r_k": 0.5 * randn(H, N),
    }
    out = {"y": (3.0 * randn(B, T, H, N) + 1.0).to(device)}  # off-centre: exercises the mean
    out.update({name: t.to(device=device, dtype=dtype) for name, t in params.items()})
    return out


def random_token_shift_inputs(
    M: int,
    B: int,
    T: int,
    C: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """x [B, T, C] and mix [M, C] in ``dtype`` (mix in (0, 1)), x_prev [B, C] float32."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=gen)
    x_prev = torch.randn(B, C, generator=gen)
    mix = torch.rand(M, C, generator=gen)
    return {
        "x": x.to(device=device, dtype=dtype),
        "x_prev": x_prev.to(device),
        "mix": mix.to(device=device, dtype=dtype),
    }
