/* WKV-7 recurrence on the CPU: the fast twin of engine.model.wkv7_reference.
 *
 * Per head, the state S is N x N (row i: value index, column j: key index), and per step
 *     sa = S a        S = S diag(w) + sa b^T + v k^T        y = S r
 * The kernel works on the head's state transposed (St[j][i] = S[i][j], key-major) in a local
 * buffer that stays in L1: then both matrix-vector products and the update are, for each key
 * j, one vector operation over all N rows with w[j], a[j], b[j], k[j], r[j] broadcast, with no
 * horizontal sums. (Row by row, each dot product is a chain of dependent adds: ~5x slower here.)
 * The two transposes cost more than they save for a step or two (decoding), so short sequences
 * run row by row instead (run_row: each row is independent; rows run in parallel).
 * Heads run in parallel (OpenMP); each head runs its whole sequence with no synchronisation.
 * The transposed form accumulates in float32, as the reference's bmm does, and runs with N = 64 (the
 * head size of every RWKV-7 release) as a constant, so that a column is four registers and the loops
 * unroll: on the 2-core Intel Xeon with AMX (2026-12-01), one 0.1B layer over 512 tokens took
 * 2.2 ms against 5.5 with float64 accumulators and N a variable (3.5 with float64 and N = 64).
 *
 * Layouts (all float32, contiguous):
 *   state       [B, H, N, N]   updated in place
 *   r w k v a b [B, T, H, N]   w is the decay in (0, 1)
 *   y           [B, T, H, N]   written
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16_cpu.h"

#define MAX_N 128
#define TRANSPOSE_MIN_T 4 /* from here on the transposed form wins (measured on the reference CPU) */
/* row by row, threads share the rows from this many multiply-adds per pass on: one 0.1B layer's decode
 * step (768 rows of 64) is past it: 21 us on two threads against 23 on one (AVX-512 EPYC, 2026-12-02) */
#define ROW_PARALLEL_MIN 32768

/* Steps 0..T of one state row i, pointers at [bb, t=0, h, 0]. Float32 accumulators, as the
 * transposed form and the reference's bmm; inlined where called, so that a constant N (64, every
 * RWKV-7 release) unrolls into whole vectors. (With float64 accumulators and N a variable, a decode
 * step's recurrence of one 0.1B layer took 51-61 us on the AVX-512 EPYC against 21-23, 2026-12-02.) */
static inline __attribute__((always_inline)) void run_row(int64_t T, int64_t stride, const int64_t N, int64_t i,
                                                          float *restrict s_row, const float *restrict r,
                                                          const float *restrict w, const float *restrict k,
                                                          const float *restrict v, const float *restrict a,
                                                          const float *restrict b, float *restrict y) {
    float s[MAX_N];
    for (int64_t j = 0; j < N; j++) s[j] = s_row[j];
    for (int64_t t = 0; t < T; t++) {
        const int64_t o = t * stride;
        float sa = 0.0f;
#pragma omp simd reduction(+ : sa)
        for (int64_t j = 0; j < N; j++) sa += s[j] * a[o + j];
        const float vi = v[o + i];
        float yi = 0.0f;
#pragma omp simd reduction(+ : yi)
        for (int64_t j = 0; j < N; j++) {
            const float x = s[j] * w[o + j] + sa * b[o + j] + vi * k[o + j];
            s[j] = x;
            yi += x * r[o + j];
        }
        y[o + i] = yi;
    }
    for (int64_t j = 0; j < N; j++) s_row[j] = s[j];
}

static void run_row_any(int64_t T, int64_t stride, int64_t N, int64_t i, float *s_row, const float *r,
                        const float *w, const float *k, const float *v, const float *a, const float *b, float *y) {
    if (N == 64) run_row(T, stride, 64, i, s_row, r, w, k, v, a, b, y);
    else run_row(T, stride, N, i, s_row, r, w, k, v, a, b, y);
}

