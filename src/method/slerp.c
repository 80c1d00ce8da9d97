/*
 * slerp.c: spherical linear interpolation between two models, tensor by tensor (Shoemake
 * 1985; as FusionBench's SlerpMergeAlgorithm and mergekit's slerp).
 *
 *     u_i = v_i / ||v_i||   (unchanged when ||v_i|| <= epsilon),   d = <u_0, u_1>
 *     |d| > DOT_THRESHOLD:  theta = (1 - t) v_0 + t v_1                (near-parallel: lerp)
 *     else:  w = acos(d),   theta = sin((1 - t) w) / sin(w) v_0 + sin(t w) / sin(w) v_1
 *
 * The two models are the pool's two entries in order: "_pretrained_" and one model, or two
 * models. Norms, the dot product and the coefficients are computed in double; the
 * coefficients are then applied as f32 scalars.
 */
#include <math.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    double t, dot_threshold, epsilon;
} state;

static const fb_param_spec params[] = {
    {"t", "0.5", "the weight of the second model, in [0, 1]"},
    {"DOT_THRESHOLD", "0.9995", "above this |cos| the tensors are treated as parallel (lerp)"},
    {"epsilon", "1e-8", "norms at most this are not normalised"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    state s;
    fb_status st = fb_param_double(p, "t", 0.0, 1.0, &s.t);
    if (!st) st = fb_param_double(p, "DOT_THRESHOLD", 0.0, 1.0, &s.dot_threshold);
    if (!st) st = fb_param_double(p, "epsilon", 0.0, NAN, &s.epsilon);
    if (st) return st;
    state *copy = fb_malloc(sizeof *copy);
    if (!copy) return FB_ERR_NOMEM;
    *copy = s;
    *out = copy;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    (void)p;
    if (m->num_models + m->has_base != 2)
        return fb_set_error(FB_ERR_ARG,
                            "slerp needs exactly two models (_pretrained_ and one model, or two "
                            "models); the pool has %d%s",
                            m->num_models, m->has_base ? " and _pretrained_" : "");
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const float *v0 = c->base ? c->base : c->models[0];
    const float *v1 = c->base ? c->models[0] : c->models[1];
    const int64_t n = c->count;
    double n0 = sqrt(fb_dot(v0, v0, n)), n1 = sqrt(fb_dot(v1, v1, n));
    double d = fb_dot(v0, v1, n) / ((n0 > s->epsilon ? n0 : 1.0) * (n1 > s->epsilon ? n1 : 1.0));
    float w0, w1;
    if (fabs(d) > s->dot_threshold) {
        w0 = (float)(1.0 - s->t);
        w1 = (float)s->t;
    } else {
        double w = acos(d), sw = sin(w);
        w0 = (float)(sin(w - w * s->t) / sw);
        w1 = (float)(sin(w * s->t) / sw);
    }
    for (int64_t j = 0; j < n; j++) c->out[j] = w0 * v0[j] + w1 * v1[j];
    return FB_OK;
}

const fb_method_ops fb_method_slerp = {
    .name = "slerp",
    .target_class = "SlerpMergeAlgorithm",
    .summary = "spherical interpolation between two models, per tensor",
    .params = params,
    .optional_base = 1,
    .whole_tensor = 1,
    .create = create,
    .setup = setup,
    .merge = merge,
};
