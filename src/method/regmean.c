/*
 * regmean.c: RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language
 * Models", ICLR 2023), as FusionBench's CLIP RegMean.
 *
 * For every linear layer (weight W [out, in], y = x W^T) with inputs X_k of model k on its
 * own task's training data:
 *
 *     G_k = (1/n) sum over n examples of sum over tokens x x^T          (in x in)
 *     G~_k = G_k with its off-diagonal entries scaled by alpha (reduce_non_diagonal_ratio)
 *     W^T = (sum_k G~_k)^-1 sum_k G~_k W_k^T                           (a linear solve)
 *
 * the weights minimising sum_k |X_k W^T - X_k W_k^T|^2 (regularised by alpha). Every other
 * parameter (biases, layer norms, embeddings, the patch convolution) is the models' mean.
 * Model k's inputs are recorded in its own forward passes over num_regmean_examples
 * examples of the task pool's task named like the model (train split), in a seeded order.
 */
#include "regmean.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/strmap.h"
#include "linalg.h"
#include "method.h"
#include "nn/kernels.h"
#include "pool/taskpool.h"

typedef struct state {
    int plusplus; /* RegMean++: inputs from the merged model's own earlier layers */
    fb_name_filter *exclude;
    double alpha;
    int64_t examples, batch;
    uint64_t seed;
    /* learned: the merged linear weights, by tensor name */
    int64_t nlin;
    char **names;
    float **merged;
    int64_t *numel;
    fb_strmap index;
} state;

static const fb_param_spec params[] = {
    {"num_regmean_examples", "256", "training examples per model"},
    {"exclude_param_names_regex", "[]", "parameters (full-name regexes) not merged"},
    {"reduce_non_diagonal_ratio", "0.95", "alpha: the Gram matrices' off-diagonal scale"},
    {"weight_transpose", "true", "accepted for FusionBench's configs (layouts are transformers')"},
    {"batch_size", "32", "examples per forward pass"},
    {"num_workers", "0", "accepted for FusionBench's configs (no effect here)"},
    {"seed", "0", "the order training examples are drawn in"},
    {NULL, NULL, NULL},
};

static void clear_learned(state *s)
{
    for (int64_t i = 0; i < s->nlin; i++) {
        if (s->names) fb_free(s->names[i]);
        if (s->merged) fb_free(s->merged[i]);
    }
    fb_free(s->names);
    fb_free(s->merged);
    fb_free(s->numel);
    fb_strmap_clear(&s->index);
    fb_strmap_init(&s->index);
    s->names = NULL;
    s->merged = NULL;
    s->numel = NULL;
    s->nlin = 0;
}

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    clear_learned(s);
    fb_name_filter_free(s->exclude);
    fb_free(s);
}

static fb_status create(const fb_config *p, int plusplus, void **out);
static fb_status create_plain(const fb_config *p, void **out)
{
    return create(p, 0, out);
}
static fb_status create_plusplus(const fb_config *p, void **out)
{
    return create(p, 1, out);
}

static fb_status create(const fb_config *p, int plusplus, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->plusplus = plusplus;
    fb_strmap_init(&s->index);
    int64_t seed = 0;
    fb_status st = fb_name_filter_create(fb_cfg_map_get(p, "exclude_param_names_regex"),
                                         "exclude_param_names_regex", &s->exclude);
    if (!st)
        st = fb_cfg_double(fb_cfg_map_get(p, "reduce_non_diagonal_ratio"),
                           "reduce_non_diagonal_ratio", &s->alpha);
    if (!st && !(s->alpha >= 0 && s->alpha <= 1))
        st = fb_set_error(FB_ERR_ARG, "method.reduce_non_diagonal_ratio must be in [0, 1], got %g",
                          s->alpha);
    if (!st)
        st = fb_cfg_int(fb_cfg_map_get(p, "num_regmean_examples"), "num_regmean_examples",
                        &s->examples);
    if (!st && s->examples <= 0)
        st = fb_set_error(FB_ERR_ARG, "method.num_regmean_examples must be positive, got %lld",
                          (long long)s->examples);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "batch_size"), "batch_size", &s->batch);
    if (!st && (s->batch < 1 || s->batch > 65536))
        st = fb_set_error(FB_ERR_ARG, "method.batch_size must be in [1, 65536], got %lld",
                          (long long)s->batch);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    s->seed = (uint64_t)seed;
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

/* ------------------------------------------------------------------ Grams and solve -- */

