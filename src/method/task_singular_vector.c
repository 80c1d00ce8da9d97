/*
 * task_singular_vector.c: TSV-Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task
 * Interference in Model Merging", CVPR 2025), as FusionBench's TaskSingularVectorMerging.
 *
 * For each 2-D weight (not in exclude_keys), with T task vectors tau_i = theta_i - theta_0:
 *     tau_i = U_i diag(s_i) V_i^T;  keep the top r = floor(min(m, n) / T) directions of each
 *     U = [U_1[:, :r] ... U_T[:, :r]],  s = [s_1[:r] ... s_T[:r]],  V = [V_1[:, :r] ... V_T[:, :r]]
 *     whiten: U <- polar(U), V <- polar(V)   (the nearest orthogonal matrices, via SVD)
 *     delta = U diag(s) V^T
 * Other tensors: the running mean of the task vectors. theta = theta_0 + alpha * delta.
 * alpha may be a list (one per model): then each task vector is scaled before the SVDs and no
 * scale is applied after, as FusionBench does. SVDs in double (LAPACK dgesdd).
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"

typedef struct state {
    float alpha;          /* after merging (scalar alpha) */
    double *alphas;       /* per model (list alpha), or NULL */
    int num_alphas;
    fb_name_filter *exclude;
    double *work;
    int64_t work_len;
} state;

static const fb_param_spec params[] = {
    {"alpha", "1.0", "scale of the merged task vector, or a list: one scale per task vector"},
    {"exclude_keys", "[]", "tensor-name patterns averaged rather than decomposed"},
    {"return_single_task_models", "false", "accepted for FusionBench compatibility; must be false"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->alphas);
    fb_name_filter_free(s->exclude);
    fb_free(s->work);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    const fb_config *a = fb_cfg_map_get(p, "alpha");
    int single;
    fb_status st = FB_OK;
    if (a && a->kind == FB_CFG_SEQ) {
        st = fb_cfg_double_list(a, "alpha", &s->alphas, &s->num_alphas);
        s->alpha = 1.0f;
    } else if (fb_cfg_is_null(a)) {
        s->alpha = 1.0f;
    } else {
        double v;
        if (!(st = fb_cfg_double(a, "alpha", &v))) s->alpha = (float)v;
    }
    if (!st) st = fb_name_filter_create(fb_cfg_map_get(p, "exclude_keys"), "exclude_keys", &s->exclude);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "return_single_task_models"), "return_single_task_models",
                         &single);
    if (!st && single)
        st = fb_set_error(FB_ERR_UNSUPPORTED, "'return_single_task_models: true' is not supported: "
                                              "merge returns one model");
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    const state *s = p;
    if (s->alphas && s->num_alphas != m->num_models)
        return fb_set_error(FB_ERR_ARG, "got %d alphas for %d models (one per model, in pool order)",
                            s->num_alphas, m->num_models);
    return FB_OK;
}

static fb_status reserve(state *s, int64_t need)
{
    return fb_reserve(&s->work, &s->work_len, need, sizeof *s->work) ? FB_ERR_NOMEM : FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the work buffer is reused from tensor to tensor */
    const fb_tensor *t = c->tensor;
    const int T = c->num_models;
    if (t->ndim != 2 || fb_name_filter_matches(s->exclude, t->name)) {
        if (s->alphas) { /* the running mean of scaled task vectors */
            for (int64_t j = 0; j < c->count; j++)
                c->out[j] = (c->models[0][j] - c->base[j]) * (float)s->alphas[0];
            for (int i = 1; i < T; i++)
                for (int64_t j = 0; j < c->count; j++)
                    c->out[j] += ((c->models[i][j] - c->base[j]) * (float)s->alphas[i] - c->out[j]) /
                                 (float)(i + 1);
        } else {
            fb_task_vector_running_mean(c, c->out);
        }
        for (int64_t j = 0; j < c->count; j++) c->out[j] = c->base[j] + s->alpha * c->out[j];
        return FB_OK;
    }
    const int64_t m = t->shape[0], n = t->shape[1], k = m < n ? m : n;
    const int64_t r = (int64_t)((double)k * (1.0 / T)), R = r * T;
    /* work: tau (m n), U (m k), S (k), Vt (k n), Ucat (m R), Scat (R), Vcat (R n), Qu, Qv */
    fb_status st = reserve(s, m * n + m * k + k + k * n + 2 * (m * R + R * n) + R);
    if (st) return st;
    double *tau = s->work, *U = tau + m * n, *S = U + m * k, *Vt = S + k;
    double *Ucat = Vt + k * n, *Scat = Ucat + m * R, *Vcat = Scat + R;
    double *Qu = Vcat + R * n, *Qv = Qu + m * R;
    for (int i = 0; i < T; i++) {
        float scale = s->alphas ? (float)s->alphas[i] : 1.0f;
        for (int64_t j = 0; j < m * n; j++) {
            float v = c->models[i][j] - c->base[j];
            tau[j] = s->alphas ? v * scale : v;
        }
        if ((st = fb_svd(tau, m, n, U, S, Vt, t->name))) return st;
        for (int64_t row = 0; row < m; row++)
            memcpy(Ucat + row * R + i * r, U + row * k, (size_t)r * sizeof *U);
        memcpy(Scat + i * r, S, (size_t)r * sizeof *S);
        memcpy(Vcat + i * r * n, Vt, (size_t)(r * n) * sizeof *Vt);
    }
    if ((st = fb_polar(Ucat, m, R, Qu, t->name))) return st;
    if ((st = fb_polar(Vcat, R, n, Qv, t->name))) return st;
    for (int64_t row = 0; row < m; row++)
        for (int64_t q = 0; q < R; q++) Qu[row * R + q] *= Scat[q];
    double *delta = tau; /* m x n, free again */
    fb_matmul(Qu, Qv, delta, m, R, n);
    for (int64_t j = 0; j < m * n; j++) c->out[j] = c->base[j] + s->alpha * (float)delta[j];
    return FB_OK;
}

const fb_method_ops fb_method_task_singular_vector = {
    .name = "task_singular_vector",
    .target_class = "TaskSingularVectorMerging",
    .summary = "keep each task's top singular directions, whiten them jointly (TSV-M)",
    .params = params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = create,
    .setup = setup,
    .merge = merge,
    .destroy = destroy,
};
