/* int8-weight linear layers for a few rows (the math and the layout are in q8.h).
 *
 * The structure is q4.c's (row_blocks.h): one pass over a block of 16 output rows serves up to
 * CHUNK input rows, so the weights are read once per call whatever M is, a prefetch runs ahead of
 * the loads, and the team splits the blocks. Activations are quantized by q4's code (team.h).
 *
 * Three paths compute identical bits: the dot products are exact int32 sums on each, and every
 * path runs the same two float multiplies per output. AVX-512 VNNI multiplies the activations,
 * made unsigned (a + 128), by the signed codes with vpdpbusd and takes 128 * the row's code sum
 * off (int32 arithmetic wraps, and the true sum fits); AVX2 multiplies |a| by the codes given
 * a's sign (vpsignb) with vpmaddubsw (2 * 127 * 127 < 32767: no saturation) and vpmaddwd; the
 * scalar path is portable C.
 */
#include "q8.h"
#include "q4.h"
#include "row_blocks.h"
#include "team.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t n, quads;
    const int8_t *codes;
    const float *scales;
    const int32_t *sums;
    const int8_t *a;   /* m x 4 quads quantized activations (unsigned, a + 128, on the VNNI path) */
    const float *sa;   /* m activation scales */
    float *y;          /* m x n */
} q8_job;

typedef void (*q8_block_fn)(const q8_job *job, int64_t block, int64_t row, int rows);

/* Row r's 16 outputs of block b; the last block of a row count not a multiple of 16 writes only its rows. */
static void store_block(const q8_job *j, int64_t b, int64_t r, const float *out) {
    const int64_t left = j->n - b * BLOCK_ROWS;
    memcpy(j->y + r * j->n + b * BLOCK_ROWS, out, (size_t)(left < BLOCK_ROWS ? left : BLOCK_ROWS) * sizeof *out);
}

static void block_scalar(const q8_job *j, int64_t b, int64_t row, int rows) {
    const int8_t *codes = j->codes + b * j->quads * 64;
    for (int r = 0; r < rows; r++) {
        const int8_t *a = j->a + (row + r) * 4 * j->quads;
        int32_t dot[BLOCK_ROWS] = {0};
        for (int64_t o = 0; o < j->quads; o++)
            for (int i = 0; i < BLOCK_ROWS; i++)
                for (int t = 0; t < 4; t++)
                    dot[i] += (int32_t)codes[o * 64 + 4 * i + t] * a[4 * o + t];
        float out[BLOCK_ROWS];
        for (int i = 0; i < BLOCK_ROWS; i++)
            out[i] = ((float)dot[i] * j->scales[b * BLOCK_ROWS + i]) * j->sa[row + r];
        store_block(j, b, row + r, out);
    }
}

#if ROW_BLOCKS_X86

/* `rows` is a constant at each call site below, so the accumulators become registers. */
static inline __attribute__((always_inline)) TARGET_AVX512 void avx512_rows(const q8_job *j, int64_t b, int64_t row,
                                                                             const int rows) {
    const int8_t *codes = j->codes + b * j->quads * 64;
    __m512i dot[CHUNK];
    for (int r = 0; r < rows; r++)
        dot[r] = _mm512_setzero_si512();
    for (int64_t o = 0; o < j->quads; o++) {
        _mm_prefetch((const char *)(codes + o * 64 + PREFETCH_BYTES), _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512((const void *)(codes + o * 64));
        for (int r = 0; r < rows; r++)
            dot[r] = _mm512_dpbusd_epi32(dot[r], _mm512_set1_epi32(load4(j->a + (row + r) * 4 * j->quads + 4 * o)), v);
    }
    const __m512i bias = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(j->sums + b * BLOCK_ROWS)), 7);
    const __m512 scale = _mm512_loadu_ps(j->scales + b * BLOCK_ROWS);
    for (int r = 0; r < rows; r++) {
        const __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r], bias));
        float out[BLOCK_ROWS];
        _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_mul_ps(exact, scale), _mm512_set1_ps(j->sa[row + r])));
        store_block(j, b, row + r, out);
    }
}

TARGET_AVX512 static void block_avx512(const q8_job *j, int64_t b, int64_t row, int rows) {
    CALL_WITH_CONSTANT_ROWS(avx512_rows, j, b, row, rows);
}

