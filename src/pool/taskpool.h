/*
 * taskpool.h: evaluates a model on every task of a taskpool, as FusionBench's
 * CLIPVisionModelTaskPool does: the model is a CLIP vision tower (config.json named by
 * `model_config`), each task has a classification head (a [classes, features] tensor named
 * after the task in the `heads` safetensors file), logits are logit_scale times the cosine of
 * the image features and the head rows, and the report has accuracy and cross-entropy loss per
 * task and their average.
 *
 * Keys beyond those of tasks.h:
 *   model_config: config.json       # relative paths are taken from the YAML file's folder
 *   heads: heads.safetensors
 *   logit_scale: 100
 *   batch_size: 256
 *   split: test                     # which split is evaluated (test, val, train)
 *   evaluate: null                  # a list of task names to evaluate; null: all
 */
#ifndef FB_POOL_TASKPOOL_H
#define FB_POOL_TASKPOOL_H
#include "nn/clip_vit.h"
#include "pool/modelpool.h"
#include "tasks.h"

typedef struct fb_taskpool {
    fb_taskset set;
    fb_clip_config clip;
    fb_model *heads;
    float logit_scale;
    int64_t batch_size;
    int split;
    char *model_config_path, *heads_path;
    fb_config *node; /* the taskpool's config, to load more splits */
} fb_taskpool;

/* Checks every key, loads the data of the evaluated split, the model config and the heads
 * (shapes checked against the tasks). */
fb_status fb_taskpool_open(const fb_config *node, fb_taskpool **out);
void fb_taskpool_free(fb_taskpool *tp);

/* Makes sure every task has `split` loaded too (Fisher merging and RegMean read the train
 * split; evaluation loads only the evaluated one). */
fb_status fb_taskpool_need_split(fb_taskpool *tp, int split);

/* The index of the task named `name`, or -1. */
int fb_taskpool_find(const fb_taskpool *tp, const char *name);

/* For methods that learn from each model's own task: every pool model must have a task of
 * its name (an error naming the model otherwise), and `split` is loaded. */
fb_status fb_taskpool_for_models(fb_taskpool *tp, const fb_modelpool *pool, const char *method,
                                 int split);

/* Up to max examples of the task named `name` from `split`, the first of a permutation drawn
 * from (seed, name, stream): *x (fb_malloc'd) holds *count images. */
fb_status fb_taskpool_sample(const fb_taskpool *tp, const char *name, int split, int64_t max,
                             uint64_t seed, uint64_t stream, float **x, int64_t *count);

/* Progress of an evaluation: task index, examples done, examples in the task. */
typedef void (*fb_eval_progress)(void *user, int task, int64_t done, int64_t total);

/* Evaluates model on every task into results[num_tasks]; task i uses task_models[i] instead
 * when task_models (may be NULL) has one (methods that rebuild a model per task: tall_mask,
 * emr_merging). results[i].task points into tp. */
fb_status fb_taskpool_evaluate(fb_taskpool *tp, const fb_model *model,
                               const fb_model *const *task_models, fb_task_result *results,
                               fb_eval_progress progress, void *user);

/* Evaluates an ensemble of K models as one model (FusionBench's SimpleEnsemble,
 * WeightedEnsemble, MaxModelPredictor): the image features are the weighted mean of the
 * models' features (weights[K]), or, with max_predictor, the element-wise maximum of the
 * vision towers' outputs (before visual_projection), projected by `projection`'s
 * visual_projection (the pool's _pretrained_, as FusionBench's classifier holds it; NULL: the
 * first model's). progress reports models done as (0, k, K). */
fb_status fb_taskpool_evaluate_ensemble(fb_taskpool *tp, const fb_model *const *models, int K,
                                        const double *weights, int max_predictor,
                                        const fb_model *projection, fb_task_result *results,
                                        fb_eval_progress progress, void *user);

/* Task `name`'s own model from a merge with per-task extras (fb_method_run_extras): theta_0 +
 * r M (merged - theta_0), with M the BOOL masks "<name>/<tensor>" and r the scalar
 * "<name>/__rescaler__" (1 when absent). *out is NULL when the extras have nothing for it. */
fb_status fb_task_model_from_extras(const fb_model *merged, const fb_model *base,
                                    const fb_model *extras, const char *name, fb_model **out);

/* The head tensor of a task, converted to f32 into dst [classes * features]. */
fb_status fb_taskpool_head(const fb_taskpool *tp, int task, float *dst);

/* Features of the model's output (projection_dim, or hidden_size without a projection). */
int64_t fb_taskpool_features(const fb_taskpool *tp);

#endif
