/*
 * adamerging.c: AdaMerging (Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task
 * Learning", ICLR 2024), task-wise and layer-wise, as FusionBench's CLIP AdaMerging.
 *
 *     theta(lambda)_l = theta_0,l + sum_k lambda_k,l tau_k,l        tau_k = theta_k - theta_0
 *     min_lambda  sum_t H( softmax(logit_scale * cos(f(x_t; theta(lambda)), head_t)) )
 *
 * One coefficient per task model (task-wise) or per task model and parameter tensor
 * (layer-wise); H is the mean Shannon entropy of the merged model's predictions on a batch
 * of unlabeled test images of task t, with task t's classification head; Adam on lambda.
 * dH/dlambda_k,l = <dH/dtheta_l, tau_k,l>: one backward pass of the nn engine per task batch
 * gives the parameter gradient, and a dot product per tensor and model gives lambda's.
 *
 * Learning happens before the merge (ops.learn); the merge itself then streams like task
 * arithmetic with the learned coefficients per tensor. Batches are drawn with the
 * counter-based generator from `seed`, and every reduction has a fixed order, so the learned
 * coefficients and the merged bytes do not depend on the thread count.
 */
#include "adamerging.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/rng.h"
#include "core/status.h"
#include "core/strmap.h"
#include "method.h"
#include "nn/kernels.h"
#include "nn/optim.h"
#include "pool/taskpool.h"

typedef struct state {
    int layer_wise, clamp;
    double lr, init;
    int64_t batch, steps;
    uint64_t seed;
    char *weights_path, *save_path;
    double *weights_list; /* task-wise coefficients given as a list */
    int weights_count;
    /* learned (or loaded): K x L (layer-wise) or K coefficients, in pool model order */
    int K;
    int64_t L;
    float *lambda;
    char **names; /* the L parameter tensors the coefficients are for */
    fb_strmap index;
} state;

static const fb_param_spec params[] = {
    {"weights", "null",
     "coefficients to use instead of learning: a file saved by "
     "save_merging_weights, or a list (task-wise)"},
    {"optimizer", "adam", "adam (torch.optim.Adam)"},
    {"lr", "1e-3", "Adam's learning rate"},
    {"init_values", "0.3", "every coefficient's starting value"},
    {"clamp_weights", "false", "clamp the coefficients to [0, 1] after every step"},
    {"tie_weights", "true", "accepted for FusionBench's configs (no effect here)"},
    {"strict", "false", "accepted for FusionBench's configs (no effect here)"},
    {"devices", "1", "accepted for FusionBench's configs (threads: --threads)"},
    {"batch_size", "16", "unlabeled test images per task and step"},
    {"num_workers", "8", "accepted for FusionBench's configs (no effect here)"},
    {"max_steps", "1000", "Adam steps"},
    {"fast_dev_run", "false", "accepted for FusionBench's configs (no effect here)"},
    {"save_merging_weights", "null", "write the coefficients here (safetensors); null: not saved"},
    {"cache_dir", "outputs", "accepted for FusionBench's configs (no effect here)"},
    {"seed", "0", "the batches drawn from each task's test split"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->weights_path);
    fb_free(s->save_path);
    fb_free(s->weights_list);
    fb_free(s->lambda);
    if (s->names)
        for (int64_t l = 0; l < s->L; l++)
            fb_free(s->names[l]);
    fb_free(s->names);
    fb_strmap_clear(&s->index);
    fb_free(s);
}

static fb_status opt_string(const fb_config *p, const char *key, char **out)
{
    const fb_config *n = fb_cfg_map_get(p, key);
    const char *v;
    *out = NULL;
    if (fb_cfg_is_null(n) || n->kind != FB_CFG_SCALAR) return FB_OK;
    fb_status st = fb_cfg_string(n, key, &v);
    if (!st && !(*out = fb_strdup(v))) st = FB_ERR_NOMEM;
    return st;
}

