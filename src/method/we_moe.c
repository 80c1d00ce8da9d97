/*
 * we_moe.c: FusionBench's Weight-Ensembling MoE for CLIP (CLIPWeightEnsemblingMoEAlgorithm;
 * Tang et al., "Merging Multi-Task Models via Weight-Ensembling Mixture of Experts", ICML
 * 2024). Every vision encoder layer's MLP becomes
 *
 *     MLP(x; theta_0 + sum_i r_i(x) tau_i)        tau_i = theta_i - theta_0 (the MLP's)
 *
 * with r(x) the mean over tokens (and, with batch_reduce, over the batch) of a small router fed
 * by the MLP's input: Depth_0 (r = a learned vector), Depth_1 (one linear layer) or Depth_2
 * (linear, relu, linear), initialised as FusionBench does (weights N(0, 0.01^2), hidden bias 0,
 * output bias init_lambda, so every r_i starts near init_lambda). The rest of the model is
 * task arithmetic with scaling init_lambda. The routers are trained by test-time adaptation:
 * per step, one batch of unlabelled test images per task, the sum of the tasks' mean
 * prediction entropies, one Adam step on the routers (everything else frozen).
 *
 * The output is a state dict under FusionBench's WeightEnsemblingMoE names
 * (<mlp>.base_model.*, <mlp>.task_vectors.<i>.*, <mlp>.gate.*) with the structure in its
 * metadata; src/nn/clip_vit.c runs it, routing per image (docs/methods.md says where this
 * departs from FusionBench).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"
#include "nn/optim.h"
#include "pool/taskpool.h"

/* the method's name in messages */
#define NAME(s) ((s)->sparse ? "sparse_weight_ensembling_moe" : "weight_ensembling_moe")

typedef struct state {
    int64_t depth, batch, steps;
    int batch_reduce, fast_dev_run, per_image;
    double init_lambda, lr;
    /* the sparse variant */
    int sparse, shared_gate, post_sparse_gate;
    double tv_prune_ratio, gate_prune_ratio;
    int64_t pe_dim; /* the router's position encoding (0: none) */
    uint64_t seed;
    char *checkpoint, *save_checkpoint;
} state;

/* The parameters both variants share, in FusionBench's order around the sparse ones. */
#define WEMOE_HEAD_PARAMS                                                                       \
    {"name", "null", "FusionBench's algorithm name (accepted)"},                                \
        {"checkpoint", "false",                                                                 \
         "a model saved by this method: its routers are used, no adaptation"},                  \
        {"save_checkpoint", "false", "also write the upscaled model here (safetensors)"},       \
        {"router_hidden_layers", "2", "the router's depth: 0 (a vector), 1 or 2 linear layers"}, \
        {"init_lambda", "0.3", "every routing weight's start, and task arithmetic's scale"},    \
        {"batch_reduce", "true", "during adaptation, one routing over the whole batch"}
#define WEMOE_TAIL_PARAMS(grad_accumulate)                                                      \
    {"lr", "1e-4", "Adam's learning rate"}, {"optimizer", "adam", "adam (torch.optim.Adam)"},   \
        {"devices", "1", "accepted for FusionBench's configs (threads: --threads)"},            \
        {"batch_size", "16", "unlabelled test images per task and step"},                       \
        {"num_workers", "16", "accepted for FusionBench's configs (no effect here)"},           \
        {"max_steps", "1000", "Adam steps"},                                                    \
        {"use_grad_accumulate", grad_accumulate,                                                \
         "accepted (the gradient is the same either way)"},                                     \
        {"cache_dir", "outputs", "accepted for FusionBench's configs (no effect here)"},        \
        {"fast_dev_run", "false", "one adaptation step only, as FusionBench"},                  \
        {"seed", "0", "the routers' initialisation and the batches drawn"},                     \
        {"evaluate_per_image", "true",                                                          \
         "the saved model routes each image by itself (false: each evaluation batch as one)"},  \
        {NULL, NULL, NULL}

static const fb_param_spec params[] = {WEMOE_HEAD_PARAMS, WEMOE_TAIL_PARAMS("true")};

