/*
 * isotropic_merging.c: Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic
 * Model Merging with Common and Task-Specific Subspaces", ICML 2025), as FusionBench's
 * IsotropicMergingInCommonSubspace and IsotropicMergingInCommonAndTaskSubspace.
 *
 * Iso-C, per 2-D weight (not in exclude_keys), with task vectors tau_i = theta_i - theta_0:
 *     M = sum_i tau_i = U diag(s) V^T;  delta = mean(s) U V^T     (a flat spectrum)
 * Iso-CTS, per 2-D weight, k = min(m, n):
 *     c = floor(k * common_space_fraction), then c = k - round((k - c) / T) * T so that the
 *     task-specific part splits evenly into d = (k - c) / T directions per task
 *     common: the top c singular directions (U_c, s_c, V_c) of M = sum_i tau_i
 *     task i: the top d singular directions of tau_i - U_c U_c^T tau_i
 *     U = [task 1 .. task T, U_c], s likewise, V likewise; U <- polar(U), V <- polar(V)
 *     delta = mean(s) U V^T
 * Other tensors: Iso-C averages the task vectors ((sum) / T), Iso-CTS takes their running
 * mean, as FusionBench. theta = theta_0 + scaling_factor * delta. SVDs in double.
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"

typedef struct state {
    float scaling_factor;
    double common_fraction;
    int cts;
    fb_name_filter *exclude;
    double *work;
    int64_t work_len;
} state;

static const fb_param_spec iso_c_params[] = {
    {"scaling_factor", "1.0", "scale of the merged task vector (the paper's tables use 1.5)"},
    {"exclude_keys", "[]", "tensor-name patterns averaged rather than decomposed"},
    {NULL, NULL, NULL},
};

static const fb_param_spec iso_cts_params[] = {
    {"scaling_factor", "1.0", "scale of the merged task vector (the paper's tables use 1.5)"},
    {"common_space_fraction", "0.8", "fraction of the directions given to the common subspace"},
    {"exclude_keys", "[]", "tensor-name patterns averaged rather than decomposed"},
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

static fb_status create(const fb_config *p, int cts, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    double lambda;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    if (!st && cts) st = fb_param_double(p, "common_space_fraction", 0.0, 1.0, &s->common_fraction);
    if (!st) st = fb_name_filter_create(fb_cfg_map_get(p, "exclude_keys"), "exclude_keys", &s->exclude);
    if (st) {
        destroy(s);
        return st;
    }
    s->scaling_factor = (float)lambda;
    s->cts = cts;
    *out = s;
    return FB_OK;
}

static fb_status create_c(const fb_config *p, void **out) { return create(p, 0, out); }
static fb_status create_cts(const fb_config *p, void **out) { return create(p, 1, out); }

static fb_status reserve(state *s, int64_t need)
{
    return fb_reserve(&s->work, &s->work_len, need, sizeof *s->work) ? FB_ERR_NOMEM : FB_OK;
}

/* delta (f32 out) = mean(S) * polar(U) polar(V), for U m x k, S k, V k x n (destroyed). */
static fb_status flatten_spectrum(double *U, const double *S, double *V, int64_t m, int64_t k,
                                  int64_t n, double *Qu, double *Qv, double *delta,
                                  const char *name)
{
    fb_status st = fb_polar(U, m, k, Qu, name);
    if (!st) st = fb_polar(V, k, n, Qv, name);
    if (st) return st;
    double mean = 0.0;
    for (int64_t q = 0; q < k; q++) mean += S[q];
    mean = k ? mean / (double)k : 0.0;
    fb_matmul(Qu, Qv, delta, m, k, n);
    for (int64_t j = 0; j < m * n; j++) delta[j] *= mean;
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the work buffer is reused from tensor to tensor */
    const fb_tensor *t = c->tensor;
    const int T = c->num_models;
    const float lambda = s->scaling_factor;
    float *out = c->out;
    if (t->ndim != 2 || fb_name_filter_matches(s->exclude, t->name)) {
        if (s->cts) {
            fb_task_vector_running_mean(c, out);
        } else {
            for (int64_t j = 0; j < c->count; j++) out[j] = c->models[0][j] - c->base[j];
            for (int i = 1; i < T; i++)
                for (int64_t j = 0; j < c->count; j++) out[j] += c->models[i][j] - c->base[j];
            for (int64_t j = 0; j < c->count; j++) out[j] /= (float)T;
        }
        for (int64_t j = 0; j < c->count; j++) out[j] = c->base[j] + lambda * out[j];
        return FB_OK;
    }
    const int64_t m = t->shape[0], n = t->shape[1], k = m < n ? m : n;
    /* work: M (m n), U (m k), S (k), Vt (k n), Qu (m k), Qv (k n), W (m n), P (k n),
     * Ut (m k), St (k) */
    fb_status st = reserve(s, 2 * m * n + 3 * m * k + 3 * k * n + 2 * k);
    if (st) return st;
    double *M = s->work, *U = M + m * n, *S = U + m * k, *Vt = S + k, *Qu = Vt + k * n;
    double *Qv = Qu + m * k, *W = Qv + k * n, *P = W + m * n, *Ut = P + k * n, *St = Ut + m * k;
    /* M = sum_i tau_i in f32 (Iso-C also divides and multiplies by T, as FusionBench) */
    for (int64_t j = 0; j < m * n; j++) {
        float acc = c->models[0][j] - c->base[j];
        for (int i = 1; i < T; i++) acc += c->models[i][j] - c->base[j];
        if (!s->cts) acc = (acc / (float)T) * (float)T;
        M[j] = acc;
    }
    if (!s->cts) {
        if ((st = fb_svd(M, m, n, U, S, Vt, t->name))) return st;
        if ((st = flatten_spectrum(U, S, Vt, m, k, n, Qu, Qv, W, t->name))) return st;
        for (int64_t j = 0; j < m * n; j++) out[j] = c->base[j] + lambda * (float)W[j];
        return FB_OK;
    }
    int64_t common = (int64_t)((double)k * s->common_fraction);
    int64_t specific = (int64_t)rint((double)(k - common) / T) * T; /* ties to even, as Python */
    common = k - specific;
    if (common < 0)
        return fb_set_error(FB_ERR_ARG,
                            "tensor '%s': %lld directions cannot hold %d task-specific parts; "
                            "raise common_space_fraction",
                            t->name, (long long)k, T);
    int64_t d = specific / T;
    if ((st = fb_svd(M, m, n, U, S, Vt, t->name))) return st;
    /* the combined basis: task-specific blocks first, then the common directions */
    double *Uc = Qu, *Sc = St, *Vc = Qv; /* reuse as the combined U, s, V (m k, k, k n) */
    double *Ucom = Ut; /* copy of the common directions U[:, :common] (m x common) */
    for (int64_t row = 0; row < m; row++)
        memcpy(Ucom + row * common, U + row * k, (size_t)common * sizeof *U);
    for (int64_t row = 0; row < m; row++)
        memcpy(Uc + row * k + T * d, U + row * k, (size_t)common * sizeof *U);
    memcpy(Sc + T * d, S, (size_t)common * sizeof *S);
    memcpy(Vc + T * d * n, Vt, (size_t)(common * n) * sizeof *Vt);
    for (int i = 0; i < T; i++) {
        for (int64_t j = 0; j < m * n; j++) W[j] = c->models[i][j] - c->base[j];
        /* W -= Ucom (Ucom^T W) */
        fb_matmul_tn(Ucom, W, P, m, common, n);
        double *UP = M; /* m x n, free after the first SVD */
        fb_matmul(Ucom, P, UP, m, common, n);
        for (int64_t j = 0; j < m * n; j++) W[j] -= UP[j];
        double *Ui = U, *Si = S, *Vti = Vt; /* free again: the common part was copied */
        if ((st = fb_svd(W, m, n, Ui, Si, Vti, t->name))) return st;
        for (int64_t row = 0; row < m; row++)
            memcpy(Uc + row * k + i * d, Ui + row * k, (size_t)d * sizeof *Ui);
        memcpy(Sc + i * d, Si, (size_t)d * sizeof *Si);
        memcpy(Vc + i * d * n, Vti, (size_t)(d * n) * sizeof *Vti);
    }
    /* polar factors: into U (m k) and Vt (k n), then the product into W */
    double *Uo = U, *Vo = Vt;
    if ((st = fb_polar(Uc, m, k, Uo, t->name))) return st;
    if ((st = fb_polar(Vc, k, n, Vo, t->name))) return st;
    double mean = 0.0;
    for (int64_t q = 0; q < k; q++) mean += Sc[q];
    mean /= (double)k;
    fb_matmul(Uo, Vo, W, m, k, n);
    for (int64_t j = 0; j < m * n; j++) out[j] = c->base[j] + lambda * (float)(W[j] * mean);
    return FB_OK;
}

const fb_method_ops fb_method_iso_c = {
    .name = "iso_c",
    .target_class = "IsotropicMergingInCommonSubspace",
    .summary = "flatten the spectrum of the summed task matrix (Iso-C)",
    .params = iso_c_params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = create_c,
    .merge = merge,
    .destroy = destroy,
};

const fb_method_ops fb_method_iso_cts = {
    .name = "iso_cts",
    .target_class = "IsotropicMergingInCommonAndTaskSubspace",
    .summary = "Iso-C plus task-specific directions outside the common subspace (Iso-CTS)",
    .params = iso_cts_params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = create_cts,
    .merge = merge,
    .destroy = destroy,
};
