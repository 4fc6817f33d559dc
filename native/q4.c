/* 4-bit-weight linear layers for a few rows (the math and the layout are in q4.h).
 *
 * One pass over a block of 16 output rows serves up to CHUNK input rows: the block's codes are
 * loaded and unpacked once, then every row takes its integer dot products from them. The
 * weights are read once per call whatever M is, so a forward of a few tokens costs about what
 * one token costs while the weights stream from memory.
 *
 * Three paths compute identical bits: integer dot products are exact on each, and every path
 * runs the same float operations per output (an fma with the scale, an fma with the zero, per
 * group in order; one multiply by the row's scale). AVX-512 VNNI multiplies unsigned codes by
 * signed activations with vpdpbusd; AVX2 with vpmaddubsw (15 * 127 * 2 < 32767: no saturation)
 * and vpmaddwd; the scalar path is portable C.
 */
#include "q4.h"
#include "half.h"
#include "row_blocks.h"
#include "team.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t n, k, group, groups;
    const uint8_t *codes;
    const uint16_t *scales;
    const int8_t *a;      /* m x k quantized activations */
    const float *asum;    /* m x groups sums of a over each group (exact: |sum| < 2^24) */
    const float *sa;      /* m activation scales */
    float *y;             /* m x n */
} q4_job;

typedef void (*q4_block_fn)(const q4_job *job, int64_t block, int64_t row, int rows);

static void block_scalar(const q4_job *j, int64_t b, int64_t row, int rows) {
    const uint8_t *codes = j->codes + b * (j->k / 8) * 64;
    const int64_t octets = j->group / 8;
    for (int r = 0; r < rows; r++) {
        const int8_t *a = j->a + (row + r) * j->k;
        float acc[BLOCK_ROWS] = {0};
        for (int64_t g = 0; g < j->groups; g++) {
            int32_t dot[BLOCK_ROWS] = {0};
            for (int64_t o = g * octets; o < (g + 1) * octets; o++) {
                const uint8_t *c = codes + o * 64;
                for (int i = 0; i < BLOCK_ROWS; i++)
                    for (int t = 0; t < 4; t++)
                        dot[i] += (c[4 * i + t] & 15) * a[8 * o + t] + (c[4 * i + t] >> 4) * a[8 * o + 4 + t];
            }
            const uint16_t *s = j->scales + (b * j->groups + g) * 2 * BLOCK_ROWS;
            const float sum = j->asum[(row + r) * j->groups + g];
            for (int i = 0; i < BLOCK_ROWS; i++) {
                acc[i] = fmaf(half_to_float(s[i]), (float)dot[i], acc[i]);
                acc[i] = fmaf(half_to_float(s[BLOCK_ROWS + i]), sum, acc[i]);
            }
        }
        float *y = j->y + (row + r) * j->n + b * BLOCK_ROWS;
        for (int i = 0; i < BLOCK_ROWS; i++)
            y[i] = acc[i] * j->sa[row + r];
    }
}

#if ROW_BLOCKS_X86