/* Steps 0..T of one head on its transposed state; inlined where called, so that a constant N unrolls.
 * One pass over the state per step: as column j is updated it adds to y (S r) and to the next
 * step's S a, which a second pass had read the state again for (the same sums in the same order,
 * so the same numbers; the recurrence of a 0.1B layer over 10 x 88 tokens, 2 threads, 2.6-2.9 ms
 * against 3.3-3.8 on the AVX-512 EPYC, 2026-12-02). */
static inline __attribute__((always_inline)) void run_head(int64_t T, int64_t stride, const int64_t N,
                                                           float *restrict S, const float *restrict r,
                                                           const float *restrict w, const float *restrict k,
                                                           const float *restrict v, const float *restrict a,
                                                           const float *restrict b, float *restrict y) {
    float St[MAX_N * MAX_N]; /* St[j * N + i] = S[i][j] */
    float sa[MAX_N], acc[MAX_N], san[MAX_N]; /* float32 accumulators, as the reference's bmm */
    static const float zeros[MAX_N];
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) St[j * N + i] = S[i * N + j];
    for (int64_t i = 0; i < N; i++) sa[i] = 0.0f;
    for (int64_t j = 0; j < N; j++) { /* sa = S a, of the first step */
        const float aj = a[j];
        const float *restrict col = St + j * N;
#pragma omp simd
        for (int64_t i = 0; i < N; i++) sa[i] += col[i] * aj;
    }
    for (int64_t t = 0; t < T; t++) {
        const int64_t o = t * stride;
        const float *restrict vt = v + o;
        const float *restrict an = t + 1 < T ? a + o + stride : zeros; /* the next step's a */
        for (int64_t i = 0; i < N; i++) acc[i] = 0.0f, san[i] = 0.0f;
        for (int64_t j = 0; j < N; j++) { /* update column j of S; y += S[:, j] r[j]; next sa += S[:, j] a'[j] */
            const float wj = w[o + j], bj = b[o + j], kj = k[o + j], rj = r[o + j], aj = an[j];
            float *restrict col = St + j * N;
#pragma omp simd
            for (int64_t i = 0; i < N; i++) {
                const float x = col[i] * wj + sa[i] * bj + vt[i] * kj;
                col[i] = x;
                acc[i] += x * rj;
                san[i] += x * aj;
            }
        }
        for (int64_t i = 0; i < N; i++) y[o + i] = acc[i], sa[i] = san[i];
    }
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) S[i * N + j] = St[j * N + i];
}

/* Steps 0..T of one head at pointers [bb, t=0, h, 0]: transposed where it wins (T >= TRANSPOSE_MIN_T),
 * else row by row. */
static void run_head_any(int64_t T, int64_t stride, int64_t N, float *S, const float *r, const float *w,
                         const float *k, const float *v, const float *a, const float *b, float *y) {
    if (T < TRANSPOSE_MIN_T) {
        for (int64_t i = 0; i < N; i++) run_row_any(T, stride, N, i, S + i * N, r, w, k, v, a, b, y);
    } else if (N == 64) { /* every RWKV-7 release: with N a constant, a column is four registers */
        run_head(T, stride, 64, S, r, w, k, v, a, b, y);
    } else {
        run_head(T, stride, N, S, r, w, k, v, a, b, y);
    }
}

/* Returns 0 on success, 1 if N is larger than MAX_N (checked by the Python wrapper first).
 * starts NULL: B rows of T tokens each ([B, T, H, N]). starts [B + 1]: a ragged batch, its rows'
 * tokens one after another ([n, H, N], n = starts[B]; row bb holds tokens starts[bb] to
 * starts[bb + 1] - 1, at least one), so no step is spent on padding. */
