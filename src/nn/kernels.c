/*
 * kernels.c: forward and backward passes of the nn engine's layers (see kernels.h).
 *
 * Matrix products go through BLAS (sgemm); the rest are plain loops, parallel over rows with
 * OpenMP where the work is per row. Each row's arithmetic is sequential, so results do not
 * depend on the thread count; BLAS splits its output, not its sums (see core/threads.c).
 */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/simd.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* GEMMs are split into fixed blocks of output rows shared out over the OpenMP threads, each
 * block a single-threaded sgemm: one thread pool (OpenBLAS's own threads would compete with
 * OpenMP's on every call), and the blocks, hence the exact sgemm calls and their rounding
 * (OpenBLAS picks kernels by size), are the same whatever the thread count. OpenBLAS runs
 * single-threaded meanwhile: whole passes switch it once (fb_nn_blas_single); a lone call
 * switches it for itself (blas_enter / blas_leave). */
enum { GEMM_ROWS = 128, FWD_ROWS = 512 };

static int blas_enter(void)
{
    int prev = openblas_get_num_threads();
    if (prev != 1) openblas_set_num_threads(1);
    return prev;
}

static void blas_leave(int prev)
{
    if (prev != 1) openblas_set_num_threads(prev);
}

void fb_linear_forward(float *out, const float *inp, const float *W, const float *b, int64_t N,
                       int64_t IC, int64_t OC)
{
    if (N == 0 || OC == 0) return;
    const int blas = blas_enter();
    /* about FWD_ROWS rows a block (fewer re-reads of W), the block count a multiple of 4 so
     * that 2 or 4 threads share them evenly; the blocks follow from N alone */
    int64_t nblk = (N + FWD_ROWS - 1) / FWD_ROWS;
    nblk = (nblk + 3) / 4 * 4;
    const int64_t step = ((N + nblk - 1) / nblk + 15) / 16 * 16;
#pragma omp parallel for schedule(static)
    for (int64_t r0 = 0; r0 < N; r0 += step) {
        int64_t rows = N - r0 < step ? N - r0 : step;
        if (b)
            for (int64_t n = r0; n < r0 + rows; n++)
                memcpy(out + n * OC, b, (size_t)OC * sizeof *out);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)OC, (int)IC, 1.0f,
                    inp + r0 * IC, (int)IC, W, (int)IC, b ? 1.0f : 0.0f, out + r0 * OC, (int)OC);
    }
    blas_leave(blas);
}

void fb_linear_forward_serial(float *out, const float *inp, const float *W, const float *b,
                              int64_t N, int64_t IC, int64_t OC)
{
    if (N == 0 || OC == 0) return;
    if (b)
        for (int64_t n = 0; n < N; n++)
            memcpy(out + n * OC, b, (size_t)OC * sizeof *out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OC, (int)IC, 1.0f, inp,
                (int)IC, W, (int)IC, b ? 1.0f : 0.0f, out, (int)OC);
}

void fb_linear_backward(float *dinp, float *dW, float *db, const float *dout, const float *inp,
                        const float *W, int64_t N, int64_t IC, int64_t OC)
{
    if (N == 0) return;
    const int blas = blas_enter();
    if (dinp) { /* dinp[N, IC] += dout W: rows of N */
#pragma omp parallel for schedule(static)
        for (int64_t r0 = 0; r0 < N; r0 += GEMM_ROWS) {
            int64_t rows = N - r0 < GEMM_ROWS ? N - r0 : GEMM_ROWS;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, (int)IC, (int)OC,
                        1.0f, dout + r0 * OC, (int)OC, W, (int)IC, 1.0f, dinp + r0 * IC, (int)IC);
        }
    }
    if (dW) { /* dW[OC, IC] += dout^T inp: rows of OC, each a full sum over N */
#pragma omp parallel for schedule(static)
        for (int64_t r0 = 0; r0 < OC; r0 += GEMM_ROWS) {
            int64_t rows = OC - r0 < GEMM_ROWS ? OC - r0 : GEMM_ROWS;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)rows, (int)IC, (int)N, 1.0f,
                        dout + r0, (int)OC, inp, (int)IC, 1.0f, dW + r0 * IC, (int)IC);
        }
    }
    if (db) {
#pragma omp parallel for
        for (int64_t o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int64_t n = 0; n < N; n++)
                s += dout[n * OC + o];
            db[o] += s;
        }
    }
    blas_leave(blas);
}

