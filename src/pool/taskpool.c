/*
 * taskpool.c: evaluation of a model on the tasks of a taskpool (see taskpool.h).
 *
 * Accuracy and loss are sums over fixed batches in example order, so the numbers do not
 * depend on the thread count (the forward pass itself is thread-independent).
 */
#include "taskpool.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "clip_tasks.h"
#include "core/alloc.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/status.h"
#include "nn/kernels.h"

static const char *const pool_keys[] = {"_target_",   "model_config", "heads",   "logit_scale",
                                        "batch_size", "split",        "evaluate"};

void fb_taskpool_free(fb_taskpool *tp)
{
    if (!tp) return;
    fb_taskset_free(&tp->set);
    fb_model_free(tp->heads);
    fb_free(tp->model_config_path);
    fb_free(tp->heads_path);
    fb_config_free(tp->node);
    fb_free(tp);
}

static fb_status path_key(const fb_config *node, const char *key, char **out)
{
    *out = NULL;
    const fb_config *n = fb_cfg_map_get(node, key);
    if (fb_cfg_is_null(n))
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: taskpool.%s is not set (the zoo's taskpool.yaml "
                            "sets it; see docs/tasks.md)",
                            fb_cfg_where(node), key);
    char k[64];
    snprintf(k, sizeof k, "taskpool.%s", key);
    return fb_cfg_path(n, k, out);
}

int64_t fb_taskpool_features(const fb_taskpool *tp)
{
    return tp->clip.projection ? tp->clip.projection : tp->clip.hidden;
}

fb_status fb_taskpool_head(const fb_taskpool *tp, int task, float *dst)
{
    const fb_tensor *h = fb_model_find(tp->heads, tp->set.tasks[task].name);
    if (!h)
        return fb_set_error(FB_ERR_NOT_FOUND, "%s: no head for task '%s'", tp->heads_path,
                            tp->set.tasks[task].name);
    return fb_tensor_to_f32(h, dst);
}

/* Checks that `evaluate` is a list of task names of the taskpool. */
static fb_status select_tasks(const fb_config *ev, const fb_config *node)
{
    const fb_config *tasks = fb_cfg_map_get(node, "tasks");
    if (fb_cfg_is_null(ev)) return FB_OK;
    if (ev->kind != FB_CFG_SEQ || ev->count == 0)
        return fb_set_error(FB_ERR_CONFIG, "%s: taskpool.evaluate must be a list of task names",
                            fb_cfg_where(ev));
    for (int i = 0; i < ev->count; i++) {
        const char *s;
        fb_status st = fb_cfg_string(ev->items[i], "taskpool.evaluate", &s);
        if (st) return st;
        int found = 0;
        found = tasks && tasks->kind == FB_CFG_MAP && fb_cfg_map_get(tasks, s);
        if (!found)
            return fb_set_error(FB_ERR_CONFIG, "%s: taskpool.evaluate: no task named '%s'",
                                fb_cfg_where(ev->items[i]), s);
    }
    return FB_OK;
}

/* heads and model_config (both owned, NULL unless the node came from FusionBench's form)
 * stand for the node's `heads` and `model_config` keys. */
static fb_status open_native(const fb_config *node, fb_model *heads, char *model_config,
                             fb_taskpool **out);

