/* y = alpha*u + (L + D + sign*L^T)*x, parallel over T row blocks in three parts.
 *
 * Block t owns rows [r_t, r_t+1) and visits them like the serial half kernel. The transposed
 * term sign*L[i,j]*x[i] of an entry goes to y[j] directly when j is in the block (inner), into
 * the block's window buffer when j is in [w_t, r_t) (middle), and is left to the owner of row
 * j when j < w_t (outer, listed in the far arrays). After one barrier each block adds into its
 * own rows every window that overlaps them and its far list: owner computes, no atomics.
 * Windows need not be monotone in t (a short block, an outlier), so the reduction visits every
 * later block. u may be NULL (no shift term) and so may A->diag. */
#include <omp.h>
#include "pars3.h"

static inline double shift(double alpha, const double *u, const double *diag, int64_t i, double xi)
{
    double s = u ? alpha * u[i] : 0.0;
    return diag ? s + diag[i] * xi : s;
}

/* Entry k of row i: its column and its value, in each storage form (pars3.h). */
#define COL_I32(k) ((int64_t)col[k])
#define COL_OFF16(k) (i - (int64_t)off[k])
#define VAL_F64(k) (val[k])
#define VAL_F32(k) ((double)val32[k])

/* One row-block visit per storage form, the same loop: a branch per entry would cost more
 * than the bytes saved. */
#define BAND_ROWS(NAME, COL, VAL)                                                                    \
static void NAME(const pars3_half *A, const pars3_band *P, int32_t t, double alpha,                  \
                 const double *u, const double *x, double *y, double *work)                          \
{                                                                                                    \
    const int64_t *rowptr = A->rowptr;                                                               \
    const int32_t *col = A->col;                                                                     \
    const uint16_t *off = A->off;                                                                    \
    const double *val = A->val;                                                                      \
    const float *val32 = A->val32;                                                                   \
    (void)col; (void)off; (void)val; (void)val32;                                                    \
    const double *diag = A->diag;                                                                    \
    const double sign = (double)A->sign;                                                             \
    const int64_t r0 = P->row_start[t];                                                              \
    const int64_t r1 = P->row_start[t + 1];                                                          \
    const int64_t w = P->win_start[t];                                                               \
    const int64_t h0 = P->head_off[t];                                                               \
    const int64_t head_end = r0 + (P->head_off[t + 1] - h0);                                         \
    double *buf = work + P->buf_off[t] - w;                                                          \
                                                                                                     \
    for (int64_t k = w; k < r0; k++)                                                                 \
        buf[k] = 0.0;                                                                                \
    for (int64_t i = r0; i < head_end; i++) {  /* head rows: outer, middle, inner entries */         \
        const double xi = x[i];                                                                      \
        const double sxi = sign * xi;                                                                \
        double sum = shift(alpha, u, diag, i, xi);                                                   \
        const int64_t km = P->mid_start[h0 + (i - r0)];                                              \
        const int64_t ki = P->inner_start[h0 + (i - r0)];                                            \
        int64_t k = rowptr[i];                                                                       \
        for (; k < km; k++)                                                                          \
            sum += VAL(k) * x[COL(k)];                                                               \
        for (; k < ki; k++) {                                                                        \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            buf[j] += VAL(k) * sxi;                                                                  \
        }                                                                                            \
        for (; k < rowptr[i + 1]; k++) {                                                             \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            y[j] += VAL(k) * sxi;                                                                    \
        }                                                                                            \
        y[i] = sum;                                                                                  \
    }                                                                                                \
    for (int64_t i = head_end; i < r1; i++) {  /* the rest: inner entries only */                    \
        const double xi = x[i];                                                                      \
        const double sxi = sign * xi;                                                                \
        double sum = shift(alpha, u, diag, i, xi);                                                   \
        for (int64_t k = rowptr[i]; k < rowptr[i + 1]; k++) {                                        \
            const int64_t j = COL(k);                                                                \
            sum += VAL(k) * x[j];                                                                    \
            y[j] += VAL(k) * sxi;                                                                    \
        }                                                                                            \
        y[i] = sum;                                                                                  \
    }                                                                                                \
}

BAND_ROWS(band_rows_i32_f64, COL_I32, VAL_F64)
BAND_ROWS(band_rows_i32_f32, COL_I32, VAL_F32)
BAND_ROWS(band_rows_off16_f64, COL_OFF16, VAL_F64)
BAND_ROWS(band_rows_off16_f32, COL_OFF16, VAL_F32)

typedef void (*band_rows_fn)(const pars3_half *, const pars3_band *, int32_t, double, const double *,
                             const double *, double *, double *);

static void band_reduce(const pars3_half *A, const pars3_band *P, int32_t owner,
                        const double *x, double *y, const double *work)
{
    const double sign = (double)A->sign;
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
        y[P->far_target[e]] += P->far_val[e] * (sign * x[P->far_source[e]]);
}

int pars3_band_spmv(const pars3_half *A, const pars3_band *P, double alpha, const double *u,
                    const double *x, double *y, double *work, int32_t threads)
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
    if (A->rowptr[A->n] > 0 && ((!A->col && !A->off) || (!A->val && !A->val32)))
        return PARS3_EINVAL;
    const band_rows_fn band_rows = A->off ? (A->val32 ? band_rows_off16_f32 : band_rows_off16_f64)
                                          : (A->val32 ? band_rows_i32_f32 : band_rows_i32_f64);
    const int32_t T = P->nblocks;
    #pragma omp parallel num_threads(threads)
    {
        const int32_t nth = omp_get_num_threads();
        const int32_t tid = omp_get_thread_num();
        for (int32_t t = tid; t < T; t += nth)
            band_rows(A, P, t, alpha, u, x, y, work);
        #pragma omp barrier
        for (int32_t t = tid; t < T; t += nth)
            band_reduce(A, P, t, x, y, work);
    }
    return PARS3_OK;
}