void fb_nn_blas_single(int on)
{
#ifdef _OPENMP
    openblas_set_num_threads(on ? 1 : omp_get_max_threads());
#else
    (void)on;
#endif
}

/* LN_ROWS rows at a time: each row's mean and variance are still summed over c in order,
 * but the rows' sums interleave, so the adds no longer wait on one another (the same bytes
 * as one row at a time, half the time) */
enum { LN_ROWS = 8 };

void fb_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int64_t N, int64_t C, float eps)
{
    const int64_t blocks = (N + LN_ROWS - 1) / LN_ROWS;
#pragma omp parallel for
    for (int64_t blk = 0; blk < blocks; blk++) {
        const int64_t n0 = blk * LN_ROWS, R = N - n0 < LN_ROWS ? N - n0 : LN_ROWS;
        const float *x = inp + n0 * C;
        float m[LN_ROWS] = {0}, v[LN_ROWS] = {0}, s[LN_ROWS];
        if (R == LN_ROWS) {
            for (int64_t c = 0; c < C; c++)
                for (int r = 0; r < LN_ROWS; r++)
                    m[r] += x[r * C + c];
        } else {
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < C; c++)
                    m[r] += x[r * C + c];
        }
        for (int64_t r = 0; r < R; r++)
            m[r] /= (float)C;
        if (R == LN_ROWS) {
            for (int64_t c = 0; c < C; c++)
                for (int r = 0; r < LN_ROWS; r++) {
                    const float d = x[r * C + c] - m[r];
                    v[r] += d * d;
                }
        } else {
            for (int64_t r = 0; r < R; r++)
                for (int64_t c = 0; c < C; c++) {
                    const float d = x[r * C + c] - m[r];
                    v[r] += d * d;
                }
        }
        for (int64_t r = 0; r < R; r++) {
            v[r] /= (float)C;
            s[r] = 1.0f / sqrtf(v[r] + eps);
            float *y = out + (n0 + r) * C;
            const float *xr = x + r * C;
            for (int64_t c = 0; c < C; c++)
                y[c] = (xr[c] - m[r]) * s[r] * w[c] + b[c];
            mean[n0 + r] = m[r];
            rstd[n0 + r] = s[r];
        }
    }
}

void fb_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const float *mean, const float *rstd, int64_t N,
                           int64_t C)
{
    /* parameter gradients (none when dw is NULL): sums over rows, column by column (no
     * races, fixed order) */
#pragma omp parallel for if (dw)
    for (int64_t c = 0; c < (dw ? C : 0); c++) {
        float gw = 0.0f, gb = 0.0f;
        for (int64_t n = 0; n < N; n++) {
            float xhat = (inp[n * C + c] - mean[n]) * rstd[n];
            gw += dout[n * C + c] * xhat;
            gb += dout[n * C + c];
        }
        dw[c] += gw;
        db[c] += gb;
    }
#pragma omp parallel for
    for (int64_t n = 0; n < N; n++) {
        const float *x = inp + n * C, *dy = dout + n * C;
        float *dx = dinp + n * C;
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            float xhat = (x[c] - mean[n]) * rstd[n];
            float dnorm = w[c] * dy[c];
            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * xhat;
        }
        dnorm_mean /= (float)C;
        dnorm_norm_mean /= (float)C;
        for (int64_t c = 0; c < C; c++) {
            float xhat = (x[c] - mean[n]) * rstd[n];
            float dnorm = w[c] * dy[c];
            dx[c] += (dnorm - dnorm_mean - xhat * dnorm_norm_mean) * rstd[n];
        }
    }
}

void fb_gelu_forward(float *out, const float *inp, int64_t n)
{
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++)
        out[i] = 0.5f * inp[i] * (1.0f + erff(inp[i] * (float)M_SQRT1_2));
}

