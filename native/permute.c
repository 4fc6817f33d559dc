/* dst = src permuted by a plan's order, in parallel: a gather (dst[k] = src[perm[k]]) into the
 * band's order and a scatter (dst[perm[k]] = src[k]) back. After RCM the order is far from the
 * input's, so each access misses the cache; more threads keep more misses in flight. */
#include "pars3.h"

int pars3_gather(int64_t n, const int64_t *perm, const double *src, double *dst, int32_t threads)
{
    if (n < 0 || threads < 1 || (n > 0 && (!perm || !src || !dst)))
        return PARS3_EINVAL;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < n; k++)
        dst[k] = src[perm[k]];
    return PARS3_OK;
}

int pars3_scatter(int64_t n, const int64_t *perm, const double *src, double *dst, int32_t threads)
{
    if (n < 0 || threads < 1 || (n > 0 && (!perm || !src || !dst)))
        return PARS3_EINVAL;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t k = 0; k < n; k++)
        dst[perm[k]] = src[k];
    return PARS3_OK;
}
