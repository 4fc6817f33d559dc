/* The number of threads OpenMP would use for a parallel region with no num_threads clause. */
#include <omp.h>
#include "pars3.h"

int pars3_max_threads(void)
{
    return omp_get_max_threads();
}
