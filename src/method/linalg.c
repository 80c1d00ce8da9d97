/*
 * linalg.c: thin SVD, polar factor and products over LAPACKE and CBLAS (OpenBLAS), and
 * torch.quantile's linear interpolation.
 */
#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
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

/* The k-th smallest of v[0..n) (0-based), reordering v: Hoare's selection, O(n). */
static float select_kth(float *v, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (v[i] < pivot)
                i++;
            while (v[j] > pivot)
                j--;
            if (i <= j) {
                float t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return v[k];
    }
    return v[k];
}

/* torch.quantile(x, q) with linear interpolation, in f32 as torch computes it. */
float fb_quantile_f32(float *v, int64_t n, float q)
{
    float rank = q * (float)(n - 1);
    int64_t below = (int64_t)rank, above = (int64_t)ceilf(rank);
    float lo = select_kth(v, n, below);
    float hi = lo;
    if (above != below) { /* the smallest of the entries above `below` */
        hi = v[below + 1];
        for (int64_t j = below + 2; j < n; j++)
            if (v[j] < hi) hi = v[j];
    }
    float w = rank - (float)below;
    return w < 0.5f ? lo + w * (hi - lo) : hi - (hi - lo) * (1.0f - w);
}
