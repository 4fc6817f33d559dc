/* y = (L + D + sign*L^T)*x from the strict lower triangle L (serial "compressed" baseline).
 * Row i adds L[i,j]*x[j] into y[i] and sign*L[i,j]*x[i] into y[j], j < i. Rows are visited in
 * ascending order and y[i] only receives transposed terms from later rows, so y[i] is assigned,
 * not accumulated, when row i is visited: no separate zeroing pass. */
#include "pars3.h"

int pars3_half_spmv(const pars3_half *A, const double *x, double *y)
{
    if (!A || !x || !y || A->n < 0 || !A->rowptr || (A->rowptr[A->n] > 0 && (!A->col || !A->val)))
        return PARS3_EINVAL;
    if (A->sign != 1 && A->sign != -1)
        return PARS3_EINVAL;
    const int64_t *rowptr = A->rowptr;
    const int32_t *col = A->col;
    const double *val = A->val;
    const double *diag = A->diag;
    const double sign = (double)A->sign;
    for (int64_t i = 0; i < A->n; i++) {
        const double xi = x[i];
        const double sxi = sign * xi;
        double sum = diag ? diag[i] * xi : 0.0;
        for (int64_t k = rowptr[i]; k < rowptr[i + 1]; k++) {
            const int32_t j = col[k];
            sum += val[k] * x[j];
            y[j] += val[k] * sxi;
        }
        y[i] = sum;
    }
    return PARS3_OK;
}