static const fb_param_spec sparse_params[] = {
    WEMOE_HEAD_PARAMS,
    {"tv_prune_ratio", "0.9", "share of each MLP task-vector tensor zeroed (smallest magnitudes)"},
    {"post_sparse_gate", "false", "after adaptation, prune the routers' tensors by magnitude"},
    {"gate_prune_ratio", "0.0", "share of each router tensor zeroed by post_sparse_gate"},
    {"shared_gate", "true", "one router for every layer"},
    {"position_encoding", "false", "the shared router also sees its layer's sinusoidal code"},
    {"position_encoding_dim", "8", "the code's size (even)"},
    WEMOE_TAIL_PARAMS("false"),
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->checkpoint);
    fb_free(s->save_checkpoint);
    fb_free(s);
}

/* a path, or false/null for none */
static fb_status path_param(const fb_config *p, const char *key, char **out)
{
    const fb_config *n = fb_cfg_map_get(p, key);
    const char *v;
    *out = NULL;
    if (fb_cfg_is_null(n) || n->kind != FB_CFG_SCALAR) return FB_OK;
    fb_status st = fb_cfg_string(n, key, &v);
    if (st || !strcmp(v, "false") || !strcmp(v, "False") || !*v) return st;
    return (*out = fb_strdup(v)) ? FB_OK : FB_ERR_NOMEM;
}

static fb_status ratio_param(const fb_config *p, const char *key, double *out)
{
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, key), key, out);
    if (!st && !(*out >= 0 && *out < 1))
        st = fb_set_error(FB_ERR_ARG, "method.%s must be in [0, 1), got %g", key, *out);
    return st;
}

static fb_status create_any(const fb_config *p, int sparse, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    const char *opt;
    int64_t seed = 0;
    fb_status st = fb_cfg_string(fb_cfg_map_get(p, "optimizer"), "optimizer", &opt);
    if (!st && strcmp(opt, "adam"))
        st = fb_set_error(FB_ERR_ARG, "method.optimizer '%s': only adam is supported", opt);
    if (!st)
        st = fb_cfg_int(fb_cfg_map_get(p, "router_hidden_layers"), "router_hidden_layers",
                        &s->depth);
    if (!st && (s->depth < 0 || s->depth > 2))
        st = fb_set_error(FB_ERR_ARG,
                          "method.router_hidden_layers must be 0, 1 or 2 (FusionBench's gates), "
                          "got %lld",
                          (long long)s->depth);
    if (!st) st = fb_cfg_double(fb_cfg_map_get(p, "init_lambda"), "init_lambda", &s->init_lambda);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "batch_reduce"), "batch_reduce", &s->batch_reduce);
    if (!st) st = fb_cfg_double(fb_cfg_map_get(p, "lr"), "lr", &s->lr);
    if (!st && !(s->lr > 0)) st = fb_set_error(FB_ERR_ARG, "method.lr must be positive");
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "batch_size"), "batch_size", &s->batch);
    if (!st && (s->batch < 1 || s->batch > 65536))
        st = fb_set_error(FB_ERR_ARG, "method.batch_size must be in [1, 65536], got %lld",
                          (long long)s->batch);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "max_steps"), "max_steps", &s->steps);
    if (!st && s->steps < 0)
        st = fb_set_error(FB_ERR_ARG, "method.max_steps must be >= 0, got %lld",
                          (long long)s->steps);
    const fb_config *fd = fb_cfg_map_get(p, "fast_dev_run");
    if (!st && !fb_cfg_is_null(fd)) st = fb_cfg_bool(fd, "fast_dev_run", &s->fast_dev_run);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    s->seed = (uint64_t)seed;
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "evaluate_per_image"), "evaluate_per_image",
                         &s->per_image);
    if (!st) st = path_param(p, "checkpoint", &s->checkpoint);
    if (!st) st = path_param(p, "save_checkpoint", &s->save_checkpoint);
    s->sparse = sparse;
    if (sparse) {
        int pe = 0;
        if (!st) st = ratio_param(p, "tv_prune_ratio", &s->tv_prune_ratio);
        if (!st) st = ratio_param(p, "gate_prune_ratio", &s->gate_prune_ratio);
        if (!st)
            st = fb_cfg_bool(fb_cfg_map_get(p, "post_sparse_gate"), "post_sparse_gate",
                             &s->post_sparse_gate);
        if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "shared_gate"), "shared_gate", &s->shared_gate);
        if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "position_encoding"), "position_encoding", &pe);
        if (!st && pe)
            st = fb_cfg_int(fb_cfg_map_get(p, "position_encoding_dim"), "position_encoding_dim",
                            &s->pe_dim);
        if (!st && pe && (!s->shared_gate || s->depth == 0))
            st = fb_set_error(FB_ERR_ARG, "method.position_encoding is for a shared router "
                                          "(shared_gate) of 1 or 2 layers, as FusionBench's");
        if (!st && pe && (s->pe_dim < 2 || s->pe_dim > 64 || s->pe_dim % 2))
            st = fb_set_error(FB_ERR_ARG,
                              "method.position_encoding_dim must be even, 2 to 64, got %lld",
                              (long long)s->pe_dim);
    }
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