int wkv7_forward_f32(int64_t B, int64_t T, int64_t H, int64_t N, int threads, float *state,
                     const float *r, const float *w, const float *k, const float *v,
                     const float *a, const float *b, float *y, const int64_t *starts) {
    if (N > MAX_N) return 1;
    const int64_t heads = B * H, stride = H * N;
    if (starts) { /* rows of different lengths: one task per head of a row, the longest first */
        const int64_t n = starts[B];
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (heads > 1 && n * H * N >= 8192)
        for (int64_t bh = 0; bh < heads; bh++) {
            const int64_t bb = bh / H, base = (starts[bb] * H + bh % H) * N; /* [token starts[bb], h, 0] */
            run_head_any(starts[bb + 1] - starts[bb], stride, N, state + bh * N * N, r + base, w + base,
                         k + base, v + base, a + base, b + base, y + base);
        }
        return 0;
    }
    if (T < TRANSPOSE_MIN_T) {
        const int64_t rows = heads * N;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * T * N >= ROW_PARALLEL_MIN)
        for (int64_t row = 0; row < rows; row++) {
            const int64_t bh = row / N, i = row % N;
            const int64_t base = ((bh / H) * T * H + bh % H) * N; /* [bb, t=0, h, 0] */
            run_row_any(T, stride, N, i, state + (bh * N + i) * N, r + base, w + base, k + base,
                    v + base, a + base, b + base, y + base);
        }
        return 0;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (heads > 1 && heads * T * N >= 8192)
    for (int64_t bh = 0; bh < heads; bh++) {
        const int64_t base = ((bh / H) * T * H + bh % H) * N; /* [bb, t=0, h, 0] */
        run_head_any(T, stride, N, state + bh * N * N, r + base, w + base, k + base, v + base, a + base,
                     b + base, y + base);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * wkv7_output: a layer's time mix from its products to the input of the output product, in one
 * call. engine.model.RWKV7._mix_products and _wkv_output are the readable form of the same lines:
 *
 *     kk = normalize(k * k_k) per head              the key that removes old values from the state
 *     k = k (1 + (a - 1) k_a)
 *     v = v + (v_first - v) sigmoid(v0 + v_gate)    layers after the first (v_gate NULL in layer 0)
 *     w = exp(-exp(-0.5) sigmoid(w0 + w))          the decay, in (0.545, 1)
 *     y = WKV(state; r, w, k, v, -kk, kk * a)       the recurrence above (wkv7_forward_f32)
 *     y = group_norm(y) per head (eps), * ln_x_w + ln_x_b
 *     y = (y + sum_head(r * k * r_k) * v) * g       the bonus of the current token, the gate
 *
 * In the torch form these are ~35 elementwise calls per layer: each a pass over [B, T, C] in
 * prefill, each a few microseconds of dispatch in a decode step. Here they are two passes around
 * the recurrence, in float32 throughout (a bf16 model's tensors are widened as they are read, and
 * the result is rounded once, to nearest even). On the 0.1B shape on the 2-core AVX-512 EPYC, in
 * one process turn and turn about with the torch lines: a bf16 decode step 12.5 ms against 14.0,
 * a 512-token prefill 652 ms against 705 in float32 and 302 against 324 in bf16.
 *
 * Layouts (contiguous): r w k v a g v_first v_gate [B, T, H * N] in float32 or bf16 (in_bf16), k and
 * v the products before the mixing above, a after its sigmoid; w0 r_k k_k k_a v0 ln_x_w ln_x_b
 * [H * N] in the same dtype; state [B, H, N, N] float32 (updated in place), out
 * [B, T, H * N] in that dtype too. starts [B + 1] int64, or NULL: a ragged batch, its rows' tokens
 * one after another (r ... out [n, H * N] with n = starts[B], row bb's tokens from starts[bb] on, at
 * least one per row; B rows of state), so that no work is spent on padding. Returns 0, 1 if N >
 * MAX_N, 2 if scratch memory could not be had.
 */
/* The dtype of a fused kernel's tensors is a run-time flag, but each loop below is written for one
 * dtype: the kernels call an always-inlined body with a constant bf16 (0 or 1), so every loop is
 * compiled twice without a branch per element, and vectorised (a branch per element kept them
 * scalar: ~13 ns per element on the 2-core EPYC, several times torch's elementwise calls). The
 * elements are read and written by load_elem and store_elem (bf16_cpu.h). */
#define SPECIALISED static inline __attribute__((always_inline))

/* e^x in float32 to ~1 ulp, in a form the compiler vectorises (libm's expf is a call per number
 * here, which made the fused pass slower than torch's vectorised sigmoid and exp): x = n ln2 + f
 * with |f| <= ln2 / 2, e^f by its degree-7 Taylor polynomial (error < 2e-9 there), times 2^n. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = rintf(x * 1.44269504088896341f);
    float f = fmaf(n, -0.693145751953125f, x); /* ln 2 in two parts: the first exact in float */
    f = fmaf(n, -1.428606765330187e-06f, f);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, f, 1.0f / 720.0f);
    p = fmaf(p, f, 1.0f / 120.0f);
    p = fmaf(p, f, 1.0f / 24.0f);
    p = fmaf(p, f, 1.0f / 6.0f);
    p = fmaf(p, f, 0.5f);
    p = fmaf(p, f, 1.0f);
    p = fmaf(p, f, 1.0f);
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Before the recurrence, one head of one token (o: its offset, h: the head): kk and the decay into
 * af (-kk), bf (kk a), wf; the mixed key and value into kf, vf. */
SPECIALISED void mix_head(const int bf16, int64_t o, int64_t h, int64_t N, const void *w, const void *k,
                          const void *v, const void *a, const void *v_first, const void *v_gate, const void *w0,
                          const void *k_k, const void *k_a, const void *v0, float *restrict wf,
                          float *restrict af, float *restrict bf, float *restrict kf, float *restrict vf) {
    const float decay_scale = 0.60653065971263342f; /* exp(-0.5) */
    const int64_t c0 = h * N;
    float ss = 0.0f; /* kk = normalize(k * k_k) over the head: x / max(|x|, 1e-12), as F.normalize */
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < N; j++) {
        const float x = load_elem(k, o + j, bf16) * load_elem(k_k, c0 + j, bf16);
        ss += x * x;
    }
    const float norm = sqrtf(ss), inv = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
#pragma omp simd
    for (int64_t j = 0; j < N; j++) {
        const int64_t i = o + j, c = c0 + j;
        const float ki = load_elem(k, i, bf16), ai = load_elem(a, i, bf16);
        const float kki = ki * load_elem(k_k, c, bf16) * inv;
        const float wl = load_elem(w0, c, bf16) + load_elem(w, i, bf16);
        wf[i] = exp_f32(-decay_scale / (1.0f + exp_f32(-wl)));
        af[i] = -kki;
        bf[i] = kki * ai;
        kf[i] = ki * (1.0f + (ai - 1.0f) * load_elem(k_a, c, bf16));
        vf[i] = load_elem(v, i, bf16);
    }
    if (v_gate) { /* the value residual: towards layer 0's value, by a learnt gate */
#pragma omp simd
        for (int64_t j = 0; j < N; j++) {
            const int64_t i = o + j, c = c0 + j;
            const float gate = 1.0f / (1.0f + exp_f32(-(load_elem(v0, c, bf16) + load_elem(v_gate, i, bf16))));
            vf[i] += (load_elem(v_first, i, bf16) - vf[i]) * gate;
        }
    }
}

