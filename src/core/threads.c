/*
 * threads.c: the thread count used by parallel loops (OpenMP). Work is cut into fixed-size
 * chunks whatever the thread count, so results never depend on it. OpenBLAS (used by the SVD
 * methods) gets the same count; its products split the output, not the sums, so they too give
 * the same bytes for any count (checked by the tests).
 */
#include "fusionbench.h"

#include <cblas.h>

#ifdef _OPENMP
#include <omp.h>
#endif

void fb_set_num_threads(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n > 0 ? n : omp_get_num_procs());
    openblas_set_num_threads(n > 0 ? n : omp_get_num_procs()); /* the SVD methods' BLAS */
#else
    (void)n;
#endif
}

int fb_get_num_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