/* "<prefix>.mlp.<fc1|fc2>.<weight|bias>" of a vision encoder layer: the length of
 * "<prefix>.mlp." and the part ("fc1.weight", ...); 0 otherwise. */
static size_t mlp_param(const char *name, const char **part)
{
    static const char *const parts[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    const char *at = strstr(name, "vision_model.encoder.layers.");
    if (at != name) return 0;
    const char *mlp = strstr(name, ".mlp.");
    if (!mlp) return 0;
    for (int i = 0; i < 4; i++)
        if (!strcmp(mlp + 5, parts[i])) {
            *part = parts[i];
            return (size_t)(mlp + 5 - name);
        }
    return 0;
}

static fb_status add_f32(fb_model *m, const char *name, int ndim, const int64_t *shape,
                         const float *data, fb_tensor **t)
{
    return fb_model_add_tensor(m, name, FB_F32, ndim, shape, data, t);
}

/* FusionBench's router initialisation for one layer `mlp` ("...layers.<l>.mlp."), D inputs,
 * E experts: weights N(0, 0.01^2) (Box-Muller on the counter-based generator, per tensor
 * name; a shared router draws under "shared" for every layer, so that its copies agree), the
 * hidden bias 0, the output bias (Depth_0: the weight) init_lambda. */
static fb_status add_router(const state *s, fb_model *out, const char *mlp, int64_t D, int64_t E)
{
    D += s->pe_dim; /* a router with position encoding sees [code, x] */
    static const char *const names[3][4] = {
        {"weight"}, {"fc.weight", "fc.bias"}, {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}};
    const int64_t shapes[3][4][2] = {{{E, 0}}, {{E, D}, {E, 0}}, {{D, D}, {D, 0}, {E, D}, {E, 0}}};
    const int parts = s->depth == 0 ? 1 : s->depth == 1 ? 2 : 4;
    fb_status st = FB_OK;
    for (int j = 0; j < parts && !st; j++) {
        const int64_t *sh = shapes[s->depth][j], n = sh[0] * (sh[1] ? sh[1] : 1);
        float *v = fb_malloc((size_t)n * sizeof *v);
        char name[1200];
        snprintf(name, sizeof name, "%sgate.%s", mlp, names[s->depth][j]);
        if (!v) return FB_ERR_NOMEM;
        const int is_weight = sh[1] != 0;
        const int is_out = s->depth == 0 || j == parts - 1;
        char keyname[1200];
        snprintf(keyname, sizeof keyname, "shared.gate.%s", names[s->depth][j]);
        const uint64_t key = fb_rng_key(s->seed, s->shared_gate ? keyname : name, 13);
        for (int64_t i = 0; i < n; i++) {
            if (is_weight) {
                double u1 = fb_rng_uniform(key, 2 * (uint64_t)i),
                       u2 = fb_rng_uniform(key, 2 * (uint64_t)i + 1);
                v[i] = (float)(0.01 * sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2));
            } else {
                v[i] = is_out ? (float)s->init_lambda : 0.0f;
            }
        }
        st = add_f32(out, name, sh[1] ? 2 : 1, sh, v, NULL);
        fb_free(v);
    }
    return st;
}

/* FusionBench's _magnitude_prune: zero the entries whose magnitude is not above the
 * ratio-quantile of the tensor's magnitudes (torch.quantile, linear interpolation). */
