/* y = alpha*u + scale*(L + D + sign*L^T)*x, parallel over T row blocks in three parts.
 *
 * Block t owns rows [r_t, r_t+1) and visits them like the serial half kernel. The transposed
 * term sign*L[i,j]*x[i] of an entry goes to y[j] directly when j is in the block (inner), into
 * the block's window buffer when j is in [w_t, r_t) (middle), and is left to the owner of row
 * j when j < w_t (outer, listed in the far arrays). After one barrier each block adds into its
 * own rows every window that overlaps them and its far list: owner computes, no atomics.
 * Windows need not be monotone in t (a short block, an outlier), so the reduction visits every
 * later block. u may be NULL (no shift term) and so may A->diag. scale multiplies x as it is read
 * (MRS keeps its Lanczos vectors unnormalized and passes the factor here instead of a pass over
 * the vector); with scale = 1 every product is bit for bit the unscaled one. */
#include <omp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include "pars3.h"

/* Row i's result from the sum over its stored entries and its diagonal, unscaled. */
static inline double row_result(double alpha, const double *u, double scale, int64_t i, double sum)
{
    return u ? alpha * u[i] + scale * sum : scale * sum;
}

/* Entry k of row i: its column and its value, in each storage form (pars3.h). */
#define COL_I32(k) ((int64_t)col[k])
#define COL_OFF16(k) (i - (int64_t)off[k])
#define VAL_F64(k) (val[k])
#define VAL_F32(k) ((double)val32[k])
#define VAL_CODE(k) (vtab[vcode[k]])

/* Where row i's entries end, given that they start at k: from the 64-bit offsets or the 1-byte
 * row lengths (pars3.h). Entries are contiguous, so a block walks k from rowptr[r0] onwards. */
#define END_PTR(i, k) (rowptr[(i) + 1])
#define END_LEN(i, k) ((k) + (int64_t)rlen[i])

/* Rows of a uniform group (pars3.h), L entries each, entry e of every row at offset o[e] from
 * its row: the row loop of BAND_ROWS with the offsets read once per group and L a constant, so
 * the entry loop unrolls (about half the instructions a row of the general loop takes). */
#define GROUP_ROWS(VAL, LC)                                                                          \
    do {                                                                                             \
        int64_t o[(LC) > 0 ? (LC) : 1];                                                              \
        for (int64_t e = 0; e < (LC); e++)                                                           \
            o[e] = off[k + e];                                                                       \
        for (int64_t r = 0; r < PARS3_GROUP; r++, k += (LC)) {                                       \
            const int64_t row = i + r;                                                               \
            const double xi = x[row];                                                                \
            const double sxi = ss * xi;                                                              \
            double sum = diag ? diag[row] * xi : 0.0;                                                \
            for (int64_t e = 0; e < (LC); e++) {                                                     \
                const double a = VAL(k + e);                                                         \
                sum += a * x[row - o[e]];                                                            \
                y[row - o[e]] += a * sxi;                                                            \
            }                                                                                        \
            y[row] = row_result(alpha, u, scale, row, sum);                                          \
        }                                                                                            \
    } while (0)

/* Consecutive uniform groups from row i (a multiple of PARS3_GROUP) while they lie below r1;
 * their entries start at *kp. Answers the row after them and moves *kp past their entries. */
#define UNIFORM_RUN(NAME, VAL)                                                                       \
static int64_t NAME(const pars3_half *A, int64_t r0, int64_t i, int64_t r1, int64_t *kp,            \
                    double alpha, const double *u, double scale, const double *x, double *y)         \
{                                                                                                    \
    (void)r0;                                                                                        \
    const uint16_t *off = A->off;                                                                    \
    const double *val = A->val;                                                                      \
    const float *val32 = A->val32;                                                                   \
    const uint8_t *vcode = A->vcode;                                                                 \
    const double *vtab = A->vtab;                                                                    \
    (void)val; (void)val32; (void)vcode; (void)vtab;                                                 \
    const double *diag = A->diag;                                                                    \
    const double ss = (double)A->sign * scale;                                                       \
    int64_t k = *kp;                                                                                 \
    for (; i + PARS3_GROUP <= r1 && A->uniform[i / PARS3_GROUP]; i += PARS3_GROUP) {                 \
        switch (A->rlen[i]) {                                                                        \
        case 1: GROUP_ROWS(VAL, 1); break;                                                           \
        case 2: GROUP_ROWS(VAL, 2); break;                                                           \
        case 3: GROUP_ROWS(VAL, 3); break;                                                           \
        case 4: GROUP_ROWS(VAL, 4); break;                                                           \
        default: {                                                                                   \
            const int64_t L = A->rlen[i];                                                            \
            GROUP_ROWS(VAL, L);                                                                      \
        }                                                                                            \
        }                                                                                            \
    }                                                                                                \
    *kp = k;                                                                                         \
    return i;                                                                                        \
}

