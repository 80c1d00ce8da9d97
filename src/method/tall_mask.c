/*
 * tall_mask.c: TALL masks (Wang et al., "Localizing Task Information for Improved Model Merging
 * and Compression", ICML 2024), as FusionBench's TallMaskTaskArithmeticAlgorithm.
 *
 *     tau = sum_t tau_t,  theta_mt = theta_0 + tau                 (the multi-task model)
 *     m_t = |theta_0 - theta_t| > lambda |theta_mt - theta_t|      (task t's mask)
 *     task t's model: theta_0 + m_t * tau
 *
 * FusionBench returns the T task models; here the output is theta_mt, and the masks are the
 * extras ("<task>/<tensor>", see fb_method_run_extras), from which each task model is
 * theta_0 + m_t * (theta_mt - theta_0): the compressed form the paper stores.
 */
#include <math.h>

#include "core/alloc.h"
#include "method.h"

typedef struct state {
    float lambda;
} state;

static const fb_param_spec params[] = {
    {"tall_mask_lambda", "0.6", "lambda of the masks"},
    {"debug", "0", "accepted for FusionBench compatibility"},
    {"verbose", "0", "accepted for FusionBench compatibility"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double lambda;
    int64_t ignored;
    fb_status st = fb_param_double(p, "tall_mask_lambda", 0.0, NAN, &lambda);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "debug"), "debug", &ignored);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "verbose"), "verbose", &ignored);
    if (st) return st;
    state *s = fb_malloc(sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->lambda = (float)lambda;
    *out = s;
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const float lambda = ((const state *)p)->lambda;
    const int64_t n = c->count;
    const float *restrict base = c->base;
    float *restrict mt = c->out;
    for (int64_t j = 0; j < n; j++) mt[j] = c->models[0][j] - base[j];
    for (int i = 1; i < c->num_models; i++)
        for (int64_t j = 0; j < n; j++) mt[j] += c->models[i][j] - base[j];
    for (int64_t j = 0; j < n; j++) mt[j] = base[j] + mt[j];
    for (int i = 0; i < c->num_models; i++) {
        const float *restrict m = c->models[i];
        uint8_t *restrict mask = c->masks + (int64_t)i * n;
        for (int64_t j = 0; j < n; j++)
            mask[j] = fabsf(base[j] - m[j]) > fabsf(mt[j] - m[j]) * lambda;
    }
    return FB_OK;
}

const fb_method_ops fb_method_tall_mask = {
    .name = "tall_mask",
    .target_class = "TallMaskTaskArithmeticAlgorithm",
    .summary = "the multi-task model plus per-task TALL masks to rebuild each task's model",
    .params = params,
    .needs_base = 1,
    .model_masks = 1,
    .create = create,
    .merge = merge,
};
