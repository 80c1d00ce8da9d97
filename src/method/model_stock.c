/*
 * model_stock.c: Model Stock (Jang et al., "Model Stock: All we need is just a few fine-tuned
 * models", ECCV 2024), per tensor, as FusionBench's ModelStock.
 *
 *     d_i = theta_i - theta_0
 *     cos_ij = <d_i, d_j> / (||d_i|| ||d_j|| + 1e-8), clamped to [-1, 1]
 *     phi = mean over pairs i < j of acos(cos_ij)  (averaged in degrees, as FusionBench)
 *     t = N cos(phi) / ((N - 1) cos(phi) + 1 + 1e-8)
 *     theta = t * avg_i theta_i + (1 - t) * theta_0
 *
 * Tensors matching ignore_keys get the plain average of the fine-tuned models (FusionBench
 * starts from that average and replaces only the tensors it computed a ratio for). Dot
 * products and angles in double; t and 1 - t are applied as f32 scalars. Needs N >= 2.
 */
#include <math.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

#define EPS 1e-8

typedef struct state {
    fb_name_filter *ignore;
    float *deltas;
    int64_t deltas_len;
} state;

static const fb_param_spec params[] = {
    {"ignore_keys", "[]", "tensor-name patterns that get the plain average of the models"},
    {"model_save_path", "null", "accepted for FusionBench compatibility; use merged_model_save_path"},
    {"model_save_kwargs", "null", "accepted for FusionBench compatibility"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_name_filter_free(s->ignore);
    fb_free(s->deltas);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_status st = fb_name_filter_create(fb_cfg_map_get(p, "ignore_keys"), "ignore_keys", &s->ignore);
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the delta buffer is reused from tensor to tensor */
    const int N = c->num_models;
    const int64_t n = c->count;
    float *avg = c->out;
    for (int64_t j = 0; j < n; j++) avg[j] = c->models[0][j];
    for (int i = 1; i < N; i++)
        for (int64_t j = 0; j < n; j++) avg[j] += c->models[i][j];
    const float fn = (float)N;
    for (int64_t j = 0; j < n; j++) avg[j] /= fn;
    if (fb_name_filter_matches(s->ignore, c->tensor->name)) return FB_OK;

    int64_t need = (int64_t)N * n;
    if (need > s->deltas_len) {
        float *d = fb_realloc(s->deltas, (size_t)(need ? need : 1) * sizeof *d);
        if (!d) return FB_ERR_NOMEM;
        s->deltas = d;
        s->deltas_len = need;
    }
    double sq[1024];
    for (int i = 0; i < N; i++) {
        float *d = s->deltas + (int64_t)i * n;
        for (int64_t j = 0; j < n; j++) d[j] = c->models[i][j] - c->base[j];
        sq[i] = fb_dot(d, d, n);
    }
    double angle_sum = 0.0;
    int pairs = 0;
    for (int i = 0; i < N; i++) {
        for (int k = i + 1; k < N; k++) {
            double dot = fb_dot(s->deltas + (int64_t)i * n, s->deltas + (int64_t)k * n, n);
            double cosv = dot / (sqrt(sq[i] * sq[k]) + EPS);
            cosv = cosv < -1.0 ? -1.0 : cosv > 1.0 ? 1.0 : cosv;
            angle_sum += acos(cosv) * (180.0 / M_PI);
            pairs++;
        }
    }
    double phi = (angle_sum / pairs) * (M_PI / 180.0);
    double t = N * cos(phi) / ((N - 1) * cos(phi) + 1.0 + EPS);
    float tf = (float)t, uf = (float)(1.0 - t);
    for (int64_t j = 0; j < n; j++) c->out[j] = avg[j] * tf + c->base[j] * uf;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    (void)p;
    if (m->num_models > 1024)
        return fb_set_error(FB_ERR_ARG, "model_stock merges at most 1024 models; the pool has %d",
                            m->num_models);
    return FB_OK;
}

const fb_method_ops fb_method_model_stock = {
    .name = "model_stock",
    .target_class = "ModelStock",
    .summary = "interpolate the models' average toward _pretrained_ by their angle (Model Stock)",
    .params = params,
    .needs_base = 1,
    .min_models = 2,
    .whole_tensor = 1,
    .create = create,
    .setup = setup,
    .merge = merge,
    .destroy = destroy,
};
