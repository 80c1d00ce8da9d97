/*
 * modelpool.h: internals of the model pool (ordered name -> model), shared with method/.
 */
#ifndef FB_POOL_MODELPOOL_H
#define FB_POOL_MODELPOOL_H

#include "config/config.h"
#include "core/model.h"
#include "io/outputs.h"

#define FB_PRETRAINED "_pretrained_"

/* Which tensors a merge merges, and what happens to the others (the pool file's include,
 * exclude, merge_backbone, unmerged, missing and vocab keys; docs/cli.md). */
enum { FB_VOCAB_ERROR = 0, FB_VOCAB_BASE = 1, FB_VOCAB_UNION = 2 };
typedef struct fb_pool_select {
    fb_config *include, *exclude; /* lists of name patterns, or NULL */
    int drop_unmerged;            /* tensors not merged are left out (else copied from the base) */
    int keep_missing;             /* tensors only some models have are copied from the base */
    int vocab;                    /* tensors whose first dimension differs (FB_VOCAB_*) */
} fb_pool_select;

struct fb_modelpool {
    char **names;
    fb_model **models;
    int count, cap;
    fb_pool_select select;
};

/* 1 when the pool restricts or relaxes what is merged (any selection key given). */
int fb_modelpool_selects(const fb_modelpool *pool);

/* Special names ("_pretrained_", "_anything_") are not among the models to merge. */
int fb_modelpool_is_special(const char *name);

/* Builds a pool from a modelpool config node; relative paths are taken from the folder of the
 * file each entry came from (or the current folder for command-line overrides). */
fb_status fb_modelpool_from_config(const fb_config *node, fb_modelpool **out);

/* Every file the pool's models read, special models included: each model's path, each file
 * its tensors come from, a sharded folder's index. *out (caller frees with
 * fb_input_paths_free) borrows the model names. */
fb_status fb_modelpool_input_files(const fb_modelpool *pool, fb_input_path **out, int *n);

/* The path a pool entry was loaded from, or NULL for in-memory models. */
const char *fb_modelpool_path(const fb_modelpool *pool, const char *name);

#endif