UNIFORM_RUN(uniform_f64, VAL_F64)
UNIFORM_RUN(uniform_f32, VAL_F32)
UNIFORM_RUN(uniform_code, VAL_CODE)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define UNIFORM_AVX512 1

/* Terms c whose lane r goes to row base + 8 + r - d (0 <= d <= 8), added into lo (rows base ..
 * base + 7) and hi (rows base + 8 .. base + 15). */
__attribute__((target("avx512f")))
static inline void spread(__m512d c, int64_t d, __m512d *lo, __m512d *hi)
{
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __mmask8 into_hi = (__mmask8)((1u << (8 - d)) - 1);
    *hi = _mm512_add_pd(*hi, _mm512_maskz_permutexvar_pd(into_hi, _mm512_add_epi64(lanes, _mm512_set1_epi64(d)), c));
    *lo = _mm512_add_pd(*lo, _mm512_maskz_permutexvar_pd((__mmask8)~into_hi,
                                                         _mm512_sub_epi64(lanes, _mm512_set1_epi64(8 - d)), c));
}

/* y[base .. base + 7] += v over this block's rows only (>= r0; the caller keeps base >= r0, the
 * mask is a second guard: below r0 another thread writes). */
__attribute__((target("avx512f")))
static inline void add_rows(double *y, int64_t r0, int64_t base, __m512d v)
{
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __mmask8 mine = _mm512_cmpge_epi64_mask(_mm512_add_epi64(lanes, _mm512_set1_epi64(base)), _mm512_set1_epi64(r0));
    _mm512_mask_storeu_pd(y + base, mine, _mm512_add_pd(_mm512_maskz_loadu_pd(mine, y + base), v));
}

/* The coded form's uniform groups as vectors of PARS3_GROUP = 8 rows (AVX-512F): a slot's 8 codes
 * come in one load (L <= 2) or gather, their values from the table (a permute when it has at
 * most 8 values), the window x[i - o_e ..] in one load. Transposed terms stay in registers until
 * no later group can reach them, so no vector just stored is read back at another alignment
 * (that stalls store-to-load forwarding on every group): those at o_e <= 8 land in this group's
 * rows and the 8 before (`cur`, `prev`); those at o_e >= 16 within 8 of the smallest such offset
 * in a 16-row window that moves 8 rows a group (`flo`, `fhi`). Other far offsets take a plain
 * read-modify-write; a group with a slot at 8 < o_e < 16 ends the run. Row sums add the slots in
 * order as the scalar loop does; products are fused (one rounding fewer), and transposed terms
 * reach a y entry in another order than the scalar loop's. */
