/*
 * mergekit_gta.c: mergekit's generalized task arithmetic, the family behind its
 * task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della and
 * della_linear (mergekit/merge_methods/generalized_task_arithmetic.py; Ilharco et al. 2023,
 * Yadav et al. 2023, Yu et al. 2024, Davari and Belilovsky 2024, Deep et al. 2024).
 * Registered as mergekit_<name>; FusionBench's methods of the same names stay as they are.
 *
 * Per tensor, for each model i with weight w_i, density d_i:
 *     tau_i = sparsify(theta_i - theta_0, d_i)              (per tensor, not over the model)
 *     v_i   = w_i tau_i
 *     sign election (ties, dare_ties, breadcrumbs_ties, della):
 *         s = sign(sum_i v_i) (0 counts as +),  m_i = [sign(v_i) == s]
 *         mixed = sum_i m_i v_i,  divisor = sum_i m_i w_i  (0 -> 1)
 *     otherwise: mixed = sum_i v_i,  divisor = sum_i w_i   (|divisor| < 1e-8 -> 1)
 *     theta = theta_0 + lambda (normalize ? mixed / divisor : mixed)
 * The sparsifications are mergekit_common.c's; rescale matches the L1 norm of tau_i. Element
 * sums run over the models in pool order in f32, as PyTorch sums a stacked f32 tensor.
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "mergekit_common.h"

typedef struct kind {
    int sparsify;  /* FB_MK_* */
    int consensus; /* sign election */
} kind;

typedef struct state {
    const char *name;
    kind k;
    fb_mk_list weight, density, gamma, epsilon;
    int normalize, rescale;
    double lambda;
    uint64_t seed;
    int num_models;
} state;

#define COMMON_PARAMS(norm, resc)                                                          \
    {"weight", "null", "each model's weight: a number or one per model (required)"},       \
    {"density", "1.0", "fraction of each task vector kept, per tensor: a number or one per model"}, \
    {"normalize", norm, "divide the merged task vector by the (agreeing) weights' sum"},    \
    {"rescale", resc, "rescale each sparsified task vector to the L1 norm it had"}, \
    {"lambda", "1.0", "scale of the merged task vector"},                                   \
    {"int8_mask", "false", "mergekit's memory option; no effect on the numbers"},            \
    {"seed", "0", "random masks: counter-based, keyed by (seed, tensor, model)"}

static const fb_param_spec params_ta[] = {COMMON_PARAMS("false", "false"), {NULL, NULL, NULL}};
static const fb_param_spec params_ties[] = {COMMON_PARAMS("true", "false"), {NULL, NULL, NULL}};
static const fb_param_spec params_dare[] = {COMMON_PARAMS("false", "true"), {NULL, NULL, NULL}};
static const fb_param_spec params_bc[] = {
    COMMON_PARAMS("false", "false"),
    {"gamma", "0.01", "fraction of the largest entries dropped as outliers: a number or one per model"},
    {NULL, NULL, NULL},
};
static const fb_param_spec params_della[] = {
    COMMON_PARAMS("true", "true"),
    {"epsilon", "0.15", "keep probabilities span density +/- epsilon by rank: a number or one per model"},
    {NULL, NULL, NULL},
};
static const fb_param_spec params_della_linear[] = {
    COMMON_PARAMS("false", "true"),
    {"epsilon", "0.15", "keep probabilities span density +/- epsilon by rank: a number or one per model"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_mk_list_free(&s->weight);
    fb_mk_list_free(&s->density);
    fb_mk_list_free(&s->gamma);
    fb_mk_list_free(&s->epsilon);
    fb_free(s);
}

static fb_status create_kind(const fb_config *p, void **out, const char *name, kind k)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = name;
    s->k = k;
    int64_t seed = 0;
    int int8 = 0;
    fb_status st = fb_mk_list_read(p, "weight", 1, 0.0, &s->weight);
    if (!st) st = fb_mk_list_read(p, "density", 0, 1.0, &s->density);
    if (!st && fb_cfg_map_get(p, "gamma")) st = fb_mk_list_read(p, "gamma", 0, 0.01, &s->gamma);
    if (!st && fb_cfg_map_get(p, "epsilon"))
        st = fb_mk_list_read(p, "epsilon", 0, 0.15, &s->epsilon);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &s->normalize);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "rescale"), "rescale", &s->rescale);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "int8_mask"), "int8_mask", &int8);
    if (!st) st = fb_param_double(p, "lambda", NAN, NAN, &s->lambda);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    if (st) {
        destroy(s);
        return st;
    }
    s->seed = (uint64_t)seed;
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    s->num_models = m->num_models;
    fb_status st = fb_mk_list_check(&s->weight, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->density, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->gamma, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->epsilon, s->name, m->num_models);
    for (int i = 0; !st && i < m->num_models; i++)
        if (!(fb_mk_at(&s->density, i) >= 0.0))
            st = fb_set_error(FB_ERR_CONFIG, "method %s: density %g of model '%s' is negative",
                              s->name, fb_mk_at(&s->density, i), m->model_names[i]);
    return st;
}

