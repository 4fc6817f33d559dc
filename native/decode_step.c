/* A few tokens through q4 decoder layers (the formulas are in decode_step.h): products by q4's
 * kernels, attention by rows_attention's (each row alone, so m rows equal m one-row calls), all in
 * one OpenMP parallel region (team.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decode_step.h"
#include "q4.h"
#include "rows_attention.h"
#include "team.h"

#include <omp.h>

static void rmsnorm(const float *x, const float *w, float eps, int64_t n, float *out)
{
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * inv);
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

static int linear_ok(const decode_linear *w, int64_t n, int64_t k)
{
    return w->n == n && w->k == k && w->codes && w->scales && q4_shape_ok(w->n, w->k, w->group);
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
        if (!linear_ok(&L->qkv, qkv, M->hidden) || !linear_ok(&L->o, M->hidden, M->heads * M->dim)
            || !linear_ok(&L->gate_up, 2 * M->intermediate, M->hidden)
            || !linear_ok(&L->down, M->hidden, M->intermediate))
            return 0;
    }
    return 1;
}

/* Scratch of one step: activations and their quantized form, shared by the team. */
typedef struct {
    int8_t *a;
    float *asum;
    float *sa;
    int isa;
} quantized;

/* y [m][n] = W x (+ bias) by the whole team; ends in a barrier. */
static void linear(const decode_linear *w, int64_t m, const float *x, float *y, const quantized *t)
{
    q4_quantize_team(m, w->k, w->group, x, t->a, t->asum, t->sa, t->isa);
    q4_products_team(m, w->n, w->k, w->group, w->codes, w->scales, t->a, t->asum, t->sa, y, t->isa);
    if (w->bias) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < m * w->n; i++)
            y[i] += w->bias[i % w->n];
    }
}

static void add(float *h, const float *d, int64_t count)
{
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; i++)
        h[i] += d[i];
}

static void norm_rows(const float *h, const float *w, float eps, int64_t m, int64_t hidden, float *x)
{
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; r++)
        rmsnorm(h + r * hidden, w, eps, hidden, x + r * hidden);
}

int decode_step(const decode_model *M, int64_t m, int64_t length, const float *cos, const float *sin, float *h,
                const int64_t *counts, const int64_t *starts, const int64_t *slots, int threads, int isa)
{
    if (!valid(M, m, length) || !cos || !sin || !h || threads < 1
        || (counts ? !rows_visible_ok(m, length + m, counts, starts, slots) : starts || slots))
        return DECODE_STEP_EINVAL;
    if (isa == Q4_ISA_AUTO)
        isa = q4_best_isa();
    else if (!q4_has_isa(isa))
        return DECODE_STEP_EINVAL;
    const int64_t hidden = M->hidden, dim = M->dim, inter = M->intermediate, heads = M->heads;
    const int64_t qkv_n = (heads + 2 * M->kv_heads) * dim, keys = length + m;
    int64_t widest = hidden > heads * dim ? hidden : heads * dim; /* the widest input of a product */
    widest = widest > inter ? widest : inter;
    const int64_t floats = m * (hidden + qkv_n + 2 * heads * dim + hidden + 3 * inter) + m * widest / 8 + m
                           + (int64_t)threads * keys * rows_attention_group(heads, M->kv_heads);
    float *buf = malloc((size_t)floats * sizeof *buf);
    int8_t *codes = malloc((size_t)(m * widest));
    if (!buf || !codes) {
        free(buf);
        free(codes);
        return DECODE_STEP_ENOMEM;
    }
    float *x = buf, *qkv = x + m * hidden, *q = qkv + m * qkv_n, *att = q + m * heads * dim;
    float *proj = att + m * heads * dim, *gu = proj + m * hidden, *act = gu + m * 2 * inter;
    float *asum = act + m * inter, *sa = asum + m * widest / 8, *scores = sa + m;
    const quantized t = {codes, asum, sa, isa};
    int64_t causal[DECODE_STEP_MAX_ROWS]; /* row r sees keys 0 .. length + r */
    for (int64_t r = 0; r < m; r++)
        causal[r] = length + r + 1;
    const int64_t *visible = counts ? counts : causal;
    /* one parallel region for the whole step: every phase below is a worksharing loop of the
     * team (a barrier after each), so a product costs no fork or join */
#pragma omp parallel num_threads(threads)
    {
        float *mine = scores + (int64_t)omp_get_thread_num() * keys * rows_attention_group(heads, M->kv_heads);
        for (int64_t l = 0; l < M->layers; l++) {
            const decode_layer *L = &M->layer[l];
            norm_rows(h, L->norm1, L->eps1, m, hidden, x);
            linear(&L->qkv, m, x, qkv, &t);
#pragma omp for schedule(static)
            for (int64_t r = 0; r < m; r++) {
                float *qr = qkv + r * qkv_n, *k = qr + heads * dim, *v = k + M->kv_heads * dim;
                for (int64_t hd = 0; hd < heads + M->kv_heads; hd++)
                    rope(qr + hd * dim, cos + r * dim, sin + r * dim, dim); /* q's heads, then k's */
                memcpy(q + r * heads * dim, qr, (size_t)(heads * dim) * sizeof *q);
                for (int64_t g = 0; g < M->kv_heads; g++) {
                    const int64_t slot = (g * L->capacity + length + r) * dim;
                    memcpy(L->keys + slot, k + g * dim, (size_t)dim * sizeof *k);
                    memcpy(L->values + slot, v + g * dim, (size_t)dim * sizeof *v);
                }
            }
            rows_attention_team(1, m, heads, M->kv_heads, dim, L->capacity * dim, M->kv_heads * L->capacity * dim, q,
                                L->keys, L->values, visible, starts, slots, M->scaling, att, mine);
            linear(&L->o, m, att, proj, &t);
            add(h, proj, m * hidden);
            norm_rows(h, L->norm2, L->eps2, m, hidden, x);
            linear(&L->gate_up, m, x, gu, &t);
#pragma omp for schedule(static)
            for (int64_t i = 0; i < m * inter; i++) {
                const float a = gu[(i / inter) * 2 * inter + i % inter], b = gu[(i / inter) * 2 * inter + inter + i % inter];
                act[i] = a / (1.0f + expf(-a)) * b;
            }
            linear(&L->down, m, act, proj, &t);
            add(h, proj, m * hidden);
        }
    }
    free(buf);
    free(codes);
    return DECODE_STEP_OK;
}
