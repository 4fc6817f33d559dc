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

static void band_rows(const pars3_half *A, const pars3_band *P, int32_t t, double alpha,
                      const double *u, const double *x, double *y, double *work)
{
    const int64_t *rowptr = A->rowptr;
    const int32_t *col = A->col;
    const double *val = A->val;
    const double *diag = A->diag;
    const double sign = (double)A->sign;
    const int64_t r0 = P->row_start[t];
    const int64_t r1 = P->row_start[t + 1];
    const int64_t w = P->win_start[t];
    const int64_t h0 = P->head_off[t];
    const int64_t head_end = r0 + (P->head_off[t + 1] - h0);
    double *buf = work + P->buf_off[t] - w;

    for (int64_t k = w; k < r0; k++)
        buf[k] = 0.0;
    for (int64_t i = r0; i < head_end; i++) {  /* head rows: outer, middle, inner entries */
        const double xi = x[i];
        const double sxi = sign * xi;
        double sum = shift(alpha, u, diag, i, xi);
        const int64_t km = P->mid_start[h0 + (i - r0)];
        const int64_t ki = P->inner_start[h0 + (i - r0)];
        int64_t k = rowptr[i];
        for (; k < km; k++)
            sum += val[k] * x[col[k]];
        for (; k < ki; k++) {
            const int32_t j = col[k];
            sum += val[k] * x[j];
            buf[j] += val[k] * sxi;
        }
        for (; k < rowptr[i + 1]; k++) {
            const int32_t j = col[k];
            sum += val[k] * x[j];
            y[j] += val[k] * sxi;
        }
        y[i] = sum;
    }
    for (int64_t i = head_end; i < r1; i++) {  /* the rest: inner entries only */
        const double xi = x[i];
        const double sxi = sign * xi;
        double sum = shift(alpha, u, diag, i, xi);
        for (int64_t k = rowptr[i]; k < rowptr[i + 1]; k++) {
            const int32_t j = col[k];
            sum += val[k] * x[j];
            y[j] += val[k] * sxi;
        }
        y[i] = sum;
    }
}

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
