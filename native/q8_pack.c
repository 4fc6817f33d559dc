/* Quantizing float weight rows into q8's layout (q8.h): what `quantize` then `pack` in q8.py
 * compute with numpy, bit for bit, without the float32 copy of a bfloat16 checkpoint and the
 * numpy temporaries (most of the time an int8 LM head took to convert).
 *
 * Per row: m = max |w| over its inputs, NaN ignored; scale = m / 127, or FLT_MIN where that is
 * smaller; c = clamp(rint(w / scale), -127, 127), 0 where w / scale is NaN (a NaN input, or an
 * infinite one in a row whose scale is infinite). Every operation is one IEEE float32 rounding
 * (-std=c11: no contraction), so the codes are numpy's.
 *
 * Single-threaded, as q4_pack: the zygote converts weights and must stay one thread to fork. The
 * AVX2 path (8 lanes at a time) and the portable one write the same bits.
 */
#include "q4.h"
#include "row_blocks.h"
#include "q8.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

static inline int8_t code_of(float c) {
    return c >= 127.0f ? 127 : c <= -127.0f ? -127 : c == c ? (int8_t)c : 0; /* c is integral */
}

/* The row's scale (the rule above). */
static float row_scale(const float *w32, const uint16_t *wbf16, int64_t at, int64_t k) {
    float m = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        float a = fabsf(load_weight(w32, wbf16, at + j));
        m = a > m ? a : m; /* NaN: not greater */
    }
    float s = m / 127.0f;
    return s > FLT_MIN ? s : FLT_MIN;
}

static void row_codes(const float *w32, const uint16_t *wbf16, int64_t at, int64_t k, float s, int8_t *c) {
    for (int64_t j = 0; j < k; j++)
        c[j] = code_of(rintf(load_weight(w32, wbf16, at + j) / s)); /* to nearest even */
}

#if ROW_BLOCKS_X86
TARGET_AVX2 static float row_scale_avx2(const float *w32, const uint16_t *wbf16, int64_t at, int64_t k) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) /* max_ps(a, m) answers m where a is NaN */
        m = _mm256_max_ps(_mm256_andnot_ps(sign, load8_weights(w32, wbf16, at + j)), m);
    float lanes[8], top = 0.0f;
    _mm256_storeu_ps(lanes, m);
    for (int t = 0; t < 8; t++)
        top = lanes[t] > top ? lanes[t] : top;
    for (; j < k; j++) {
        float a = fabsf(load_weight(w32, wbf16, at + j));
        top = a > top ? a : top;
    }
    float s = top / 127.0f;
    return s > FLT_MIN ? s : FLT_MIN;
}

TARGET_AVX2 static void row_codes_avx2(const float *w32, const uint16_t *wbf16, int64_t at, int64_t k, float s,
                                       int8_t *c) {
    const __m256 vs = _mm256_set1_ps(s), low = _mm256_set1_ps(-127.0f), high = _mm256_set1_ps(127.0f);
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256 q = _mm256_round_ps(_mm256_div_ps(load8_weights(w32, wbf16, at + j), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm256_and_ps(q, _mm256_cmp_ps(q, q, _CMP_ORD_Q)); /* NaN -> 0 */
        q = _mm256_min_ps(_mm256_max_ps(q, low), high);
        __m256i v = _mm256_cvtps_epi32(q);
        __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(c + j), _mm_packs_epi16(w16, w16));
    }
    for (; j < k; j++)
        c[j] = code_of(rintf(load_weight(w32, wbf16, at + j) / s));
}
#endif

int q8_pack(int64_t rows, int64_t k, const float *w32, const uint16_t *wbf16, int64_t first, int64_t n,
            int8_t *codes, float *scales, int32_t *sums, int isa) {
    if (rows < 0 || k < 1 || k > Q8_MAX_K || first < 0 || first > n - rows || !w32 == !wbf16 || !codes ||
        !scales || !sums)
        return Q4_EINVAL;
    int avx2, status = pack_path(isa, &avx2);
    if (status != Q4_OK)
        return status;
    const int64_t kp = (k + 7) / 8 * 8, quads = kp / 4;
    int8_t *c = calloc((size_t)kp, 1); /* the codes past k stay 0: the VNNI path counts every code */
    if (!c)
        return Q4_ENOMEM;
    for (int64_t i = 0; i < rows; i++) {
        int64_t at = i * k, row = first + i;
        float s;
#if ROW_BLOCKS_X86
        if (avx2) {
            s = row_scale_avx2(w32, wbf16, at, k);
            row_codes_avx2(w32, wbf16, at, k, s, c);
        } else
#endif
        {
            s = row_scale(w32, wbf16, at, k);
            row_codes(w32, wbf16, at, k, s, c);
        }
        int32_t sum = 0;
        int8_t *out = codes + (row / 16) * quads * 64 + 4 * (row % 16);
        for (int64_t j = 0; j < kp; j++) { /* the padding too, whatever the buffer held */
            sum += c[j];
            out[(j / 4) * 64 + j % 4] = c[j];
        }
        scales[row] = s;
        sums[row] = sum;
    }
    free(c);
    return Q4_OK;
}