static fb_status magnitude_prune(float *v, int64_t n, double ratio)
{
    float *a = fb_malloc((size_t)n * sizeof *a);
    if (!a) return FB_ERR_NOMEM;
    for (int64_t j = 0; j < n; j++)
        a[j] = fabsf(v[j]);
    const float q = fb_quantile_f32(a, n, (float)ratio);
    for (int64_t j = 0; j < n; j++)
        v[j] = fabsf(v[j]) > q ? v[j] : 0.0f;
    fb_free(a);
    return FB_OK;
}

/* The upscaled model before adaptation: task arithmetic (scale init_lambda) for every float
 * tensor the pool merges except the encoder layers' MLPs, which keep the base as
 * <mlp>.base_model.* and each model's task vector as <mlp>.task_vectors.<i>.*; then the
 * routers. *layers: the MLPs upscaled. */
static fb_status construct(const state *s, const fb_modelpool *pool, int64_t D, fb_model *out,
                           int64_t *layers)
{
    const fb_model *base = fb_modelpool_get(pool, FB_PRETRAINED);
    const int E = fb_modelpool_num_models(pool);
    fb_name_filter *inc = NULL, *exc = NULL;
    fb_status st = FB_OK;
    if (fb_modelpool_selects(pool)) {
        st = fb_name_filter_create(pool->select.include, "modelpool.include", &inc);
        if (!st) st = fb_name_filter_create(pool->select.exclude, "modelpool.exclude", &exc);
    }
    float *acc = NULL, *b0 = NULL, *v = NULL;
    *layers = 0;
    for (int64_t t = 0; t < fb_model_num_tensors(base) && !st; t++) {
        const fb_tensor *w0 = fb_model_tensor(base, t);
        const char *name = fb_tensor_name(w0), *part = NULL;
        const int selected =
            (!inc || fb_name_filter_empty(inc) || fb_name_filter_matches(inc, name)) &&
            !(exc && fb_name_filter_matches(exc, name));
        const int64_t numel = fb_tensor_numel(w0);
        if (!selected || !fb_dtype_is_float(fb_tensor_dtype(w0))) { /* the base's, as it is */
            const void *data;
            if (!(st = fb_tensor_data(w0, &data)))
                st = fb_model_add_tensor(out, name, fb_tensor_dtype(w0), fb_tensor_ndim(w0),
                                         fb_tensor_shape(w0), data, NULL);
            continue;
        }
        const size_t mlp = mlp_param(name, &part);
        fb_free(acc);
        fb_free(b0);
        acc = b0 = NULL;
        if ((st = fb_tensor_to_f32_copy(w0, &b0))) break;
        if (!(acc = fb_calloc((size_t)(numel ? numel : 1), sizeof *acc))) {
            st = FB_ERR_NOMEM;
            break;
        }
        char nm[1200];
        if (mlp) {
            snprintf(nm, sizeof nm, "%.*sbase_model.%s", (int)mlp, name, part);
            st = add_f32(out, nm, fb_tensor_ndim(w0), fb_tensor_shape(w0), b0, NULL);
        }
        for (int i = 0; i < E && !st; i++) {
            const fb_tensor *ti =
                fb_model_find(fb_modelpool_get(pool, fb_modelpool_model_name(pool, i)), name);
            if (!ti || fb_tensor_numel(ti) != numel) {
                st = fb_set_error(FB_ERR_MISMATCH,
                                  "%s: model '%s' lacks '%s' of the "
                                  "pretrained model's shape",
                                  NAME(s), fb_modelpool_model_name(pool, i), name);
                break;
            }
            fb_free(v);
            v = NULL;
            if ((st = fb_tensor_to_f32_copy(ti, &v))) break;
            for (int64_t j = 0; j < numel; j++)
                v[j] -= b0[j];
            /* the sparse variant (at ratio 0 too: FusionBench's cut |w| > quantile(|w|, 0)
             * then zeroes each tensor's smallest magnitudes) */
            if (mlp && s->sparse && numel > 0) st = magnitude_prune(v, numel, s->tv_prune_ratio);
            if (st) break;
            if (mlp) {
                snprintf(nm, sizeof nm, "%.*stask_vectors.%d.%s", (int)mlp, name, i, part);
                st = add_f32(out, nm, fb_tensor_ndim(w0), fb_tensor_shape(w0), v, NULL);
            } else { /* FusionBench sums the task vectors, scales the sum, adds it */
                for (int64_t j = 0; j < numel; j++)
                    acc[j] += v[j];
            }
        }
        if (st || mlp) {
            if (!st && !strcmp(part, "fc2.bias")) { /* the layer's last MLP tensor: its router */
                snprintf(nm, sizeof nm, "%.*s", (int)mlp, name);
                st = add_router(s, out, nm, D, E);
                ++*layers;
            }
            continue;
        }
        for (int64_t j = 0; j < numel; j++)
            acc[j] = b0[j] + acc[j] * (float)s->init_lambda;
        st = add_f32(out, name, fb_tensor_ndim(w0), fb_tensor_shape(w0), acc, NULL);
    }
    fb_free(acc);
    fb_free(b0);
    fb_free(v);
    fb_name_filter_free(inc);
    fb_name_filter_free(exc);
    return st;
}

