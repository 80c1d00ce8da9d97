/*
 * clip_tasks.h: FusionBench's CLIP benchmark tasks (CLIPVisionModelTaskPool with
 * `test_datasets`): zero-shot classification heads made from the pretrained CLIP model's text
 * tower, class names and prompt templates from config/clip_tasks/<dataset>.yaml, test images
 * from image folders under a data root. See docs/benchmark.md.
 */
#ifndef FB_POOL_CLIP_TASKS_H
#define FB_POOL_CLIP_TASKS_H

#include "config/config.h"
#include "nn/clip_text.h"
#include "text/clip_tokenizer.h"

/* One task's head [K, F] as FusionBench's HFCLIPClassifier.set_classification_task makes it:
 * per class, every template filled with the class name ({c}), encoded, projected,
 * L2-normalised, averaged over templates, normalised again. */
fb_status fb_zeroshot_head(fb_clip_text *net, fb_clip_tokenizer *tok, const char *const *classnames,
                           int64_t K, const char *const *templates, int64_t NT, float *head);

/* 1 if a taskpool node is FusionBench's form (it has test_datasets, or a defaults entry that
 * selects them). */
int fb_clip_tasks_is_fusionbench(const fb_config *node);

/* Translates FusionBench's form into the project's taskpool node (image folders, CLIP's
 * preprocessing from the processor config, logit scale from the model), with the heads made
 * (or read from the head cache) and the vision config.json's path. */
fb_status fb_clip_tasks_translate(const fb_config *node, fb_config **native, fb_model **heads,
                                  char **model_config);

#endif
