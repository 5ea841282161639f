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
 * matvec_bf16_dot is the bf16 model's form, for CPUs with AVX512_BF16: x is bf16 too (the bf16
 * model's activations are), and one vdpbf16ps multiplies 32 bf16 pairs and adds them into 16
 * float32 lanes. A product of two bf16 numbers is exact in float32, so it differs from widening
 * both (matvec_bf16 on x.float()) only in the order of the float32 additions and in treating
 * denormal inputs and results as zero (the instruction's DAZ/FTZ; never seen in weights); it does a
 * quarter of the widening loop's instructions per weight (on an AVX512_BF16 EPYC: the 65536 x 768
 * head at one vector in 4.2 ms against 5.6). Built only where the compiler targets AVX512_BF16
 * (-march=native on such a CPU); elsewhere matvec_bf16_dot_available() says 0.
 *
 * Layouts (contiguous): W [R, C] float32 or bf16 (uint16), x [M, C] float32 (bf16 for
 * matvec_bf16_dot), y [M, R] float32.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

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

#if defined(__AVX512BF16__)
/* 32 bf16 numbers from p, the lanes at and past n zero (a row's last, partial chunk). */
static inline __m512bh load_bf16(const uint16_t *p, int64_t n) {
    if (n >= 32) return (__m512bh)_mm512_loadu_si512(p);
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ULL << n) - 1), p);
}

/* nrows (1-4) rows of W from w times nvec (1-2) vectors of x from xs, into y[m * R + r]. */
static inline void dot_block(const uint16_t *restrict w, const uint16_t *restrict xs, float *restrict y,
                             int64_t R, int64_t C, int nrows, int nvec) {
    __m512 acc[2][4];
    for (int m = 0; m < 2; m++)
        for (int r = 0; r < 4; r++) acc[m][r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 32) {
        const int64_t n = C - c;
        __m512bh u[4];
        for (int r = 0; r < 4; r++)
            u[r] = r < nrows ? load_bf16(w + r * C + c, n) : (__m512bh)_mm512_setzero_si512();
        for (int m = 0; m < 2; m++) {
            if (m >= nvec) break;
            const __m512bh v = load_bf16(xs + m * C + c, n);
            for (int r = 0; r < 4; r++)
                if (r < nrows) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], u[r], v);
        }
    }
    for (int m = 0; m < nvec; m++)
        for (int r = 0; r < nrows; r++) y[m * R + r] = _mm512_reduce_add_ps(acc[m][r]);
}
#endif

int matvec_bf16_dot_available(void) {
#if defined(__AVX512BF16__)
    return 1;
#else
    return 0;
#endif
}

/* y = x W^T with W and x bf16: four rows of W at a time, the vectors two at a time (eight
 * accumulators), as the loops above. Returns -1 where the CPU code has no AVX512_BF16. */
int matvec_bf16_dot(int64_t R, int64_t C, int64_t M, int threads, const uint16_t *restrict W,
                    const uint16_t *restrict x, float *restrict y) {
#if defined(__AVX512BF16__)
    const int64_t blocks = (R + ROWS - 1) / ROWS;
    _Pragma("omp parallel for schedule(static) num_threads(threads) if (R * C >= 65536)")
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t r0 = blk * ROWS;
        const int nrows = (int)(R - r0 < ROWS ? R - r0 : ROWS);
        for (int64_t m = 0; m < M; m += 2) {
            const int nvec = M - m >= 2 ? 2 : 1;
            const uint16_t *w = W + r0 * C, *xm = x + m * C;
            float *ym = y + m * R + r0;
            /* the common blocks with constant counts, so the compiler unrolls them branch-free */
            if (nrows == ROWS && nvec == 2) dot_block(w, xm, ym, R, C, ROWS, 2);
            else if (nrows == ROWS) dot_block(w, xm, ym, R, C, ROWS, 1);
            else dot_block(w, xm, ym, R, C, nrows, nvec);
        }
    }
    return 0;
#else
    (void)R, (void)C, (void)M, (void)threads, (void)W, (void)x, (void)y;
    return -1;
#endif
}