static fb_status create(const fb_config *p, int layer_wise, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_strmap_init(&s->index);
    s->layer_wise = layer_wise;
    const char *opt;
    int64_t seed = 0;
    fb_status st = fb_cfg_string(fb_cfg_map_get(p, "optimizer"), "optimizer", &opt);
    if (!st && strcmp(opt, "adam"))
        st = fb_set_error(FB_ERR_ARG, "method.optimizer '%s': only adam is supported", opt);
    if (!st) st = fb_cfg_double(fb_cfg_map_get(p, "lr"), "lr", &s->lr);
    if (!st && !(s->lr > 0)) st = fb_set_error(FB_ERR_ARG, "method.lr must be positive");
    if (!st) st = fb_cfg_double(fb_cfg_map_get(p, "init_values"), "init_values", &s->init);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "clamp_weights"), "clamp_weights", &s->clamp);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "batch_size"), "batch_size", &s->batch);
    if (!st && (s->batch < 1 || s->batch > 65536))
        st = fb_set_error(FB_ERR_ARG, "method.batch_size must be in [1, 65536], got %lld",
                          (long long)s->batch);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "max_steps"), "max_steps", &s->steps);
    if (!st && s->steps < 0)
        st = fb_set_error(FB_ERR_ARG, "method.max_steps must be >= 0, got %lld",
                          (long long)s->steps);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    s->seed = (uint64_t)seed;
    if (!st) st = opt_string(p, "save_merging_weights", &s->save_path);
    const fb_config *w = fb_cfg_map_get(p, "weights");
    if (!st && w && w->kind == FB_CFG_SEQ) {
        st = fb_cfg_double_list(w, "weights", &s->weights_list, &s->weights_count);
        if (!st && s->layer_wise)
            st = fb_set_error(FB_ERR_ARG,
                              "method.weights as a list is task-wise; layer-wise "
                              "coefficients come from a file saved by save_merging_weights");
    } else if (!st) {
        st = opt_string(p, "weights", &s->weights_path);
    }
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

/* ---------------------------------------------------------------- loss and gradient -- */

/* theta0 + sum_k lambda_k tau_k into the net's parameters, tensor by tensor. */
static void compose(fb_clip *net, const float *theta0, const float *const *tau, int K,
                    const float *lambda, int layer_wise)
{
    const int64_t L = fb_clip_num_tensors(net);
    float *p = fb_clip_params(net);
    int64_t off = 0;
    for (int64_t l = 0; l < L; l++) {
        int64_t n;
        fb_clip_tensor_name(net, l, &n);
        for (int64_t i = off; i < off + n; i++)
            p[i] = theta0[i];
        for (int k = 0; k < K; k++) {
            const float c = lambda[layer_wise ? k * L + l : k];
            const float *t = tau[k];
            for (int64_t i = off; i < off + n; i++)
                p[i] += c * t[i];
        }
        off += n;
    }
}

fb_status fb_adamerging_loss_grad(fb_clip *net, const float *theta0, const float *const *tau, int K,
                                  const float *lambda, int layer_wise, int T,
                                  const float *const *images, const int64_t *counts,
                                  const float *const *heads, const int64_t *classes,
                                  float logit_scale, double *loss, double *grad)
{
    const int64_t L = fb_clip_num_tensors(net);
    int64_t Bm = 1, Km = 1;
    for (int t = 0; t < T; t++) {
        if (counts[t] > Bm) Bm = counts[t];
        if (classes[t] > Km) Km = classes[t];
    }
    float *scratch = fb_malloc((size_t)fb_clip_entropy_scratch(net, Bm, Km) * sizeof *scratch);
    fb_status st = scratch ? FB_OK : FB_ERR_NOMEM;
    compose(net, theta0, tau, K, lambda, layer_wise);
    fb_clip_zero_grad(net);
    *loss = 0;
    for (int t = 0; t < T && !st; t++) {
        double lt = 0;
        st = fb_clip_entropy_backward(net, images[t], counts[t], heads[t], classes[t],
                                      logit_scale, scratch, &lt);
        *loss += lt;
    }
    if (!st) {
        /* offsets of the tensors in the parameter buffer */
        int64_t *off = fb_malloc((size_t)(L + 1) * sizeof *off);
        if (!off) st = FB_ERR_NOMEM;
        for (int64_t l = 0; off && l < L; l++) {
            int64_t n;
            fb_clip_tensor_name(net, l, &n);
            off[l + 1] = (l ? off[l] : 0) + n;
            if (!l) off[0] = 0;
        }
        const float *g = fb_clip_grads(net);
        double *gl = off ? fb_malloc((size_t)(K * L) * sizeof *gl) : NULL;
        if (off && !gl) st = FB_ERR_NOMEM;
        if (gl) {
            /* each (model, tensor) dot product is summed by one thread in element order */
#pragma omp parallel for schedule(dynamic, 1)
            for (int64_t l = 0; l < L; l++)
                for (int k = 0; k < K; k++) {
                    double d = 0;
                    for (int64_t i = off[l]; i < off[l + 1]; i++)
                        d += (double)g[i] * tau[k][i];
                    gl[k * L + l] = d;
                }
            for (int k = 0; k < K; k++) {
                if (layer_wise) {
                    for (int64_t l = 0; l < L; l++)
                        grad[k * L + l] = gl[k * L + l];
                } else {
                    double d = 0;
                    for (int64_t l = 0; l < L; l++)
                        d += gl[k * L + l];
                    grad[k] = d;
                }
            }
        }
        fb_free(gl);
        fb_free(off);
    }
    fb_free(scratch);
    return st;
}

