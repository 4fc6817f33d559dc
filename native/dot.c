/* s = sum_i x[i] y[i], in parallel (a static schedule: the same sum for the same thread count).
 * MRS's dot products run here rather than in numpy: numpy's dot goes to the BLAS, whose own
 * thread pool then competes with OpenMP's for the cores between the kernel and the update.
 * Each thread keeps LANES partial sums in a fixed order, so the loop is not one chain of
 * dependent adds (which would bound it by the adder's latency, not by memory). */
#include "pars3.h"

#define LANES 8

int pars3_dot(int64_t n, const double *x, const double *y, int32_t threads, double *out)
{
    if (n < 0 || threads < 1 || !out || (n > 0 && (!x || !y)))
        return PARS3_EINVAL;
    const int64_t blocks = n / LANES;
    double s = 0.0;
    #pragma omp parallel num_threads(threads) reduction(+ : s)
    {
        double part[LANES] = {0.0};
        #pragma omp for schedule(static)
        for (int64_t b = 0; b < blocks; b++)
            for (int l = 0; l < LANES; l++)
                part[l] += x[b * LANES + l] * y[b * LANES + l];
        double t = 0.0;
        for (int l = 0; l < LANES; l++)
            t += part[l];
        s += t;
    }
    for (int64_t i = blocks * LANES; i < n; i++)
        s += x[i] * y[i];
    *out = s;
    return PARS3_OK;
}
