/* One MRS vector update, fused into a single pass:
 *   d2 <- (vscale*v - r1*d1 - r2*d2) / rho   (the new search direction, over the oldest one)
 *   x  <- x + cg*d2
 * v is the current Lanczos vector as stored, unnormalized: vscale*v has norm 1. */
#include "pars3.h"

int pars3_mrs_update(int64_t n, double r1, double r2, double rho, double cg, double vscale,
                     const double *v, const double *d1, double *d2, double *x, int32_t threads)
{
    if (n < 0 || threads < 1 || rho == 0.0 || (n > 0 && (!v || !d1 || !d2 || !x)))
        return PARS3_EINVAL;
    const double inv_rho = 1.0 / rho;
    const double vs = vscale * inv_rho;
    const double s1 = r1 * inv_rho;
    const double s2 = r2 * inv_rho;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const double d = vs * v[i] - s1 * d1[i] - s2 * d2[i];
        d2[i] = d;
        x[i] += cg * d;
    }
    return PARS3_OK;
}
