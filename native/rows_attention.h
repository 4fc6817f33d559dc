/* rows_attention: causal attention of one sequence, each query row computed alone.
 *
 * Query row j of head h sees the first visible[j] keys of its KV head (h / (heads / kv_heads)):
 *
 *   s_t = scale * <q_jh, k_t>          t < visible[j]
 *   o_jh = sum_t exp(s_t - max s) v_t / sum_t exp(s_t - max s)
 *
 * Every (row, head) runs the same instructions over the same keys whatever the number of rows,
 * so a forward of M tokens computes, bit for bit, what M one-token forwards compute (the
 * attention half of exact speculative verification; q4.c and q8.c are the linear half). float32 throughout; exp is a fixed polynomial (relative error < 2e-7).
 *
 * A row seeing no key gets zeros (a padding row of a batch).
 *
 * Layouts: q and out [batch][m][heads][dim]; k and v: batch row b, KV head g, key t at
 * b * batch_stride + g * head_stride + t * dim (a block cache layer [1, kv_heads, capacity, dim],
 * or a batch's padded copy), of which the first `keys` per head may be read. Row r = b * m + j.
 */
#ifndef ROWS_ATTENTION_H
#define ROWS_ATTENTION_H

#include <stdint.h>

#define ROWS_ATTENTION_OK 0
#define ROWS_ATTENTION_EINVAL (-1)    /* a null pointer, a bad size, a row seeing past `keys` */
#define ROWS_ATTENTION_ENOMEM (-2)
#define ROWS_MAX_GROUP 16               /* most query heads of a KV head taken in one task */

int rows_attention(int64_t batch, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim, int64_t keys,
                   int64_t head_stride, int64_t batch_stride, const float *q, const float *k, const float *v,
                   const int64_t *counts, const int64_t *starts, const int64_t *slots, float scale, float *out,
                   int threads);

/* Whether calls may take the CPU's SIMD path (AVX2: the same bits, faster); answers the previous
 * setting. For tests and benchmarks that compare the paths; the default is on. Not thread-safe. */
int rows_attention_simd(int on);

/* The scores buffer a thread passes to the team function holds this many x `keys` floats. */
int64_t rows_attention_group(int64_t heads, int64_t kv_heads);

#endif
