/* WKV-7 recurrence on the CPU: the fast twin of engine.model.wkv7_reference.
 *
 * Per head, the state S is N x N (row i: value index, column j: key index), and per step
 *     sa = S a        S = S diag(w) + sa b^T + v k^T        y = S r
 * The kernel works on the head's state transposed (St[j][i] = S[i][j], key-major) in a local
 * buffer that stays in L1: then both matrix-vector products and the update are, for each key
 * j, one vector operation over all N rows with w[j], a[j], b[j], k[j], r[j] broadcast, with no
 * horizontal sums. (Row by row, each dot product is a chain of dependent adds: ~5x slower here.)
 * The two transposes cost more than they save for a step or two (decoding), so short sequences
 * run row by row instead (run_rows: each row is independent; rows run in parallel).
 * Heads run in parallel (OpenMP); each head runs its whole sequence with no synchronisation.
 *
 * Layouts (all float32, contiguous):
 *   state       [B, H, N, N]   updated in place
 *   r w k v a b [B, T, H, N]   w is the decay in (0, 1)
 *   y           [B, T, H, N]   written
 */
#include <stdint.h>

#define MAX_N 128
#define TRANSPOSE_MIN_T 4 /* from here on the transposed form wins (measured on the reference CPU) */

/* Steps 0..T of one state row i, pointers at [bb, t=0, h, 0]. */
static void run_row(int64_t T, int64_t stride, int64_t N, int64_t i, float *restrict s_row,
                    const float *restrict r, const float *restrict w, const float *restrict k,
                    const float *restrict v, const float *restrict a, const float *restrict b,
                    float *restrict y) {
    float s[MAX_N];
    for (int64_t j = 0; j < N; j++) s[j] = s_row[j];
    for (int64_t t = 0; t < T; t++) {
        const int64_t o = t * stride;
        double sa_acc = 0.0;
#pragma omp simd reduction(+ : sa_acc)
        for (int64_t j = 0; j < N; j++) sa_acc += (double)s[j] * a[o + j];
        const float sa = (float)sa_acc, vi = v[o + i];
        double yi = 0.0;
#pragma omp simd reduction(+ : yi)
        for (int64_t j = 0; j < N; j++) {
            const float x = s[j] * w[o + j] + sa * b[o + j] + vi * k[o + j];
            s[j] = x;
            yi += (double)x * r[o + j];
        }
        y[o + i] = (float)yi;
    }
    for (int64_t j = 0; j < N; j++) s_row[j] = s[j];
}

static void run_head(int64_t T, int64_t stride, int64_t N, float *restrict S,
                     const float *restrict r, const float *restrict w, const float *restrict k,
                     const float *restrict v, const float *restrict a, const float *restrict b,
                     float *restrict y) {
    float St[MAX_N * MAX_N]; /* St[j * N + i] = S[i][j] */
    double sa_acc[MAX_N], acc[MAX_N]; /* double accumulators: sums of 64 products stay exact to float */
    float sa[MAX_N];
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) St[j * N + i] = S[i * N + j];
    for (int64_t t = 0; t < T; t++) {
        const int64_t o = t * stride;
        const float *restrict vt = v + o;
        for (int64_t i = 0; i < N; i++) sa_acc[i] = 0.0, acc[i] = 0.0;
        for (int64_t j = 0; j < N; j++) { /* sa = S a */
            const double aj = a[o + j];
            const float *restrict col = St + j * N;
            for (int64_t i = 0; i < N; i++) sa_acc[i] += col[i] * aj;
        }
        for (int64_t i = 0; i < N; i++) sa[i] = (float)sa_acc[i];
        for (int64_t j = 0; j < N; j++) { /* update column j of S, then y += S[:, j] r[j] */
            const float wj = w[o + j], bj = b[o + j], kj = k[o + j];
            const double rj = r[o + j];
            float *restrict col = St + j * N;
            for (int64_t i = 0; i < N; i++) {
                const float x = col[i] * wj + sa[i] * bj + vt[i] * kj;
                col[i] = x;
                acc[i] += x * rj;
            }
        }
        for (int64_t i = 0; i < N; i++) y[o + i] = (float)acc[i];
    }
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++) S[i * N + j] = St[j * N + i];
}

/* Returns 0 on success, 1 if N is larger than MAX_N (checked by the Python wrapper first). */
int wkv7_forward_f32(int64_t B, int64_t T, int64_t H, int64_t N, int threads, float *state,
                     const float *r, const float *w, const float *k, const float *v,
                     const float *a, const float *b, float *y) {
    if (N > MAX_N) return 1;
    const int64_t heads = B * H, stride = H * N;
    if (T < TRANSPOSE_MIN_T) {
        const int64_t rows = heads * N;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * T >= 4096)
        for (int64_t row = 0; row < rows; row++) {
            const int64_t bh = row / N, i = row % N;
            const int64_t base = ((bh / H) * T * H + bh % H) * N; /* [bb, t=0, h, 0] */
            run_row(T, stride, N, i, state + (bh * N + i) * N, r + base, w + base, k + base,
                    v + base, a + base, b + base, y + base);
        }
        return 0;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (heads > 1 && heads * T * N >= 8192)
    for (int64_t bh = 0; bh < heads; bh++) {
        const int64_t base = ((bh / H) * T * H + bh % H) * N; /* [bb, t=0, h, 0] */
        run_head(T, stride, N, state + bh * N * N, r + base, w + base, k + base, v + base, a + base,
                 b + base, y + base);
    }
    return 0;
}