fb_status fb_regmean_grams(fb_clip *net, const float *images, int64_t n, int64_t batch,
                           int64_t nlin, const char *const *names, float *const *grams)
{
    const fb_clip_config c = fb_clip_get_config(net);
    const int64_t img = c.channels * c.image_size * c.image_size;
    int64_t rows, cols;
    for (int64_t l = 0; l < nlin; l++) {
        if (!fb_clip_linear_input(net, names[l], &rows, &cols))
            return fb_set_error(FB_ERR_ARG, "'%s' is not a linear layer of the vision tower",
                                names[l]);
        memset(grams[l], 0, (size_t)(cols * cols) * 4);
    }
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
        const int64_t B = n - b0 < batch ? n - b0 : batch;
        const float *feat;
        fb_status st = fb_clip_forward(net, images + b0 * img, B, &feat);
        if (st) return st;
        for (int64_t l = 0; l < nlin; l++) {
            const float *X = fb_clip_linear_input(net, names[l], &rows, &cols);
            /* G += X^T X: the weight-gradient kernel with dout = inp = X */
            fb_linear_backward(NULL, grams[l], NULL, X, X, NULL, rows, cols, cols);
        }
    }
    for (int64_t l = 0; l < nlin; l++) {
        fb_clip_linear_input(net, names[l], &rows, &cols);
        for (int64_t i = 0; i < cols * cols; i++)
            grams[l][i] /= (float)n;
    }
    return FB_OK;
}

fb_status fb_regmean_solve(int K, const float *const *W, const float *const *G, int64_t out_dim,
                           int64_t in_dim, double alpha, float *merged, const char *what)
{
    const int64_t d = in_dim, o = out_dim;
    double *A = fb_calloc((size_t)(d * d), sizeof *A), *Bm = fb_calloc((size_t)(d * o), sizeof *Bm);
    double *Gk = fb_malloc((size_t)(d * d) * sizeof *Gk),
           *Wt = fb_malloc((size_t)(d * o) * sizeof *Wt);
    double *P = fb_malloc((size_t)(d * o) * sizeof *P);
    fb_status st = A && Bm && Gk && Wt && P ? FB_OK : FB_ERR_NOMEM;
    for (int k = 0; k < K && !st; k++) {
        for (int64_t i = 0; i < d; i++)
            for (int64_t j = 0; j < d; j++)
                Gk[i * d + j] = (double)G[k][i * d + j] * (i == j ? 1.0 : alpha);
        for (int64_t i = 0; i < d; i++)
            for (int64_t c = 0; c < o; c++)
                Wt[i * o + c] = W[k][c * d + i];
        fb_matmul(Gk, Wt, P, d, d, o);
        for (int64_t i = 0; i < d * d; i++)
            A[i] += Gk[i];
        for (int64_t i = 0; i < d * o; i++)
            Bm[i] += P[i];
    }
    if (!st) st = fb_solve(A, d, Bm, o, what);
    for (int64_t i = 0; !st && i < d; i++)
        for (int64_t c = 0; c < o; c++)
            merged[c * d + i] = (float)Bm[i * o + c];
    fb_free(A);
    fb_free(Bm);
    fb_free(Gk);
    fb_free(Wt);
    fb_free(P);
    return st;
}

/* --------------------------------------------------------------------------- learn -- */

/* The stage a tensor belongs to: RegMean++'s encoder layer l (its index), the final layer norm
 * and projection (layers), or none (-1: embeddings, pre-layer-norm, kept as the mean). Plain
 * RegMean has one stage, 0, holding everything. */
static int64_t stage_of(int plusplus, const fb_clip_config *c, const char *name)
{
    if (!plusplus) return 0;
    long long l;
    if (sscanf(name, "vision_model.encoder.layers.%lld.", &l) == 1) return l;
    if (!strncmp(name, "vision_model.post_layernorm.", 28) ||
        !strcmp(name, "visual_projection.weight"))
        return c->layers;
    return -1;
}

