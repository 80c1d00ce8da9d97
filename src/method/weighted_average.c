/*
 * weighted_average.c: a weighted sum of the models.
 *
 *     theta = sum_{i=1..N} w_i theta_i,   with w_i <- w_i / sum_j w_j when normalize
 *
 * As FusionBench's WeightedAverageAlgorithm: weights are given one per model in pool order
 * (names like _pretrained_ excluded) and normalised in double precision; each weight is then
 * used as an f32 scalar, as torch does for `tensor * python_float`.
 */
#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    float *weights;
    int count;
} state;

static const fb_param_spec params[] = {
    {"weights", "null", "one weight per model, in pool order (required)"},
    {"normalize", "true", "divide the weights by their sum"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (s) fb_free(s->weights);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    const fb_config *w = fb_cfg_map_get(p, "weights");
    if (fb_cfg_is_null(w))
        return fb_set_error(FB_ERR_CONFIG, "'weights' is required: one weight per model, e.g. "
                                           "[0.5, 0.3, 0.2] (on the command line: "
                                           "method.weights=[0.5,0.3,0.2])");
    int normalize;
    fb_status st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &normalize);
    if (st) return st;
    double *wd;
    int n;
    if ((st = fb_cfg_double_list(w, "weights", &wd, &n))) return st;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += wd[i];
    if (n == 0 || (normalize && sum == 0)) {
        fb_free(wd);
        return fb_set_error(FB_ERR_ARG, n == 0 ? "'weights' is empty"
                                               : "'weights' sum to 0, so they cannot be "
                                                 "normalized");
    }
    state *s = fb_calloc(1, sizeof *s);
    if (s) s->weights = fb_malloc((size_t)n * sizeof *s->weights);
    if (!s || !s->weights) {
        fb_free(wd);
        destroy(s);
        return FB_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) s->weights[i] = (float)(normalize ? wd[i] / sum : wd[i]);
    s->count = n;
    fb_free(wd);
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    const state *s = p;
    if (s->count != m->num_models)
        return fb_set_error(FB_ERR_ARG,
                            "got %d weights for %d models (one weight per model, in pool order: "
                            "%s%s)",
                            s->count, m->num_models, m->model_names[0],
                            m->num_models > 1 ? ", ..." : "");
    return FB_OK;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    float *restrict out = c->out;
    const int64_t n = c->count;
    const float w0 = s->weights[0];
    const float *restrict m0 = c->models[0];
    for (int64_t j = 0; j < n; j++) out[j] = w0 * m0[j];
    for (int i = 1; i < c->num_models; i++) {
        const float wi = s->weights[i];
        const float *restrict mi = c->models[i];
        for (int64_t j = 0; j < n; j++) out[j] += wi * mi[j];
    }
    return FB_OK;
}

const fb_method_ops fb_method_weighted_average = {
    .name = "weighted_average",
    .target_class = "WeightedAverageAlgorithm",
    .summary = "weighted sum of the models' parameters (weights, normalize)",
    .params = params,
    .create = create,
    .setup = setup,
    .merge = merge,
    .destroy = destroy,
};
