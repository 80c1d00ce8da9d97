/*
 * modelpool.h: internals of the model pool (ordered name -> model), shared with method/.
 */
#ifndef FB_POOL_MODELPOOL_H
#define FB_POOL_MODELPOOL_H

#include "config/config.h"
#include "core/model.h"
#include "io/outputs.h"

#define FB_PRETRAINED "_pretrained_"

struct fb_modelpool {
    char **names;
    fb_model **models;
    int count, cap;
};

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
