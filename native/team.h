/* The decoding kernels' bodies for a caller already inside an OpenMP parallel region (decode_step.c
 * runs a whole draft step in one region: a region per product cost a fork, a join and two
 * barriers each, about a fifth of a 0.5B draft's step on two cores). Every thread of the team
 * calls each function with the same arguments, in the same order; each ends in a barrier.
 * Arguments are trusted: the public entry points (q4.h, rows_attention.h) check them.
 * Not part of the cffi interface. */
#ifndef SPECMEMO_TEAM_H
#define SPECMEMO_TEAM_H
#include <stdint.h>

/* Whether a q4 weight of n x k in groups of `group` is one q4_linear takes: 1 or 0. */
int q4_shape_ok(int64_t n, int64_t k, int64_t group);

/* Quantize x [m][k] into a [m][k], asum [m][k / group] and sa [m] (q4.h's activations). isa:
 * a resolved Q4_ISA_* this CPU has. */
void q4_quantize_team(int64_t m, int64_t k, int64_t group, const float *x, int8_t *a, float *asum, float *sa,
                      int isa);

/* y [m][n] from activations quantized by q4_quantize_team. */
void q4_products_team(int64_t m, int64_t n, int64_t k, int64_t group, const uint8_t *codes, const uint16_t *scales,
                      const int8_t *a, const float *asum, const float *sa, float *y, int isa);

/* Whether rows' visibility is one rows_attention takes: each of `rows` counts in 0..keys and, with
 * slots, every named slot below `keys` (counts alone: the first counts[r] keys). 1 or 0. */
int rows_visible_ok(int64_t rows, int64_t keys, const int64_t *counts, const int64_t *starts, const int64_t *slots);

/* rows_attention's work (rows_attention.h) with `scores` this thread's buffer of
 * rows_attention_group(heads, kv_heads) x `keys` floats. */
void rows_attention_team(int64_t batch, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim,
                         int64_t head_stride, int64_t batch_stride, const float *q, const float *k, const float *v,
                         const int64_t *counts, const int64_t *starts, const int64_t *slots, float scale, float *out,
                         float *scores);

#endif