/* After the recurrence, one head of one token: group norm of y, the bonus, the gate, into out. */
SPECIALISED void finish_head(const int bf16, int64_t o, int64_t h, int64_t N, float eps, const float *restrict y,
                             const void *r, const float *restrict kf, const float *restrict vf, const void *g,
                             const void *r_k, const void *ln_w, const void *ln_b, void *out) {
    const int64_t c0 = h * N;
    double mean = 0.0, var = 0.0, bonus = 0.0;
#pragma omp simd reduction(+ : mean)
    for (int64_t j = 0; j < N; j++) mean += y[o + j];
    mean /= (double)N;
#pragma omp simd reduction(+ : var, bonus)
    for (int64_t j = 0; j < N; j++) {
        const double d = y[o + j] - mean;
        var += d * d;
        bonus += (double)(load_elem(r, o + j, bf16) * kf[o + j] * load_elem(r_k, c0 + j, bf16));
    }
    const float inv = (float)(1.0 / sqrt(var / (double)N + (double)eps)), m = (float)mean, b = (float)bonus;
#pragma omp simd
    for (int64_t j = 0; j < N; j++) {
        const int64_t c = c0 + j;
        const float normed = (y[o + j] - m) * inv * load_elem(ln_w, c, bf16) + load_elem(ln_b, c, bf16);
        store_elem(out, o + j, (normed + b * vf[o + j]) * load_elem(g, o + j, bf16), bf16);
    }
}

