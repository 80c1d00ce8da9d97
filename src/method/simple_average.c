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

/* Model-outer, element-inner loops vectorise; each element still sees the same sequence of
 * f32 operations (m0 + m1 + ... then / N). */
static fb_status merge(const void *state, const fb_merge_chunk *c)
{
    (void)state;
    float *restrict out = c->out;
    const int64_t n = c->count;
    const float *restrict m0 = c->models[0];
    for (int64_t j = 0; j < n; j++) out[j] = m0[j];
    for (int i = 1; i < c->num_models; i++) {
        const float *restrict mi = c->models[i];
        for (int64_t j = 0; j < n; j++) out[j] += mi[j];
    }
    const float count = (float)c->num_models;
    for (int64_t j = 0; j < n; j++) out[j] /= count;
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
