/*
 * linear_interpolation.c: interpolation between two models (WiSE-FT, Wortsman et al. 2022,
 * when the two are a pretrained and a fine-tuned model).
 *
 *     theta = (1 - t) theta_1 + t theta_2
 *
 * As FusionBench's LinearInterpolationAlgorithm, the two models are the pool's two entries in
 * order: "_pretrained_" and one model, or two models. The weights are f32 scalars, summed as
 * FusionBench's weighted sum: w1 * theta_1 + w2 * theta_2.
 */
#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    float w1, w2;
} state;

static const fb_param_spec params[] = {
    {"t", "0.5", "the weight of the second model, in [0, 1]"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    double t;
    fb_status st = fb_param_double(p, "t", 0.0, 1.0, &t);
    if (st) return st;
    state *s = fb_malloc(sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->w1 = (float)(1.0 - t);
    s->w2 = (float)t;
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    (void)p;
    if (m->num_models + m->has_base != 2)
        return fb_set_error(FB_ERR_ARG,
                            "linear_interpolation needs exactly two models (_pretrained_ and "
                            "one model, or two models); the pool has %d%s",
                            m->num_models, m->has_base ? " and _pretrained_" : "");
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const float *a = c->base ? c->base : c->models[0];
    const float *b = c->base ? c->models[0] : c->models[1];
    for (int64_t j = 0; j < c->count; j++) c->out[j] = s->w1 * a[j] + s->w2 * b[j];
    return FB_OK;
}

const fb_method_ops fb_method_linear_interpolation = {
    .name = "linear_interpolation",
    .target_class = "LinearInterpolationAlgorithm",
    .summary = "(1 - t) * first + t * second of two models",
    .params = params,
    .optional_base = 1,
    .create = create,
    .setup = setup,
    .merge = merge,
};
