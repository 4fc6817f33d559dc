/* One token through q4 decoder layers (the formulas are in decode_step.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode_step.h"
#include "q4.h"

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

/* One head against keys and values 0..length of its KV head; cloned for AVX-512 and AVX2 (the
 * library is built without -march) and picked by the loader from the CPU. The reductions are
 * `omp simd` so that they vectorize (a draft's sums need not keep the serial order). */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void attend_head(const float *qh, const float *K, const float *V, int64_t keys, int64_t dim, float scaling,
                        float *s, float *oh)
{
    float top = -INFINITY;
    for (int64_t t = 0; t < keys; t++) {
        float dot = 0.0f;
        #pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < dim; j++)
            dot += qh[j] * K[t * dim + j];
        s[t] = dot * scaling;
        top = s[t] > top ? s[t] : top;
    }
    float total = 0.0f;
    for (int64_t t = 0; t < keys; t++) {
        s[t] = expf(s[t] - top);
        total += s[t];
    }
    const float inv = 1.0f / total;
    memset(oh, 0, (size_t)dim * sizeof *oh);
    for (int64_t t = 0; t < keys; t++) {
        const float p = s[t] * inv;
        #pragma omp simd
        for (int64_t j = 0; j < dim; j++)
            oh[j] += p * V[t * dim + j];
    }
}

/* out [m][heads][dim]: row r's head h against keys and values 0..length + r of its KV head;
 * q [m][qkv_n] (each row's q heads first). */
static void attend(const decode_model *M, const decode_layer *L, int64_t m, const float *q, int64_t qkv_n,
                   int64_t length, float *scores, float *out, int threads)
{
    const int64_t dim = M->dim, heads = M->heads, group = heads / M->kv_heads, stride = length + m;
    #pragma omp parallel for num_threads(threads) schedule(static) if (stride * heads * m >= 1024)
    for (int64_t rh = 0; rh < m * heads; rh++) {
        const int64_t r = rh / heads, h = rh % heads;
        attend_head(q + r * qkv_n + h * dim, L->keys + (h / group) * L->capacity * dim,
                    L->values + (h / group) * L->capacity * dim, length + r + 1, dim, M->scaling,
                    scores + rh * stride, out + (r * heads + h) * dim);
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
    const int64_t floats = m * (hidden + qkv_n + heads * dim + hidden + 2 * inter + heads * (length + m));
    float *buf = malloc((size_t)floats * sizeof *buf);
    if (!buf)
        return DECODE_STEP_ENOMEM;
    float *x = buf, *qkv = x + m * hidden, *att = qkv + m * qkv_n, *proj = att + m * heads * dim;
    float *gu = proj + m * hidden, *scores = gu + m * 2 * inter;
    int status = Q4_OK;
    for (int64_t l = 0; l < M->layers && status == Q4_OK; l++) {
        const decode_layer *L = &M->layer[l];
        for (int64_t r = 0; r < m; r++)
            rmsnorm(h + r * hidden, L->norm1, L->eps1, hidden, x + r * hidden);
        if ((status = linear(&L->qkv, m, x, qkv, threads, isa)) != Q4_OK)
            break;
        for (int64_t r = 0; r < m; r++) {
            float *q = qkv + r * qkv_n, *k = q + heads * dim, *v = k + M->kv_heads * dim;
            for (int64_t hd = 0; hd < heads + M->kv_heads; hd++)
                rope(q + hd * dim, cos + r * dim, sin + r * dim, dim);  /* q's heads, then k's */
            for (int64_t g = 0; g < M->kv_heads; g++) {
                const int64_t slot = (g * L->capacity + length + r) * dim;
                memcpy(L->keys + slot, k + g * dim, (size_t)dim * sizeof *k);
                memcpy(L->values + slot, v + g * dim, (size_t)dim * sizeof *v);
            }
        }
        attend(M, L, m, qkv, qkv_n, length, scores, att, threads);
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