__attribute__((target("avx512f")))
static int64_t uniform_code_avx512(const pars3_half *A, int64_t r0, int64_t i, int64_t r1, int64_t *kp,
                                   double alpha, const double *u, double scale, const double *x, double *y)
{
    const uint16_t *off = A->off;
    const uint8_t *vcode = A->vcode;
    const double *diag = A->diag;
    if (i - 8 < r0)  /* the rows before the first group must be this block's */
        return i;
    const int small = A->ntab <= 8;
    double padded[8] = {0.0};
    for (int64_t t = 0; t < A->ntab && t < 8; t++)
        padded[t] = A->vtab[t];
    const __m512d tab = _mm512_loadu_pd(padded);
    const __m512d vss = _mm512_set1_pd((double)A->sign * scale), vscale = _mm512_set1_pd(scale);
    const __m512d valpha = _mm512_set1_pd(alpha);
    const __m512i low = _mm512_set1_epi64(0xff);
    const __m128i even_odd = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    int64_t k = *kp;
    __m512d prev = _mm512_loadu_pd(y + i - 8);  /* rows i-8 .. i-1, written back when done */
    /* The far terms of a group whose far offsets lie within 8 of the smallest, O, land in rows
     * [i - O - 8, i - O + 8): flo and fhi from row far_base on. After each group flo goes into y
     * (in the same 8-row phase every time) and fhi becomes flo. */
    __m512d flo = _mm512_setzero_pd(), fhi = _mm512_setzero_pd();
    int64_t far_base = 0;
    int far = 0;  /* whether flo and fhi hold a window */
    for (; i + 8 <= r1 && A->uniform[i / 8]; i += 8) {
        const int64_t L = A->rlen[i];
        int64_t far_lo = INT64_MAX, far_hi = -1;  /* the smallest and largest offset >= 16 */
        int ok = L <= PARS3_GROUP_SLOTS;
        for (int64_t e = 0; e < L && ok; e++) {
            const int64_t o = off[k + e];
            ok = o <= 8 || o >= 16;
            if (o >= 16) {
                far_lo = o < far_lo ? o : far_lo;
                far_hi = o > far_hi ? o : far_hi;
            }
        }
        if (!ok)
            break;
        const __m512d xi = _mm512_loadu_pd(x + i);
        const __m512d sx = _mm512_mul_pd(xi, vss);
        __m512d sum = diag ? _mm512_mul_pd(_mm512_loadu_pd(diag + i), xi) : _mm512_setzero_pd();
        __m512d v[PARS3_GROUP_SLOTS];
        __m128i pair = _mm_setzero_si128();  /* L = 2: both slots' codes in one 16-byte load */
        if (L == 2)
            pair = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(vcode + k)), even_odd);
        for (int64_t e = 0; e < L; e++) {
            __m512i code;
            if (L == 1)
                code = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(vcode + k)));
            else if (L == 2)
                code = _mm512_cvtepu8_epi64(e == 0 ? pair : _mm_srli_si128(pair, 8));
            else
                code = _mm512_and_si512(  /* row r's entry e is k + r L + e */
                    _mm512_i64gather_epi64(_mm512_set_epi64(k + e + 7 * L, k + e + 6 * L, k + e + 5 * L, k + e + 4 * L,
                                                            k + e + 3 * L, k + e + 2 * L, k + e + L, k + e),
                                           (const void *)vcode, 1), low);
            v[e] = small ? _mm512_permutexvar_pd(code, tab) : _mm512_i64gather_pd(code, A->vtab, 8);
            sum = _mm512_fmadd_pd(v[e], _mm512_loadu_pd(x + i - (int64_t)off[k + e]), sum);
        }
        __m512d cur = _mm512_mul_pd(sum, vscale);
        if (u)
            cur = _mm512_fmadd_pd(valpha, _mm512_loadu_pd(u + i), cur);
        const int windowed = far_hi >= 0 && far_hi - far_lo < 8 && i - far_lo - 8 >= r0;
        if (windowed && !(far && far_base == i - far_lo - 8)) {  /* a new window: the old one goes to y */
            if (far) {
                add_rows(y, r0, far_base, flo);
                add_rows(y, r0, far_base + 8, fhi);
            }
            flo = fhi = _mm512_setzero_pd();
            far_base = i - far_lo - 8;
            far = 1;
        }
        for (int64_t e = 0; e < L; e++) {
            const int64_t o = off[k + e];
            const __m512d c = _mm512_mul_pd(v[e], sx);  /* lane r goes to row i + r - o */
            if (o <= 8)
                spread(c, o, &prev, &cur);
            else if (windowed)
                spread(c, o - far_lo, &flo, &fhi);
            else {
                double *ys = y + i - o;
                _mm512_storeu_pd(ys, _mm512_add_pd(_mm512_loadu_pd(ys), c));
            }
        }
        _mm512_storeu_pd(y + i - 8, prev);
        prev = cur;
        if (far) {  /* no later group reaches flo's rows: the window moves on by 8 */
            add_rows(y, r0, far_base, flo);
            flo = fhi;
            fhi = _mm512_setzero_pd();
            far_base += 8;
        }
        k += 8 * L;
    }
    _mm512_storeu_pd(y + i - 8, prev);
    if (far) {
        add_rows(y, r0, far_base, flo);
        add_rows(y, r0, far_base + 8, fhi);
    }
    *kp = k;
    return i;
}

/* Whether to take the AVX-512 path: the CPU has it and PARS3_NO_AVX512 is not set in the
 * environment (which tests, and anyone comparing, use to run the portable path on such a CPU). */
