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
 * Prefetch. One core keeps only a few cache-line misses in flight, so a loop that waits for each
 * block's rows to arrive reads ~22 GB/s on the 2-core AVX-512 EPYC where a plain streaming sum
 * reads ~29-32. Where the compiler targets AVX-512, the kernels are written with intrinsics and
 * ask for the rows two blocks ahead (PREFETCH_BLOCKS) into L2 while multiplying the current
 * ones: 768 x 768 bf16 in 37 us against 56 (32 GB/s), the 65536 x 768 head in 3.0 ms against 4.5,
 * float32 ~31-35 GB/s against ~27. One vector (batch-1 decode) reads W row after row instead, one
 * long stream the hardware prefetcher follows (PRODUCT_BODY). Elsewhere (AVX2, ARM) the portable
 * loop below runs, and the hardware prefetcher is left to do the work; it too reads one vector's W
 * row after row (built with -mno-avx512f on the EPYC, bf16 weights read 33.6 GB/s against 18.7
 * for four rows interleaved, float32 35.6 against 30.1; cpu-0.1B-matvec-ab-2026-12-02-epyc.txt in
 * docs/perf).
 *
 * Layouts (contiguous): W [R, C] float32 or bf16 (uint16), x [M, C] float32 (bf16 for
 * matvec_bf16_dot), y [M, R] float32, or bf16 where y_bf16 is set.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16_cpu.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define ROWS 4

/* One definition for both weight types: WT is the stored type, LOAD(p) widens one element.
 * Vectors go two at a time: four rows of W times two vectors is eight accumulators, six loads per
 * eight multiply-adds (one vector at a time, five loads per four: the loop waits on loads) and
 * one horizontal sum per accumulator at the end of a row. */
#define MATVEC_BODY(WT, LOAD)                                                                       \
    if (M == 1) { /* one vector: W row after row, one stream (PRODUCT_BODY below says why) */       \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if (R * C >= 65536)")       \
        for (int64_t r = 0; r < R; r++) {                                                           \
            const WT *restrict wr = W + r * C;                                                      \
            float acc = 0.0f;                                                                       \
            _Pragma("omp simd reduction(+ : acc)")                                                  \
            for (int64_t c = 0; c < C; c++) acc += LOAD(wr[c]) * x[c];                              \
            store_elem(y, r, acc, y_bf16);                                                          \
        }                                                                                           \
        return 0;                                                                                   \
    }                                                                                               \
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
                const int64_t ia = m * R + r0, ib = ia + R;                                         \
                store_elem(y, ia, a0, y_bf16), store_elem(y, ia + 1, a1, y_bf16);                   \
                store_elem(y, ia + 2, a2, y_bf16), store_elem(y, ia + 3, a3, y_bf16);               \
                store_elem(y, ib, b0, y_bf16), store_elem(y, ib + 1, b1, y_bf16);                   \
                store_elem(y, ib + 2, b2, y_bf16), store_elem(y, ib + 3, b3, y_bf16);               \
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
                const int64_t im = m * R + r0;                                                      \
                store_elem(y, im, a0, y_bf16), store_elem(y, im + 1, a1, y_bf16);                   \
                store_elem(y, im + 2, a2, y_bf16), store_elem(y, im + 3, a3, y_bf16);               \
            }                                                                                       \
        } else { /* the last R % 4 rows */                                                          \
            for (int64_t m = 0; m < M; m++)                                                         \
                for (int64_t r = r0; r < R; r++) {                                                  \
                    const WT *restrict wr = W + r * C;                                              \
                    const float *restrict xm = x + m * C;                                           \
                    float acc = 0.0f;                                                               \
                    _Pragma("omp simd reduction(+ : acc)")                                          \
                    for (int64_t c = 0; c < C; c++) acc += LOAD(wr[c]) * xm[c];                     \
                    store_elem(y, m * R + r, acc, y_bf16);                                          \
                }                                                                                   \
        }                                                                                           \
    }                                                                                               \
    return 0;


#define LOAD_F32(v) (v)
#define LOAD_BF16(v) bf16_to_f32(v)

#if defined(__AVX512F__)
#define PREFETCH_BLOCKS 2
#define VECS 4 /* vectors per pass over a block of four rows (BLOCK_FN) */
#define STREAM_PREFETCH 1536 /* bytes ahead in the row stream of one vector (ROW_FN) */