/* -------------------------------------------------------------------------- learn -- */

static fb_status save_weights(const state *s, const fb_modelpool *pool)
{
    fb_model *m;
    fb_status st = fb_model_create(&m);
    int64_t shape[2] = {s->K, s->L};
    if (!st)
        st = fb_model_add_tensor(m, "merging_weights", FB_F32, s->layer_wise ? 2 : 1, shape,
                                 s->lambda, NULL);
    fb_buf b;
    fb_buf_init(&b);
    for (int i = 0, k = 0; i < fb_modelpool_num_models(pool); i++) {
        const char *nm = fb_modelpool_model_name(pool, i);
        if (!strcmp(nm, "_pretrained_")) continue;
        fb_buf_printf(&b, "%s%s", k++ ? "," : "", nm);
    }
    if (!st)
        st = b.failed ? FB_ERR_NOMEM : fb_model_set_metadata(m, "models", b.data ? b.data : "");
    fb_buf_free(&b);
    if (!st)
        st = fb_model_set_metadata(m, "granularity", s->layer_wise ? "layer_wise" : "task_wise");
    if (!st) st = fb_model_save(m, s->save_path, NULL);
    fb_model_free(m);
    return st;
}

static fb_status load_weights(state *s)
{
    const int64_t n = s->layer_wise ? (int64_t)s->K * s->L : s->K;
    if (s->weights_list) {
        if (s->weights_count != s->K)
            return fb_set_error(FB_ERR_ARG, "method.weights has %d values for %d models",
                                s->weights_count, s->K);
        for (int k = 0; k < s->K; k++)
            s->lambda[k] = (float)s->weights_list[k];
        return FB_OK;
    }
    fb_model *m;
    fb_status st = fb_model_load(s->weights_path, &m);
    if (st) return st;
    const fb_tensor *t = fb_model_find(m, "merging_weights");
    if (!t || fb_tensor_numel(t) != n || fb_tensor_ndim(t) != (s->layer_wise ? 2 : 1))
        st = fb_set_error(FB_ERR_MISMATCH,
                          "%s: 'merging_weights' must be a %s tensor of %lld "
                          "coefficients for this pool",
                          s->weights_path, s->layer_wise ? "[models, tensors]" : "[models]",
                          (long long)n);
    else
        st = fb_tensor_to_f32(t, s->lambda);
    fb_model_free(m);
    return st;
}