static int cpu_has_avx512f(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && !getenv("PARS3_NO_AVX512") ? 1 : 0;
    }
    return known;
}
#endif

typedef int64_t (*uniform_fn)(const pars3_half *, int64_t, int64_t, int64_t, int64_t *, double, const double *,
                              double, const double *, double *);

/* One row-block visit per storage form, the same loop: a branch per entry would cost more
 * than the bytes saved. `group`, when not NULL, takes the uniform groups of the block's inner rows. */
#define BAND_ROWS(NAME, COL, VAL, END)                                                               \
static void NAME(const pars3_half *A, const pars3_band *P, int32_t t, double alpha,                  \
                 const double *u, double scale, const double *x, double *y, double *work,            \
                 uniform_fn group)                                                                   \
{                                                                                                    \
    const int64_t *rowptr = A->rowptr;                                                               \
    const int32_t *col = A->col;                                                                     \
    const uint16_t *off = A->off;                                                                    \
    const double *val = A->val;                                                                      \
    const float *val32 = A->val32;                                                                   \
    const uint8_t *vcode = A->vcode;                                                                 \
    const double *vtab = A->vtab;                                                                    \
    const uint8_t *rlen = A->rlen;                                                                   \
    (void)col; (void)off; (void)val; (void)val32; (void)vcode; (void)vtab; (void)rlen;               \
    const double *diag = A->diag;                                                                    \
    const double ss = (double)A->sign * scale;                                                       \
    const int64_t r0 = P->row_start[t];                                                              \
    const int64_t r1 = P->row_start[t + 1];                                                          \
    const int64_t w = P->win_start[t];                                                               \
    const int64_t h0 = P->head_off[t];                                                               \
    const int64_t head_end = r0 + (P->head_off[t + 1] - h0);                                         \
    double *buf = work + P->buf_off[t] - w;                                                          \
                                                                                                     \
    for (int64_t k = w; k < r0; k++)                                                                 \
        buf[k] = 0.0;                                                                                \
    int64_t k = rowptr[r0];                                                                          \
    for (int64_t i = r0; i < head_end; i++) {  /* head rows: outer, middle, inner entries */         \
        const double xi = x[i];                                                                      \
        const double sxi = ss * xi;                                                                  \
        double sum = diag ? diag[i] * xi : 0.0;                                                      \
        const int64_t km = P->mid_start[h0 + (i - r0)];                                              \
        const int64_t ki = P->inner_start[h0 + (i - r0)];                                            \
        const int64_t end = END(i, k);                                                               \
        for (; k < km; k++)                                                                          \
            sum += VAL(k) * x[COL(k)];                                                               \
        for (; k < ki; k++) {                                                                        \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            buf[j] += VAL(k) * sxi;                                                                  \
        }                                                                                            \
        for (; k < end; k++) {                                                                       \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            y[j] += VAL(k) * sxi;                                                                    \
        }                                                                                            \
        y[i] = row_result(alpha, u, scale, i, sum);                                                  \
    }                                                                                                \
    const uint8_t *uniform = group ? A->uniform : NULL;                                              \
    for (int64_t i = head_end; i < r1;) {  /* the rest: inner entries only */                        \
        if (uniform && (i % PARS3_GROUP) == 0 && i + PARS3_GROUP <= r1 && uniform[i / PARS3_GROUP]) {\
            const int64_t next = group(A, r0, i, r1, &k, alpha, u, scale, x, y);                     \
            if (next != i) {                                                                         \
                i = next;                                                                            \
                continue;                                                                            \
            }                                                                                        \
        }                                                                                            \
        const double xi = x[i];                                                                      \
        const double sxi = ss * xi;                                                                  \
        double sum = diag ? diag[i] * xi : 0.0;                                                      \
        for (const int64_t end = END(i, k); k < end; k++) {                                          \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            y[j] += VAL(k) * sxi;                                                                    \
        }                                                                                            \
        y[i] = row_result(alpha, u, scale, i, sum);                                                  \
        i++;                                                                                         \
    }                                                                                                \
}