static int scratch(const void *p)
{
    const state *s = p;
    return s->num_models + 1; /* the task vectors, then the selection keys */
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t n = c->count;
    const int M = c->num_models;
    float *tv = c->scratch;
    uint32_t *keys = (uint32_t *)(void *)(c->scratch + (size_t)M * (size_t)n);
    float w[256];
    if (M > 256) return fb_set_error(FB_ERR_ARG, "method %s: more than 256 models", s->name);
    for (int i = 0; i < M; i++) {
        float *t = tv + (size_t)i * (size_t)n;
        const float *x = c->models[i];
        for (int64_t j = 0; j < n; j++) t[j] = x[j] - c->base[j];
        fb_status st = fb_mk_sparsify(s->k.sparsify, t, c->tensor, fb_mk_at(&s->density, i),
                                      fb_mk_at(&s->gamma, i), fb_mk_at(&s->epsilon, i),
                                      s->rescale, fb_rng_key(s->seed, c->tensor->name, (uint64_t)i),
                                      keys);
        if (st) return st;
        w[i] = (float)fb_mk_at(&s->weight, i);
        for (int64_t j = 0; j < n; j++) t[j] *= w[i];
    }
    float wsum = 0.0f;
    for (int i = 0; i < M; i++) wsum += w[i];
    if (fabsf(wsum) < 1e-8f) wsum = 1.0f;
    const float lambda = (float)s->lambda;
    for (int64_t j = 0; j < n; j++) {
        float mixed = 0.0f, div;
        if (s->k.consensus) {
            float sum = 0.0f;
            for (int i = 0; i < M; i++) sum += tv[(size_t)i * (size_t)n + (size_t)j];
            const int major = sum >= 0.0f ? 1 : -1;
            div = 0.0f;
            for (int i = 0; i < M; i++) {
                float v = tv[(size_t)i * (size_t)n + (size_t)j];
                int sg = (v > 0.0f) - (v < 0.0f);
                if (sg == major) mixed += v, div += w[i];
            }
            if (div == 0.0f) div = 1.0f;
        } else {
            for (int i = 0; i < M; i++) mixed += tv[(size_t)i * (size_t)n + (size_t)j];
            div = wsum;
        }
        if (s->normalize) mixed /= div;
        if (lambda != 1.0f) mixed *= lambda;
        c->out[j] = c->base[j] + mixed;
    }
    return FB_OK;
}

#define GTA(ident, mkname, sp, cons, prm, text)                                            \
    static fb_status create_##ident(const fb_config *p, void **out)                        \
    {                                                                                      \
        return create_kind(p, out, "mergekit_" mkname, (kind){sp, cons});                  \
    }                                                                                      \
    const fb_method_ops fb_method_mergekit_##ident = {                                     \
        .name = "mergekit_" mkname,                                                        \
        .target_class = NULL,                                                              \
        .summary = text,                                                                   \
        .params = prm,                                                                     \
        .needs_base = 1,                                                                   \
        .scratch_per_element = scratch,                                                    \
        .whole_tensor = 1,                                                                 \
        .create = create_##ident,                                                          \
        .setup = setup,                                                                    \
        .merge = merge,                                                                    \
        .destroy = destroy,                                                                \
    };

GTA(task_arithmetic, "task_arithmetic", FB_MK_NONE, 0, params_ta,
    "mergekit's task_arithmetic: base + sum of weighted task vectors")
GTA(ties, "ties", FB_MK_MAGNITUDE, 1, params_ties,
    "mergekit's ties: per-tensor top-k, weighted sign election, normalised by agreeing weights")
GTA(dare_ties, "dare_ties", FB_MK_RANDOM, 1, params_dare,
    "mergekit's dare_ties: random drop rescaled to the L1 norm, weighted sign election")
GTA(dare_linear, "dare_linear", FB_MK_RANDOM, 0, params_dare,
    "mergekit's dare_linear: random drop rescaled to the L1 norm, weighted sum")
GTA(breadcrumbs, "breadcrumbs", FB_MK_OUTLIERS, 0, params_bc,
    "mergekit's breadcrumbs: drop the largest gamma and the smallest entries per tensor")
GTA(breadcrumbs_ties, "breadcrumbs_ties", FB_MK_OUTLIERS, 1, params_bc,
    "mergekit's breadcrumbs_ties: breadcrumbs with the weighted sign election")
GTA(della, "della", FB_MK_DELLA, 1, params_della,
    "mergekit's della: rank-dependent random drop (magprune), sign election")
GTA(della_linear, "della_linear", FB_MK_DELLA, 0, params_della_linear,
    "mergekit's della_linear: rank-dependent random drop (magprune), weighted sum")