/* The four sums of a0..a3 in one vector: each 512-bit accumulator is folded to 256 bits, then two
 * rounds of horizontal adds bring the four to one lane each. */
static inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m256 b0 = _mm256_add_ps(_mm512_castps512_ps256(a0), _mm512_extractf32x8_ps(a0, 1));
    const __m256 b1 = _mm256_add_ps(_mm512_castps512_ps256(a1), _mm512_extractf32x8_ps(a1, 1));
    const __m256 b2 = _mm256_add_ps(_mm512_castps512_ps256(a2), _mm512_extractf32x8_ps(a2, 1));
    const __m256 b3 = _mm256_add_ps(_mm512_castps512_ps256(a3), _mm512_extractf32x8_ps(a3, 1));
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(b0, b1), _mm256_hadd_ps(b2, b3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* One chunk of a row as a vector: n elements are left in the row, so lanes at and past n are zero. */
static inline __m512 load_f32(const float *p, int64_t n) {
    if (n >= 16) return _mm512_loadu_ps(p);
    return _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
}
static inline __m512 load_bf16_as_f32(const uint16_t *p, int64_t n) { /* 16 bf16, widened */
    const __m256i h = n >= 16 ? _mm256_loadu_si256((const __m256i *)p)
                              : _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#define FMA_F32(acc, w, x) _mm512_fmadd_ps(w, x, acc)

/* BLOCK_FN(name, WT, XT, VT, STEP, LOADW, LOADX, FMA): nrows (1-4) rows of W from w times nvec
 * (1-VECS) vectors of x from xs, into y[y0 + m * R + r]; STEP elements of a row per vector; pf,
 * where not NULL, is the block PREFETCH_BLOCKS ahead, asked for into L2 a chunk at a time. */
#define BLOCK_FN(NAME, WT, XT, VT, STEP, LOADW, LOADX, FMA)                                           \
    static inline void NAME(const WT *restrict w, const XT *restrict xs, void *restrict y,           \
                            int y_bf16, int64_t y0, int64_t R, int64_t C, int nrows, int nvec,       \
                            const WT *pf) {                                                          \
        __m512 acc[VECS][4];                                                                         \
        for (int m = 0; m < VECS; m++)                                                               \
            for (int r = 0; r < 4; r++) acc[m][r] = _mm512_setzero_ps();                             \
        for (int64_t c = 0; c < C; c += STEP) {                                                      \
            const int64_t n = C - c;                                                                 \
            if (pf)                                                                                  \
                for (int r = 0; r < 4; r++)                                                          \
                    if (r < nrows) _mm_prefetch((const char *)(pf + r * C + c), _MM_HINT_T1);        \
            VT u[4];                                                                                 \
            for (int r = 0; r < 4; r++)                                                              \
                u[r] = r < nrows ? LOADW(w + r * C + c, n) : (VT)_mm512_setzero_si512();             \
            for (int m = 0; m < VECS; m++) {                                                         \
                if (m >= nvec) break;                                                                \
                const VT v = LOADX(xs + m * C + c, n);                                               \
                for (int r = 0; r < 4; r++)                                                          \
                    if (r < nrows) acc[m][r] = FMA(acc[m][r], u[r], v);                              \
            }                                                                                        \
        }                                                                                            \
        for (int m = 0; m < nvec; m++) {                                                             \
            float sums[4];                                                                           \
            if (nrows == 4) _mm_storeu_ps(sums, sum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));    \
            else for (int r = 0; r < nrows; r++) sums[r] = _mm512_reduce_add_ps(acc[m][r]);           \
            for (int r = 0; r < nrows; r++) store_elem(y, y0 + m * R + r, sums[r], y_bf16);          \
        }                                                                                            \
    }

/* ROW_FN(name, WT, XT, VT, STEP, LOADW, LOADX, FMA): row r of W times the vector x into y[r]; four
 * accumulators over consecutive chunks (four chains of the multiply-add's latency, not one), and at
 * each line of the row the line STREAM_PREFETCH bytes ahead in the stream asked for into L2. */
#define ROW_FN(NAME, WT, XT, VT, STEP, LOADW, LOADX, FMA)                                             \
    static inline void NAME(const WT *restrict W, const XT *restrict x, void *restrict y, int y_bf16, \
                            int64_t r, int64_t C) {                                                  \
        const WT *restrict w = W + r * C;                                                            \
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),              \
                         _mm512_setzero_ps()};                                                       \
        for (int64_t c = 0; c < C; c += 4 * STEP)                                                    \
            for (int j = 0; j < 4; j++) {                                                            \
                const int64_t cj = c + j * STEP, n = C - cj;                                         \
                if (n <= 0) break;                                                                   \
                if ((cj * (int64_t)sizeof(WT)) % 64 == 0)                                            \
                    _mm_prefetch((const char *)(w + cj) + STREAM_PREFETCH, _MM_HINT_T1);             \
                acc[j] = FMA(acc[j], LOADW(w + cj, n), LOADX(x + cj, n));                            \
            }                                                                                        \
        const __m512 s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])); \
        store_elem(y, r, _mm512_reduce_add_ps(s), y_bf16);                                           \
    }