/* The fused kernel's scratch: a fresh malloc of this size is an mmap, and the first write to each of
 * its pages a page fault (~2,700 per layer of a 512-token 0.1B prefill: 0.5 ms of the bf16 call's 3 on
 * a Xeon with AMX, 2026-12-02). So each calling thread keeps one buffer of up to SCRATCH_KEEP bytes
 * and reuses it (freed when the thread ends); a larger request is allocated and freed per call.
 * A kept buffer starts with a header holding its size in floats. */
#define SCRATCH_KEEP ((size_t)64 << 20)
#define SCRATCH_HEADER 64
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_keyed;

static void scratch_key_init(void) { scratch_keyed = pthread_key_create(&scratch_key, free) == 0; }

static float *scratch(size_t floats) {
    pthread_once(&scratch_once, scratch_key_init);
    if (floats * sizeof(float) > SCRATCH_KEEP || !scratch_keyed) return malloc(floats * sizeof(float));
    size_t *kept = pthread_getspecific(scratch_key);
    if (!kept || kept[0] < floats) {
        free(kept);
        kept = malloc(SCRATCH_HEADER + floats * sizeof(float));
        pthread_setspecific(scratch_key, kept);
        if (!kept) return NULL;
        kept[0] = floats;
    }
    return (float *)((char *)kept + SCRATCH_HEADER);
}

static void release(float *buf) {
    char *kept = scratch_keyed ? pthread_getspecific(scratch_key) : NULL;
    if (!kept || buf != (float *)(kept + SCRATCH_HEADER)) free(buf);
}