static fb_status learn(void *p, fb_modelpool *pool, const fb_run_options *opts)
{
    state *s = p;
    fb_taskpool *tp = opts->taskpool;
    const fb_model *base = fb_modelpool_get(pool, "_pretrained_");
    if (!base) return fb_set_error(FB_ERR_ARG, "adamerging needs a _pretrained_ model in the pool");
    /* forget an earlier run's coefficients */
    fb_free(s->lambda);
    if (s->names)
        for (int64_t l = 0; l < s->L; l++)
            fb_free(s->names[l]);
    fb_free(s->names);
    s->names = NULL;
    s->lambda = NULL;
    fb_strmap_clear(&s->index);
    fb_strmap_init(&s->index);

    const int T = tp->set.num_tasks;
    const int64_t B = s->batch, img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    const int64_t F = fb_taskpool_features(tp);
    int K = 0;
    for (int i = 0; i < fb_modelpool_num_models(pool); i++) /* _pretrained_ is not listed */
        K += strcmp(fb_modelpool_model_name(pool, i), "_pretrained_") != 0;
    for (int t = 0; t < T; t++)
        if (tp->set.tasks[t].n[tp->split] < 1)
            return fb_set_error(FB_ERR_ARG, "adamerging: task %s has no %s examples to adapt on",
                                tp->set.tasks[t].name, fb_split_names[tp->split]);
    fb_clip *net = NULL;
    float *theta0 = NULL, **tau = fb_calloc((size_t)K, sizeof *tau),
          **heads = fb_calloc((size_t)T, sizeof *heads);
    float **x = fb_calloc((size_t)T, sizeof *x), *g32 = NULL;
    double *grad = NULL;
    int64_t *counts = fb_malloc((size_t)T * sizeof *counts),
            *classes = fb_malloc((size_t)T * sizeof *classes);
    fb_adamw adam = {0};
    fb_status st = tau && heads && x && counts && classes ? FB_OK : FB_ERR_NOMEM;
    if (!st) st = fb_clip_create(&tp->clip, B, &net);
    if (st) goto done;
    const int64_t np = fb_clip_num_params(net);
    s->K = K;
    s->L = fb_clip_num_tensors(net);
    const int64_t nl = s->layer_wise ? (int64_t)K * s->L : K;
    s->lambda = fb_malloc((size_t)nl * sizeof *s->lambda);
    s->names = fb_calloc((size_t)s->L, sizeof *s->names);
    theta0 = fb_malloc((size_t)np * sizeof *theta0);
    grad = fb_malloc((size_t)nl * sizeof *grad);
    g32 = fb_malloc((size_t)nl * sizeof *g32);
    if (!s->lambda || !s->names || !theta0 || !grad || !g32) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    for (int64_t l = 0; l < s->L && !st; l++) {
        if (!(s->names[l] = fb_strdup(fb_clip_tensor_name(net, l, NULL))))
            st = FB_ERR_NOMEM;
        else
            st = fb_strmap_put(&s->index, s->names[l], l);
    }
    for (int64_t i = 0; i < nl; i++)
        s->lambda[i] = (float)s->init;
    if (st) goto done;
    if (s->weights_path || s->weights_list) { /* given: no test-time adaptation */
        st = load_weights(s);
        goto done;
    }
    /* theta_0 and the task vectors, every parameter the net needs checked before any step */
    if ((st = fb_clip_set_params(net, base))) goto done;
    /* a pool that merges a selection (vision-only fine-tunes of a whole CLIPModel) has the
     * rest from the base */
    const fb_model *fallback = fb_modelpool_selects(pool) ? base : NULL;
    memcpy(theta0, fb_clip_params(net), (size_t)np * 4);
    for (int i = 0, k = 0; i < fb_modelpool_num_models(pool) && !st; i++) {
        const char *nm = fb_modelpool_model_name(pool, i);
        if (!strcmp(nm, "_pretrained_")) continue;
        if (!(tau[k] = fb_malloc((size_t)np * 4))) {
            st = FB_ERR_NOMEM;
            break;
        }
        if ((st = fb_clip_set_params_from(net, fb_modelpool_get(pool, nm), fallback))) break;
        const float *pk = fb_clip_params(net);
        for (int64_t j = 0; j < np; j++)
            tau[k][j] = pk[j] - theta0[j];
        k++;
    }
    for (int t = 0; t < T && !st; t++) {
        classes[t] = tp->set.tasks[t].num_classes;
        counts[t] = B;
        heads[t] = fb_malloc((size_t)(classes[t] * F) * 4);
        x[t] = fb_malloc((size_t)(B * img) * 4);
        if (!heads[t] || !x[t])
            st = FB_ERR_NOMEM;
        else
            st = fb_taskpool_head(tp, t, heads[t]);
    }
    if (!st) st = fb_adamw_init(&adam, nl, (float)s->lr, 0.0f); /* AdamW without decay = Adam */
    fb_nn_blas_single(1);
    for (int64_t step = 0; step < s->steps && !st; step++) {
        for (int t = 0; t < T; t++) /* batch = a function of (seed, task, step, slot) */
            fb_task_draw_batch(&tp->set, &tp->set.tasks[t], tp->split,
                               fb_rng_key(s->seed, tp->set.tasks[t].name, 7), step, B, x[t]);
        double loss;
        st = fb_adamerging_loss_grad(net, theta0, (const float *const *)tau, K, s->lambda,
                                     s->layer_wise, T, (const float *const *)x, counts,
                                     (const float *const *)heads, classes, tp->logit_scale, &loss,
                                     grad);
        if (!st) st = fb_method_check_interrupt();
        if (st) break;
        for (int64_t i = 0; i < nl; i++)
            g32[i] = (float)grad[i];
        fb_adamw_step(&adam, s->lambda, g32);
        if (s->clamp)
            for (int64_t i = 0; i < nl; i++)
                s->lambda[i] = fminf(fmaxf(s->lambda[i], 0.0f), 1.0f);
        if (opts->on_step) opts->on_step(opts->user, "adamerging", step, s->steps, loss);
    }
    fb_nn_blas_single(0);
    if (!st && s->save_path) st = save_weights(s, pool);
done:
    fb_adamw_free(&adam);
    fb_clip_free(net);
    fb_free(theta0);
    for (int k = 0; tau && k < K; k++)
        fb_free(tau[k]);
    for (int t = 0; heads && t < T; t++)
        fb_free(heads[t]);
    for (int t = 0; x && t < T; t++)
        fb_free(x[t]);
    fb_free(tau);
    fb_free(heads);
    fb_free(x);
    fb_free(g32);
    fb_free(grad);
    fb_free(counts);
    fb_free(classes);
    return st;
}