fb_status fb_regmean_fit(fb_clip *net, int K, const fb_model *const *models,
                         const fb_model *fallback, const float *const *xs, const int64_t *ns,
                         int64_t batch, double alpha, int plusplus, int64_t nlin,
                         const char *const *names, float *const *merged)
{
    /* Stages: plain RegMean solves every linear layer from each model's own forward pass;
     * RegMean++ goes layer by layer, each model's layer fed by the merged layers before it
     * (the models' mean everywhere not solved yet), then the final layer norm and projection. */
    const fb_clip_config cfg = fb_clip_get_config(net);
    const int64_t nstages = plusplus ? cfg.layers + 1 : 1, np = fb_clip_num_params(net);
    int64_t *in = fb_malloc((size_t)(nlin ? nlin : 1) * sizeof *in);
    int64_t *numel = fb_malloc((size_t)(nlin ? nlin : 1) * sizeof *numel);
    float *M = plusplus ? fb_calloc((size_t)np, sizeof *M) : NULL;
    const int64_t nkl = (int64_t)K * nlin > 0 ? (int64_t)K * nlin : 1;
    float **G = fb_calloc((size_t)nkl, sizeof *G);
    float **W = fb_calloc((size_t)nkl, sizeof *W);
    const float **Wl = fb_malloc((size_t)K * sizeof *Wl), **Gl = fb_malloc((size_t)K * sizeof *Gl);
    fb_status st = in && numel && G && W && Wl && Gl && (!plusplus || M) ? FB_OK : FB_ERR_NOMEM;
    for (int64_t l = 0; l < nlin && !st; l++) {
        int64_t rows;
        if (!fb_clip_param(net, names[l], &numel[l]) ||
            !fb_clip_linear_input(net, names[l], &rows, &in[l]))
            st = fb_set_error(FB_ERR_ARG, "'%s' is not a linear layer of the vision tower",
                              names[l]);
        for (int k = 0; k < K && !st; k++) {
            G[k * nlin + l] = fb_malloc((size_t)(in[l] * in[l]) * 4);
            W[k * nlin + l] = fb_malloc((size_t)numel[l] * 4);
            if (!G[k * nlin + l] || !W[k * nlin + l]) st = FB_ERR_NOMEM;
        }
    }
    for (int k = 0; M && k < K && !st; k++) { /* the models' mean, in model order */
        if ((st = fb_clip_set_params_from(net, models[k], fallback))) break;
        const float *pk = fb_clip_params(net);
        for (int64_t i = 0; i < np; i++)
            M[i] += pk[i];
    }
    for (int64_t i = 0; M && !st && i < np; i++)
        M[i] /= (float)K;
    for (int64_t stage = 0; stage < nstages && !st; stage++) {
        const char *sn[64];
        int64_t idx[64], m = 0;
        for (int64_t l = 0; l < nlin; l++)
            if (stage_of(plusplus, &cfg, names[l]) == stage && m < 64)
                idx[m] = l, sn[m++] = names[l];
        for (int k = 0; k < K && !st && m; k++) {
            if (!M) {
                st = fb_clip_set_params_from(net, models[k], fallback);
            } else { /* merged so far, with this stage's tensors from model k */
                memcpy(fb_clip_params(net), M, (size_t)np * sizeof *M);
                for (int64_t t = 0; t < fb_clip_num_tensors(net) && !st; t++) {
                    const char *tn = fb_clip_tensor_name(net, t, NULL);
                    if (stage_of(plusplus, &cfg, tn) != stage) continue;
                    const fb_tensor *src = fb_model_find(models[k], tn);
                    if (!src && fallback) src = fb_model_find(fallback, tn);
                    st = src ? fb_tensor_to_f32(src, fb_clip_param(net, tn, NULL))
                             : fb_set_error(FB_ERR_NOT_FOUND, "regmean: a model lacks '%s'", tn);
                }
            }
            float *Gs[64];
            for (int64_t j = 0; !st && j < m; j++) {
                memcpy(W[k * nlin + idx[j]], fb_clip_param(net, sn[j], NULL),
                       (size_t)numel[idx[j]] * 4);
                Gs[j] = G[k * nlin + idx[j]];
            }
            if (!st) st = fb_regmean_grams(net, xs[k], ns[k], batch, m, sn, Gs);
        }
        for (int64_t j = 0; j < m && !st; j++) {
            const int64_t l = idx[j];
            for (int k = 0; k < K; k++) {
                Wl[k] = W[k * nlin + l];
                Gl[k] = G[k * nlin + l];
            }
            st = fb_regmean_solve(K, Wl, Gl, numel[l] / in[l], in[l], alpha, merged[l], names[l]);
            if (!st && M) /* later stages see the solved layer */
                memcpy(M + (fb_clip_param(net, names[l], NULL) - fb_clip_params(net)), merged[l],
                       (size_t)numel[l] * 4);
        }
    }
    for (int64_t i = 0; G && W && i < K * nlin; i++) {
        fb_free(G[i]);
        fb_free(W[i]);
    }
    fb_free(G);
    fb_free(W);
    fb_free(Wl);
    fb_free(Gl);
    fb_free(M);
    fb_free(in);
    fb_free(numel);
    return st;
}