/* `rows` is a constant at each call site below, so the accumulators become registers. */
static inline __attribute__((always_inline)) TARGET_AVX512 void avx512_rows(const q4_job *j, int64_t b, int64_t row,
                                                                             const int rows) {
    const __m512i nibble = _mm512_set1_epi8(15);
    const uint8_t *codes = j->codes + b * (j->k / 8) * 64;
    const int64_t octets = j->group / 8;
    __m512 acc[CHUNK];
    for (int r = 0; r < rows; r++)
        acc[r] = _mm512_setzero_ps();
    for (int64_t g = 0; g < j->groups; g++) {
        __m512i dot[CHUNK];
        for (int r = 0; r < rows; r++)
            dot[r] = _mm512_setzero_si512();
        for (int64_t o = g * octets; o < (g + 1) * octets; o++) {
            _mm_prefetch((const char *)(codes + o * 64 + PREFETCH_BYTES), _MM_HINT_T0);
            const __m512i v = _mm512_loadu_si512((const void *)(codes + o * 64));
            const __m512i lo = _mm512_and_si512(v, nibble);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
            for (int r = 0; r < rows; r++) {
                const int8_t *a = j->a + (row + r) * j->k + 8 * o;
                dot[r] = _mm512_dpbusd_epi32(dot[r], lo, _mm512_set1_epi32(load4(a)));
                dot[r] = _mm512_dpbusd_epi32(dot[r], hi, _mm512_set1_epi32(load4(a + 4)));
            }
        }
        const uint16_t *s = j->scales + (b * j->groups + g) * 2 * BLOCK_ROWS;
        _mm_prefetch((const char *)(s + PREFETCH_BYTES / 4), _MM_HINT_T0);
        const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
        const __m512 zero = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + BLOCK_ROWS)));
        for (int r = 0; r < rows; r++) {
            const float sum = j->asum[(row + r) * j->groups + g];
            acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot[r]), acc[r]);
            acc[r] = _mm512_fmadd_ps(zero, _mm512_set1_ps(sum), acc[r]);
        }
    }
    for (int r = 0; r < rows; r++)
        _mm512_storeu_ps(j->y + (row + r) * j->n + b * BLOCK_ROWS,
                         _mm512_mul_ps(acc[r], _mm512_set1_ps(j->sa[row + r])));
}

TARGET_AVX512 static void block_avx512(const q4_job *j, int64_t b, int64_t row, int rows) {
    CALL_WITH_CONSTANT_ROWS(avx512_rows, j, b, row, rows);
}

/* AVX2: rows 0-7 of a block from the first 32 bytes of each 64, rows 8-15 from the second. */
static inline __attribute__((always_inline)) TARGET_AVX2 void avx2_rows(const q4_job *j, int64_t b, int64_t row,
                                                                         const int rows) {
    const __m256i nibble = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    const uint8_t *codes = j->codes + b * (j->k / 8) * 64;
    const int64_t octets = j->group / 8;
    __m256 acc[2][2];
    for (int r = 0; r < rows; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < j->groups; g++) {
        __m256i dot[2][2];
        for (int r = 0; r < rows; r++)
            dot[r][0] = dot[r][1] = _mm256_setzero_si256();
        for (int64_t o = g * octets; o < (g + 1) * octets; o++) {
            _mm_prefetch((const char *)(codes + o * 64 + PREFETCH_BYTES), _MM_HINT_T0);
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(codes + o * 64 + 32 * h));
                const __m256i lo = _mm256_and_si256(v, nibble);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
                for (int r = 0; r < rows; r++) {
                    const int8_t *a = j->a + (row + r) * j->k + 8 * o;
                    const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(load4(a)));
                    const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(load4(a + 4)));
                    dot[r][h] = _mm256_add_epi32(dot[r][h], _mm256_madd_epi16(_mm256_add_epi16(plo, phi), ones));
                }
            }
        }
        const uint16_t *s = j->scales + (b * j->groups + g) * 2 * BLOCK_ROWS;
        _mm_prefetch((const char *)(s + PREFETCH_BYTES / 4), _MM_HINT_T0);
        for (int h = 0; h < 2; h++) {
            const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 8 * h)));
            const __m256 zero = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + BLOCK_ROWS + 8 * h)));
            for (int r = 0; r < rows; r++) {
                const float sum = j->asum[(row + r) * j->groups + g];
                acc[r][h] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot[r][h]), acc[r][h]);
                acc[r][h] = _mm256_fmadd_ps(zero, _mm256_set1_ps(sum), acc[r][h]);
            }
        }
    }
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < 2; h++)
            _mm256_storeu_ps(j->y + (row + r) * j->n + b * BLOCK_ROWS + 8 * h,
                             _mm256_mul_ps(acc[r][h], _mm256_set1_ps(j->sa[row + r])));
}

