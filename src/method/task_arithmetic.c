/*
 * task_arithmetic.c: Task Arithmetic (Ilharco et al., "Editing Models with Task Arithmetic",
 * ICLR 2023).
 *
 *     tau_i = theta_i - theta_0,    theta = theta_0 + lambda * sum_{i=1..N} tau_i
 *
 * theta_0 is the "_pretrained_" model, lambda the scaling_factor. As FusionBench's
 * TaskArithmeticAlgorithm, the task vectors are summed in pool order, scaled, then added to
 * the base, each step rounded to f32.
 */
#include "core/alloc.h"
#include "method.h"

typedef struct state {
    float scaling_factor;
} state;

static const fb_param_spec params[] = {
    {"scaling_factor", "0.3", "lambda, the scale of the summed task vectors"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double lambda;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    if (st) return st;
    state *s = fb_malloc(sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->scaling_factor = (float)lambda;
    *out = s;
    return FB_OK;
}

/* out accumulates tau, then becomes theta; model-outer loops vectorise and keep each
 * element's f32 operations in the order above. */
static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const float lambda = ((const state *)p)->scaling_factor;
    float *restrict out = c->out;
    const float *restrict base = c->base;
    const int64_t n = c->count;
    const float *restrict m0 = c->models[0];
    for (int64_t j = 0; j < n; j++) out[j] = m0[j] - base[j];
    for (int i = 1; i < c->num_models; i++) {
        const float *restrict mi = c->models[i];
        for (int64_t j = 0; j < n; j++) out[j] += mi[j] - base[j];
    }
    for (int64_t j = 0; j < n; j++) out[j] = base[j] + lambda * out[j];
    return FB_OK;
}

const fb_method_ops fb_method_task_arithmetic = {
    .name = "task_arithmetic",
    .target_class = "TaskArithmeticAlgorithm",
    .summary = "pretrained + scaling_factor * sum of task vectors (needs _pretrained_)",
    .params = params,
    .needs_base = 1,
    .create = create,
    .merge = merge,
};