BAND_ROWS(band_rows_i32_f64, COL_I32, VAL_F64, END_PTR)
BAND_ROWS(band_rows_i32_f32, COL_I32, VAL_F32, END_PTR)
BAND_ROWS(band_rows_i32_code, COL_I32, VAL_CODE, END_PTR)
BAND_ROWS(band_rows_off16_f64, COL_OFF16, VAL_F64, END_PTR)
BAND_ROWS(band_rows_off16_f32, COL_OFF16, VAL_F32, END_PTR)
BAND_ROWS(band_rows_off16_code, COL_OFF16, VAL_CODE, END_PTR)
BAND_ROWS(band_rows_off16_f64_len, COL_OFF16, VAL_F64, END_LEN)
BAND_ROWS(band_rows_off16_f32_len, COL_OFF16, VAL_F32, END_LEN)
BAND_ROWS(band_rows_off16_code_len, COL_OFF16, VAL_CODE, END_LEN)

typedef void (*band_rows_fn)(const pars3_half *, const pars3_band *, int32_t, double, const double *,
                             double, const double *, double *, double *, uniform_fn);

static void band_reduce(const pars3_half *A, const pars3_band *P, int32_t owner, double scale,
                        const double *x, double *y, const double *work)
{
    const double ss = (double)A->sign * scale;
    const int64_t r0 = P->row_start[owner];
    const int64_t r1 = P->row_start[owner + 1];
    for (int32_t t = owner + 1; t < P->nblocks; t++) {
        const int64_t w = P->win_start[t];
        const int64_t lo = w > r0 ? w : r0;
        const int64_t hi = P->row_start[t] < r1 ? P->row_start[t] : r1;
        const double *buf = work + P->buf_off[t] - w;
        for (int64_t k = lo; k < hi; k++)
            y[k] += buf[k];
    }
    for (int64_t e = P->far_off[owner]; e < P->far_off[owner + 1]; e++)
        y[P->far_target[e]] += P->far_val[e] * (ss * x[P->far_source[e]]);
}

int pars3_band_spmv(const pars3_half *A, const pars3_band *P, double alpha, const double *u,
                    double scale, const double *x, double *y, double *work, int32_t threads)
{
    if (!A || !P || !x || !y || threads < 1 || A->n < 0 || !A->rowptr)
        return PARS3_EINVAL;
    if (A->sign != 1 && A->sign != -1)
        return PARS3_EINVAL;
    if (P->nblocks < 1 || !P->row_start || !P->win_start || !P->buf_off || !P->head_off
        || !P->far_off || P->row_start[0] != 0 || P->row_start[P->nblocks] != A->n)
        return PARS3_EINVAL;
    if (P->buf_off[P->nblocks] > 0 && !work)
        return PARS3_EINVAL;
    if (A->rowptr[A->n] > 0 && ((!A->col && !A->off) || (!A->val && !A->val32 && !A->vcode)))
        return PARS3_EINVAL;
    if ((A->vcode && !A->vtab) || (A->rlen && !A->off) || (A->uniform && !A->rlen))
        return PARS3_EINVAL;
    /* [column form][value form]: 32-bit columns, 16-bit offsets with 64-bit row offsets, 16-bit
     * offsets with 1-byte row lengths (only offered with offsets: the compact plan's form) */
    static const band_rows_fn forms[3][3] = {
        {band_rows_i32_f64, band_rows_i32_f32, band_rows_i32_code},
        {band_rows_off16_f64, band_rows_off16_f32, band_rows_off16_code},
        {band_rows_off16_f64_len, band_rows_off16_f32_len, band_rows_off16_code_len},
    };
    const int value_form = A->vcode ? 2 : A->val32 ? 1 : 0;
    const band_rows_fn band_rows = forms[A->off ? (A->rlen ? 2 : 1) : 0][value_form];
    static const uniform_fn groups[3] = {uniform_f64, uniform_f32, uniform_code};
    uniform_fn group = A->uniform ? groups[value_form] : NULL;
#ifdef UNIFORM_AVX512
    if (group == uniform_code && cpu_has_avx512f())
        group = uniform_code_avx512;
#endif
    const int32_t T = P->nblocks;
    #pragma omp parallel num_threads(threads)
    {
        const int32_t nth = omp_get_num_threads();
        const int32_t tid = omp_get_thread_num();
        for (int32_t t = tid; t < T; t += nth)
            band_rows(A, P, t, alpha, u, scale, x, y, work, group);
        #pragma omp barrier
        for (int32_t t = tid; t < T; t += nth)
            band_reduce(A, P, t, scale, x, y, work);
    }
    return PARS3_OK;
}
