// WKV-7 recurrence of RWKV-7 ("x070"): sequence (prefill) and single-step (decode) kernels.
//
// Per (batch b, head h), with state S [N, N] float32, S[i, j]: i = value index, j = key index:
//     sa_i   = sum_j S[i, j] * a_t[j]
//     S[i,j] = S[i, j] * w_t[j] + sa_i * b_t[j] + v_t[i] * k_t[j]
//     y_t[i] = sum_j S[i, j] * r_t[j]
// w_t is the decay in (0, 1); with w_log != 0 the kernels read log(w_t) instead and take exp,
// which keeps the decay exact near 1 when inputs are float16 / bfloat16.
//
// Layouts (all C-contiguous; the Python wrappers in ops.py check this before launch):
//     state [B, H, N, N] float32, updated in place
//     r, w, k, v, a, b: sequence [B, T, H, N], step [B, H, N], in F = float | f16 | bf16
//     y: same shape as r, float32 (the group norm that follows wants full precision)
// One extern "C" entry point per storage type, since cupy.RawModule looks kernels up by name.
#include "common.cuh"

#define N HEAD_SIZE

// ---------------------------------------------------------------------------------------------
// Sequence kernel. grid: B * H blocks, one per (b, h); block: N threads, thread i owns state
// row S[i, :] in registers for the whole sequence. Per step the five key-indexed vectors
// (r, w, k, a, b) go through shared memory, double-buffered so one barrier per step suffices;
// the next step's inputs are loaded into registers while the current step computes.
template <typename F>
__device__ __forceinline__ void wkv7_forward_impl(
    const int B, const int T, const int H, const int w_log,
    float* __restrict__ state,                                              // [B, H, N, N]
    const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k,  // [B, T, H, N]
    const F* __restrict__ v, const F* __restrict__ a, const F* __restrict__ b,  // [B, T, H, N]
    float* __restrict__ y)                                                  // [B, T, H, N]
{
    if (T <= 0) return;                 // nothing to read; the state stays as it is
    const int bh = blockIdx.x;          // b * H + h
    const int batch = bh / H;
    const int head = bh % H;
    const int i = threadIdx.x;          // value index owned by this thread

    float* row = state + ((long long)bh * N + i) * N;  // S[b, h, i, :]
    float s[N];
#pragma unroll
    for (int j = 0; j < N; j++) s[j] = row[j];

    __shared__ float r_s[2][N], w_s[2][N], k_s[2][N], a_s[2][N], b_s[2][N];

    const long long step = (long long)H * N;                        // from t to t + 1
    long long idx = ((long long)batch * T * H + head) * N + i;      // [b, 0, h, i]

    // Registers holding step t's inputs for this thread's index (i as key, i as value).
    float r_t = to_float(r[idx]), w_t = to_float(w[idx]), k_t = to_float(k[idx]);
    float v_t = to_float(v[idx]), a_t = to_float(a[idx]), b_t = to_float(b[idx]);

    for (int t = 0; t < T; t++) {
        const int buf = t & 1;
        r_s[buf][i] = r_t;
        w_s[buf][i] = w_log ? expf(w_t) : w_t;
        k_s[buf][i] = k_t;
        a_s[buf][i] = a_t;
        b_s[buf][i] = b_t;
        const float v_i = v_t;
        // One barrier: buffer `buf` was last read at step t - 2, which every thread finished
        // before passing the barrier of step t - 1.
        __syncthreads();

        if (t + 1 < T) {  // prefetch step t + 1
            const long long nxt = idx + step;
            r_t = to_float(r[nxt]); w_t = to_float(w[nxt]); k_t = to_float(k[nxt]);
            v_t = to_float(v[nxt]); a_t = to_float(a[nxt]); b_t = to_float(b[nxt]);
        }

        float sa = 0.f;
#pragma unroll
        for (int j = 0; j < N; j++) sa += s[j] * a_s[buf][j];

        float y_i = 0.f;
#pragma unroll
        for (int j = 0; j < N; j++) {
            s[j] = s[j] * w_s[buf][j] + sa * b_s[buf][j] + v_i * k_s[buf][j];
            y_i += s[j] * r_s[buf][j];
        }
        y[idx] = y_i;
        idx += step;
    }

#pragma unroll
    for (int j = 0; j < N; j++) row[j] = s[j];
}

#define DEFINE_WKV7_FORWARD(SUFFIX, F)                                                        \
    extern "C" __global__ void __launch_bounds__(N) wkv7_forward_##SUFFIX(                    \
        const int B, const int T, const int H, const int w_log, float* __restrict__ state,    \
        const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k,            \
        const F* __restrict__ v, const F* __restrict__ a, const F* __restrict__ b,            \
        float* __restrict__ y)                                                                \
    {                                                                                         \
        wkv7_forward_impl<F>(B, T, H, w_log, state, r, w, k, v, a, b, y);                    \
    }