static fb_status set_meta(fb_model *out, const state *s, int E, int batch_reduce)
{
    char v[32];
    fb_status st = fb_model_set_metadata(out, "fusionbench_c.structure", "weight_ensembling_moe");
    snprintf(v, sizeof v, "%d", E);
    if (!st) st = fb_model_set_metadata(out, "wemoe.num_experts", v);
    snprintf(v, sizeof v, "%lld", (long long)s->depth);
    if (!st) st = fb_model_set_metadata(out, "wemoe.router_hidden_layers", v);
    if (!st) st = fb_model_set_metadata(out, "wemoe.batch_reduce", batch_reduce ? "true" : "false");
    snprintf(v, sizeof v, "%.17g", s->init_lambda);
    if (!st) st = fb_model_set_metadata(out, "wemoe.init_lambda", v);
    if (!st)
        st = fb_model_set_metadata(out, "wemoe.shared_gate", s->shared_gate ? "true" : "false");
    snprintf(v, sizeof v, "%lld", (long long)s->pe_dim);
    if (!st) st = fb_model_set_metadata(out, "wemoe.position_encoding_dim", v);
    if (!st && s->sparse) {
        snprintf(v, sizeof v, "%.17g", s->tv_prune_ratio);
        st = fb_model_set_metadata(out, "wemoe.tv_prune_ratio", v);
    }
    return st;
}

/* The routers' tensors of net into out's (owned) tensors of the same names. */
static fb_status store_routers(fb_clip *net, fb_model *out)
{
    const float *r = fb_clip_wemoe_router(net, NULL);
    for (int64_t i = 0; i < fb_clip_wemoe_num_tensors(net); i++) {
        int64_t off, n;
        const char *name = fb_clip_wemoe_tensor_name(net, i, &off, &n);
        float *dst = (float *)fb_tensor_mutable_data((fb_tensor *)fb_model_find(out, name));
        if (!dst)
            return fb_set_error(FB_ERR_ARG, "no router tensor '%s' in the upscaled model", name);
        memcpy(dst, r + off, (size_t)n * sizeof *dst);
    }
    return FB_OK;
}

/* Routers from a model this method saved, checked against the one being built. */
static fb_status load_checkpoint(const char *path, fb_model *out)
{
    fb_model *ck;
    fb_status st = fb_model_load(path, &ck);
    if (st) return st;
    for (int64_t i = 0; i < fb_model_num_tensors(out) && !st; i++) {
        fb_tensor *t = (fb_tensor *)fb_model_tensor(out, i);
        const char *name = fb_tensor_name(t);
        if (!strstr(name, ".mlp.gate.")) continue;
        const fb_tensor *c = fb_model_find(ck, name);
        if (!c || fb_tensor_numel(c) != fb_tensor_numel(t) ||
            !fb_dtype_is_float(fb_tensor_dtype(c)))
            st = fb_set_error(FB_ERR_MISMATCH,
                              "%s: checkpoint lacks router tensor '%s' of %lld floats "
                              "(router_hidden_layers and the pool must match the saved model's)",
                              path, name, (long long)fb_tensor_numel(t));
        else
            st = fb_tensor_to_f32(c, fb_tensor_mutable_data(t));
    }
    fb_model_free(ck);
    return st;
}

