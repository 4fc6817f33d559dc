/* s = sum_i x[i] y[i], in parallel (a static schedule: the same sum for the same thread count).
 * MRS's dot products run here rather than in numpy: numpy's dot goes to the BLAS, whose own
 * thread pool then competes with OpenMP's for the cores between the kernel and the update. */
#include "pars3.h"

int pars3_dot(int64_t n, const double *x, const double *y, int32_t threads, double *out)
{
    if (n < 0 || threads < 1 || !out || (n > 0 && (!x || !y)))
        return PARS3_EINVAL;
    double s = 0.0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : s)
    for (int64_t i = 0; i < n; i++)
        s += x[i] * y[i];
    *out = s;
    return PARS3_OK;
}
