/* Quantizing a float weight into q4's layout (q4.h): what `quantize` and `layout_*` in q4.py
 * compute with numpy, bit for bit, without the float32 copy of a bfloat16 checkpoint and the
 * numpy temporaries that made loading a 1.5B model spend most of its time here.
 *
 * Per output row i and group g of `group` inputs: lo, hi = min, max of the group (NaN if any
 * input is NaN, as numpy's reductions answer; +0 for a zero of either sign); scale = f16((hi - lo) / 15) and zero = f16(lo),
 * rounded to nearest even; q = clamp(rint((w - zero) / scale), 0, 15) with scale and zero read
 * back from float16, or 0 where the scale is not > 0. Every operation is one IEEE float32 rounding
 * in the order written (no contraction: -std=c11), so the codes are numpy's.
 *
 * Single-threaded: the zygote converts weights and must stay one thread to fork. Both paths (the
 * AVX2 one reduces, divides and rounds 8 lanes at a time and converts halves with F16C, which
 * every CPU of q4's AVX2 path has) write the same bits.
 */
#include "half.h"
#include "q4.h"
#include "row_blocks.h"

#include <math.h>
#include <string.h>

int q4_half_from_float(int64_t count, const float *x, uint16_t *out) {
    if (count < 0 || (count && (!x || !out)))
        return Q4_EINVAL;
    for (int64_t i = 0; i < count; i++)
        out[i] = half_from_float(x[i]);
    return Q4_OK;
}

/* One group: its float16 scale and zero (hs, hz) and its codes q, by the rule above. */
static void pack_group(const float *w32, const uint16_t *wbf16, int64_t start, int64_t group, uint16_t *hs,
                       uint16_t *hz, uint8_t *q) {
    float vals[Q4_MAX_GROUP];
    for (int64_t j = 0; j < group; j++)
        vals[j] = load_weight(w32, wbf16, start + j);
    float lo = vals[0], hi = vals[0];
    int nan = 0;
    for (int64_t j = 0; j < group; j++) {
        nan |= vals[j] != vals[j];
        lo = vals[j] < lo ? vals[j] : lo;
        hi = vals[j] > hi ? vals[j] : hi;
    }
    if (nan)
        lo = hi = NAN;
    lo += 0.0f, hi += 0.0f; /* a zero extreme is +0 */
    *hs = half_from_float((hi - lo) / 15.0f);
    *hz = half_from_float(lo);
    float s = half_to_float(*hs), z = half_to_float(*hz);
    if (!(s > 0.0f)) {
        memset(q, 0, (size_t)group);
        return;
    }
    for (int64_t j = 0; j < group; j++) {
        float c = rintf((vals[j] - z) / s); /* to nearest even */
        q[j] = c >= 15.0f ? 15 : c > 0.0f ? (uint8_t)c : 0; /* NaN (inf - inf) -> 0 */
    }
}

#if ROW_BLOCKS_X86
/* pack_group, 8 lanes at a time. */
TARGET_AVX2 static void pack_group_avx2(const float *w32, const uint16_t *wbf16, int64_t start, int64_t group,
                                        uint16_t *hs, uint16_t *hz, uint8_t *q) {
    float vals[Q4_MAX_GROUP];
    __m256 low = _mm256_setzero_ps(), high = low, unordered = low;
    for (int64_t j = 0; j < group; j += 8) {
        __m256 v = load8_weights(w32, wbf16, start + j);
        _mm256_storeu_ps(vals + j, v);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        low = j ? _mm256_min_ps(low, v) : v;
        high = j ? _mm256_max_ps(high, v) : v;
    }
    float lo = NAN, hi = NAN;
    if (!_mm256_movemask_ps(unordered)) {
        float l[8], h[8];
        _mm256_storeu_ps(l, low);
        _mm256_storeu_ps(h, high);
        lo = l[0], hi = h[0];
        for (int t = 1; t < 8; t++) {
            lo = l[t] < lo ? l[t] : lo;
            hi = h[t] > hi ? h[t] : hi;
        }
        lo += 0.0f, hi += 0.0f; /* a zero extreme is +0 */
    }
    *hs = (uint16_t)_cvtss_sh((hi - lo) / 15.0f, _MM_FROUND_TO_NEAREST_INT);
    *hz = (uint16_t)_cvtss_sh(lo, _MM_FROUND_TO_NEAREST_INT);
    float s = _cvtsh_ss(*hs), z = _cvtsh_ss(*hz);
    if (!(s > 0.0f)) {
        memset(q, 0, (size_t)group);
        return;
    }
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), zero = _mm256_setzero_ps(),
                 top = _mm256_set1_ps(15.0f);
    for (int64_t j = 0; j < group; j += 8) {
        __m256 c = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(vals + j), vz), vs);
        c = _mm256_round_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c = _mm256_min_ps(_mm256_max_ps(c, zero), top); /* max_ps(NaN, 0) answers 0 */
        __m256i v = _mm256_cvtps_epi32(c);              /* 0..15: packs without saturating */
        __m128i pairs = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(q + j), _mm_packus_epi16(pairs, pairs));
    }
}
#endif

int q4_pack(int64_t n, int64_t k, int64_t group, const float *w32, const uint16_t *wbf16, uint8_t *codes,
            uint16_t *scales, int isa) {
    if (n <= 0 || k <= 0 || n % 16 || group < 8 || group > Q4_MAX_GROUP || group % 8 || k % group ||
        !w32 == !wbf16 || !codes || !scales)
        return Q4_EINVAL;
    int avx2, status = pack_path(isa, &avx2);
    if (status != Q4_OK)
        return status;
    int64_t groups = k / group, octets = k / 8;
    for (int64_t i = 0; i < n; i++) {
        int64_t b = i / 16, r = i % 16;
        for (int64_t g = 0; g < groups; g++) {
            uint8_t q[Q4_MAX_GROUP];
            uint16_t *slot = scales + ((b * groups + g) * 2) * 16 + r;
#if ROW_BLOCKS_X86
            if (avx2)
                pack_group_avx2(w32, wbf16, i * k + g * group, group, slot, slot + 16, q);
            else
#endif
                pack_group(w32, wbf16, i * k + g * group, group, slot, slot + 16, q);
            for (int64_t o = 0; o < group / 8; o++) {
                uint8_t *out = codes + (b * octets + g * (group / 8) + o) * 64 + 4 * r;
                for (int t = 0; t < 4; t++)
                    out[t] = (uint8_t)(q[8 * o + t] | (q[8 * o + 4 + t] << 4));
            }
        }
    }
    return Q4_OK;
}
