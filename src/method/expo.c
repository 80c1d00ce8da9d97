/*
 * expo.c: ExPO, model extrapolation (Zheng et al., "Weak-to-Strong Extrapolation Expedites
 * Alignment", 2024).
 *
 *     theta = theta_ft + alpha (theta_ft - theta_0)
 *
 * theta_0 is "_pretrained_" (the weaker model), theta_ft the one other model. As
 * FusionBench's ExPOAlgorithm: delta = ft - pre, scaled, then added to ft, each in f32.
 */
#include "core/alloc.h"
#include "method.h"

typedef struct state {
    float alpha;
} state;

static const fb_param_spec params[] = {
    {"extrapolation_factor", "0.1", "alpha, how far past the fine-tuned model to go"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double alpha;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "extrapolation_factor"),
                                 "extrapolation_factor", &alpha);
    if (st) return st;
    state *s = fb_malloc(sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->alpha = (float)alpha;
    *out = s;
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const float alpha = ((const state *)p)->alpha;
    const float *ft = c->models[0], *pre = c->base;
    for (int64_t j = 0; j < c->count; j++) c->out[j] = ft[j] + alpha * (ft[j] - pre[j]);
    return FB_OK;
}

const fb_method_ops fb_method_expo = {
    .name = "expo",
    .target_class = "ExPOAlgorithm",
    .summary = "extrapolate past a fine-tuned model away from _pretrained_ (ExPO)",
    .params = params,
    .needs_base = 1,
    .min_models = 1,
    .max_models = 1,
    .create = create,
    .merge = merge,
};