fb_status fb_taskpool_open(const fb_config *node, fb_taskpool **out)
{
    *out = NULL;
    if (!node || node->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: a taskpool must be a mapping", fb_cfg_where(node));
    if (!fb_clip_tasks_is_fusionbench(node)) return open_native(node, NULL, NULL, out);
    fb_config *native;
    fb_model *heads;
    char *model_config;
    fb_status st = fb_clip_tasks_translate(node, &native, &heads, &model_config);
    if (st) return st;
    st = open_native(native, heads, model_config, out);
    fb_config_free(native);
    return st;
}

static fb_status open_native(const fb_config *node, fb_model *heads, char *model_config,
                             fb_taskpool **out)
{
    for (int i = 0; i < node->count; i++) {
        size_t j = 0, n = sizeof pool_keys / sizeof *pool_keys;
        while (j < n && strcmp(node->keys[i], pool_keys[j]))
            j++;
        if (j == n && !fb_taskset_key(node->keys[i]))
            return fb_set_error(FB_ERR_CONFIG, "%s: unknown taskpool key '%s' (see docs/tasks.md)",
                                fb_cfg_where(node->items[i]), node->keys[i]);
    }
    fb_taskpool *tp = fb_calloc(1, sizeof *tp);
    if (!tp) {
        fb_model_free(heads);
        fb_free(model_config);
        return FB_ERR_NOMEM;
    }
    tp->heads = heads;
    tp->model_config_path = model_config;
    tp->logit_scale = 100.0f;
    tp->batch_size = 256;
    tp->split = FB_SPLIT_TEST;
    fb_status st = fb_cfg_copy(node, &tp->node);
    const fb_config *n;
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "logit_scale"))) {
        double v;
        if (!(st = fb_cfg_double(n, "taskpool.logit_scale", &v)) && !(v > 0 && v < 1e6))
            st = fb_set_error(FB_ERR_CONFIG, "%s: taskpool.logit_scale must be positive",
                              fb_cfg_where(n));
        tp->logit_scale = (float)v;
    }
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "batch_size"))) {
        if (!(st = fb_cfg_int(n, "taskpool.batch_size", &tp->batch_size)) &&
            (tp->batch_size < 1 || tp->batch_size > 65536))
            st = fb_set_error(FB_ERR_CONFIG, "%s: taskpool.batch_size must be in [1, 65536]",
                              fb_cfg_where(n));
    }
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "split"))) {
        const char *s;
        if (!(st = fb_cfg_string(n, "taskpool.split", &s))) {
            tp->split = -1;
            for (int i = 0; i < FB_NUM_SPLITS; i++)
                if (!strcmp(s, fb_split_names[i])) tp->split = i;
            if (tp->split < 0)
                st = fb_set_error(FB_ERR_CONFIG, "%s: taskpool.split must be train, val or test",
                                  fb_cfg_where(n));
        }
    }
    /* the model description and heads first: cheap, and their errors come before data loads */
    if (!st && !tp->model_config_path) st = path_key(node, "model_config", &tp->model_config_path);
    if (!st) st = fb_clip_config_load(tp->model_config_path, &tp->clip);
    if (!st && !tp->heads) {
        if (!(st = path_key(node, "heads", &tp->heads_path)))
            st = fb_model_load(tp->heads_path, &tp->heads);
    } else if (!st && !(tp->heads_path = fb_strdup("zero-shot heads"))) {
        st = FB_ERR_NOMEM;
    }
    const fb_config *ev = fb_cfg_map_get(node, "evaluate");
    if (!st) st = select_tasks(ev, node);
    if (!st)
        st = fb_taskset_load(node, FB_SPLIT_BIT(tp->split), fb_cfg_is_null(ev) ? NULL : ev,
                             &tp->set);
    if (!st && (tp->clip.image_size != tp->set.image_size || tp->clip.channels != tp->set.channels))
        st = fb_set_error(FB_ERR_CONFIG,
                          "%s: the model takes %lld x %lld images with %lld "
                          "channels, the taskpool makes %lld x %lld with %lld",
                          tp->model_config_path, (long long)tp->clip.image_size,
                          (long long)tp->clip.image_size, (long long)tp->clip.channels,
                          (long long)tp->set.image_size, (long long)tp->set.image_size,
                          (long long)tp->set.channels);
    const int64_t F = fb_taskpool_features(tp);
    for (int i = 0; i < tp->set.num_tasks && !st; i++) {
        const fb_task *t = &tp->set.tasks[i];
        const fb_tensor *h = fb_model_find(tp->heads, t->name);
        if (!h) {
            st = fb_set_error(FB_ERR_NOT_FOUND, "%s: no head for task '%s'", tp->heads_path,
                              t->name);
        } else if (fb_tensor_ndim(h) != 2 || fb_tensor_shape(h)[0] != t->num_classes ||
                   fb_tensor_shape(h)[1] != F || !fb_dtype_is_float(fb_tensor_dtype(h))) {
            st = fb_set_error(FB_ERR_MISMATCH,
                              "%s: head '%s' must be a float [%lld, %lld] tensor "
                              "(classes, features)",
                              tp->heads_path, t->name, (long long)t->num_classes, (long long)F);
        }
    }
    if (st) {
        fb_taskpool_free(tp);
        return st;
    }
    *out = tp;
    return FB_OK;
}