int wkv7_output(int64_t B, int64_t T, int64_t H, int64_t N, int threads, int in_bf16,
                float eps, float *state, const void *r, const void *w, const void *k, const void *v,
                const void *a, const void *g, const void *v_first, const void *v_gate, const void *w0,
                const void *r_k, const void *k_k, const void *k_a, const void *v0, const void *ln_w,
                const void *ln_b, const int64_t *starts, void *out) {
    if (N > MAX_N) return 1;
    const int64_t tokens = starts ? starts[B] : B * T; /* every token a row of the batch really holds */
    const int64_t C = H * N, n = tokens * C, heads = tokens * H;
    /* scratch: the decay, -kk, kk * a, the mixed key and value, y; a bf16 model's r widened too */
    float *buf = scratch((size_t)n * (in_bf16 ? 7 : 6));
    if (!buf) return 2;
    float *wf = buf, *af = wf + n, *bf = af + n, *kf = bf + n, *vf = kf + n, *y = vf + n;
    const float *rf = r;
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= 65536)
    for (int64_t rh = 0; rh < heads; rh++) {
        if (in_bf16)
            mix_head(1, rh * N, rh % H, N, w, k, v, a, v_first, v_gate, w0, k_k, k_a, v0, wf, af, bf, kf, vf);
        else
            mix_head(0, rh * N, rh % H, N, w, k, v, a, v_first, v_gate, w0, k_k, k_a, v0, wf, af, bf, kf, vf);
    }
    if (in_bf16) {
        float *widened = y + n;
#pragma omp parallel for simd schedule(static) num_threads(threads) if (n >= 65536)
        for (int64_t i = 0; i < n; i++) widened[i] = load_elem(r, i, 1);
        rf = widened;
    }
    const int rc = wkv7_forward_f32(B, T, H, N, threads, state, rf, wf, kf, vf, af, bf, y, starts);
    if (rc == 0) {
#pragma omp parallel for schedule(static) num_threads(threads) if (n >= 65536)
        for (int64_t rh = 0; rh < heads; rh++) {
            if (in_bf16) finish_head(1, rh * N, rh % H, N, eps, y, r, kf, vf, g, r_k, ln_w, ln_b, out);
            else finish_head(0, rh * N, rh % H, N, eps, y, r, kf, vf, g, r_k, ln_w, ln_b, out);
        }
    }
    release(buf);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * token_shift_mix: the token shift's J mixes in one pass (engine.model.RWKV7._token_shift):
 *
 *     out[j, b, t, c] = x[b, t, c] + (prev[b, t, c] - x[b, t, c]) * mix[j, c]
 *     prev[b, t] = x[b, t - 1], and the layer's last input x_prev[b] (float32, the state) at t = 0
 *
 * J = 6 for the time mix (r w k v a g), 1 for the channel mix: in torch a conversion, a cat and
 * three elementwise calls, each a few microseconds of dispatch in a decode step. Computed in
 * float32, rounded once to bf16 for a bf16 model. Layouts (contiguous): x [B, T, C] float32 or
 * bf16, x_prev [B, C] float32, mix [J, C] in x's dtype, out [J, B, T, C] in x's dtype. With starts
 * [R + 1] (a ragged batch of R rows, as in wkv7_output): x [n, C] (B = 1, T = n = starts[R]), x_prev
 * [R, C], and prev of token starts[b] is x_prev[b].
 */
SPECIALISED void shift_row(const int bf16, int64_t row, int64_t t, int64_t b, int64_t C, int64_t J, int64_t n,
                           const void *x, const float *x_prev, const void *mix, void *out) {
    for (int64_t j = 0; j < J; j++) {
        if (t == 0) {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float xi = load_elem(x, row * C + c, bf16);
                store_elem(out, j * n + row * C + c, xi + (x_prev[b * C + c] - xi) * load_elem(mix, j * C + c, bf16), bf16);
            }
        } else {
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float xi = load_elem(x, row * C + c, bf16), prev = load_elem(x, (row - 1) * C + c, bf16);
                store_elem(out, j * n + row * C + c, xi + (prev - xi) * load_elem(mix, j * C + c, bf16), bf16);
            }
        }
    }
}

int token_shift_mix(int64_t B, int64_t T, int64_t C, int64_t J, int threads, int bf16, const void *x,
                    const float *x_prev, const void *mix, void *out, int64_t R, const int64_t *starts) {
    const int64_t rows = B * T, n = rows * C;
#pragma omp parallel for schedule(static) num_threads(threads) if (n * J >= 262144)
    for (int64_t row = 0; row < rows; row++) {
        int64_t t = row % T, b = row / T;
        if (starts) { /* the ragged row holding this token (the last start at or before it) */
            int64_t lo = 0, hi = R - 1;
            while (lo < hi) {
                const int64_t mid = (lo + hi + 1) / 2;
                if (starts[mid] <= row) lo = mid;
                else hi = mid - 1;
            }
            b = lo, t = row - starts[lo];
        }
        if (bf16) shift_row(1, row, t, b, C, J, n, x, x_prev, mix, out);
        else shift_row(0, row, t, b, C, J, n, x, x_prev, mix, out);
    }
    return 0;
}
