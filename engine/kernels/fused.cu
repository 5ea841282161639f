// Fused element-wise pieces of the RWKV-7 time mix that sit around the WKV recurrence.
//
// groupnorm_bonus_gate_*: after WKV, per (b, t, h) group of N values,
//     out = (group_norm(y) * ln_w + ln_b + (sum_j r_j * k_j * r_k[h, j]) * v) * g
//     group_norm(y) = (y - mean) / sqrt(var + eps), var biased (as torch.nn.functional.group_norm)
// token_shift_mix_*: before the projections, M mixes of the token shift in one pass,
//     out[m, b, t, c] = x[b, t, c] + (before[b, t, c] - x[b, t, c]) * mix[m, c]
//     before[b, t] = x[b, t - 1] for t > 0, and the carried state x_prev[b] for t = 0
//     (M = 6 for the time mix: r w k v a g; M = 1 for the channel mix)
//
// Storage type F = float | f16 | bf16 for activations and weights; y, x_prev and eps are float32.
// All arithmetic is float32, rounded once on store. One extern "C" entry point per type.
#include "common.cuh"

#define N HEAD_SIZE
#define PER_LANE (N / WARP_SIZE)

// ---------------------------------------------------------------------------------------------
// One warp per group g = (b * T + t) * H + h; lane l holds channels j = l + 32 * p of the head.
// grid: ceil(groups * 32 / block) blocks; block: a multiple of 32 threads (ops.py uses 256).
template <typename F>
__device__ __forceinline__ void groupnorm_bonus_gate_impl(
    const long long groups, const int H, const float eps,
    const float* __restrict__ y,                                            // [B, T, H, N]
    const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,  // [B, T, H, N]
    const F* __restrict__ g,                                                // [B, T, H, N]
    const F* __restrict__ ln_w, const F* __restrict__ ln_b,                 // [H * N]
    const F* __restrict__ r_k,                                              // [H, N]
    F* __restrict__ out)                                                    // [B, T, H, N]
{
    const int lane = threadIdx.x % WARP_SIZE;
    const long long grp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;
    if (grp >= groups) return;  // whole warps leave together
    const int head = (int)(grp % H);
    const long long base = grp * N;  // [b, t, h, 0]

    float y_j[PER_LANE];
    float sum = 0.f;
#pragma unroll
    for (int p = 0; p < PER_LANE; p++) {
        y_j[p] = y[base + lane + WARP_SIZE * p];
        sum += y_j[p];
    }
    const float mean = warp_sum(sum) / N;

    // Two passes over registers: the variance of the centred values, never E[y^2] - mean^2,
    // which cancels badly when |mean| >> std.
    float sq = 0.f;
#pragma unroll
    for (int p = 0; p < PER_LANE; p++) {
        const float d = y_j[p] - mean;
        sq += d * d;
    }
    const float inv_std = rsqrtf(warp_sum(sq) / N + eps);

    float bonus = 0.f;
#pragma unroll
    for (int p = 0; p < PER_LANE; p++) {
        const int j = lane + WARP_SIZE * p;
        bonus += to_float(r[base + j]) * to_float(k[base + j]) * to_float(r_k[head * N + j]);
    }
    bonus = warp_sum(bonus);

#pragma unroll
    for (int p = 0; p < PER_LANE; p++) {
        const int j = lane + WARP_SIZE * p;
        const int c = head * N + j;
        const float normed = (y_j[p] - mean) * inv_std * to_float(ln_w[c]) + to_float(ln_b[c]);
        const float o = (normed + bonus * to_float(v[base + j])) * to_float(g[base + j]);
        out[base + j] = from_float<F>(o);
    }
}

#define GROUPNORM_BLOCK 256

#define DEFINE_GROUPNORM_BONUS_GATE(SUFFIX, F)                                                \
    extern "C" __global__ void __launch_bounds__(GROUPNORM_BLOCK)                             \
    groupnorm_bonus_gate_##SUFFIX(                                                            \
        const long long groups, const int H, const float eps, const float* __restrict__ y,    \
        const F* __restrict__ r, const F* __restrict__ k, const F* __restrict__ v,            \
        const F* __restrict__ g, const F* __restrict__ ln_w, const F* __restrict__ ln_b,      \
        const F* __restrict__ r_k, F* __restrict__ out)                                       \
    {                                                                                         \
        groupnorm_bonus_gate_impl<F>(groups, H, eps, y, r, k, v, g, ln_w, ln_b, r_k, out);  \
    }

DEFINE_GROUPNORM_BONUS_GATE(f32, float)
DEFINE_GROUPNORM_BONUS_GATE(f16, f16)
DEFINE_GROUPNORM_BONUS_GATE(bf16, bf16)

// ---------------------------------------------------------------------------------------------
// Element-wise over n = B * T * C positions with a grid-stride loop; each position reads x and
// its predecessor once and writes all M mixes, so x is read twice in total instead of 2 * M.
template <typename F>
__device__ __forceinline__ void token_shift_mix_impl(
    const long long n, const int T, const int C, const int M,
    const F* __restrict__ x,             // [B, T, C]
    const float* __restrict__ x_prev,    // [B, C]  the token before x[:, 0] (state, float32)
    const F* __restrict__ mix,           // [M, C]
    F* __restrict__ out)                 // [M, B, T, C]
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += stride) {
        const int c = (int)(idx % C);
        const long long bt = idx / C;    // b * T + t
        const int t = (int)(bt % T);
        const long long batch = bt / T;
        const float x_t = to_float(x[idx]);
        const float x_before = t > 0 ? to_float(x[idx - C]) : x_prev[batch * C + c];
        const float delta = x_before - x_t;
        for (int m = 0; m < M; m++)
            out[m * n + idx] = from_float<F>(x_t + delta * to_float(mix[(long long)m * C + c]));
    }
}

#define TOKEN_SHIFT_BLOCK 256

#define DEFINE_TOKEN_SHIFT_MIX(SUFFIX, F)                                                     \
    extern "C" __global__ void __launch_bounds__(TOKEN_SHIFT_BLOCK) token_shift_mix_##SUFFIX(  \
        const long long n, const int T, const int C, const int M, const F* __restrict__ x,   \
        const float* __restrict__ x_prev, const F* __restrict__ mix, F* __restrict__ out)     \
    {                                                                                         \
        token_shift_mix_impl<F>(n, T, C, M, x, x_prev, mix, out);                            \
    }

DEFINE_TOKEN_SHIFT_MIX(f32, float)
DEFINE_TOKEN_SHIFT_MIX(f16, f16)
DEFINE_TOKEN_SHIFT_MIX(bf16, bf16)