int fb_taskpool_find(const fb_taskpool *tp, const char *name)
{
    for (int i = 0; i < tp->set.num_tasks; i++)
        if (!strcmp(tp->set.tasks[i].name, name)) return i;
    return -1;
}

fb_status fb_taskpool_need_split(fb_taskpool *tp, int split)
{
    int have = 1;
    for (int i = 0; i < tp->set.num_tasks; i++)
        have &= fb_task_has_split(&tp->set.tasks[i], split);
    if (have) return FB_OK;
    const fb_config *ev = fb_cfg_map_get(tp->node, "evaluate");
    fb_taskset more;
    fb_status st = fb_taskset_load(tp->node, FB_SPLIT_BIT(tp->split) | FB_SPLIT_BIT(split),
                                   fb_cfg_is_null(ev) ? NULL : ev, &more);
    if (st) return st;
    fb_taskset_free(&tp->set);
    tp->set = more;
    return FB_OK;
}

/* Examples b0 .. b0+b-1 of a task's split as normalised floats: the stored array itself, or
 * (byte storage) normalised into buf, which holds b images. */
static const float *batch_images(const fb_taskpool *tp, const fb_task *t, int split, int64_t b0,
                                 int64_t b, float *buf)
{
    const int64_t img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    if (t->x[split]) return t->x[split] + b0 * img;
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < b; j++)
        fb_task_image(&tp->set, t, split, b0 + j, buf + j * img);
    return buf;
}

fb_status fb_taskpool_evaluate(fb_taskpool *tp, const fb_model *model,
                               const fb_model *const *task_models, fb_task_result *results,
                               fb_eval_progress progress, void *user)
{
    fb_status simd_st = fb_simd_get(NULL); /* an unusable FB_SIMD is an error before any work */
    if (simd_st) return simd_st;
    const int64_t B = tp->batch_size, F = fb_taskpool_features(tp);
    const int64_t img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    int64_t Kmax = 1;
    for (int i = 0; i < tp->set.num_tasks; i++)
        if (tp->set.tasks[i].num_classes > Kmax) Kmax = tp->set.tasks[i].num_classes;
    fb_clip *net = NULL;
    float *head = fb_malloc((size_t)(Kmax * F) * 4), *logits = fb_malloc((size_t)(B * Kmax) * 4);
    float *probs = fb_malloc((size_t)(B * Kmax) * 4), *normed = fb_malloc((size_t)(B * F) * 4);
    float *norms = fb_malloc((size_t)B * 4);
    float *buf = tp->set.bytes ? fb_malloc((size_t)(B * img) * 4) : NULL;
    fb_status st = head && logits && probs && normed && norms && (buf || !tp->set.bytes)
                       ? FB_OK
                       : FB_ERR_NOMEM;
    if (!st) st = fb_clip_create_inference(&tp->clip, B, &net);
    const fb_model *loaded = NULL;
    for (int i = 0; i < tp->set.num_tasks && !st; i++) {
        const fb_task *t = &tp->set.tasks[i];
        const fb_model *m = task_models && task_models[i] ? task_models[i] : model;
        /* a SMILE-upscaled model brings its experts along */
        if (m != loaded && ((st = fb_clip_set_params(net, m)) || (st = fb_clip_set_smile(net, m)) ||
                            (st = fb_clip_set_wemoe(net, m))))
            break;
        loaded = m;
        const int64_t n = t->n[tp->split], K = t->num_classes;
        const int32_t *y = t->y[tp->split];
        if ((st = fb_taskpool_head(tp, i, head))) break;
        int64_t correct = 0;
        double loss = 0;
        for (int64_t b0 = 0; b0 < n && !st; b0 += B) {
            const int64_t b = n - b0 < B ? n - b0 : B;
            const float *feat;
            const float *x = batch_images(tp, t, tp->split, b0, b, buf);
            if ((st = fb_clip_forward(net, x, b, &feat))) break;
            fb_head_forward(logits, normed, norms, feat, head, tp->logit_scale, b, F, K);
            loss += (double)fb_cross_entropy_forward(probs, logits, y + b0, b, K) * (double)b;
            for (int64_t j = 0; j < b; j++) {
                int64_t best = 0;
                for (int64_t k = 1; k < K; k++)
                    if (logits[j * K + k] > logits[j * K + best]) best = k;
                correct += best == y[b0 + j];
            }
            if (progress) progress(user, i, b0 + b, n);
        }
        results[i].task = t->name;
        results[i].examples = n;
        results[i].accuracy = n ? (double)correct / (double)n : 0.0;
        results[i].loss = n ? loss / (double)n : 0.0;
    }
    fb_clip_free(net);
    fb_free(head);
    fb_free(logits);
    fb_free(probs);
    fb_free(normed);
    fb_free(norms);
    fb_free(buf);
    return st;
}