/* AVX2: rows 0-7 of a block from the first 32 bytes of each 64, rows 8-15 from the second. */
static inline __attribute__((always_inline)) TARGET_AVX2 void avx2_rows(const q8_job *j, int64_t b, int64_t row,
                                                                         const int rows) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *codes = j->codes + b * j->quads * 64;
    __m256i dot[2][2];
    for (int r = 0; r < rows; r++)
        dot[r][0] = dot[r][1] = _mm256_setzero_si256();
    for (int64_t o = 0; o < j->quads; o++) {
        _mm_prefetch((const char *)(codes + o * 64 + PREFETCH_BYTES), _MM_HINT_T0);
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(codes + o * 64));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(codes + o * 64 + 32));
        for (int r = 0; r < rows; r++) {
            const __m256i a = _mm256_set1_epi32(load4(j->a + (row + r) * 4 * j->quads + 4 * o));
            const __m256i size = _mm256_sign_epi8(a, a); /* |a| as unsigned bytes */
            const __m256i p0 = _mm256_maddubs_epi16(size, _mm256_sign_epi8(v0, a));
            const __m256i p1 = _mm256_maddubs_epi16(size, _mm256_sign_epi8(v1, a));
            dot[r][0] = _mm256_add_epi32(dot[r][0], _mm256_madd_epi16(p0, ones));
            dot[r][1] = _mm256_add_epi32(dot[r][1], _mm256_madd_epi16(p1, ones));
        }
    }
    for (int r = 0; r < rows; r++) {
        float out[BLOCK_ROWS];
        for (int h = 0; h < 2; h++) {
            const __m256 scale = _mm256_loadu_ps(j->scales + b * BLOCK_ROWS + 8 * h);
            const __m256 exact = _mm256_cvtepi32_ps(dot[r][h]);
            _mm256_storeu_ps(out + 8 * h, _mm256_mul_ps(_mm256_mul_ps(exact, scale), _mm256_set1_ps(j->sa[row + r])));
        }
        store_block(j, b, row + r, out);
    }
}

TARGET_AVX2 static void block_avx2(const q8_job *j, int64_t b, int64_t row, int rows) {
    CALL_IN_PAIRS_OF_ROWS(avx2_rows, j, b, row, rows);
}

#endif /* ROW_BLOCKS_X86 */

int q8_linear(int64_t m, int64_t n, int64_t k, const int8_t *codes, const float *scales, const int32_t *sums,
              const float *x, float *y, int threads, int isa) {
    if (m < 0 || n < 0 || k < 1 || k > Q8_MAX_K || threads < 1)
        return Q4_EINVAL;
    if (isa != Q4_ISA_AUTO && !q4_has_isa(isa))
        return Q4_ENOISA;
    if (m == 0 || n == 0) /* nothing to compute (an empty tensor's data pointer may be null) */
        return Q4_OK;
    if (!codes || !scales || !sums || !x || !y)
        return Q4_EINVAL;
    if (isa == Q4_ISA_AUTO)
        isa = q4_best_isa();
    const int64_t kp = (k + 7) / 8 * 8, blocks = (n + BLOCK_ROWS - 1) / BLOCK_ROWS;
    /* the rows padded with zeros to kp (quantized to zero codes; the maximum is unchanged) */
    float *padded = kp == k ? NULL : calloc((size_t)(m * kp), sizeof *padded);
    int8_t *a = malloc((size_t)(m * kp));
    float *asum = malloc((size_t)m * sizeof *asum); /* q4's group sums, one group a row: not used here */
    float *sa = malloc((size_t)m * sizeof *sa);
    if ((kp != k && !padded) || !a || !asum || !sa) {
        free(padded);
        free(a);
        free(asum);
        free(sa);
        return Q4_ENOMEM;
    }
    for (int64_t r = 0; padded && r < m; r++)
        memcpy(padded + r * kp, x + r * k, (size_t)k * sizeof *x);
    const q8_job job = {n, kp / 4, codes, scales, sums, a, sa, y};
    const q8_block_fn block = BLOCK_FOR_ISA(isa, block_avx512, block_avx2, block_scalar);
#pragma omp parallel num_threads(threads)
    {
        q4_quantize_team(m, kp, kp, padded ? padded : x, a, asum, sa, isa);
        if (isa == Q4_ISA_AVX512VNNI) { /* a + 128 as unsigned bytes, for vpdpbusd */
#pragma omp for schedule(static)
            for (int64_t i = 0; i < m * kp; i++)
                a[i] = (int8_t)((uint8_t)a[i] ^ 0x80u);
        }
        for (int64_t tile = 0; tile < m; tile += ROW_TILE) {
            const int64_t end = tile + ROW_TILE < m ? tile + ROW_TILE : m;
#pragma omp for schedule(static)
            for (int64_t b = 0; b < blocks; b++)
                for (int64_t r = tile; r < end; r += CHUNK)
                    block(&job, b, r, (int)(end - r < CHUNK ? end - r : CHUNK));
        }
    }
    free(padded);
    free(a);
    free(asum);
    free(sa);
    return Q4_OK;
}
