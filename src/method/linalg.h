/*
 * linalg.h: the dense linear algebra the SVD-based methods need, in double, row-major:
 * thin SVD (LAPACK's dgesdd, the divide-and-conquer driver PyTorch uses on CPUs), the polar
 * factor (the orthogonal matrix nearest to A), and matrix products (BLAS dgemm).
 */
#ifndef FB_METHOD_LINALG_H
#define FB_METHOD_LINALG_H

#include <stdint.h>

#include "fusionbench.h"

/* A = U diag(S) Vt with k = min(m, n): U is m x k, S k, Vt k x n. A (m x n) is destroyed.
 * `what` names the tensor in errors. */
fb_status fb_svd(double *A, int64_t m, int64_t n, double *U, double *S, double *Vt,
                 const char *what);

/* Q = U Vt for A = U diag(S) Vt (m x n): the orthogonal polar factor, "whitening" A's
 * columns (or rows). A is destroyed; Q is m x n. */
fb_status fb_polar(double *A, int64_t m, int64_t n, double *Q, const char *what);

/* C (m x n) = A (m x k) B (k x n). */
void fb_matmul(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n);

/* C (k x n) = A^T B for A m x k, B m x n. */
void fb_matmul_tn(const double *A, const double *B, double *C, int64_t m, int64_t k, int64_t n);

/* Solves A X = B (A n x n, B n x nrhs; LAPACK's dgesv, LU with partial pivoting): X replaces
 * B, A is destroyed. A singular A is an error naming `what`. */
fb_status fb_solve(double *A, int64_t n, double *B, int64_t nrhs, const char *what);

/* torch.quantile(v, q) with linear interpolation, in f32 as torch computes it; v (n > 0
 * values) is reordered. */
float fb_quantile_f32(float *v, int64_t n, float q);
#endif