fb_status fb_task_model_from_extras(const fb_model *merged, const fb_model *base,
                                    const fb_model *extras, const char *name, fb_model **out)
{
    *out = NULL;
    char key[1024];
    snprintf(key, sizeof key, "%s/__rescaler__", name);
    float r = 1.0f;
    const fb_tensor *rt = fb_model_find(extras, key);
    if (rt && (fb_tensor_numel(rt) != 1 || fb_tensor_to_f32(rt, &r)))
        return fb_set_error(FB_ERR_FORMAT, "per-task data: '%s' is not one number", key);
    int any = rt != NULL;
    fb_model *m;
    fb_status st = fb_model_create(&m);
    float *b = NULL;
    uint8_t *mask = NULL;
    for (int64_t i = 0; i < fb_model_num_tensors(merged) && !st; i++) {
        const fb_tensor *t = fb_model_tensor(merged, i);
        const char *tn = fb_tensor_name(t);
        snprintf(key, sizeof key, "%s/%s", name, tn);
        const fb_tensor *mt = fb_model_find(extras, key), *bt = fb_model_find(base, tn);
        const int64_t n = fb_tensor_numel(t);
        fb_tensor *o;
        if ((st = fb_model_add_tensor(m, tn, FB_F32, fb_tensor_ndim(t), fb_tensor_shape(t), NULL,
                                      &o)))
            break;
        float *dst = fb_tensor_mutable_data(o);
        if ((st = fb_tensor_to_f32(t, dst))) break;
        if (!mt && !rt) continue; /* unmasked: as merged */
        any = 1;
        if (!bt || fb_tensor_numel(bt) != n || (mt && fb_tensor_numel(mt) != n)) {
            st = fb_set_error(FB_ERR_MISMATCH, "per-task data for '%s': tensor '%s' does not match",
                              name, tn);
            break;
        }
        fb_free(b);
        fb_free(mask);
        b = fb_malloc((size_t)n * sizeof *b);
        mask = mt ? fb_malloc((size_t)n) : NULL;
        if (!b || (mt && !mask)) {
            st = FB_ERR_NOMEM;
            break;
        }
        if ((st = fb_tensor_to_f32(bt, b))) break;
        if (mt && (st = fb_tensor_read(mt, 0, (size_t)n, mask))) break;
        for (int64_t j = 0; j < n; j++) {
            float d = mask && !mask[j] ? 0.0f : dst[j] - b[j];
            dst[j] = b[j] + r * d;
        }
    }
    fb_free(b);
    fb_free(mask);
    if (st || !any) {
        fb_model_free(m);
        return st;
    }
    *out = m;
    return FB_OK;
}

