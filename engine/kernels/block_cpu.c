/* One block of a decode step in one call: engine.model.RWKV7.forward's loop body for T = 1.
 *
 * At one token per row, a block's products read ~14 MB of bf16 weights (0.1B shape) in ~0.6 ms,
 * and the ~25 calls around them (the layer norms, the token shifts, 3 products and 4 LoRA pairs,
 * the fused time mix, the output product, the residual adds, the channel mix) each cost a few to
 * ~25 microseconds of Python, argument checks and tensor allocation: over 12 layers ~3 ms of a
 * ~15 ms bf16 step on the 2-core AVX-512 EPYC (2026-12-02: 14.9 ms call by call, 12.0 here).
 * Here the same lines run from C, calling the same kernels the per-call path calls (matvec_cpu.c,
 * wkv7_cpu.c), in the same order and the same dtypes, so the numbers are those of that path,
 * except the layer norms, whose sums run in float64 here (torch's in float32, in its own order):
 *
 *     xx = layer_norm(x, ln1)                           (dtype)
 *     xr xw xk xv xa xg = token shift of xx             token_shift_mix
 *     r k v = xr W_r^T, xk W_k^T, xv W_v^T              matvec
 *     w = tanh(xw w1) w2; a = sigmoid(a0 + xa a1 a2); g = sigmoid(xg g1) g2; v_gate = xv v1 v2
 *     y = time mix of r w k v a g (v_first, v_gate)     wkv7_output, the state updated in place
 *     x = x + y W_o^T
 *     xx = layer_norm(x, ln2); k = token shift of xx (ffn_x_k)
 *     x = x + relu(k K^T)^2 V^T
 *
 * and the state's token-shift rows: att_out = the first xx, ffn_out = the second (float32), written
 * after their old values were read (they may be the same memory).
 *
 * kind: 0 float32 (weights and activations), 1 bf16 weights and activations with products over
 * float32 x (the activations widened first), 2 bf16 with AVX512_BF16 products (matvec_bf16_dot).
 * Weights (w[], contiguous, in the model's dtype; LoRA matrices transposed to [out, in]):
 *     0 ln1_w 1 ln1_b 2 mix [6, C] 3 W_r 4 W_k 5 W_v 6 w1^T 7 w2^T 8 a1^T 9 a2^T 10 a0 11 v1^T
 *     12 v2^T 13 g1^T 14 g2^T 15 w0 16 r_k 17 k_k 18 k_a 19 v0 20 ln_x_w 21 ln_x_b 22 W_o 23 ln2_w
 *     24 ln2_b 25 ffn_x_k 26 ffn_key [F, C] 27 ffn_value [C, F]
 * (11, 12, 19 NULL in layer 0: no value residual.) dims: C H N F rank_w rank_a rank_v rank_g.
 * x [M, C] dtype (the residual stream, updated in place); att_prev, att_out, ffn_prev, ffn_out
 * [M, C] float32; wkv [M, H, N, N] float32 (updated in place); v_first [M, C] dtype (written in
 * layer 0, read after it); ln_x_eps: the time mix's group norm eps; work: block_step_work_floats(M,
 * dims) floats.
 * Returns 0, or the first nonzero code of a kernel it called (-1: a kind this build lacks).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "bf16_cpu.h"

int matvec_f32(int64_t R, int64_t C, int64_t M, int threads, const float *W, const float *x, void *y,
               int y_bf16);
int matvec_bf16(int64_t R, int64_t C, int64_t M, int threads, const uint16_t *W, const float *x, void *y,
                int y_bf16);
int matvec_bf16_dot(int64_t R, int64_t C, int64_t M, int threads, const uint16_t *W, const uint16_t *x,
                    void *y, int y_bf16);
int lora_rows(int64_t C, int64_t R, int64_t O, int64_t M, int threads, int kind, int act, const void *At,
              const void *Bt, const void *x, void *y, int y_bf16);
int wkv7_output(int64_t B, int64_t T, int64_t H, int64_t N, int threads, int in_bf16, float eps, float *state,
                const void *r, const void *w, const void *k, const void *v, const void *a, const void *g,
                const void *v_first, const void *v_gate, const void *w0, const void *r_k, const void *k_k,
                const void *k_a, const void *v0, const void *ln_w, const void *ln_b, const int64_t *starts,
                void *out);
int token_shift_mix(int64_t B, int64_t T, int64_t C, int64_t J, int threads, int bf16, const void *x,
                    const float *x_prev, const void *mix, void *out, int64_t R, const int64_t *starts);

enum { LN1_W, LN1_B, MIX, W_R, W_K, W_V, W1, W2, A1, A2, A0, V1, V2, G1, G2, W0, R_K, K_K, K_A, V0, LNX_W,
       LNX_B, W_O, LN2_W, LN2_B, FFN_X_K, FFN_KEY, FFN_VALUE, N_WEIGHTS };

/* n bf16 numbers widened into float32 scratch, for the kernels that take float32 x (kind 1) */
static const float *widen(int64_t n, const void *x, float *wide) {
    for (int64_t i = 0; i < n; i++) wide[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return wide;
}

/* F.layer_norm over each of M rows of C (biased variance, eps 1e-5), into out in the same dtype */
static void layer_norm_rows(int64_t M, int64_t C, int bf16, const void *x, const void *wt, const void *bias,
                            void *out) {
    for (int64_t m = 0; m < M; m++) {
        double sum = 0.0, sq = 0.0;
        for (int64_t c = 0; c < C; c++) sum += load_elem(x, m * C + c, bf16);
        const double mean = sum / (double)C;
        for (int64_t c = 0; c < C; c++) {
            const double d = load_elem(x, m * C + c, bf16) - mean;
            sq += d * d;
        }
        const float inv = (float)(1.0 / sqrt(sq / (double)C + 1e-5)), mu = (float)mean;
        for (int64_t c = 0; c < C; c++)
            store_elem(out, m * C + c,
                       (load_elem(x, m * C + c, bf16) - mu) * inv * load_elem(wt, c, bf16) + load_elem(bias, c, bf16),
                       bf16);
    }
}

/* y = x W^T over M rows in the block's kind: x and y in the model's dtype; wide: float32 scratch for
 * kind 1's widened x */
static int product(int kind, int threads, int64_t R, int64_t C, int64_t M, const void *W, const void *x, void *y,
                   float *wide) {
    if (kind == 0) return matvec_f32(R, C, M, threads, W, x, y, 0);
    if (kind == 2) return matvec_bf16_dot(R, C, M, threads, W, x, y, 1);
    return matvec_bf16(R, C, M, threads, W, widen(M * C, x, wide), y, 1);
}

/* act(x A) B by lora_rows, whose kind 1 takes float32 x */
static int lora(int kind, int threads, int64_t C, int64_t R, int64_t M, int act, const void *At, const void *Bt,
                const void *x, void *y, float *wide) {
    if (kind == 1) x = widen(M * C, x, wide);
    return lora_rows(C, R, C, M, threads, kind, act, At, Bt, x, y, kind != 0);
}

int64_t block_step_work_floats(int64_t M, const int64_t *dims) {
    const int64_t C = dims[0], F = dims[3];
    /* xx, 6 mixes, r k v w a g v_gate, y, o; hidden [M, F]; widened x [M, max(C, F)] */
    return M * (C * 16 + F + (F > C ? F : C)) + 32; /* + 32: the float32 part's alignment */
}

int block_step(int64_t M, const int64_t *dims, int threads, int kind, int layer0, float ln_x_eps,
               const void *const *w, void *x, const float *att_prev, float *att_out, const float *ffn_prev,
               float *ffn_out, float *wkv, void *v_first, float *work) {
    const int64_t C = dims[0], H = dims[1], N = dims[2], F = dims[3];
    const int64_t n = M * C;
    const int bf16 = kind != 0;
    const size_t es = bf16 ? 2 : 4; /* bytes per element of the model's dtype */
    char *base = (char *)work;
    void *xx = base, *mixed = base + n * es, *r = base + 7 * n * es, *k = base + 8 * n * es,
         *v = base + 9 * n * es, *wl = base + 10 * n * es, *a = base + 11 * n * es, *g = base + 12 * n * es,
         *vg = base + 13 * n * es, *y = base + 14 * n * es, *o = base + 15 * n * es, *hid = base + 16 * n * es;
    /* kind 1's widened x: float32, past the dtype buffers, on a 64-byte boundary */
    float *wide = (float *)(((uintptr_t)(base + (16 * n + M * F) * es) + 63) & ~(uintptr_t)63);
    int rc;
#define TRY(call) if ((rc = (call)) != 0) return rc

    /* the time mix */
    layer_norm_rows(M, C, bf16, x, w[LN1_W], w[LN1_B], xx);
    TRY(token_shift_mix(M, 1, C, 6, threads, bf16, xx, att_prev, w[MIX], mixed, M, NULL));
    for (int64_t i = 0; i < n; i++) att_out[i] = load_elem(xx, i, bf16);
    const char *mx = mixed; /* xr xw xk xv xa xg, each [M, C] */
    TRY(product(kind, threads, C, C, M, w[W_R], mx, r, wide));
    TRY(lora(kind, threads, C, dims[4], M, 1, w[W1], w[W2], mx + n * es, wl, wide));
    TRY(product(kind, threads, C, C, M, w[W_K], mx + 2 * n * es, k, wide));
    TRY(product(kind, threads, C, C, M, w[W_V], mx + 3 * n * es, v, wide));
    TRY(lora(kind, threads, C, dims[5], M, 0, w[A1], w[A2], mx + 4 * n * es, a, wide));
    for (int64_t i = 0; i < n; i++) { /* a = sigmoid(a0 + a), rounded to the dtype at each step, as torch does */
        float s = load_elem(w[A0], i % C, bf16) + load_elem(a, i, bf16);
        if (bf16) s = bf16_to_f32(f32_to_bf16(s));
        store_elem(a, i, 1.0f / (1.0f + expf(-s)), bf16);
    }
    TRY(lora(kind, threads, C, dims[7], M, 2, w[G1], w[G2], mx + 5 * n * es, g, wide));
    if (layer0) memcpy(v_first, v, n * es);
    else TRY(lora(kind, threads, C, dims[6], M, 0, w[V1], w[V2], mx + 3 * n * es, vg, wide));
    TRY(wkv7_output(M, 1, H, N, threads, bf16, ln_x_eps, wkv, r, wl, k, v, a, g, layer0 ? NULL : v_first,
                    layer0 ? NULL : vg, w[W0], w[R_K], w[K_K], w[K_A], layer0 ? NULL : w[V0], w[LNX_W], w[LNX_B],
                    NULL, y));
    TRY(product(kind, threads, C, C, M, w[W_O], y, o, wide));
    for (int64_t i = 0; i < n; i++) store_elem(x, i, load_elem(x, i, bf16) + load_elem(o, i, bf16), bf16);

    /* the channel mix */
    layer_norm_rows(M, C, bf16, x, w[LN2_W], w[LN2_B], xx);
    TRY(token_shift_mix(M, 1, C, 1, threads, bf16, xx, ffn_prev, w[FFN_X_K], mixed, M, NULL));
    for (int64_t i = 0; i < n; i++) ffn_out[i] = load_elem(xx, i, bf16);
    TRY(product(kind, threads, F, C, M, w[FFN_KEY], mixed, hid, wide));
    for (int64_t i = 0; i < M * F; i++) { /* relu, then the square, each rounded to the dtype */
        const float h = load_elem(hid, i, bf16);
        const float rl = h > 0.0f ? h : 0.0f;
        store_elem(hid, i, rl * rl, bf16);
    }
    TRY(product(kind, threads, C, F, M, w[FFN_VALUE], hid, o, wide));
    for (int64_t i = 0; i < n; i++) store_elem(x, i, load_elem(x, i, bf16) + load_elem(o, i, bf16), bf16);
    return 0;
#undef TRY
}
