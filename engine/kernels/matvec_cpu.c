/* A weight matrix times a few vectors on the CPU: the decode-step products of engine.model.
 *
 *     y[m, r] = sum_c W[r, c] * x[m, c]        (y = x W^T, what F.linear computes)
 *
 * W is a linear weight in the checkpoint's [out, in] layout, read once from memory; for each
 * block of four of its rows (16 KB or less for n_embd up to 1024, in L1), every vector of x
 * takes its four dot products while the rows are cached, so a step over M vectors costs one
 * pass over W. With one or a few vectors the product is bound by the bytes of W read, so
 * matvec_bf16 reads bf16 weights (half the bytes of float32) and widens each to float32 in
 * registers (a bf16 number is the top half of a float32: a 16-bit shift). MKL's row-major
 * matrix-vector form ran at ~13 GB/s on the AVX2 reference machine against this loop's ~24;
 * for many vectors blocked products win. Which form runs for which row count is measured on
 * each machine (engine/kernels/tuning.py), not fixed here.
 * Accumulation is float32 in vector lanes (the compiler's simd reduction), like a float32 GEMM.
 *
 * Layouts (contiguous): W [R, C] float32 or bf16 (uint16), x [M, C] float32, y [M, R] float32.
 */
#include <stdint.h>
#include <string.h>

#define ROWS 4

static inline float bf16_to_f32(uint16_t h) {
    const uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f); /* the compiler turns this into a register move */
    return f;
}

/* One definition for both weight types: WT is the stored type, LOAD(p) widens one element.
 * Vectors go two at a time: four rows of W times two vectors is eight accumulators, six loads per
 * eight multiply-adds (one vector at a time, five loads per four: the loop waits on loads) and
 * one horizontal sum per accumulator at the end of a row. */
#define MATVEC_BODY(WT, LOAD)                                                                       \
    const int64_t blocks = (R + ROWS - 1) / ROWS;                                                   \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if (R * C >= 65536)")           \
    for (int64_t blk = 0; blk < blocks; blk++) {                                                    \
        const int64_t r0 = blk * ROWS;                                                              \
        if (R - r0 >= ROWS) {                                                                       \
            const WT *restrict w0 = W + r0 * C, *restrict w1 = w0 + C, *restrict w2 = w1 + C,       \
                     *restrict w3 = w2 + C;                                                         \
            int64_t m = 0;                                                                          \
            for (; m + 1 < M; m += 2) {                                                             \
                const float *restrict xa = x + m * C, *restrict xb = xa + C;                        \
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                   \
                float b0 = 0.0f, b1 = 0.0f, b2 = 0.0f, b3 = 0.0f;                                   \
                _Pragma("omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)")                   \
                for (int64_t c = 0; c < C; c++) {                                                   \
                    const float va = xa[c], vb = xb[c];                                             \
                    const float u0 = LOAD(w0[c]), u1 = LOAD(w1[c]), u2 = LOAD(w2[c]),               \
                                u3 = LOAD(w3[c]);                                                   \
                    a0 += u0 * va, a1 += u1 * va, a2 += u2 * va, a3 += u3 * va;                     \
                    b0 += u0 * vb, b1 += u1 * vb, b2 += u2 * vb, b3 += u3 * vb;                     \
                }                                                                                   \
                float *restrict ya = y + m * R + r0, *restrict yb = ya + R;                         \
                ya[0] = a0, ya[1] = a1, ya[2] = a2, ya[3] = a3;                                     \
                yb[0] = b0, yb[1] = b1, yb[2] = b2, yb[3] = b3;                                     \
            }                                                                                       \
            if (m < M) { /* an odd vector left */                                                   \
                const float *restrict xm = x + m * C;                                               \
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;                                   \
                _Pragma("omp simd reduction(+ : a0, a1, a2, a3)")                                   \
                for (int64_t c = 0; c < C; c++) {                                                   \
                    const float xv = xm[c];                                                         \
                    a0 += LOAD(w0[c]) * xv;                                                         \
                    a1 += LOAD(w1[c]) * xv;                                                         \
                    a2 += LOAD(w2[c]) * xv;                                                         \
                    a3 += LOAD(w3[c]) * xv;                                                         \
                }                                                                                   \
                float *restrict ym = y + m * R + r0;                                                \
                ym[0] = a0, ym[1] = a1, ym[2] = a2, ym[3] = a3;                                     \
            }                                                                                       \
        } else { /* the last R % 4 rows */                                                          \
            for (int64_t m = 0; m < M; m++)                                                         \
                for (int64_t r = r0; r < R; r++) {                                                  \
                    const WT *restrict wr = W + r * C;                                              \
                    const float *restrict xm = x + m * C;                                           \
                    float acc = 0.0f;                                                               \
                    _Pragma("omp simd reduction(+ : acc)")                                          \
                    for (int64_t c = 0; c < C; c++) acc += LOAD(wr[c]) * xm[c];                     \
                    y[m * R + r] = acc;                                                             \
                }                                                                                   \
        }                                                                                           \
    }                                                                                               \
    return 0;

#define LOAD_F32(v) (v)
#define LOAD_BF16(v) bf16_to_f32(v)

int matvec_f32(int64_t R, int64_t C, int64_t M, int threads, const float *restrict W,
               const float *restrict x, float *restrict y) {
    MATVEC_BODY(float, LOAD_F32)
}

int matvec_bf16(int64_t R, int64_t C, int64_t M, int threads, const uint16_t *restrict W,
                const float *restrict x, float *restrict y) {
    MATVEC_BODY(uint16_t, LOAD_BF16)
}