fb_status fb_taskpool_evaluate_ensemble(fb_taskpool *tp, const fb_model *const *models, int K,
                                        const double *weights, int max_predictor,
                                        const fb_model *projection, fb_task_result *results,
                                        fb_eval_progress progress, void *user)
{
    const int64_t B = tp->batch_size, F = fb_taskpool_features(tp);
    /* the max predictor keeps the towers' outputs before the projection (E wide) */
    const int64_t P = tp->clip.projection, E = tp->clip.hidden, S = max_predictor ? E : F;
    const int64_t img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    const int T = tp->set.num_tasks;
    int64_t total = 0, Kmax = 1;
    for (int t = 0; t < T; t++) {
        total += tp->set.tasks[t].n[tp->split];
        if (tp->set.tasks[t].num_classes > Kmax) Kmax = tp->set.tasks[t].num_classes;
    }
    /* every model's features of every example, models outer: one parameter load each */
    float *feats = fb_malloc((size_t)K * (size_t)(total ? total : 1) * (size_t)S * 4);
    float *proj = max_predictor && P ? fb_malloc((size_t)(P * E) * 4) : NULL;
    float *pooled_max = fb_malloc((size_t)E * 4);
    float *mix = fb_malloc((size_t)F * 4), *head = fb_malloc((size_t)(Kmax * F) * 4);
    float *logits = fb_malloc((size_t)Kmax * 4), *best = fb_malloc((size_t)Kmax * 4);
    float *probs = fb_malloc((size_t)Kmax * 4), *normed = fb_malloc((size_t)F * 4), norm;
    float *buf = tp->set.bytes ? fb_malloc((size_t)(B * img) * 4) : NULL;
    fb_clip *net = NULL;
    fb_status st = feats && mix && head && logits && best && probs && normed && pooled_max &&
                           (proj || !max_predictor || !P) && (buf || !tp->set.bytes)
                       ? FB_OK
                       : FB_ERR_NOMEM;
    if (!st && proj) { /* the classifier's projection: the base's, as FusionBench's CLIP model */
        const fb_model *from = projection ? projection : models[0];
        const fb_tensor *w = fb_model_find(from, "visual_projection.weight");
        if (!w || fb_tensor_numel(w) != P * E)
            st = fb_set_error(FB_ERR_MISMATCH,
                              "max_model_predictor: %s has no visual_projection.weight "
                              "of [%lld, %lld] to project the towers' outputs",
                              fb_model_label(from), (long long)P, (long long)E);
        else
            st = fb_tensor_to_f32(w, proj);
    }
    if (!st) st = fb_clip_create_inference(&tp->clip, B, &net);
    for (int k = 0; k < K && !st; k++) {
        /* a vision-only model is completed by the classifier's CLIP model (projection) */
        if ((st = fb_clip_set_params_from(net, models[k], projection))) break;
        int64_t at = 0;
        for (int t = 0; t < T && !st; t++) {
            const fb_task *task = &tp->set.tasks[t];
            const int64_t n = task->n[tp->split];
            for (int64_t b0 = 0; b0 < n && !st; b0 += B) {
                const int64_t b = n - b0 < B ? n - b0 : B;
                const float *f;
                const float *x = batch_images(tp, task, tp->split, b0, b, buf);
                if ((st = fb_clip_forward(net, x, b, &f))) break;
                if (max_predictor && P) { /* the tower's output, before visual_projection */
                    int64_t rows, cols;
                    f = fb_clip_linear_input(net, "visual_projection.weight", &rows, &cols);
                }
                memcpy(feats + ((size_t)k * (size_t)total + (size_t)(at + b0)) * (size_t)S, f,
                       (size_t)(b * S) * 4);
            }
            at += n;
        }
        if (progress) progress(user, 0, k + 1, K);
    }
    int64_t at = 0;
    for (int t = 0; t < T && !st; t++) {
        const fb_task *task = &tp->set.tasks[t];
        const int64_t n = task->n[tp->split], Kt = task->num_classes;
        if ((st = fb_taskpool_head(tp, t, head))) break;
        int64_t correct = 0;
        double loss = 0;
        for (int64_t i = 0; i < n; i++) {
            const float *fi = feats + (size_t)(at + i) * (size_t)S;
            if (max_predictor) { /* FusionBench: the element-wise maximum of the outputs */
                for (int64_t j = 0; j < S; j++) {
                    float m = fi[j];
                    for (int k = 1; k < K; k++) {
                        float v = fi[(size_t)k * (size_t)total * (size_t)S + (size_t)j];
                        m = v > m ? v : m;
                    }
                    pooled_max[j] = m;
                }
                const float *feature = pooled_max;
                if (P) {
                    fb_linear_forward(mix, pooled_max, proj, NULL, 1, E, P);
                    feature = mix;
                }
                fb_head_forward(best, normed, &norm, feature, head, tp->logit_scale, 1, F, Kt);
            } else { /* the weighted mean of the models' features */
                for (int64_t j = 0; j < F; j++)
                    mix[j] = 0;
                for (int k = 0; k < K; k++) {
                    const float *fk = fi + (size_t)k * (size_t)total * (size_t)S;
                    for (int64_t j = 0; j < F; j++)
                        mix[j] += (float)weights[k] * fk[j];
                }
                fb_head_forward(best, normed, &norm, mix, head, tp->logit_scale, 1, F, Kt);
            }
            const int32_t y = task->y[tp->split][i];
            loss += (double)fb_cross_entropy_forward(probs, best, &y, 1, Kt);
            int64_t arg = 0;
            for (int64_t c = 1; c < Kt; c++)
                if (best[c] > best[arg]) arg = c;
            correct += arg == y;
        }
        results[t].task = task->name;
        results[t].examples = n;
        results[t].accuracy = n ? (double)correct / (double)n : 0.0;
        results[t].loss = n ? loss / (double)n : 0.0;
        at += n;
    }
    fb_clip_free(net);
    fb_free(feats);
    fb_free(buf);
    fb_free(proj);
    fb_free(pooled_max);
    fb_free(mix);
    fb_free(head);
    fb_free(logits);
    fb_free(best);
    fb_free(probs);
    fb_free(normed);
    return st;
}

