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
#include <omp.h>

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

/* scores[t] = exp(scores[t] - top), and their sum in key order: both paths inline it (in the AVX2
 * path the exp loop vectorizes in 8 lanes). */
static inline __attribute__((always_inline)) float exp_and_sum(float *scores, int64_t n, float top) {
    for (int64_t t = 0; t < n; t++)
        scores[t] = exp_nonpositive(scores[t] - top);
    float sum = 0.0f;
    for (int64_t t = 0; t < n; t++)
        sum += scores[t];
    return sum;
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
    const float sum = exp_and_sum(scores, n, top);
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

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ROWS_X86 1
#define TARGET_AVX2 __attribute__((target("avx2")))
#define KEYS 8          /* keys whose scores are summed at once */
#define VALUE_BLOCK 32  /* keys whose values the group's heads take in turn (16 KB at 128 dims) */

TARGET_AVX2 static inline float combine8(__m256 acc) { /* dot()'s combination of its 8 sums */
    float l[8];
    _mm256_storeu_ps(l, acc);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* one_row for `count` heads that share their keys and values (a GQA group), in 8 lanes, bit for
 * bit: each key's score is dot()'s sums in dot()'s order (a multiply, then an add: no fma), KEYS
 * keys at a time, so independent chains of adds hide each other's latency; each output element
 * sums p_t v_t over t in key order, as one_row does, in registers over a block of keys. The heads
 * of a group read each block of keys and values while it is in the L1 cache: one head at a time,
 * a long context's keys and values (1.3 MB a head at 1,262 tokens) streamed from L3 per head. */
TARGET_AVX2 static void heads_avx2(int64_t dim, int64_t count, const float *q, const float *k, const float *v,
                                   int64_t n, const int64_t *slots, float scale, float *scores, float *out) {
    for (int64_t i = 0; i < count * dim; i++)
        out[i] = 0.0f;
    if (n == 0)
        return;
    const int64_t body = dim / 8 * 8;
    int64_t t = 0;
    for (; t + KEYS <= n; t += KEYS) {
        const float *kt[KEYS];
        for (int u = 0; u < KEYS; u++)
            kt[u] = k + (slots ? slots[t + u] : t + u) * dim;
        for (int64_t h = 0; h < count; h++) {
            const float *qh = q + h * dim;
            __m256 acc[KEYS];
            for (int u = 0; u < KEYS; u++)
                acc[u] = _mm256_setzero_ps();
            for (int64_t i = 0; i < body; i += 8) {
                const __m256 x = _mm256_loadu_ps(qh + i);
                for (int u = 0; u < KEYS; u++)
                    acc[u] = _mm256_add_ps(acc[u], _mm256_mul_ps(x, _mm256_loadu_ps(kt[u] + i)));
            }
            for (int u = 0; u < KEYS; u++) {
                float sum = combine8(acc[u]);
                for (int64_t i = body; i < dim; i++)
                    sum += qh[i] * kt[u][i];
                scores[h * n + t + u] = sum * scale;
            }
        }
    }
    for (; t < n; t++)
        for (int64_t h = 0; h < count; h++)
            scores[h * n + t] = dot(q + h * dim, k + (slots ? slots[t] : t) * dim, dim) * scale;
    float inv[ROWS_MAX_GROUP];
    for (int64_t h = 0; h < count; h++) {
        float *sh = scores + h * n, top = -INFINITY;
        for (t = 0; t < n; t++)
            top = sh[t] > top ? sh[t] : top;
        inv[h] = 1.0f / exp_and_sum(sh, n, top);
    }
    for (int64_t t0 = 0; t0 < n; t0 += VALUE_BLOCK) {
        const int64_t t1 = t0 + VALUE_BLOCK < n ? t0 + VALUE_BLOCK : n;
        for (int64_t h = 0; h < count; h++) {
            const float *sh = scores + h * n;
            float *oh = out + h * dim;
            int64_t c = 0;
            for (; c + 64 <= dim; c += 64) { /* 64 outputs in 8 registers over the block's keys */
                __m256 o[8];
                for (int j = 0; j < 8; j++)
                    o[j] = _mm256_loadu_ps(oh + c + 8 * j);
                for (t = t0; t < t1; t++) {
                    const __m256 p = _mm256_set1_ps(sh[t]);
                    const float *vt = v + (slots ? slots[t] : t) * dim + c;
                    for (int j = 0; j < 8; j++)
                        o[j] = _mm256_add_ps(o[j], _mm256_mul_ps(p, _mm256_loadu_ps(vt + 8 * j)));
                }
                for (int j = 0; j < 8; j++)
                    _mm256_storeu_ps(oh + c + 8 * j, o[j]);
            }
            for (; c + 8 <= dim; c += 8) {
                __m256 o = _mm256_loadu_ps(oh + c);
                for (t = t0; t < t1; t++)
                    o = _mm256_add_ps(o, _mm256_mul_ps(_mm256_set1_ps(sh[t]),
                                                       _mm256_loadu_ps(v + (slots ? slots[t] : t) * dim + c)));
                _mm256_storeu_ps(oh + c, o);
            }
            for (; c < dim; c++)
                for (t = t0; t < t1; t++)
                    oh[c] += sh[t] * v[(slots ? slots[t] : t) * dim + c];
        }
    }
    for (int64_t h = 0; h < count; h++)
        for (int64_t i = 0; i < dim; i++)
            out[h * dim + i] *= inv[h];
}
#else
#define ROWS_X86 0
#endif

static int simd_setting = -1; /* -1: the CPU decides; 0: the portable loop (rows_attention_simd) */

static int use_simd(void) {
#if ROWS_X86
    __builtin_cpu_init();
    return simd_setting != 0 && __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

int rows_attention_simd(int on) {
    const int before = simd_setting;
    simd_setting = on ? -1 : 0;
    return before != 0;
}

int64_t rows_attention_group(int64_t heads, int64_t kv_heads) {
    const int64_t group = heads / kv_heads;
    return group < ROWS_MAX_GROUP ? group : ROWS_MAX_GROUP;
}

void rows_attention_team(int64_t batch, int64_t m, int64_t heads, int64_t kv_heads, int64_t dim,
                         int64_t head_stride, int64_t batch_stride, const float *q, const float *k, const float *v,
                         const int64_t *counts, const int64_t *starts, const int64_t *slots, float scale, float *out,
                         float *scores) {
    const int64_t group = heads / kv_heads, simd = use_simd();
    /* A task is a row and `per` heads of one KV head: the whole group (up to ROWS_MAX_GROUP)
     * while that leaves two tasks a thread, else fewer; what a head computes never depends on it. */
    int64_t per = 1;
    if (simd)
        for (int64_t d = rows_attention_group(heads, kv_heads); d > 1; d--)
            if (group % d == 0 && batch * m * (heads / d) >= 2 * omp_get_num_threads()) {
                per = d;
                break;
            }
    const int64_t tasks = batch * m * (heads / per);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t first = task * per, r = first / heads, b = r / m, g = (first % heads) / group;
        const int64_t base = b * batch_stride + g * head_stride;
        const int64_t n = counts[r];
        const int64_t *visible = slots ? slots + starts[r] : NULL;
#if ROWS_X86
        if (simd) {
            heads_avx2(dim, per, q + first * dim, k + base, v + base, n, visible, scale, scores, out + first * dim);
            continue;
        }
#endif
        one_row(dim, q + first * dim, k + base, v + base, n, visible, scale, scores, out + first * dim);
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
        float *scores = malloc((size_t)((keys > 0 ? keys : 1) * rows_attention_group(heads, kv_heads)) * sizeof *scores);
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