TARGET_AVX2 static void block_avx2(const q4_job *j, int64_t b, int64_t row, int rows) {
    CALL_IN_PAIRS_OF_ROWS(avx2_rows, j, b, row, rows);
}

#endif /* ROW_BLOCKS_X86 */

int q4_has_isa(int isa) {
    if (isa == Q4_ISA_SCALAR)
        return 1;
#if ROW_BLOCKS_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (isa == Q4_ISA_AVX2)
        return avx2;
    if (isa == Q4_ISA_AVX512VNNI)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

int q4_best_isa(void) {
    if (q4_has_isa(Q4_ISA_AVX512VNNI))
        return Q4_ISA_AVX512VNNI;
    if (q4_has_isa(Q4_ISA_AVX2))
        return Q4_ISA_AVX2;
    return Q4_ISA_SCALAR;
}

static void quantize_row(const float *x, int64_t k, int64_t group, int8_t *a, float *asum, float *sa) {
    float amax = 0.0f;
    for (int64_t i = 0; i < k; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *sa = amax / 127.0f;
    for (int64_t g = 0; g < k / group; g++) {
        int32_t sum = 0;
        for (int64_t i = g * group; i < (g + 1) * group; i++) {
            long q = lrintf(x[i] * inv);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            a[i] = (int8_t)q;
            sum += (int32_t)q;
        }
        asum[g] = (float)sum;
    }
}

typedef void (*q4_quantize_fn)(const float *x, int64_t k, int64_t group, int8_t *a, float *asum, float *sa);

#if ROW_BLOCKS_X86
/* quantize_row in 8 lanes, bit for bit: max ignores a NaN in x as fmaxf does (the second operand
 * is the result when either is NaN), the product is the same float multiply, and cvtps rounds to
 * nearest even as lrintf does in the default rounding mode (out of range or NaN: INT_MIN, as
 * lrintf's LONG_MIN, both clamped to -127). One thread quantizes a row while the others wait, so
 * the libm calls of the scalar loop were on every product's critical path. */
TARGET_AVX2 static void quantize_row_avx2(const float *x, int64_t k, int64_t group, int8_t *a, float *asum,
                                          float *sa) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; i += 8)
        vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), vmax);
    float lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    float amax = 0.0f;
    for (int t = 0; t < 8; t++)
        amax = fmaxf(amax, lanes[t]);
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *sa = amax / 127.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    for (int64_t g = 0; g < k / group; g++) {
        __m256i sum = _mm256_setzero_si256();
        for (int64_t i = g * group; i < (g + 1) * group; i += 8) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
            q = _mm256_max_epi32(_mm256_min_epi32(q, hi), lo);
            sum = _mm256_add_epi32(sum, q);
            int32_t out[8];
            _mm256_storeu_si256((__m256i *)out, q);
            for (int t = 0; t < 8; t++)
                a[i + t] = (int8_t)out[t];
        }
        int32_t parts[8], total = 0;
        _mm256_storeu_si256((__m256i *)parts, sum);
        for (int t = 0; t < 8; t++)
            total += parts[t];
        asum[g] = (float)total;
    }
}
#endif

int q4_shape_ok(int64_t n, int64_t k, int64_t group) {
    return n >= 0 && k > 0 && group >= 8 && group <= Q4_MAX_GROUP && group % 8 == 0 && k % group == 0 &&
           n % BLOCK_ROWS == 0;
}

void q4_quantize_team(int64_t m, int64_t k, int64_t group, const float *x, int8_t *a, float *asum, float *sa,
                      int isa) {
    q4_quantize_fn quantize = quantize_row;
#if ROW_BLOCKS_X86
    if (isa != Q4_ISA_SCALAR)
        quantize = quantize_row_avx2;
#else
    (void)isa;
#endif
    const int64_t groups = k / group;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; r++)
        quantize(x + r * k, k, group, a + r * k, asum + r * groups, sa + r);
}

