/* a = b + s*c: the streaming triad, for the machine's memory bandwidth. */
#include "pars3.h"

int pars3_triad(int64_t n, double s, const double *b, const double *c, double *a, int32_t threads)
{
    if (n < 0 || threads < 1 || (n > 0 && (!a || !b || !c)))
        return PARS3_EINVAL;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
    return PARS3_OK;
}
