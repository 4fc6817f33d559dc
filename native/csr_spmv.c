/* y = A*x, A a full square matrix in CSR (serial baseline). */
#include "pars3.h"

int pars3_csr_spmv(const pars3_csr *A, const double *x, double *y)
{
    if (!A || !x || !y || A->n < 0 || !A->rowptr || (A->rowptr[A->n] > 0 && (!A->col || !A->val)))
        return PARS3_EINVAL;
    const int64_t *rowptr = A->rowptr;
    const int32_t *col = A->col;
    const double *val = A->val;
    for (int64_t i = 0; i < A->n; i++) {
        double sum = 0.0;
        for (int64_t k = rowptr[i]; k < rowptr[i + 1]; k++)
            sum += val[k] * x[col[k]];
        y[i] = sum;
    }
    return PARS3_OK;
}
