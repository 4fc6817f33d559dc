/* One MRS vector update, fused into a single pass:
 *   d2 <- (v - r1*d1 - r2*d2) / rho     (the new search direction, over the oldest one)
 *   x  <- x + cg*d2
 *   vnext <- w / beta                   (the next Lanczos vector; skipped when beta == 0) */
#include "pars3.h"

int pars3_mrs_update(int64_t n, double r1, double r2, double rho, double cg, double beta,
                     const double *v, const double *w, const double *d1, double *d2, double *x,
                     double *vnext, int32_t threads)
{
    if (n < 0 || threads < 1 || rho == 0.0 || (n > 0 && (!v || !w || !d1 || !d2 || !x || !vnext)))
        return PARS3_EINVAL;
    const double inv_rho = 1.0 / rho;
    const double inv_beta = beta != 0.0 ? 1.0 / beta : 0.0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const double d = (v[i] - r1 * d1[i] - r2 * d2[i]) * inv_rho;
        d2[i] = d;
        x[i] += cg * d;
        if (beta != 0.0)
            vnext[i] = w[i] * inv_beta;
    }
    return PARS3_OK;
}
