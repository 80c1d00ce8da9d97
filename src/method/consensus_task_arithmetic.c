/*
 * consensus_task_arithmetic.c: Consensus merging with TALL masks (Wang et al., "Localizing Task
 * Information for Improved Model Merging and Compression", ICML 2024), on task arithmetic.
 *
 *     tau = sum_t tau_t,  theta_mt = theta_0 + tau                       (the multi-task model)
 *     TALL mask of task t:  m_t = |theta_0 - theta_t| > lambda |theta_mt - theta_t|
 *     consensus:            c = [ sum_t m_t >= k ]        (entries useful to at least k tasks)
 *     theta = theta_0 + alpha (c * tau)
 *
 * As FusionBench's TALL-mask code: theta_mt is formed in f32 and the distances taken from it.
 * k = 2 removes "catastrophic" (no task) and "selfish" (one task) entries; k = 0 is task
 * arithmetic; k > T keeps nothing.
 */
#include <math.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    float alpha, lambda, k;
} state;

static const fb_param_spec params[] = {
    {"scaling_factor", "0.3", "alpha, the scale of the masked multi-task vector"},
    {"tall_mask_lambda", "0.6", "lambda of the TALL masks"},
    {"consensus_threshold", "2", "k: entries kept when at least k tasks' masks select them"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double alpha, lambda;
    int64_t k;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &alpha);
    if (!st) st = fb_param_double(p, "tall_mask_lambda", 0.0, NAN, &lambda);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "consensus_threshold"), "consensus_threshold", &k);
    if (!st && k < 0)
        st = fb_set_error(FB_ERR_ARG, "'consensus_threshold' is %lld; it must be >= 0", (long long)k);
    if (st) return st;
    state *s = fb_malloc(sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->alpha = (float)alpha;
    s->lambda = (float)lambda;
    s->k = (float)k;
    *out = s;
    return FB_OK;
}

static int scratch_per_element(const void *p)
{
    (void)p;
    return 2; /* theta_mt, the mask count */
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t n = c->count;
    const float *restrict base = c->base;
    float *restrict tau = c->out, *restrict mt = c->scratch, *restrict count = c->scratch + n;
    for (int64_t j = 0; j < n; j++) tau[j] = c->models[0][j] - base[j];
    for (int i = 1; i < c->num_models; i++) {
        const float *restrict m = c->models[i];
        for (int64_t j = 0; j < n; j++) tau[j] += m[j] - base[j];
    }
    for (int64_t j = 0; j < n; j++) {
        mt[j] = base[j] + tau[j];
        count[j] = 0.0f;
    }
    for (int i = 0; i < c->num_models; i++) {
        const float *restrict m = c->models[i];
        for (int64_t j = 0; j < n; j++)
            count[j] += fabsf(base[j] - m[j]) > fabsf(mt[j] - m[j]) * s->lambda ? 1.0f : 0.0f;
    }
    for (int64_t j = 0; j < n; j++)
        c->out[j] = base[j] + s->alpha * (count[j] >= s->k ? tau[j] : 0.0f);
    return FB_OK;
}

const fb_method_ops fb_method_consensus_task_arithmetic = {
    .name = "consensus_task_arithmetic",
    .target_class = NULL,
    .summary = "task arithmetic on the entries at least k tasks' TALL masks select (Consensus)",
    .params = params,
    .needs_base = 1,
    .scratch_per_element = scratch_per_element,
    .create = create,
    .merge = merge,
};
