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

/* One row-block visit per storage form, the same loop: a branch per entry would cost more
 * than the bytes saved. */
#define BAND_ROWS(NAME, COL, VAL, END)                                                               \
static void NAME(const pars3_half *A, const pars3_band *P, int32_t t, double alpha,                  \
                 const double *u, double scale, const double *x, double *y, double *work)            \
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
    for (int64_t i = head_end; i < r1; i++) {  /* the rest: inner entries only */                    \
        const double xi = x[i];                                                                      \
        const double sxi = ss * xi;                                                                  \
        double sum = diag ? diag[i] * xi : 0.0;                                                      \
        for (const int64_t end = END(i, k); k < end; k++) {                                          \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            y[j] += VAL(k) * sxi;                                                                    \
        }                                                                                            \
        y[i] = row_result(alpha, u, scale, i, sum);                                                  \
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
                             double, const double *, double *, double *);

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
    if ((A->vcode && !A->vtab) || (A->rlen && !A->off))
        return PARS3_EINVAL;
    /* [column form][value form]: 32-bit columns, 16-bit offsets with 64-bit row offsets, 16-bit
     * offsets with 1-byte row lengths (only offered with offsets: the compact plan's form) */
    static const band_rows_fn forms[3][3] = {
        {band_rows_i32_f64, band_rows_i32_f32, band_rows_i32_code},
        {band_rows_off16_f64, band_rows_off16_f32, band_rows_off16_code},
        {band_rows_off16_f64_len, band_rows_off16_f32_len, band_rows_off16_code_len},
    };
    const band_rows_fn band_rows = forms[A->off ? (A->rlen ? 2 : 1) : 0][A->vcode ? 2 : A->val32 ? 1 : 0];
    const int32_t T = P->nblocks;
    #pragma omp parallel num_threads(threads)
    {
        const int32_t nth = omp_get_num_threads();
        const int32_t tid = omp_get_thread_num();
        for (int32_t t = tid; t < T; t += nth)
            band_rows(A, P, t, alpha, u, scale, x, y, work);
        #pragma omp barrier
        for (int32_t t = tid; t < T; t += nth)
            band_reduce(A, P, t, scale, x, y, work);
    }
    return PARS3_OK;
}
