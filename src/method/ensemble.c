/*
 * ensemble.c: model ensembles, which FusionBench evaluates beside the fusion methods
 * (SimpleEnsembleAlgorithm, WeightedEnsembleAlgorithm, MaxModelPredictorAlgorithm): the pool's
 * models are kept apart and the task pool evaluates them together as one predictor, so there
 * is no merged model to write.
 *
 *     simple_ensemble      features = (1/K) sum_k f_k(x)
 *     weighted_ensemble    features = sum_k w_k f_k(x)   (w / sum w when normalize)
 *     max_model_predictor  features = P max_k g_k(x)   (element-wise, as FusionBench)
 *
 * f_k(x) is model k's image features (CLIP: the projected embedding), then the task's head;
 * g_k(x) its tower's output before visual_projection, and P _pretrained_'s projection.
 */
#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    double *weights;
    int count, normalize;
} state;

static const fb_param_spec no_params[] = {{NULL, NULL, NULL}};
static const fb_param_spec weighted_params[] = {
    {"weights", "null", "one weight per model (required)"},
    {"normalize", "true", "divide the weights by their sum"},
    {NULL, NULL, NULL},
};

static fb_status create_plain(const fb_config *p, void **out)
{
    (void)p;
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    *out = s;
    return FB_OK;
}

static fb_status create_weighted(const fb_config *p, void **out)
{
    const fb_config *w = fb_cfg_map_get(p, "weights");
    if (fb_cfg_is_null(w))
        return fb_set_error(FB_ERR_ARG, "weighted_ensemble needs method.weights (one per model)");
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_status st = fb_cfg_double_list(w, "weights", &s->weights, &s->count);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &s->normalize);
    if (st) {
        fb_free(s->weights);
        fb_free(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static void destroy(void *p)
{
    state *s = p;
    if (s) fb_free(s->weights);
    fb_free(s);
}

static fb_status weights(const void *p, int K, double *w)
{
    const state *s = p;
    if (!s->weights) {
        for (int k = 0; k < K; k++) w[k] = 1.0 / K;
        return FB_OK;
    }
    if (s->count != K)
        return fb_set_error(FB_ERR_ARG, "method.weights has %d values for %d models", s->count, K);
    double sum = 0;
    for (int k = 0; k < K; k++) sum += s->weights[k];
    if (s->normalize && sum == 0) return fb_set_error(FB_ERR_ARG, "method.weights sum to 0");
    for (int k = 0; k < K; k++) w[k] = s->normalize ? s->weights[k] / sum : s->weights[k];
    return FB_OK;
}

const fb_method_ops fb_method_simple_ensemble = {
    .name = "simple_ensemble",
    .target_class = "SimpleEnsembleAlgorithm",
    .summary = "no merge: the models' mean features, evaluated by a taskpool",
    .params = no_params,
    .ensemble = 1,
    .ensemble_weights = weights,
    .create = create_plain,
    .destroy = destroy,
};

const fb_method_ops fb_method_weighted_ensemble = {
    .name = "weighted_ensemble",
    .target_class = "WeightedEnsembleAlgorithm",
    .summary = "no merge: the models' weighted mean features, evaluated by a taskpool",
    .params = weighted_params,
    .ensemble = 1,
    .ensemble_weights = weights,
    .create = create_weighted,
    .destroy = destroy,
};

const fb_method_ops fb_method_max_model_predictor = {
    .name = "max_model_predictor",
    .target_class = "MaxModelPredictorAlgorithm",
    .summary = "no merge: per input, the most confident model's prediction (taskpool)",
    .params = no_params,
    .ensemble = 2,
    .ensemble_weights = weights,
    .create = create_plain,
    .destroy = destroy,
};
