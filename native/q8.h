/* q8: linear layers with int8 weights (one float32 scale per output row) and per-token 8-bit
 * activations, for a few rows.
 *
 *   y[r][i] = ((float) sum_j c[i][j] * a[r][j]) * scale[i] * sa[r]      (two float32 multiplies, in that order)
 *
 * W[i][j] ~ scale[i] * c[i][j] with c in -127..127 (-128 is not allowed: the AVX2 path negates codes); each input row is quantized alone as q4.h
 * quantizes it: a[r][j] = round(x[r][j] * 127 / max_j |x[r][j]|) (to nearest even), sa[r] =
 * max_j |x[r][j]| / 127. The dot product is an exact int32 sum (|sum| <= 127 * 127 * k < 2^31),
 * so a row's result depends on that row alone: a product of M rows computes, bit for bit, what M
 * products of one row compute, on every instruction-set path (the q4.h ones: Q4_ISA_*).
 *
 * Weight layout (`q8.pack` in q8.py writes it): output rows in blocks of 16, inputs in quads, the
 * rows padded to a multiple of 16 and the inputs to a multiple of 8 with zero codes:
 *   codes:  ceil(n/16) blocks x kp/4 quads x 64 bytes, kp = k rounded up to 8; byte 4*r + t of
 *           (block b, quad o) holds c[16b + r][4o + t].
 *   scales: ceil(n/16) * 16 float32 (0 past n);  sums: as many int32, sum_j c[i][j] (the VNNI
 *           path multiplies activations made unsigned, a + 128, and takes 128 * sums off).
 */
#ifndef Q8_H
#define Q8_H

#include <stdint.h>


#define Q8_MAX_K 131072           /* keeps every dot product, and 128 times a row's code sum, in an int32 */

/* y[m][n] = x[m][k] W^T as above. threads >= 1; isa: Q4_ISA_AUTO or one this CPU has (q4.h).
 * Answers q4.h's statuses: Q4_OK; Q4_EINVAL (a null pointer, a bad size, k > Q8_MAX_K);
 * Q4_ENOISA; Q4_ENOMEM (no memory for the quantized activations). */
int q8_linear(int64_t m, int64_t n, int64_t k, const int8_t *codes, const float *scales, const int32_t *sums,
              const float *x, float *y, int threads, int isa);

/* Quantize rows first .. first + rows - 1 of an n-row weight into the layout above (q8_pack.c),
 * from `rows` x k float32 values (w32) or bfloat16 bit patterns (wbf16), one of them non-null:
 * per row scale = max |w| / 127 (NaN ignored; at least FLT_MIN) and c = clamp(rint(w / scale),
 * -127, 127) (0 where NaN), each row's codes (its padded inputs' codes 0), scale and code sum
 * written in place. Rows past n are the caller's to zero (q8.zeros does). isa: Q4_ISA_AUTO or
 * one this CPU has (the same bits on every path). Answers Q4_OK, Q4_EINVAL, Q4_ENOISA, Q4_ENOMEM. */
int q8_pack(int64_t rows, int64_t k, const float *w32, const uint16_t *wbf16, int64_t first, int64_t n,
            int8_t *codes, float *scales, int32_t *sums, int isa);

#endif
