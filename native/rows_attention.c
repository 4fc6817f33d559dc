/* Causal attention of one sequence, one query row at a time (math and layout in rows_attention.h).
 *
 * A (row, head) pair is one task: its scores in a per-thread buffer, their maximum, exp by a
 * fixed polynomial, the sum in key order, then the weighted values. Nothing a task computes
 * depends on which other rows the call holds, so results are identical for any m.
 */
#include "rows_attention.h"
#include "team.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* <a, b> in 8 interleaved partial sums combined in one fixed order (vectorizes, no -ffast-math). */
static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[i + l] * b[i + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* exp(x) for x <= 0 (Cephes' single-precision polynomial after x = n ln 2 + r); 0 below -87. */
static float exp_nonpositive(float x) {
    const float clamped = x < -87.0f ? -87.0f : x;
    const int n = (int)(clamped * 1.44269504088896341f - 0.5f); /* nearest, for a non-positive value */
    float r = clamped - (float)n * 0.693359375f;
    r = r - (float)n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const uint32_t bits = (uint32_t)(n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return x < -87.0f ? 0.0f : p * two_n;
}

static void one_row(int64_t dim, const float *q, const float *k, const float *v, int64_t n, const int64_t *slots,
                    float scale, float *scores, float *out) {
    for (int64_t i = 0; i < dim; i++)
        out[i] = 0.0f;
    if (n == 0)
        return;
    float top = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        scores[t] = dot(q, k + (slots ? slots[t] : t) * dim, dim) * scale;
        top = scores[t] > top ? scores[t] : top;
    }
    for (int64_t t = 0; t < n; t++)
        scores[t] = exp_nonpositive(scores[t] - top);
    float sum = 0.0f;
    for (int64_t t = 0; t < n; t++)
        sum += scores[t];
    for (int64_t t = 0; t < n; t++) {
        const float p = scores[t];
        const float *vt = v + (slots ? slots[t] : t) * dim;
        for (int64_t i = 0; i < dim; i++)
            out[i] += p * vt[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < dim; i++)
        out[i] *= inv;
}

void rows_attention_team(int64_t batch, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim,
                         int64_t head_stride, int64_t batch_stride, const float *q, const float *k, const float *v,
                         const int64_t *counts, const int64_t *starts, const int64_t *slots, float scale, float *out,
                         float *scores) {
    const int64_t group = heads / kv_heads, tasks = batch * m * heads;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t r = task / heads, b = r / m, g = (task % heads) / group;
        const int64_t base = b * batch_stride + g * head_stride;
        one_row(dim, q + task * dim, k + base, v + base, counts[r], slots ? slots + starts[r] : NULL, scale, scores,
                out + task * dim);
    }
}

int rows_visible_ok(int64_t rows, int64_t keys, const int64_t *counts, const int64_t *starts, const int64_t *slots) {
    if (!counts || (slots && !starts))
        return 0;
    for (int64_t r = 0; r < rows; r++) {
        if (counts[r] < 0 || counts[r] > keys)
            return 0;
        if (slots)
            for (int64_t t = 0; t < counts[r]; t++)
                if (starts[r] < 0 || slots[starts[r] + t] < 0 || slots[starts[r] + t] >= keys)
                    return 0;
    }
    return 1;
}

int rows_attention(int64_t batch, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim, int64_t keys,
                   int64_t head_stride, int64_t batch_stride, const float *q, const float *k, const float *v,
                   const int64_t *counts, const int64_t *starts, const int64_t *slots, float scale, float *out,
                   int threads) {
    if (!q || !k || !v || !out || batch < 0 || m < 0 || heads < 1 ||
        kv_heads < 1 || heads % kv_heads || dim < 1 || keys < 0 || head_stride < keys * dim ||
        batch_stride < 0 || threads < 1)
        return ROWS_ATTENTION_EINVAL;
    if (!rows_visible_ok(batch * m, keys, counts, starts, slots))
        return ROWS_ATTENTION_EINVAL;
    int failed = 0; /* shared: a thread without its buffer fails the call for the whole team */
#pragma omp parallel num_threads(threads)
    {
        float *scores = malloc((size_t)(keys > 0 ? keys : 1) * sizeof *scores);
        if (!scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier
        int any;
#pragma omp atomic read
        any = failed;
        if (!any) /* all threads or none: the team function ends in a barrier */
            rows_attention_team(batch, m, heads, kv_heads, dim, head_stride, batch_stride, q, k, v, counts, starts,
                                slots, scale, out, scores);
        free(scores);
    }
    return failed ? ROWS_ATTENTION_ENOMEM : ROWS_ATTENTION_OK;
}