/* Test-time adaptation of the routers of `out` (FusionBench's test_time_adaptation). */
static fb_status adapt(const state *s, fb_model *out, const fb_modelpool *pool,
                       const fb_run_options *opts)
{
    fb_taskpool *tp = opts->taskpool;
    const int T = tp->set.num_tasks;
    const int64_t B = s->batch, img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    const int64_t F = fb_taskpool_features(tp);
    const int64_t steps = s->fast_dev_run && s->steps > 1 ? 1 : s->steps;
    for (int t = 0; t < T; t++)
        if (tp->set.tasks[t].n[tp->split] < 1)
            return fb_set_error(FB_ERR_ARG, "%s: task %s has no %s examples to adapt on", NAME(s),
                                tp->set.tasks[t].name, fb_split_names[tp->split]);
    fb_clip *net = NULL;
    int64_t Km = 1;
    for (int t = 0; t < T; t++)
        if (tp->set.tasks[t].num_classes > Km) Km = tp->set.tasks[t].num_classes;
    float **heads = fb_calloc((size_t)T, sizeof *heads), *x = fb_malloc((size_t)(B * img) * 4);
    float *scratch = NULL;
    fb_adamw adam = {0};
    fb_status st = heads && x ? FB_OK : FB_ERR_NOMEM;
    if (!st) st = fb_clip_create(&tp->clip, B, &net);
    if (!st && !(scratch = fb_malloc((size_t)fb_clip_entropy_scratch(net, B, Km) * 4)))
        st = FB_ERR_NOMEM;
    /* a pool of vision-only fine-tunes of a whole CLIPModel has the rest from the base */
    const fb_model *fallback =
        fb_modelpool_selects(pool) ? fb_modelpool_get(pool, FB_PRETRAINED) : NULL;
    if (!st) st = fb_clip_set_params_from(net, out, fallback);
    if (!st) st = fb_clip_set_wemoe(net, out);
    int64_t nr = 0;
    float *router = st ? NULL : fb_clip_wemoe_router(net, &nr);
    if (!st && !router)
        st = fb_set_error(FB_ERR_ARG, "%s: the task pool's model has no MLP the pool upscaled",
                          NAME(s));
    if (!st) fb_clip_wemoe_batch_reduce(net, s->batch_reduce);
    for (int t = 0; t < T && !st; t++) {
        if (!(heads[t] = fb_malloc((size_t)(tp->set.tasks[t].num_classes * F) * 4)))
            st = FB_ERR_NOMEM;
        else
            st = fb_taskpool_head(tp, t, heads[t]);
    }
    if (!st) st = fb_adamw_init(&adam, nr, (float)s->lr, 0.0f); /* AdamW without decay = Adam */
    const float *grad = st ? NULL : fb_clip_wemoe_router_grad(net, NULL);
    fb_nn_blas_single(1);
    for (int64_t step = 0; step < steps && !st; step++) {
        double loss = 0;
        fb_clip_zero_grad(net);
        for (int t = 0; t < T && !st; t++) { /* batch = a function of (seed, task, step, slot) */
            const fb_task *task = &tp->set.tasks[t];
            double lt = 0;
            fb_task_draw_batch(&tp->set, task, tp->split, fb_rng_key(s->seed, task->name, 17),
                               step, B, x);
            st = fb_clip_entropy_backward(net, x, B, heads[t], task->num_classes, tp->logit_scale,
                                          scratch, &lt);
            loss += lt;
        }
        if (!st) st = fb_method_check_interrupt();
        if (st) break;
        fb_adamw_step(&adam, router, grad);
        if (opts->on_step) opts->on_step(opts->user, NAME(s), step, steps, loss);
    }
    fb_nn_blas_single(0);
    if (!st) st = store_routers(net, out);
    fb_adamw_free(&adam);
    fb_clip_free(net);
    for (int t = 0; heads && t < T; t++)
        fb_free(heads[t]);
    fb_free(heads);
    fb_free(x);
    fb_free(scratch);
    return st;
}