DEFINE_WKV7_FORWARD(f32, float)
DEFINE_WKV7_FORWARD(f16, f16)
DEFINE_WKV7_FORWARD(bf16, bf16)

// ---------------------------------------------------------------------------------------------
// Step (decode) kernel, T = 1. Reading each state row from one thread (as above) makes a warp
// touch 32 rows at once; for a single step the state traffic is the whole cost, so here the
// lanes run along the key index j instead and every state load is coalesced.
// Each warp owns WKV7_STEP_ROWS consecutive rows of one (b, h); lane l holds j = l + 32 * p.
// grid: ceil(B * H * N / WKV7_STEP_ROWS / WKV7_STEP_WARPS) blocks of 32 * WKV7_STEP_WARPS threads.
#ifndef WKV7_STEP_ROWS
#define WKV7_STEP_ROWS 4
#endif
#ifndef WKV7_STEP_WARPS
#define WKV7_STEP_WARPS 8
#endif
#if (N % WKV7_STEP_ROWS) != 0
#error "WKV7_STEP_ROWS must divide HEAD_SIZE"
#endif
#define PER_LANE (N / WARP_SIZE)

template <typename F>
__device__ __forceinline__ void wkv7_step_impl(
    const int B, const int H, const int w_log,
    float* __restrict__ state,                                              // [B, H, N, N]
    const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k,  // [B, H, N]
    const F* __restrict__ v, const F* __restrict__ a, const F* __restrict__ b,  // [B, H, N]
    float* __restrict__ y)                                                  // [B, H, N]
{
    const int lane = threadIdx.x % WARP_SIZE;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;
    const long long warps_per_head = N / WKV7_STEP_ROWS;
    if (warp >= (long long)B * H * warps_per_head) return;  // whole warps leave together
    const long long bh = warp / warps_per_head;              // b * H + h
    const int row0 = (int)(warp % warps_per_head) * WKV7_STEP_ROWS;

    const long long head_off = bh * N;  // [b, h, 0]

    // This lane's key-indexed inputs, reused for every row the warp owns.
    float r_j[PER_LANE], w_j[PER_LANE], k_j[PER_LANE], a_j[PER_LANE], b_j[PER_LANE];
#pragma unroll
    for (int p = 0; p < PER_LANE; p++) {
        const long long j = head_off + lane + WARP_SIZE * p;
        r_j[p] = to_float(r[j]);
        const float wj = to_float(w[j]);
        w_j[p] = w_log ? expf(wj) : wj;
        k_j[p] = to_float(k[j]);
        a_j[p] = to_float(a[j]);
        b_j[p] = to_float(b[j]);
    }

#pragma unroll
    for (int q = 0; q < WKV7_STEP_ROWS; q++) {
        const int i = row0 + q;
        float* row = state + (head_off + i) * N;  // S[b, h, i, :]
        const float v_i = to_float(v[head_off + i]);

        float s[PER_LANE];
        float sa = 0.f;
#pragma unroll
        for (int p = 0; p < PER_LANE; p++) {
            s[p] = row[lane + WARP_SIZE * p];
            sa += s[p] * a_j[p];
        }
        sa = warp_sum(sa);

        float y_i = 0.f;
#pragma unroll
        for (int p = 0; p < PER_LANE; p++) {
            s[p] = s[p] * w_j[p] + sa * b_j[p] + v_i * k_j[p];
            y_i += s[p] * r_j[p];
            row[lane + WARP_SIZE * p] = s[p];
        }
        y_i = warp_sum(y_i);
        if (lane == 0) y[head_off + i] = y_i;
    }
}

#define DEFINE_WKV7_STEP(SUFFIX, F)                                                           \
    extern "C" __global__ void __launch_bounds__(WARP_SIZE * WKV7_STEP_WARPS) wkv7_step_##SUFFIX( \
        const int B, const int H, const int w_log, float* __restrict__ state,                 \
        const F* __restrict__ r, const F* __restrict__ w, const F* __restrict__ k,            \
        const F* __restrict__ v, const F* __restrict__ a, const F* __restrict__ b,            \
        float* __restrict__ y)                                                                \
    {                                                                                         \
        wkv7_step_impl<F>(B, H, w_log, state, r, w, k, v, a, b, y);                          \
    }

DEFINE_WKV7_STEP(f32, float)
DEFINE_WKV7_STEP(f16, f16)
DEFINE_WKV7_STEP(bf16, bf16)
