/*
 * fisher_merging.c: Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted
 * Averaging", NeurIPS 2022), as FusionBench's CLIP Fisher merging.
 *
 *     F_k = (1/n) sum_batches (grad_theta sum_{x in batch} sum_c sqrt(p_c(x)) log p_c(x))^2
 *           (p from model k's own predictions, held constant: a one-sample estimate of the
 *            diagonal Fisher under the model's predictive distribution)
 *     theta = sum_k w_k (F_k + eps) theta_k / sum_k w_k (F_k + eps)
 *     w_k = c_k                                  without normalisation,
 *     w_k = c_k (1 / (|F_k| + eps)) / sum_j (1 / (|F_j| + eps))    with it (|F_k|: the L2
 *           norm of model k's Fisher over every merged parameter), c_k = 1 / K.
 *
 * Model k's Fisher comes from the training split of the task pool's task named like the
 * model, with that task's head and the pool's logit scale; num_fisher_examples examples in
 * batches of batch_size, drawn in a seeded order. Parameters matching
 * exclude_param_names_regex are not merged (copied from _pretrained_, or the first model).
 */
#include "fisher_merging.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/strmap.h"
#include "method.h"
#include "nn/kernels.h"
#include "pool/taskpool.h"

typedef struct state {
    fb_name_filter *exclude;
    int normalize;
    double eps;
    int64_t examples, batch;
    uint64_t seed;
    double *coef; /* fisher_scaling_coefficients, or NULL: 1/K */
    int ncoef;
    /* learned */
    int K;
    int64_t np;
    float *fisher;   /* K x np, in the vision tower's parameter order */
    double *w;       /* K */
    fb_strmap index; /* tensor name -> offset in a Fisher vector */
    char **names;
    int64_t L;
} state;

static const fb_param_spec params[] = {
    {"exclude_param_names_regex", "[]", "parameters (full-name regexes) not merged"},
    {"normalize_fisher_weight", "true", "weigh each model by the inverse norm of its Fisher"},
    {"minimal_fisher_weight", "1e-6", "eps added to every Fisher value"},
    {"num_fisher_examples", "256", "training examples per model"},
    {"batch_size", "32", "examples per gradient (squared per batch, as FusionBench)"},
    {"fisher_scaling_coefficients", "null", "c_k per model; null: 1 / number of models"},
    {"num_workers", "0", "accepted for FusionBench's configs (no effect here)"},
    {"seed", "0", "the order training examples are drawn in"},
    {NULL, NULL, NULL},
};

static void clear_learned(state *s)
{
    fb_free(s->fisher);
    fb_free(s->w);
    if (s->names)
        for (int64_t l = 0; l < s->L; l++)
            fb_free(s->names[l]);
    fb_free(s->names);
    fb_strmap_clear(&s->index);
    fb_strmap_init(&s->index);
    s->fisher = NULL;
    s->w = NULL;
    s->names = NULL;
    s->K = 0;
}

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    clear_learned(s);
    fb_name_filter_free(s->exclude);
    fb_free(s->coef);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_strmap_init(&s->index);
    int64_t seed = 0;
    fb_status st = fb_name_filter_create(fb_cfg_map_get(p, "exclude_param_names_regex"),
                                         "exclude_param_names_regex", &s->exclude);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "normalize_fisher_weight"), "normalize_fisher_weight",
                         &s->normalize);
    if (!st)
        st = fb_cfg_double(fb_cfg_map_get(p, "minimal_fisher_weight"), "minimal_fisher_weight",
                           &s->eps);
    if (!st && !(s->eps >= 0))
        st = fb_set_error(FB_ERR_ARG, "method.minimal_fisher_weight must be >= 0");
    if (!st)
        st = fb_cfg_int(fb_cfg_map_get(p, "num_fisher_examples"), "num_fisher_examples",
                        &s->examples);
    if (!st && s->examples <= 0)
        st = fb_set_error(FB_ERR_ARG, "method.num_fisher_examples must be positive, got %lld",
                          (long long)s->examples);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "batch_size"), "batch_size", &s->batch);
    if (!st && (s->batch < 1 || s->batch > 65536))
        st = fb_set_error(FB_ERR_ARG, "method.batch_size must be in [1, 65536], got %lld",
                          (long long)s->batch);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    s->seed = (uint64_t)seed;
    const fb_config *c = fb_cfg_map_get(p, "fisher_scaling_coefficients");
    if (!st && !fb_cfg_is_null(c))
        st = fb_cfg_double_list(c, "fisher_scaling_coefficients", &s->coef, &s->ncoef);
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

/* --------------------------------------------------------------------- the Fisher -- */

