/* y = (L + D + sign*L^T)*x, parallel colour by colour with a barrier between colours.
 * No two rows of one colour touch the same y entry, so the rows of a colour run in
 * parallel without races; y is zeroed (or set to D*x) first because a row may receive
 * transposed terms before it is visited. */
#include "pars3.h"

int pars3_colour_spmv(const pars3_half *A, const pars3_colouring *C, const double *x, double *y,
                      int32_t threads)
{
    if (!A || !C || !x || !y || threads < 1 || A->n < 0 || !A->rowptr || C->ncolours < 0)
        return PARS3_EINVAL;
    if ((A->sign != 1 && A->sign != -1) || !C->colour_off || (C->ncolours > 0 && !C->rows))
        return PARS3_EINVAL;
    if (C->colour_off[C->ncolours] != A->n)
        return PARS3_EINVAL;
    const int64_t n = A->n;
    const int64_t *rowptr = A->rowptr;
    const int32_t *col = A->col;
    const double *val = A->val;
    const double *diag = A->diag;
    const double sign = (double)A->sign;
    #pragma omp parallel num_threads(threads)
    {
        #pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++)
            y[i] = diag ? diag[i] * x[i] : 0.0;
        for (int32_t c = 0; c < C->ncolours; c++) {
            #pragma omp for schedule(static)
            for (int64_t r = C->colour_off[c]; r < C->colour_off[c + 1]; r++) {
                const int32_t i = C->rows[r];
                const double sxi = sign * x[i];
                double sum = 0.0;
                for (int64_t k = rowptr[i]; k < rowptr[i + 1]; k++) {
                    const int32_t j = col[k];
                    sum += val[k] * x[j];
                    y[j] += val[k] * sxi;
                }
                y[i] += sum;
            }
        }
    }
    return PARS3_OK;
}
