/* A few tokens through q4 decoder layers (the formulas are in decode_step.h): products by
 * q4_linear, attention by rows_attention (each row alone, so m rows equal m one-row calls). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode_step.h"
#include "q4.h"
#include "rows_attention.h"

static void rmsnorm(const float *x, const float *w, float eps, int64_t n, float *out)
{
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
}

static int linear(const decode_linear *w, int64_t m, const float *x, float *y, int threads, int isa)
{
    int status = q4_linear(m, w->n, w->k, w->group, w->codes, w->scales, x, y, threads, isa);
    if (status == Q4_OK && w->bias)
        for (int64_t r = 0; r < m; r++)
            for (int64_t i = 0; i < w->n; i++)
                y[r * w->n + i] += w->bias[i];
    return status;
}

static void rope(float *x, const float *cos, const float *sin, int64_t dim)
{
    const int64_t half = dim / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static int valid(const decode_model *M, int64_t m, int64_t length)
{
    if (m < 1 || m > DECODE_STEP_MAX_ROWS)
        return 0;
    if (!M || !M->layer || M->layers < 0 || M->hidden <= 0 || M->heads <= 0 || M->kv_heads <= 0 || M->dim <= 0
        || M->dim % 2 || M->heads % M->kv_heads || M->intermediate <= 0 || length < 0)
        return 0;
    const int64_t qkv = (M->heads + 2 * M->kv_heads) * M->dim;
    for (int64_t l = 0; l < M->layers; l++) {
        const decode_layer *L = &M->layer[l];
        if (!L->norm1 || !L->norm2 || !L->keys || !L->values || L->capacity < length + m)
            return 0;
        if (L->qkv.n != qkv || L->qkv.k != M->hidden || L->o.n != M->hidden || L->o.k != M->heads * M->dim
            || L->gate_up.n != 2 * M->intermediate || L->gate_up.k != M->hidden || L->down.n != M->hidden
            || L->down.k != M->intermediate)
            return 0;
    }
    return 1;
}

int decode_step(const decode_model *M, int64_t m, int64_t length, const float *cos, const float *sin, float *h,
                int threads, int isa)
{
    if (!valid(M, m, length) || !cos || !sin || !h || threads < 1)
        return DECODE_STEP_EINVAL;
    const int64_t hidden = M->hidden, dim = M->dim, inter = M->intermediate, heads = M->heads;
    const int64_t qkv_n = (heads + 2 * M->kv_heads) * dim;
    const int64_t floats = m * (hidden + qkv_n + 2 * heads * dim + hidden + 2 * inter);
    float *buf = malloc((size_t)floats * sizeof *buf);
    if (!buf)
        return DECODE_STEP_ENOMEM;
    float *x = buf, *qkv = x + m * hidden, *q = qkv + m * qkv_n, *att = q + m * heads * dim;
    float *proj = att + m * heads * dim, *gu = proj + m * hidden;
    int64_t visible[DECODE_STEP_MAX_ROWS];  /* row r sees keys 0 .. length + r */
    for (int64_t r = 0; r < m; r++)
        visible[r] = length + r + 1;
    int status = Q4_OK;
    for (int64_t l = 0; l < M->layers && status == Q4_OK; l++) {
        const decode_layer *L = &M->layer[l];
        for (int64_t r = 0; r < m; r++)
            rmsnorm(h + r * hidden, L->norm1, L->eps1, hidden, x + r * hidden);
        if ((status = linear(&L->qkv, m, x, qkv, threads, isa)) != Q4_OK)
            break;
        for (int64_t r = 0; r < m; r++) {
            float *qr = qkv + r * qkv_n, *k = qr + heads * dim, *v = k + M->kv_heads * dim;
            for (int64_t hd = 0; hd < heads + M->kv_heads; hd++)
                rope(qr + hd * dim, cos + r * dim, sin + r * dim, dim);  /* q's heads, then k's */
            memcpy(q + r * heads * dim, qr, (size_t)(heads * dim) * sizeof *q);
            for (int64_t g = 0; g < M->kv_heads; g++) {
                const int64_t slot = (g * L->capacity + length + r) * dim;
                memcpy(L->keys + slot, k + g * dim, (size_t)dim * sizeof *k);
                memcpy(L->values + slot, v + g * dim, (size_t)dim * sizeof *v);
            }
        }
        const int attended = rows_attention(1, m, heads, M->kv_heads, dim, length + m, L->capacity * dim,
                                            M->kv_heads * L->capacity * dim, q, L->keys, L->values, visible, NULL,
                                            NULL, M->scaling, att, threads);
        if (attended != ROWS_ATTENTION_OK) {
            status = attended == ROWS_ATTENTION_ENOMEM ? Q4_ENOMEM : Q4_EINVAL;
            break;
        }
        if ((status = linear(&L->o, m, att, proj, threads, isa)) != Q4_OK)
            break;
        for (int64_t i = 0; i < m * hidden; i++)
            h[i] += proj[i];
        for (int64_t r = 0; r < m; r++)
            rmsnorm(h + r * hidden, L->norm2, L->eps2, hidden, x + r * hidden);
        if ((status = linear(&L->gate_up, m, x, gu, threads, isa)) != Q4_OK)
            break;
        for (int64_t r = 0; r < m; r++) {
            float *a = gu + r * 2 * inter, *b = a + inter, *act = gu + r * inter;
            for (int64_t i = 0; i < inter; i++)  /* in place, packed: row r's product lands at r * inter */
                act[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
        }
        if ((status = linear(&L->down, m, gu, proj, threads, isa)) != Q4_OK)
            break;
        for (int64_t i = 0; i < m * hidden; i++)
            h[i] += proj[i];
    }
    free(buf);
    if (status == Q4_ENOMEM)
        return DECODE_STEP_ENOMEM;
    return status == Q4_OK ? DECODE_STEP_OK : DECODE_STEP_EINVAL;
}