void fb_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n)
{
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

/* e^x for quick GELU's sigmoid, written so that the compiler vectorises it: Cody and Waite's
 * reduction x = n ln2 + r (ln2 in two parts), |r| <= ln2/2, e^r = 1 + r + r^2 P(r) with
 * Cephes' degree-5 coefficients (within 2 ulp of e^x over float's range), times 2^n built in
 * the exponent bits. Plain multiplies and adds in a fixed order (the build never contracts
 * them), so every vector width gives the bytes the scalar loop gives. x must lie in
 * [-87, 88]: the callers clamp. */
static inline float exp_poly(float x)
{
    const float t = x * 1.44269504088896341f;
    const float nf = (t + 12582912.0f) - 12582912.0f; /* round to nearest, |t| < 2^22 */
    const float r = (x - nf * 0.693359375f) - nf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = (p * (r * r) + r) + 1.0f;
    union {
        uint32_t u;
        float f;
    } scale = {.u = (uint32_t)((int32_t)nf + 127) << 23};
    return er * scale.f;
}

/* x sigmoid(1.702 x) = x / (1 + e^(-1.702 x)); past the exponent's range the sigmoid is 0
 * (x * 0: a signed zero, as the unclamped formula gives) or 1 */
#define QUICK_GELU_FWD                                                                             \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                          \
            const float x = inp[i], t = -1.702f * x;                                               \
            float tc = t > 88.0f ? 88.0f : t; /* two selects: one nested select made gcc */        \
            tc = tc < -87.0f ? -87.0f : tc;   /* evaluate each arm apart, 2.5x slower */           \
            const float y = x / (1.0f + exp_poly(tc));                                             \
            out[i] = t > 88.0f ? x * 0.0f : y;                                                     \
        }                                                                                          \
    }
#define QUICK_GELU_BWD                                                                             \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                          \
            const float x = inp[i], t = -1.702f * x;                                               \
            float tc = t > 88.0f ? 88.0f : t; /* two selects: one nested select made gcc */        \
            tc = tc < -87.0f ? -87.0f : tc;   /* evaluate each arm apart, 2.5x slower */           \
            const float sg = 1.0f / (1.0f + exp_poly(tc));                                         \
            const float s = t > 88.0f ? 0.0f : sg;                                                 \
            dinp[i] += dout[i] * (s + 1.702f * x * s * (1.0f - s));                                \
        }                                                                                          \
    }

static void quick_gelu_fwd(float *out, const float *inp, int64_t n) QUICK_GELU_FWD
    __attribute__((target("avx2"))) static void quick_gelu_fwd_avx2(float *out, const float *inp,
                                                                    int64_t n) QUICK_GELU_FWD
    static void quick_gelu_bwd(float *dinp, const float *inp, const float *dout,
                               int64_t n) QUICK_GELU_BWD
    __attribute__((target("avx2"))) static void quick_gelu_bwd_avx2(float *dinp, const float *inp,
                                                                    const float *dout,
                                                                    int64_t n) QUICK_GELU_BWD

    enum {
        ACT_BLOCK = 4096
    }; /* elements per task: fixed, so no result depends on threads */

void fb_quick_gelu_forward(float *out, const float *inp, int64_t n)
{
    const int avx2 = fb_simd_active() >= FB_SIMD_AVX2;
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += ACT_BLOCK) {
        const int64_t m = n - i0 < ACT_BLOCK ? n - i0 : ACT_BLOCK;
        if (avx2)
            quick_gelu_fwd_avx2(out + i0, inp + i0, m);
        else
            quick_gelu_fwd(out + i0, inp + i0, m);
    }
}

void fb_quick_gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n)
{
    const int avx2 = fb_simd_active() >= FB_SIMD_AVX2;
#pragma omp parallel for schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += ACT_BLOCK) {
        const int64_t m = n - i0 < ACT_BLOCK ? n - i0 : ACT_BLOCK;
        if (avx2)
            quick_gelu_bwd_avx2(dinp + i0, inp + i0, dout + i0, m);
        else
            quick_gelu_bwd(dinp + i0, inp + i0, dout + i0, m);
    }
}