static fb_status build(void *p, fb_modelpool *pool, const fb_run_options *opts, fb_model **outp)
{
    const state *s = p;
    const fb_model *base = fb_modelpool_get(pool, FB_PRETRAINED);
    const int E = fb_modelpool_num_models(pool);
    if (!base)
        return fb_set_error(FB_ERR_ARG,
                            "%s needs the pretrained model: the "
                            "pool has no '_pretrained_'",
                            NAME(s));
    if (E > 256) return fb_set_error(FB_ERR_ARG, "%s: %d models, at most 256", NAME(s), E);
    if (!s->checkpoint && (!opts || !opts->taskpool))
        return fb_set_error(FB_ERR_ARG,
                            "method %s adapts its routers on task data: give "
                            "it a taskpool (taskpool=NAME_OR_PATH), or method.checkpoint",
                            NAME(s));
    /* the hidden size: the first layer's fc1.weight [I, D] */
    const fb_tensor *fc1 = fb_model_find(base, "vision_model.encoder.layers.0.mlp.fc1.weight");
    if (!fc1 || fb_tensor_ndim(fc1) != 2)
        return fb_set_error(FB_ERR_NOT_FOUND,
                            "%s: the pretrained model has no "
                            "'vision_model.encoder.layers.0.mlp.fc1.weight' (a CLIP vision tower)",
                            NAME(s));
    const int64_t D = fb_tensor_shape(fc1)[1];
    fb_model *out;
    int64_t layers = 0;
    fb_status st = fb_model_create(&out);
    if (!st) st = construct(s, pool, D, out, &layers);
    if (!st && !layers)
        st = fb_set_error(FB_ERR_ARG,
                          "%s: the pool merges no vision encoder "
                          "MLP (vision_model.encoder.layers.*.mlp.*)",
                          NAME(s));
    if (!st) st = set_meta(out, s, E, s->batch_reduce);
    if (!st && s->checkpoint)
        st = load_checkpoint(s->checkpoint, out);
    else if (!st)
        st = adapt(s, out, pool, opts);
    /* the sparse variant's post_sparse_gate: each router tensor pruned by magnitude (a shared
     * router's copies alike; FusionBench prunes the shared module once per layer, which gives
     * the same: a second cut at the same ratio removes nothing more) */
    for (int64_t i = 0; i < fb_model_num_tensors(out) && !st && s->post_sparse_gate; i++) {
        fb_tensor *t = (fb_tensor *)fb_model_tensor(out, i);
        if (strstr(fb_tensor_name(t), ".mlp.gate.") && fb_tensor_numel(t) > 0)
            st =
                magnitude_prune(fb_tensor_mutable_data(t), fb_tensor_numel(t), s->gate_prune_ratio);
    }
    /* evaluation routes every image by itself (FusionBench's intent: "enable sample-wise
     * adaptation"; its code sets that flag on the outer model, so its modules keep routing
     * whole batches: evaluate_per_image=false) */
    if (!st) st = set_meta(out, s, E, !s->per_image);
    if (!st && s->save_checkpoint) st = fb_model_save(out, s->save_checkpoint, NULL);
    if (st) {
        fb_model_free(out);
        return st;
    }
    *outp = out;
    return FB_OK;
}

static void files(const void *p, fb_output_path *write, fb_output_path *read)
{
    const state *s = p;
    write[0] = (fb_output_path){s->save_checkpoint, "method.save_checkpoint"};
    read[0] = (fb_output_path){s->checkpoint, "method.checkpoint"};
}

static fb_status create(const fb_config *p, void **out)
{
    return create_any(p, 0, out);
}

static fb_status create_sparse(const fb_config *p, void **out)
{
    return create_any(p, 1, out);
}

const fb_method_ops fb_method_weight_ensembling_moe = {
    .name = "weight_ensembling_moe",
    .target_class = "CLIPWeightEnsemblingMoEAlgorithm",
    .summary = "Weight-Ensembling MoE: every MLP the base plus routed task vectors, routers "
               "trained on unlabelled test data",
    .params = params,
    .needs_base = 1,
    .min_models = 1,
    .create = create,
    .build = build,
    .files = files,
    .destroy = destroy,
};

const fb_method_ops fb_method_sparse_weight_ensembling_moe = {
    .name = "sparse_weight_ensembling_moe",
    .target_class = "SparseCLIPWeightEnsemblingMoEAlgorithm",
    .summary = "Sparse WEMoE: Weight-Ensembling MoE with magnitude-pruned task vectors and one "
               "router shared by every layer",
    .params = sparse_params,
    .needs_base = 1,
    .min_models = 1,
    .create = create_sparse,
    .build = build,
    .files = files,
    .destroy = destroy,
};
