/*
 * magmax.c: MagMax (Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual
 * Learning", ECCV 2024).
 *
 *     tau_i = theta_i - theta_0
 *     tau[j] = tau_{i*}[j],  i* = argmax_i |tau_i[j]|   (the last model on ties)
 *     theta = theta_0 + lambda * tau
 *
 * Ties go to the later model, as FusionBench's MagMaxAlgorithm and the official code
 * (merge_max_abs) fold the task vectors with |tau_i| >= |best|; bf16 checkpoints tie often.
 */
#include <math.h>

#include "core/alloc.h"
#include "method.h"

typedef struct state {
    float lambda;
} state;

static const fb_param_spec params[] = {
    {"scaling_factor", "0.5", "lambda, the scale of the max-magnitude task vector"},
    {"inplace", "true", "accepted for FusionBench compatibility; inputs are never modified"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double lambda;
    int inplace;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "inplace"), "inplace", &inplace);
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
    const float *base = c->base;
    float *restrict out = c->out;
    for (int64_t j = 0; j < c->count; j++)
        out[j] = c->models[0][j] - base[j];
    for (int i = 1; i < c->num_models; i++) {
        const float *m = c->models[i];
        for (int64_t j = 0; j < c->count; j++) {
            float tau = m[j] - base[j];
            out[j] = fabsf(tau) >= fabsf(out[j]) ? tau : out[j];
        }
    }
    for (int64_t j = 0; j < c->count; j++)
        out[j] = base[j] + lambda * out[j];
    return FB_OK;
}

const fb_method_ops fb_method_magmax = {
    .name = "magmax",
    .target_class = "MagMaxAlgorithm",
    .summary = "per entry, the task-vector entry of largest magnitude (MagMax)",
    .params = params,
    .needs_base = 1,
    .create = create,
    .merge = merge,
};