void fb_relu_forward(float *out, const float *inp, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void fb_relu_backward(float *dinp, const float *inp, const float *dout, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

void fb_softmax_forward(float *probs, const float *logits, int64_t N, int64_t C)
{
#pragma omp parallel for
    for (int64_t n = 0; n < N; n++) {
        const float *x = logits + n * C;
        float *p = probs + n * C;
        float mx = -INFINITY;
        for (int64_t c = 0; c < C; c++)
            mx = x[c] > mx ? x[c] : mx;
        float s = 0.0f;
        for (int64_t c = 0; c < C; c++) {
            p[c] = expf(x[c] - mx);
            s += p[c];
        }
        for (int64_t c = 0; c < C; c++)
            p[c] /= s;
    }
}

void fb_softmax_backward(float *dlogits, const float *probs, const float *dprobs, int64_t N,
                         int64_t C)
{
#pragma omp parallel for
    for (int64_t n = 0; n < N; n++) {
        const float *p = probs + n * C, *dp = dprobs + n * C;
        float dot = 0.0f;
        for (int64_t c = 0; c < C; c++)
            dot += p[c] * dp[c];
        for (int64_t c = 0; c < C; c++)
            dlogits[n * C + c] += p[c] * (dp[c] - dot);
    }
}

float fb_cross_entropy_forward(float *probs, const float *logits, const int32_t *targets, int64_t N,
                               int64_t C)
{
    fb_softmax_forward(probs, logits, N, C);
    double loss = 0.0; /* rows summed in order, in double */
    for (int64_t n = 0; n < N; n++)
        loss -= log((double)probs[n * C + targets[n]]);
    return N ? (float)(loss / (double)N) : 0.0f;
}

void fb_cross_entropy_backward(float *dlogits, const float *probs, const int32_t *targets,
                               int64_t N, int64_t C, float dloss)
{
    const float s = N ? dloss / (float)N : 0.0f;
#pragma omp parallel for
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            dlogits[n * C + c] += (probs[n * C + c] - (c == targets[n] ? 1.0f : 0.0f)) * s;
}

float fb_entropy_forward(float *probs, const float *logits, int64_t N, int64_t C)
{
    fb_softmax_forward(probs, logits, N, C);
    double h = 0.0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            double p = probs[n * C + c];
            if (p > 0.0) h -= p * log(p);
        }
    return N ? (float)(h / (double)N) : 0.0f;
}

/* dH/dz_c = -p_c (log p_c + H_row) per row, H_row = -sum p log p. */
void fb_entropy_backward(float *dlogits, const float *probs, int64_t N, int64_t C, float dloss)
{
    const float s = N ? dloss / (float)N : 0.0f;
#pragma omp parallel for
    for (int64_t n = 0; n < N; n++) {
        const float *p = probs + n * C;
        float hrow = 0.0f;
        for (int64_t c = 0; c < C; c++)
            hrow -= p[c] > 0.0f ? p[c] * logf(p[c]) : 0.0f;
        for (int64_t c = 0; c < C; c++) {
            float lp = p[c] > 0.0f ? logf(p[c]) : 0.0f;
            dlogits[n * C + c] += -p[c] * (lp + hrow) * s;
        }
    }
}

/* One (batch, head) of attention. The keys are transposed first (kT[d][s], rows padded with
 * zeros to Tp, a multiple of 8) so that a query's scores are computed 8 keys at a time in a
 * register, lane per key, each still summed over d in order; the output row likewise sums
 * over keys in order, lane per dimension: the same bytes as a dot product per key, at vector
 * width. acc: Tp floats of scratch; D <= ATT_MAX_D (else attention_head_strided). */
enum { ATT_MAX_D = 256 };
#define ATTENTION_HEAD                                                                             \
    {                                                                                              \
        const int64_t C = H * D, Tp = (T + 7) / 8 * 8;                                             \
        for (int64_t d = 0; d < D; d++) {                                                          \
            for (int64_t s = 0; s < T; s++)                                                        \
                kT[d * Tp + s] = k[(b * T + s) * C + h * D + d];                                   \
            for (int64_t s = T; s < Tp; s++)                                                       \
                kT[d * Tp + s] = 0.0f;                                                             \
        }                                                                                          \
        for (int64_t t = 0; t < Q; t++) {                                                          \
            const float *qt = q + (b * Q + t) * C + h * D;                                         \
            float *row = A + t * T;                                                                \
            const int64_t end = causal ? t + 1 : T;                                                \
            for (int64_t s0 = 0; s0 < end; s0 += 8) {                                              \
                float a8[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                            \
                for (int64_t d = 0; d < D; d++) {                                                  \
                    const float qd = qt[d], *kd = kT + d * Tp + s0;                                \
                    for (int j = 0; j < 8; j++)                                                    \
                        a8[j] += qd * kd[j];                                                       \
                }                                                                                  \
                for (int j = 0; j < 8; j++)                                                        \
                    acc[s0 + j] = a8[j];                                                           \
            }                                                                                      \
            float mx = -INFINITY;                                                                  \
            for (int64_t s = 0; s < end; s++) {                                                    \
                row[s] = acc[s] * scale;                                                           \
                mx = row[s] > mx ? row[s] : mx;                                                    \
            }                                                                                      \
            float sum = 0.0f;                                                                      \
            for (int64_t s = 0; s < T; s++) {                                                      \
                float e = s < end ? expf(row[s] - mx) : 0.0f;                                      \
                row[s] = e;                                                                        \
                sum += e;                                                                          \
            }                                                                                      \
            for (int64_t s = 0; s < T; s++)                                                        \
                row[s] /= sum;                                                                     \
            float od[ATT_MAX_D];                                                                   \
            for (int64_t d = 0; d < D; d++)                                                        \
                od[d] = 0.0f;                                                                      \
            for (int64_t s = 0; s < end; s++) {                                                    \
                const float *vs = v + (b * T + s) * C + h * D;                                     \
                const float a = row[s];                                                            \
                for (int64_t d = 0; d < D; d++)                                                    \
                    od[d] += a * vs[d];                                                            \
            }                                                                                      \
            memcpy(out + (b * Q + t) * C + h * D, od, (size_t)D * sizeof *od);                     \
        }                                                                                          \
    }

static void attention_head_strided(float *out, float *A, const float *q, const float *k,
                                   const float *v, int64_t b, int64_t h, int64_t T, int64_t Q,
                                   int64_t H, int64_t D, int causal, float scale)
{
    const int64_t C = H * D;
    for (int64_t t = 0; t < Q; t++) {
        const float *qt = q + (b * Q + t) * C + h * D;
        float *row = A + t * T;
        const int64_t end = causal ? t + 1 : T;
        float mx = -INFINITY;
        for (int64_t s = 0; s < end; s++) {
            const float *ks = k + (b * T + s) * C + h * D;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++)
                dot += qt[d] * ks[d];
            row[s] = dot * scale;
            mx = row[s] > mx ? row[s] : mx;
        }
        float sum = 0.0f;
        for (int64_t s = 0; s < T; s++) {
            float e = s < end ? expf(row[s] - mx) : 0.0f;
            row[s] = e;
            sum += e;
        }
        for (int64_t s = 0; s < T; s++)
            row[s] /= sum;
        float *ot = out + (b * Q + t) * C + h * D;
        for (int64_t d = 0; d < D; d++)
            ot[d] = 0.0f;
        for (int64_t s = 0; s < end; s++) {
            const float *vs = v + (b * T + s) * C + h * D;
            const float a = row[s];
            for (int64_t d = 0; d < D; d++)
                ot[d] += a * vs[d];
        }
    }
}

static void attention_head(float *out, float *A, float *kT, float *acc, const float *q,
                           const float *k, const float *v, int64_t b, int64_t h, int64_t T,
                           int64_t Q, int64_t H, int64_t D, int causal, float scale) ATTENTION_HEAD

    __attribute__((target("avx2"))) static void attention_head_avx2(
        float *out, float *A, float *kT, float *acc, const float *q, const float *k, const float *v,
        int64_t b, int64_t h, int64_t T, int64_t Q, int64_t H, int64_t D, int causal,
        float scale) ATTENTION_HEAD

    /* the first Q query positions of each image (Q = T: all of them) */
    static void attention_forward(float *out, float *att, const float *q, const float *k,
                                  const float *v, int64_t B, int64_t T, int64_t Q, int64_t H,
                                  int64_t D, int causal)
{
    const float scale = 1.0f / sqrtf((float)D);
    const int avx2 = fb_simd_active() >= FB_SIMD_AVX2;
#ifdef _OPENMP
    const int nt = omp_get_max_threads();
#else
    const int nt = 1;
#endif
    /* a transposed key block and a score row per thread; without the memory (or for heads
     * wider than ATT_MAX_D), keys are read in place: the same sums in the same order, one key
     * at a time */
    const int64_t Tp = (T + 7) / 8 * 8, per = Tp * D + Tp;
    float *kT = D <= ATT_MAX_D ? fb_malloc((size_t)nt * (size_t)per * sizeof *kT) : NULL;
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            float *A = att + (b * H + h) * Q * T;
#ifdef _OPENMP
            float *mine = kT ? kT + (size_t)omp_get_thread_num() * (size_t)per : NULL;
#else
            float *mine = kT;
#endif
            if (!mine)
                attention_head_strided(out, A, q, k, v, b, h, T, Q, H, D, causal, scale);
            else if (avx2)
                attention_head_avx2(out, A, mine, mine + Tp * D, q, k, v, b, h, T, Q, H, D,
                                    causal, scale);
            else
                attention_head(out, A, mine, mine + Tp * D, q, k, v, b, h, T, Q, H, D, causal,
                               scale);
        }
    fb_free(kT);
}