static fb_status learn(void *p, fb_modelpool *pool, const fb_run_options *opts)
{
    state *s = p;
    fb_taskpool *tp = opts->taskpool;
    clear_learned(s);
    const int K = fb_modelpool_num_models(pool);
    fb_status st = fb_taskpool_for_models(tp, pool, s->plusplus ? "regmean_plusplus" : "regmean",
                                          FB_SPLIT_TRAIN);
    if (st) return st;
    fb_clip *net;
    if ((st = fb_clip_create(&tp->clip, s->batch, &net))) return st;
    const int64_t L = fb_clip_num_tensors(net);
    s->names = fb_calloc((size_t)L, sizeof *s->names);
    s->merged = fb_calloc((size_t)L, sizeof *s->merged);
    s->numel = fb_calloc((size_t)L, sizeof *s->numel);
    float **xs = fb_calloc((size_t)K, sizeof *xs);
    int64_t *ns = fb_calloc((size_t)K, sizeof *ns);
    const fb_model **models = fb_calloc((size_t)K, sizeof *models);
    if (!s->names || !s->merged || !s->numel || !xs || !ns || !models) st = FB_ERR_NOMEM;
    /* the linear weights RegMean solves for */
    for (int64_t l = 0; l < L && !st; l++) {
        int64_t n, rows, cols;
        const char *name = fb_clip_tensor_name(net, l, &n);
        if (!fb_clip_linear_input(net, name, &rows, &cols) ||
            fb_name_filter_matches(s->exclude, name))
            continue;
        s->numel[s->nlin] = n;
        if (!(s->names[s->nlin] = fb_strdup(name)) ||
            !(s->merged[s->nlin] = fb_malloc((size_t)n * 4)))
            st = FB_ERR_NOMEM;
        else
            st = fb_strmap_put(&s->index, s->names[s->nlin], s->nlin);
        s->nlin++;
    }
    for (int k = 0; k < K && !st; k++) { /* each model's own task data */
        const char *nm = fb_modelpool_model_name(pool, k);
        models[k] = fb_modelpool_get(pool, nm);
        st = fb_taskpool_sample(tp, nm, FB_SPLIT_TRAIN, s->examples, s->seed, 13, &xs[k], &ns[k]);
    }
    fb_nn_blas_single(1);
    if (!st)
        st = fb_regmean_fit(net, K, models,
                            fb_modelpool_selects(pool) ? fb_modelpool_get(pool, FB_PRETRAINED)
                                                       : NULL,
                            (const float *const *)xs, ns, s->batch, s->alpha, s->plusplus, s->nlin,
                            (const char *const *)s->names, s->merged);
    fb_nn_blas_single(0);
    for (int k = 0; xs && k < K; k++)
        fb_free(xs[k]);
    fb_free(xs);
    fb_free(ns);
    fb_free(models);
    fb_clip_free(net);
    return st;
}

static int merges_tensor(const void *p, const fb_tensor *t)
{
    return !fb_name_filter_matches(((const state *)p)->exclude, fb_tensor_name(t));
}

/* The solved weights for linear layers; the models' mean for everything else. */
static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t l = fb_strmap_get(&s->index, fb_tensor_name(c->tensor));
    if (l >= 0) {
        memcpy(c->out, s->merged[l] + c->begin, (size_t)c->count * sizeof(float));
        return FB_OK;
    }
    for (int64_t j = 0; j < c->count; j++) {
        float sum = 0;
        for (int k = 0; k < c->num_models; k++)
            sum += c->models[k][j];
        c->out[j] = sum / (float)c->num_models;
    }
    return FB_OK;
}

const fb_method_ops fb_method_regmean = {
    .name = "regmean",
    .target_class = "RegMeanAlgorithmForCLIP",
    .summary = "linear layers solved from each model's input Gram matrices on its task (RegMean)",
    .params = params,
    .optional_base = 1,
    .create = create_plain,
    .learn = learn,
    .merges_tensor = merges_tensor,
    .merge = merge,
    .destroy = destroy,
};

const fb_method_ops fb_method_regmean_plusplus = {
    .name = "regmean_plusplus",
    .target_class = "RegMeanAlgorithmForCLIPPlusPlus",
    .summary = "RegMean layer by layer, each layer's inputs from the merged layers before it",
    .params = params,
    .optional_base = 1,
    .create = create_plusplus,
    .learn = learn,
    .merges_tensor = merges_tensor,
    .merge = merge,
    .destroy = destroy,
};
