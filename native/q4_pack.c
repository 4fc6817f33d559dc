/* Quantizing a float weight into q4's layout (q4.h): what `quantize` and `layout_*` in q4.py
 * compute with numpy, bit for bit, without the float32 copy of a bfloat16 checkpoint and the
 * numpy temporaries that made loading a 1.5B model spend most of its time here.
 *
 * Per output row i and group g of `group` inputs: lo, hi = min, max of the group (NaN if any
 * input is NaN, as numpy's reductions answer); scale = f16((hi - lo) / 15) and zero = f16(lo),
 * rounded to nearest even; q = clamp(rint((w - zero) / scale), 0, 15) with scale and zero read
 * back from float16, or 0 where the scale is not > 0. Every operation is one IEEE float32 rounding
 * in the order written (no contraction: -std=c11), so the codes are numpy's.
 *
 * Single-threaded: the zygote converts weights and must stay one thread to fork. Both paths (the
 * AVX2 one divides and rounds 8 lanes at a time) write the same bits.
 */
#include "half.h"
#include "q4.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define PACK_AVX2 1
#else
#define PACK_AVX2 0
#endif

int q4_half_from_float(int64_t count, const float *x, uint16_t *out) {
    if (count < 0 || (count && (!x || !out)))
        return Q4_EINVAL;
    for (int64_t i = 0; i < count; i++)
        out[i] = half_from_float(x[i]);
    return Q4_OK;
}

/* q[j] for the group's values: the scalar rule, and the same bits 8 lanes at a time (a division
 * and a round to nearest even per lane; max(c, 0) answers 0 for NaN as the scalar test does). */
static void group_codes(const float *vals, int64_t group, float z, float s, uint8_t *q) {
    for (int64_t j = 0; j < group; j++) {
        float c = rintf((vals[j] - z) / s); /* to nearest even */
        q[j] = c >= 15.0f ? 15 : c > 0.0f ? (uint8_t)c : 0; /* NaN (inf - inf) -> 0 */
    }
}

#if PACK_AVX2
__attribute__((target("avx2"))) static void group_codes_avx2(const float *vals, int64_t group, float z, float s,
                                                              uint8_t *q) {
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), zero = _mm256_setzero_ps(),
                 top = _mm256_set1_ps(15.0f);
    for (int64_t j = 0; j < group; j += 8) {
        __m256 c = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(vals + j), vz), vs);
        c = _mm256_round_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        c = _mm256_min_ps(_mm256_max_ps(c, zero), top);
        int32_t out[8];
        _mm256_storeu_si256((__m256i *)out, _mm256_cvtps_epi32(c));
        for (int t = 0; t < 8; t++)
            q[j + t] = (uint8_t)out[t];
    }
}
#endif

int q4_pack(int64_t n, int64_t k, int64_t group, const float *w32, const uint16_t *wbf16, uint8_t *codes,
            uint16_t *scales, int isa) {
    if (n <= 0 || k <= 0 || n % 16 || group < 8 || group > Q4_MAX_GROUP || group % 8 || k % group ||
        !w32 == !wbf16 || !codes || !scales || isa < Q4_ISA_AUTO || isa > Q4_ISA_AVX512VNNI)
        return Q4_EINVAL;
    if (isa != Q4_ISA_AUTO && !q4_has_isa(isa))
        return Q4_ENOISA;
    int64_t groups = k / group, octets = k / 8;
#if PACK_AVX2
    const int avx2 = (isa == Q4_ISA_AUTO ? q4_best_isa() : isa) != Q4_ISA_SCALAR; /* AVX2 on both x86 paths */
#endif
    for (int64_t i = 0; i < n; i++) {
        int64_t b = i / 16, r = i % 16;
        for (int64_t g = 0; g < groups; g++) {
            float vals[Q4_MAX_GROUP];
            uint8_t q[Q4_MAX_GROUP];
            int64_t start = i * k + g * group;
            if (w32) {
                memcpy(vals, w32 + start, (size_t)group * sizeof *vals);
            } else {
                uint32_t bits[Q4_MAX_GROUP];
                for (int64_t j = 0; j < group; j++)
                    bits[j] = (uint32_t)wbf16[start + j] << 16;
                memcpy(vals, bits, (size_t)group * sizeof *vals);
            }
            float lo = vals[0], hi = vals[0];
            int nan = 0;
            for (int64_t j = 0; j < group; j++) {
                nan |= vals[j] != vals[j];
                lo = vals[j] < lo ? vals[j] : lo;
                hi = vals[j] > hi ? vals[j] : hi;
            }
            if (nan)
                lo = hi = NAN;
            uint16_t hs = half_from_float((hi - lo) / 15.0f), hz = half_from_float(lo);
            uint16_t *slot = scales + ((b * groups + g) * 2) * 16 + r;
            slot[0] = hs;
            slot[16] = hz;
            float s = half_to_float(hs), z = half_to_float(hz);
            if (s > 0.0f) {
#if PACK_AVX2
                if (avx2)
                    group_codes_avx2(vals, group, z, s, q);
                else
#endif
                    group_codes(vals, group, z, s, q);
            } else {
                memset(q, 0, (size_t)group);
            }
            for (int64_t o = 0; o < group / 8; o++) {
                uint8_t *out = codes + (b * octets + g * (group / 8) + o) * 64 + 4 * r;
                for (int t = 0; t < 4; t++)
                    out[t] = (uint8_t)(q[8 * o + t] | (q[8 * o + 4 + t] << 4));
            }
        }
    }
    return Q4_OK;
}