void fb_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                          int64_t B, int64_t T, int64_t H, int64_t D, int causal)
{
    attention_forward(out, att, q, k, v, B, T, T, H, D, causal);
}

void fb_attention_forward_first(float *out, float *att, const float *q, const float *k,
                                const float *v, int64_t B, int64_t T, int64_t Q, int64_t H,
                                int64_t D)
{
    attention_forward(out, att, q, k, v, B, T, Q, H, D, 0);
}

void fb_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                           const float *att, const float *q, const float *k, const float *v,
                           int64_t B, int64_t T, int64_t H, int64_t D)
{
    const int64_t C = H * D;
    const float scale = 1.0f / sqrtf((float)D);
    /* each (b, h) pair owns its slices of dq, dk, dv: no races across the parallel loop */
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < H; h++) {
            const float *A = att + (b * H + h) * T * T;
            float *dA = datt + (b * H + h) * T * T;
            for (int64_t t = 0; t < T; t++) {
                const float *dot_ = dout + (b * T + t) * C + h * D;
                /* out_t = sum_s A[t,s] v_s */
                for (int64_t s = 0; s < T; s++) {
                    const float *vs = v + (b * T + s) * C + h * D;
                    float *dvs = dv + (b * T + s) * C + h * D;
                    float g = 0.0f;
                    for (int64_t d = 0; d < D; d++) {
                        g += dot_[d] * vs[d];
                        dvs[d] += A[t * T + s] * dot_[d];
                    }
                    dA[t * T + s] = g;
                }
                /* softmax backward, then the scaled dot products */
                float sum = 0.0f;
                for (int64_t s = 0; s < T; s++)
                    sum += A[t * T + s] * dA[t * T + s];
                const float *qt = q + (b * T + t) * C + h * D;
                float *dqt = dq + (b * T + t) * C + h * D;
                for (int64_t s = 0; s < T; s++) {
                    float g = A[t * T + s] * (dA[t * T + s] - sum) * scale;
                    if (g == 0.0f) continue;
                    const float *ks = k + (b * T + s) * C + h * D;
                    float *dks = dk + (b * T + s) * C + h * D;
                    for (int64_t d = 0; d < D; d++) {
                        dqt[d] += g * ks[d];
                        dks[d] += g * qt[d];
                    }
                }
            }
        }
    }
}

void fb_patch_embed_forward(float *out, float *cols, const float *images, const float *W, int64_t B,
                            int64_t Cin, int64_t S, int64_t P, int64_t E)
{
    const int64_t G = S / P, NP = G * G, K = Cin * P * P;
#pragma omp parallel for collapse(2)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t pi = 0; pi < NP; pi++) {
            int64_t gy = pi / G, gx = pi % G;
            float *col = cols + (b * NP + pi) * K;
            for (int64_t c = 0; c < Cin; c++)
                for (int64_t y = 0; y < P; y++)
                    memcpy(col + (c * P + y) * P,
                           images + ((b * Cin + c) * S + gy * P + y) * S + gx * P,
                           (size_t)P * sizeof(float));
        }
    }
    fb_linear_forward(out, cols, W, NULL, B * NP, K, E);
}

void fb_patch_embed_backward(float *dW, const float *dout, const float *cols, int64_t B,
                             int64_t Cin, int64_t S, int64_t P, int64_t E)
{
    const int64_t NP = (S / P) * (S / P), K = Cin * P * P;
    fb_linear_backward(NULL, dW, NULL, dout, cols, NULL, B * NP, K, E);
}