/* theta_0 + sum_k lambda_k,l tau_k for the chunk's tensor l (init_values for tensors the
 * vision tower does not have). */
static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t l = fb_strmap_get(&s->index, fb_tensor_name(c->tensor));
    const float *base = c->base;
    float *out = c->out;
    for (int64_t j = 0; j < c->count; j++)
        out[j] = base[j];
    for (int k = 0; k < c->num_models; k++) {
        const float lam = !s->layer_wise ? s->lambda[k]
                          : l >= 0       ? s->lambda[k * s->L + l]
                                         : (float)s->init;
        const float *m = c->models[k];
        for (int64_t j = 0; j < c->count; j++)
            out[j] += lam * (m[j] - base[j]);
    }
    return FB_OK;
}

static void files(const void *p, fb_output_path *write, fb_output_path *read)
{
    const state *s = p;
    write[0] = (fb_output_path){s->save_path, "method.save_merging_weights"};
    read[0] = (fb_output_path){s->weights_path, "method.weights"};
}

static fb_status create_task_wise(const fb_config *p, void **out)
{
    return create(p, 0, out);
}
static fb_status create_layer_wise(const fb_config *p, void **out)
{
    return create(p, 1, out);
}

const fb_method_ops fb_method_clip_task_wise_adamerging = {
    .name = "clip_task_wise_adamerging",
    .target_class = "CLIPTaskWiseAdaMergingAlgorithm",
    .summary =
        "AdaMerging: one coefficient per model, learned by entropy minimisation on test data",
    .params = params,
    .needs_base = 1,
    .create = create_task_wise,
    .learn = learn,
    .files = files,
    .merge = merge,
    .destroy = destroy,
};

const fb_method_ops fb_method_clip_layer_wise_adamerging = {
    .name = "clip_layer_wise_adamerging",
    .target_class = "CLIPLayerWiseAdaMergingAlgorithm",
    .summary = "AdaMerging: a coefficient per model and tensor, learned on unlabeled test data",
    .params = params,
    .needs_base = 1,
    .create = create_layer_wise,
    .learn = learn,
    .files = files,
    .merge = merge,
    .destroy = destroy,
};
