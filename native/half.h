/* float16 <-> float32 bit conversions in portable C, for the q4 kernels' scalar paths and the
 * packer (the SIMD paths use F16C). Internal: not part of the cffi interface. */
#ifndef SPECMEMO_HALF_H
#define SPECMEMO_HALF_H

#include <stdint.h>
#include <string.h>

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu, bits;
    if (exp == 0 && mant == 0) {
        bits = sign;
    } else if (exp == 0) { /* subnormal: normalize */
        uint32_t shift = 0;
        while (!(mant & 0x400u)) {
            mant <<= 1;
            shift++;
        }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((mant & 0x3FFu) << 13);
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* float32 -> float16 bit pattern, round to nearest even; overflow to inf, NaN kept quiet. */
static inline uint16_t half_from_float(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) /* inf, or NaN with its top payload bits and the quiet bit */
        return (uint16_t)(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u | ((a >> 13) & 0x3FFu) : 0u));
    if (a >= 0x477FF000u) /* 65520 and above round to inf */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* a normal half: rebias, round the 13 dropped bits to even */
        uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
        return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
    }
    if (a < 0x33000000u) /* below 2^-25: rounds to zero */
        return (uint16_t)sign;
    /* a subnormal half: the value in units of 2^-24, rounded to even (may carry into 0x400) */
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u, shift = 126u - (a >> 23);
    uint32_t h = mant >> shift, rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (h & 1u)))
        h++;
    return (uint16_t)(sign | h);
}

#endif
