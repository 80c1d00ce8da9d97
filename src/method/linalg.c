/*
 * linalg.c: thin SVD, polar factor and products over LAPACKE and CBLAS (OpenBLAS).
 */
#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"

fb_status fb_svd(double *A, int64_t m, int64_t n, double *U, double *S, double *Vt,
                 const char *what)
{
    int64_t k = m < n ? m : n;
    if (k == 0) return FB_OK;
    if (m > INT32_MAX || n > INT32_MAX)
        return fb_set_error(FB_ERR_UNSUPPORTED, "tensor '%s': %lld x %lld is too large for LAPACK",
                            what, (long long)m, (long long)n);
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', (lapack_int)m, (lapack_int)n, A,
                                     (lapack_int)n, S, U, (lapack_int)k, Vt, (lapack_int)n);
    if (info < 0) return fb_set_error(FB_ERR_INTERNAL, "tensor '%s': dgesdd argument %d is wrong", what, (int)-info);
    if (info > 0)
        return fb_set_error(FB_ERR_ARG, "tensor '%s': the SVD did not converge (is it finite?)", what);
    return FB_OK;
}

fb_status fb_polar(double *A, int64_t m, int64_t n, double *Q, const char *what)
{
    int64_t k = m < n ? m : n;
    if (k == 0) return FB_OK;
    double *U = fb_malloc((size_t)(m * k + k + k * n) * sizeof(double));
    if (!U) return FB_ERR_NOMEM;
    double *S = U + m * k, *Vt = S + k;
    fb_status st = fb_svd(A, m, n, U, S, Vt, what);
    if (!st) fb_matmul(U, Vt, Q, m, k, n);
    fb_free(U);
    return st;
}

void fb_matmul(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n)
{
    if (m == 0 || n == 0) return;
    if (k == 0) {
        memset(C, 0, (size_t)(m * n) * sizeof *C);
        return;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, A,
                (int)k, B, (int)n, 0.0, C, (int)n);
}

void fb_matmul_tn(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n)
{
    if (k == 0 || n == 0) return;
    if (m == 0) {
        memset(C, 0, (size_t)(k * n) * sizeof *C);
        return;
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)k, (int)n, (int)m, 1.0, A, (int)k,
                B, (int)n, 0.0, C, (int)n);
}

fb_status fb_solve(double *A, int64_t n, double *B, int64_t nrhs, const char *what)
{
    if (n == 0 || nrhs == 0) return FB_OK;
    lapack_int *ipiv = fb_malloc((size_t)n * sizeof *ipiv);
    if (!ipiv) return FB_ERR_NOMEM;
    lapack_int info = LAPACKE_dgesv(LAPACK_ROW_MAJOR, (lapack_int)n, (lapack_int)nrhs, A,
                                    (lapack_int)n, ipiv, B, (lapack_int)nrhs);
    fb_free(ipiv);
    if (info > 0)
        return fb_set_error(FB_ERR_ARG, "%s: the %lld x %lld system is singular (no unique solution)",
                            what, (long long)n, (long long)n);
    if (info < 0) return fb_set_error(FB_ERR_INTERNAL, "%s: LAPACKE_dgesv argument %d", what, (int)-info);
    return FB_OK;
}
