/*
 * wudi.c: WUDI-Merging (Cheng et al., "Whoever Started the Interference Should End It: Guiding
 * Data-Free Model Merging via Task Vectors", ICML 2025), as FusionBench's WUDIMerging.
 *
 * For each 2-D weight (not in exclude_keys), with task vectors T_i (m x n):
 *     minimise  L(X) = sum_i || (X - T_i) T_i^T ||_F^2 / ||T_i||_F^2   from X = sum_i T_i
 * by Adam (lr, betas 0.9/0.999, eps 1e-8, as torch.optim.Adam) for iter_num steps;
 * theta = theta_0 + X. Other tensors: theta_0 + the mean task vector.
 *
 * The gradient, 2 sum_i (X - T_i) T_i^T T_i / n_i, is computed as 2 (X A - B) with
 * A = sum_i G_i / n_i and B = sum_i T_i G_i / n_i precomputed (G_i = T_i^T T_i, n x n), so each
 * step is one m x n x n product instead of 2T of them. In double precision.
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"

typedef struct state {
    int64_t iters;
    double lr;
    fb_name_filter *exclude;
    double *work;
    int64_t work_len;
} state;

static const fb_param_spec params[] = {
    {"iter_num", "400", "Adam steps per weight matrix"},
    {"exclude_keys", "[]", "tensor-name patterns averaged rather than optimised"},
    {"lr", "1e-5", "Adam's learning rate (FusionBench fixes 1e-5)"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_name_filter_free(s->exclude);
    fb_free(s->work);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_status st = fb_cfg_int(fb_cfg_map_get(p, "iter_num"), "iter_num", &s->iters);
    if (!st && s->iters < 0)
        st = fb_set_error(FB_ERR_ARG, "'iter_num' is %lld; it must be >= 0", (long long)s->iters);
    if (!st) st = fb_param_double(p, "lr", 0.0, NAN, &s->lr);
    if (!st) st = fb_name_filter_create(fb_cfg_map_get(p, "exclude_keys"), "exclude_keys", &s->exclude);
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the work buffer is reused from tensor to tensor */
    const fb_tensor *t = c->tensor;
    const int N = c->num_models;
    float *out = c->out;
    if (t->ndim != 2 || fb_name_filter_matches(s->exclude, t->name)) {
        for (int64_t j = 0; j < c->count; j++) out[j] = c->models[0][j] - c->base[j];
        for (int i = 1; i < N; i++)
            for (int64_t j = 0; j < c->count; j++) out[j] += c->models[i][j] - c->base[j];
        for (int64_t j = 0; j < c->count; j++) out[j] = c->base[j] + out[j] / (float)N;
        return FB_OK;
    }
    const int64_t m = t->shape[0], n = t->shape[1], mn = m * n;
    /* work: T (m n), G (n n), TG (m n), A (n n), B (m n), X, m1, v1, grad (m n each) */
    int64_t need = 7 * mn + 2 * n * n;
    if (fb_reserve(&s->work, &s->work_len, need, sizeof *s->work)) return FB_ERR_NOMEM;
    double *T = s->work, *G = T + mn, *TG = G + n * n, *A = TG + mn, *B = A + n * n;
    double *X = B + mn, *m1 = X + mn, *v1 = m1 + mn, *grad = v1 + mn;
    memset(A, 0, (size_t)(n * n) * sizeof *A);
    memset(B, 0, (size_t)mn * sizeof *B);
    memset(X, 0, (size_t)mn * sizeof *X);
    for (int i = 0; i < N; i++) {
        for (int64_t j = 0; j < mn; j++) T[j] = (double)(c->models[i][j] - c->base[j]);
        double norm2 = 0.0;
        for (int64_t j = 0; j < mn; j++) {
            norm2 += T[j] * T[j];
            X[j] += T[j];
        }
        if (norm2 == 0.0) continue; /* a zero task vector adds nothing to the loss */
        fb_matmul_tn(T, T, G, m, n, n);
        fb_matmul(T, G, TG, m, n, n);
        for (int64_t j = 0; j < n * n; j++) A[j] += G[j] / norm2;
        for (int64_t j = 0; j < mn; j++) B[j] += TG[j] / norm2;
    }
    memset(m1, 0, (size_t)mn * sizeof *m1);
    memset(v1, 0, (size_t)mn * sizeof *v1);
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double b1t = 1.0, b2t = 1.0;
    for (int64_t it = 1; it <= s->iters; it++) {
        fb_matmul(X, A, grad, m, n, n);
        b1t *= b1;
        b2t *= b2;
        double step = s->lr / (1.0 - b1t), bc2 = sqrt(1.0 - b2t);
        for (int64_t j = 0; j < mn; j++) {
            double g = 2.0 * (grad[j] - B[j]);
            m1[j] = b1 * m1[j] + (1.0 - b1) * g;
            v1[j] = b2 * v1[j] + (1.0 - b2) * g * g;
            X[j] -= step * m1[j] / (sqrt(v1[j]) / bc2 + eps);
        }
    }
    for (int64_t j = 0; j < mn; j++) out[j] = c->base[j] + (float)X[j];
    return FB_OK;
}

const fb_method_ops fb_method_wudi = {
    .name = "wudi",
    .target_class = "WUDIMerging",
    .summary = "optimise each weight's merged task vector against interference (WUDI, data-free)",
    .params = params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = create,
    .merge = merge,
    .destroy = destroy,
};