/* The product, split between threads in contiguous halves of W's rows. For one vector (a batch-1
 * decode step: bound by the bytes of W read) W is read row after row, one stream. On the 2-core
 * AVX-512 EPYC (2026-12-02, the 0.1B decode step's 73 matrices in turn; the read probe at 45 and at
 * 34 GB/s) bf16 read 44.8 and 35.4 GB/s against 36.8 and 31.1 for four rows interleaved (four short
 * streams a row apart, which the hardware prefetcher keeps losing), float32 53.8 and 34.1 against
 * 41.9 and 31.4 (docs/perf/cpu-0.1B-matvec-ab-2026-12-02-epyc.txt). More vectors make the product
 * bound by its multiply-adds instead (in a first try the row stream read ~28 GB/s for two vectors
 * against ~45): blocks of four rows, each chunk of a row loaded once for up to VECS = 4 vectors
 * (sixteen accumulators, eight loads per sixteen multiply-adds; two vectors at a time, six loads
 * per eight, read 6-10% slower in bf16 and 11-32% in float32 from 3 vectors up: the A/B file's
 * run 6), the vectors four at a time; only the first pass over a block prefetches, later ones
 * find the rows in cache. The common blocks get constant counts, so the compiler unrolls them
 * branch-free. */
#define PRODUCT_BODY(BLOCK, ROW, WT)                                                                 \
    if (M == 1) {                                                                                    \
        _Pragma("omp parallel for schedule(static) num_threads(threads) if (R * C >= 65536)")        \
        for (int64_t r = 0; r < R; r++) ROW(W, x, y, y_bf16, r, C);                                  \
        return 0;                                                                                    \
    }                                                                                                \
    const int64_t blocks = (R + ROWS - 1) / ROWS;                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if (R * C >= 65536)")            \
    for (int64_t blk = 0; blk < blocks; blk++) {                                                     \
        const int64_t r0 = blk * ROWS;                                                               \
        const int nrows = (int)(R - r0 < ROWS ? R - r0 : ROWS);                                      \
        const WT *w = W + r0 * C;                                                                    \
        const WT *pf = blk + PREFETCH_BLOCKS < blocks ? w + PREFETCH_BLOCKS * ROWS * C : NULL;       \
        for (int64_t m = 0; m < M; m += VECS) {                                                      \
            const int nvec = (int)(M - m >= VECS ? VECS : M - m);                                    \
            const int64_t y0 = m * R + r0;                                                           \
            const WT *p = m == 0 ? pf : NULL;                                                        \
            const int full = nrows == ROWS;                                                          \
            if (full && nvec == VECS) BLOCK(w, x + m * C, y, y_bf16, y0, R, C, ROWS, VECS, p);       \
            else if (full && nvec == 3) BLOCK(w, x + m * C, y, y_bf16, y0, R, C, ROWS, 3, p);        \
            else if (full && nvec == 2) BLOCK(w, x + m * C, y, y_bf16, y0, R, C, ROWS, 2, p);        \
            else if (full) BLOCK(w, x + m * C, y, y_bf16, y0, R, C, ROWS, 1, p);                     \
            else BLOCK(w, x + m * C, y, y_bf16, y0, R, C, nrows, nvec, p);                           \
        }                                                                                            \
    }                                                                                                \
    return 0;