fb_status fb_taskpool_for_models(fb_taskpool *tp, const fb_modelpool *pool, const char *method,
                                 int split)
{
    for (int k = 0; k < fb_modelpool_num_models(pool); k++)
        if (fb_taskpool_find(tp, fb_modelpool_model_name(pool, k)) < 0)
            return fb_set_error(FB_ERR_NOT_FOUND,
                                "%s: model '%s' has no task of that name in the "
                                "taskpool (its %s data is what the method learns from)",
                                method, fb_modelpool_model_name(pool, k), fb_split_names[split]);
    return fb_taskpool_need_split(tp, split);
}

fb_status fb_taskpool_sample(const fb_taskpool *tp, const char *name, int split, int64_t max,
                             uint64_t seed, uint64_t stream, float **x, int64_t *count)
{
    *x = NULL;
    *count = 0;
    const int t = fb_taskpool_find(tp, name);
    if (t < 0) return fb_set_error(FB_ERR_NOT_FOUND, "the taskpool has no task '%s'", name);
    const fb_task *task = &tp->set.tasks[t];
    const int64_t avail = task->n[split], n = avail < max ? avail : max;
    const int64_t img = tp->set.channels * tp->set.image_size * tp->set.image_size;
    if (n <= 0)
        return fb_set_error(FB_ERR_ARG, "task %s has no %s examples", name, fb_split_names[split]);
    int64_t *perm = fb_malloc((size_t)avail * sizeof *perm);
    float *out = fb_malloc((size_t)(n * img) * sizeof *out);
    if (!perm || !out) {
        fb_free(perm);
        fb_free(out);
        return FB_ERR_NOMEM;
    }
    /* the first n of a seeded permutation of the split */
    fb_permutation(perm, avail, fb_rng_key(seed, name, stream));
    for (int64_t i = 0; i < n; i++)
        fb_task_image(&tp->set, task, split, perm[i], out + i * img);
    fb_free(perm);
    *x = out;
    *count = n;
    return FB_OK;
}

/* ------------------------------------------------------------------- public API -- */

fb_status fb_taskpool_load(const char *yaml_path, fb_taskpool **out)
{
    *out = NULL;
    fb_config *cfg;
    fb_status st = fb_config_load(yaml_path, &cfg);
    if (st) return st;
    st = fb_taskpool_open(cfg, out);
    fb_config_free(cfg);
    return st ? fb_error_prefix(st, "task pool %s", yaml_path) : FB_OK;
}

int fb_taskpool_num_tasks(const fb_taskpool *tp)
{
    return tp->set.num_tasks;
}

const char *fb_taskpool_task_name(const fb_taskpool *tp, int index)
{
    return index >= 0 && index < tp->set.num_tasks ? tp->set.tasks[index].name : NULL;
}

fb_status fb_taskpool_evaluate_model(fb_taskpool *tp, const fb_model *model,
                                     fb_task_result *results)
{
    return fb_taskpool_evaluate(tp, model, NULL, results, NULL, NULL);
}