/* The products of the weight blocks `index[0..count)` (every block when index is NULL). A listed
 * block's job points at its codes and scales, so each block computes exactly what it computes in
 * the whole product, and writes the same columns of y. */
static void products_team(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes,
                          const uint16_t *scales, const int64_t *index, int64_t count, const int8_t *a,
                          const float *asum, const float *sa, float *y, int isa) {
    const q4_job job = {n, k, group, k / group, codes, scales, a, asum, sa, y};
    const q4_block_fn block = BLOCK_FOR_ISA(isa, block_avx512, block_avx2, block_scalar);
    const int64_t blocks = index ? count : n / BLOCK_ROWS;
    for (int64_t tile = 0; tile < m; tile += ROW_TILE) {
        const int64_t end = tile + ROW_TILE < m ? tile + ROW_TILE : m;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < blocks; t++) {
            q4_job one = job;
            int64_t b = t;
            if (index) {
                one.codes = codes + index[t] * (k / 8) * 64;
                one.scales = scales + index[t] * job.groups * 2 * BLOCK_ROWS;
                one.y = y + index[t] * BLOCK_ROWS;
                b = 0;
            }
            for (int64_t r = tile; r < end; r += CHUNK)
                block(&one, b, r, (int)(end - r < CHUNK ? end - r : CHUNK));
        }
    }
}

void q4_products_team(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes, const uint16_t *scales,
                      const int8_t *a, const float *asum, const float *sa, float *y, int isa) {
    products_team(m, n, k, group, codes, scales, NULL, 0, a, asum, sa, y, isa);
}

static int linear(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes, const uint16_t *scales,
                  const int64_t *index, int64_t count, const float *x, float *y, int threads, int isa) {
    if (!codes || !scales || !x || !y || m < 0 || !q4_shape_ok(n, k, group) || threads < 1)
        return Q4_EINVAL;
    if (index) {  /* in range and listed once (two threads must not write the same columns) */
        if (count < 0)
            return Q4_EINVAL;
        uint8_t *seen = calloc((size_t)(n / BLOCK_ROWS) + 1, 1);
        if (!seen)
            return Q4_ENOMEM;
        int ok = 1;
        for (int64_t t = 0; t < count && ok; t++) {
            ok = index[t] >= 0 && index[t] < n / BLOCK_ROWS && !seen[index[t]];
            if (ok)
                seen[index[t]] = 1;
        }
        free(seen);
        if (!ok)
            return Q4_EINVAL;
    }
    if (isa == Q4_ISA_AUTO)
        isa = q4_best_isa();
    else if (!q4_has_isa(isa))
        return Q4_ENOISA;
    if (m == 0 || n == 0 || (index && count == 0))
        return Q4_OK;
    int8_t *a = malloc((size_t)(m * k));
    float *asum = malloc((size_t)(m * (k / group)) * sizeof *asum);
    float *sa = malloc((size_t)m * sizeof *sa);
    if (!a || !asum || !sa) {
        free(a);
        free(asum);
        free(sa);
        return Q4_ENOMEM;
    }
#pragma omp parallel num_threads(threads)
    {
        q4_quantize_team(m, k, group, x, a, asum, sa, isa);
        products_team(m, n, k, group, codes, scales, index, count, a, asum, sa, y, isa);
    }
    free(a);
    free(asum);
    free(sa);
    return Q4_OK;
}

int q4_linear(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes, const uint16_t *scales,
              const float *x, float *y, int threads, int isa) {
    return linear(m, n, k, group, codes, scales, NULL, 0, x, y, threads, isa);
}

int q4_linear_blocks(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes, const uint16_t *scales,
                     const int64_t *blocks, int64_t count, const float *x, float *y, int threads, int isa) {
    if (!blocks)
        return Q4_EINVAL;
    return linear(m, n, k, group, codes, scales, blocks, count, x, y, threads, isa);
}