fb_status fb_fisher_diagonal(fb_clip *net, const float *head, int64_t K, float logit_scale,
                             const float *images, int64_t n, int64_t batch, float *out)
{
    const fb_clip_config c = fb_clip_get_config(net);
    const int64_t F = c.projection ? c.projection : c.hidden,
                  img = c.channels * c.image_size * c.image_size;
    const int64_t np = fb_clip_num_params(net);
    float *logits = fb_malloc((size_t)(batch * K) * 4), *probs = fb_malloc((size_t)(batch * K) * 4);
    float *dlogits = fb_malloc((size_t)(batch * K) * 4),
          *normed = fb_malloc((size_t)(batch * F) * 4);
    float *norms = fb_malloc((size_t)batch * 4), *dfeat = fb_malloc((size_t)(batch * F) * 4);
    float *scratch = fb_malloc((size_t)F * 4);
    fb_status st =
        logits && probs && dlogits && normed && norms && dfeat && scratch ? FB_OK : FB_ERR_NOMEM;
    memset(out, 0, (size_t)np * 4);
    for (int64_t b0 = 0; b0 < n && !st; b0 += batch) {
        const int64_t B = n - b0 < batch ? n - b0 : batch;
        const float *feat;
        if ((st = fb_clip_forward(net, images + b0 * img, B, &feat))) break;
        fb_head_forward(logits, normed, norms, feat, head, logit_scale, B, F, K);
        fb_softmax_forward(probs, logits, B, K);
        /* d/dz_j sum_c s_c log p_c = s_j - p_j sum_c s_c, with s = sqrt(p) held constant */
        for (int64_t b = 0; b < B; b++) {
            const float *p = probs + b * K;
            float S = 0;
            for (int64_t j = 0; j < K; j++)
                S += sqrtf(p[j]);
            for (int64_t j = 0; j < K; j++)
                dlogits[b * K + j] = sqrtf(p[j]) - p[j] * S;
        }
        memset(dfeat, 0, (size_t)(B * F) * 4);
        fb_head_backward(dfeat, scratch, dlogits, normed, norms, head, logit_scale, B, F, K);
        fb_clip_zero_grad(net);
        if ((st = fb_clip_backward(net, dfeat))) break;
        const float *g = fb_clip_grads(net);
        for (int64_t i = 0; i < np; i++)
            out[i] += g[i] * g[i];
    }
    for (int64_t i = 0; !st && i < np; i++)
        out[i] /= (float)n;
    fb_free(logits);
    fb_free(probs);
    fb_free(dlogits);
    fb_free(normed);
    fb_free(norms);
    fb_free(dfeat);
    fb_free(scratch);
    return st;
}

void fb_fisher_model_weights(const float *const *fisher, const int64_t *merged, int64_t nranges,
                             int K, int normalize, double eps, const double *coef, double *w)
{
    for (int k = 0; k < K; k++)
        w[k] = coef ? coef[k] : 1.0 / K;
    if (!normalize) return;
    double sum = 0, *inv = fb_malloc((size_t)K * sizeof *inv);
    if (!inv) return; /* weights stay c_k: unnormalised */
    for (int k = 0; k < K; k++) {
        double sq = 0;
        for (int64_t r = 0; r < nranges; r++)
            for (int64_t i = merged[2 * r]; i < merged[2 * r + 1]; i++)
                sq += (double)fisher[k][i] * fisher[k][i];
        inv[k] = 1.0 / (sqrt(sq) + eps);
        sum += inv[k];
    }
    for (int k = 0; k < K; k++)
        w[k] *= inv[k] / sum;
    fb_free(inv);
}

/* --------------------------------------------------------------------------- learn -- */

