/*
 * simple_average.c: the mean of the models (Wortsman et al. 2022, "Model soups").
 *
 *     theta = (1/N) sum_{i=1..N} theta_i
 *
 * As FusionBench's SimpleAverageAlgorithm: the sum is taken in pool order, then divided by N
 * (in f32, so the result matches torch's sum-then-divide to the bit).
 */
#include "method.h"

static const fb_param_spec params[] = {{NULL, NULL, NULL}};

static fb_status create(const fb_config *p, void **state)
{
    (void)p;
    *state = NULL;
    return FB_OK;
}

static fb_status merge(const void *state, const fb_merge_chunk *c)
{
    (void)state;
    const float n = (float)c->num_models;
    for (int64_t j = 0; j < c->count; j++) {
        float acc = c->models[0][j];
        for (int i = 1; i < c->num_models; i++) acc += c->models[i][j];
        c->out[j] = acc / n;
    }
    return FB_OK;
}

const fb_method_ops fb_method_simple_average = {
    .name = "simple_average",
    .target_class = "SimpleAverageAlgorithm",
    .summary = "mean of the models' parameters (model soup)",
    .params = params,
    .create = create,
    .merge = merge,
};
