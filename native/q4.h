/* q4: linear layers with 4-bit weights and per-token 8-bit activations, for a few rows.
 *
 *   y[r][i] = sa[r] * sum_g ( scale[i][g] * sum_{j in g} q[i][j] * a[r][j]
 *                            + zero[i][g]  * sum_{j in g} a[r][j] )
 *
 * W[i][j] ~ scale[i][g] * q[i][j] + zero[i][g], with q in 0..15 and one scale and zero (float16)
 * per output row i and group g of `group` inputs; each input row x[r] is quantized alone,
 * a[r][j] = round(x[r][j] * 127 / max_j |x[r][j]|), sa[r] = max_j |x[r][j]| / 127.
 *
 * Each group's dot product is an exact integer sum, and the float sum over groups runs in one
 * fixed order, so a row's result depends on that row alone: a product of M rows computes,
 * bit for bit, what M products of one row compute, on every instruction-set path.
 *
 * Weight layout (`q4_pack` in q4.py writes it): output rows in blocks of 16, inputs in octets.
 *   codes:  n/16 blocks x k/8 octets x 64 bytes; byte 4*r + t of (block b, octet o) holds
 *           q[16b + r][8o + t] in its low nibble and q[16b + r][8o + 4 + t] in its high one.
 *   scales: n/16 blocks x k/group groups x 2 x 16 float16 bit patterns: [.., 0, r] the scale of
 *           row 16b + r, [.., 1, r] its zero.
 */
#ifndef Q4_H
#define Q4_H

#include <stdint.h>

#define Q4_VERSION 1
#define Q4_OK 0
#define Q4_EINVAL (-1)            /* a null pointer, a bad size, n % 16, k % group, group % 8 */
#define Q4_ENOISA (-2)            /* the requested instruction set is not on this CPU */
#define Q4_ENOMEM (-3)            /* no memory for the quantized activations */

#define Q4_ISA_AUTO (-1)          /* the fastest this CPU has */
#define Q4_ISA_SCALAR 0           /* portable C */
#define Q4_ISA_AVX2 1             /* AVX2 + FMA + F16C (vpmaddubsw) */
#define Q4_ISA_AVX512VNNI 2       /* AVX-512 F/BW + VNNI (vpdpbusd) */

#define Q4_MAX_GROUP 1024         /* keeps every group's integer sum exact in a float */

/* The fastest path this CPU runs (one of Q4_ISA_*). */
int q4_best_isa(void);

/* Whether this CPU runs `isa`: 1 or 0. */
int q4_has_isa(int isa);

/* y[m][n] = x[m][k] W^T as above. threads >= 1; isa: Q4_ISA_AUTO or one this CPU has. */
int q4_linear(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes,
              const uint16_t *scales, const float *x, float *y, int threads, int isa);

/* Only the output rows of W in the 16-row blocks `blocks[0..count)` (each in 0..n/16): columns
 * 16b..16b+15 of y[m][n] get what q4_linear writes there, bit for bit; the other columns are left
 * as they are. Q4_EINVAL if a block is out of range or listed twice. */
int q4_linear_blocks(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes,
                     const uint16_t *scales, const int64_t *blocks, int64_t count, const float *x, float *y,
                     int threads, int isa);

/* Quantize W[n][k], float32 (`w32`) or bfloat16 bit patterns (`wbf16`; exactly one given), into
 * `codes` (n/16 x k/8 x 64 bytes) and `scales` (n/16 x k/group x 2 x 16) as laid out above: per
 * row and group, scale = f16((max - min) / 15), zero = f16(min) (to nearest even), q =
 * clamp(rint((w - zero) / scale), 0, 15), 0 where scale is not > 0 (q4_pack.c). One thread; every
 * isa (Q4_ISA_AUTO or one this CPU has) writes the same bits. */
int q4_pack(int64_t n, int64_t k, int64_t group, const float *w32, const uint16_t *wbf16, uint8_t *codes,
            uint16_t *scales, int isa);

/* out[i] = the float16 bit pattern nearest x[i] (ties to even; overflow to inf), as q4_pack rounds. */
int q4_half_from_float(int64_t count, const float *x, uint16_t *out);

#endif