static fb_status learn(void *p, fb_modelpool *pool, const fb_run_options *opts)
{
    state *s = p;
    fb_taskpool *tp = opts->taskpool;
    clear_learned(s);
    const int K = fb_modelpool_num_models(pool);
    if (s->coef && s->ncoef != K)
        return fb_set_error(FB_ERR_ARG,
                            "method.fisher_scaling_coefficients has %d values for %d models",
                            s->ncoef, K);
    fb_status st = fb_taskpool_for_models(tp, pool, "fisher_merging", FB_SPLIT_TRAIN);
    if (st) return st;
    fb_clip *net = NULL;
    float *head = NULL, *x = NULL;
    int64_t *ranges = NULL;
    if ((st = fb_clip_create(&tp->clip, s->batch, &net))) return st;
    s->np = fb_clip_num_params(net);
    s->L = fb_clip_num_tensors(net);
    s->K = K;
    s->fisher = fb_malloc((size_t)K * (size_t)s->np * 4);
    s->w = fb_malloc((size_t)K * sizeof *s->w);
    s->names = fb_calloc((size_t)s->L, sizeof *s->names);
    ranges = fb_malloc((size_t)(2 * s->L) * sizeof *ranges);
    if (!s->fisher || !s->w || !s->names || !ranges) st = FB_ERR_NOMEM;
    int64_t off = 0, nranges = 0;
    for (int64_t l = 0; l < s->L && !st; l++) {
        int64_t n;
        const char *name = fb_clip_tensor_name(net, l, &n);
        if (!(s->names[l] = fb_strdup(name)))
            st = FB_ERR_NOMEM;
        else
            st = fb_strmap_put(&s->index, s->names[l], off);
        if (!fb_name_filter_matches(s->exclude, name)) { /* merged: counts in the norm */
            ranges[2 * nranges] = off;
            ranges[2 * nranges++ + 1] = off + n;
        }
        off += n;
    }
    fb_nn_blas_single(1);
    /* a pool that merges a selection has the rest from the base (see adamerging.c) */
    const fb_model *fallback =
        fb_modelpool_selects(pool) ? fb_modelpool_get(pool, FB_PRETRAINED) : NULL;
    for (int k = 0; k < K && !st; k++) {
        const char *nm = fb_modelpool_model_name(pool, k);
        const int ti = fb_taskpool_find(tp, nm);
        const fb_task *t = &tp->set.tasks[ti];
        int64_t n;
        fb_free(head);
        fb_free(x);
        x = NULL;
        head = fb_malloc((size_t)(t->num_classes * fb_taskpool_features(tp)) * 4);
        if (!head) {
            st = FB_ERR_NOMEM;
            break;
        }
        if ((st = fb_taskpool_sample(tp, nm, FB_SPLIT_TRAIN, s->examples, s->seed, 11, &x, &n)))
            break;
        if ((st = fb_taskpool_head(tp, ti, head))) break;
        if ((st = fb_clip_set_params_from(net, fb_modelpool_get(pool, nm), fallback))) break;
        st = fb_fisher_diagonal(net, head, t->num_classes, tp->logit_scale, x, n, s->batch,
                                s->fisher + (size_t)k * (size_t)s->np);
        if (opts->on_step) opts->on_step(opts->user, "fisher_merging (models)", k, K, NAN);
    }
    fb_nn_blas_single(0);
    if (!st) {
        const float **f = fb_malloc((size_t)K * sizeof *f);
        if (!f) st = FB_ERR_NOMEM;
        for (int k = 0; f && k < K; k++)
            f[k] = s->fisher + (size_t)k * (size_t)s->np;
        if (f) fb_fisher_model_weights(f, ranges, nranges, K, s->normalize, s->eps, s->coef, s->w);
        fb_free(f);
    }
    fb_free(head);
    fb_free(x);
    fb_free(ranges);
    fb_clip_free(net);
    return st;
}

static int merges_tensor(const void *p, const fb_tensor *t)
{
    return !fb_name_filter_matches(((const state *)p)->exclude, fb_tensor_name(t));
}

void fb_fisher_combine(float *out, const float *const *models, const float *const *fisher,
                       const double *w, double eps, int K, int64_t n)
{
    for (int64_t j = 0; j < n; j++) {
        double num = 0, den = 0;
        for (int k = 0; k < K; k++) {
            const double f = fisher ? (double)fisher[k][j] + eps : 1.0;
            num += w[k] * f * models[k][j];
            den += w[k] * f;
        }
        out[j] = (float)(num / den);
    }
}

/* Tensors the vision tower does not have (none in a CLIP vision checkpoint) are averaged
 * with the weights w_k. */
static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t off = fb_strmap_get(&s->index, fb_tensor_name(c->tensor));
    const float *f[64];
    if (c->num_models > 64)
        return fb_set_error(FB_ERR_ARG, "fisher_merging merges at most 64 models");
    for (int k = 0; off >= 0 && k < c->num_models; k++)
        f[k] = s->fisher + (size_t)k * (size_t)s->np + (size_t)(off + c->begin);
    fb_fisher_combine(c->out, c->models, off >= 0 ? f : NULL, s->w, s->eps, c->num_models,
                      c->count);
    return FB_OK;
}

const fb_method_ops fb_method_fisher_merging = {
    .name = "fisher_merging",
    .target_class = "FisherMergingAlgorithmForCLIP",
    .summary = "average weighted per parameter by each model's diagonal Fisher on its task's data",
    .params = params,
    .optional_base = 1,
    .max_models = 64,
    .create = create,
    .learn = learn,
    .merges_tensor = merges_tensor,
    .merge = merge,
    .destroy = destroy,
};