BLOCK_FN(block_f32, float, float, __m512, 16, load_f32, load_f32, FMA_F32)
BLOCK_FN(block_bf16, uint16_t, float, __m512, 16, load_bf16_as_f32, load_f32, FMA_F32)
ROW_FN(row_f32, float, float, __m512, 16, load_f32, load_f32, FMA_F32)
ROW_FN(row_bf16, uint16_t, float, __m512, 16, load_bf16_as_f32, load_f32, FMA_F32)

#define F32_BODY PRODUCT_BODY(block_f32, row_f32, float)
#define BF16_BODY PRODUCT_BODY(block_bf16, row_bf16, uint16_t)
#else /* the portable loop: the compiler vectorises the simd reductions for the target it has */
#define F32_BODY MATVEC_BODY(float, LOAD_F32)
#define BF16_BODY MATVEC_BODY(uint16_t, LOAD_BF16)
#endif

int matvec_f32(int64_t R, int64_t C, int64_t M, int threads, const float *restrict W,
               const float *restrict x, void *restrict y, int y_bf16) {
    F32_BODY
}

int matvec_bf16(int64_t R, int64_t C, int64_t M, int threads, const uint16_t *restrict W,
                const float *restrict x, void *restrict y, int y_bf16) {
    BF16_BODY
}

#if defined(__AVX512BF16__)
/* 32 bf16 numbers from p, the lanes at and past n zero (a row's last, partial chunk). */
static inline __m512bh load_bf16(const uint16_t *p, int64_t n) {
    if (n >= 32) return (__m512bh)_mm512_loadu_si512(p);
    return (__m512bh)_mm512_maskz_loadu_epi16((__mmask32)((1ULL << n) - 1), p);
}
#define DOT_BF16(acc, w, x) _mm512_dpbf16_ps(acc, w, x)
BLOCK_FN(block_dot, uint16_t, uint16_t, __m512bh, 32, load_bf16, load_bf16, DOT_BF16)
ROW_FN(row_dot, uint16_t, uint16_t, __m512bh, 32, load_bf16, load_bf16, DOT_BF16)
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
                    const uint16_t *restrict x, void *restrict y, int y_bf16) {
#if defined(__AVX512BF16__)
    PRODUCT_BODY(block_dot, row_dot, uint16_t)
#else
    (void)R, (void)C, (void)M, (void)threads, (void)W, (void)x, (void)y, (void)y_bf16;
    return -1;
#endif
}

/* A LoRA pair over a few rows: y = act(x A) B, with A^T [R, C] and B^T [O, R] given as linear
 * weights ([out, in], contiguous), so both products are the kernels above; h = x A stays float32
 * between them (the torch form rounds it to the model's dtype twice, around act). One call in
 * place of two products, an activation and their tensors: a decode step has four pairs per layer.
 * kind: 0 float32 weights and x, 1 bf16 weights and float32 x, 2 bf16 weights and x
 * (AVX512_BF16); act: 0 none, 1 tanh, 2 sigmoid. Returns 0, -1 for a kind this build lacks,
 * -2 without memory for h. */
int lora_rows(int64_t C, int64_t R, int64_t O, int64_t M, int threads, int kind, int act,
              const void *At, const void *Bt, const void *x, void *y, int y_bf16) {
    float *h = malloc((size_t)(M * R > 0 ? M * R : 1) * sizeof(float));
    if (!h) return -2;
    int rc = kind == 0   ? matvec_f32(R, C, M, threads, At, x, h, 0)
             : kind == 1 ? matvec_bf16(R, C, M, threads, At, x, h, 0)
             : kind == 2 ? matvec_bf16_dot(R, C, M, threads, At, x, h, 0)
                         : -1;
    if (rc == 0) {
        for (int64_t i = 0; i < M * R; i++)
            h[i] = act == 1 ? tanhf(h[i]) : act == 2 ? 1.0f / (1.0f + expf(-h[i])) : h[i];
        rc = kind == 0 ? matvec_f32(O, R, M, threads, Bt, h, y, y_bf16) : matvec_bf16(O, R, M, threads, Bt, h, y, y_bf16);
    }
    free(h);
    return rc;
}
