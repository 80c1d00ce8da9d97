/*
 * outputs.h: every path a run will write, checked together against every file it reads and
 * against each other, before any work (see outputs.c).
 */
#ifndef FB_IO_OUTPUTS_H
#define FB_IO_OUTPUTS_H

#include "fusionbench.h"

/* A path the run will write: `what` names it in messages ("merged_model_save_path"). */
typedef struct fb_output_path {
    const char *path;
    const char *what;
} fb_output_path;

/* A file the run reads, named in messages by its kind and name ("model", "_pretrained_"). */
typedef struct fb_input_path {
    char *path; /* owned by whoever built the list */
    const char *kind, *name;
} fb_input_path;

/* Appends a copy of path (kind and name borrowed) unless the list has it; *cap counts slots. */
fb_status fb_input_paths_add(fb_input_path **list, int *n, int64_t *cap, const char *path,
                             const char *kind, const char *name);
void fb_input_paths_free(fb_input_path *paths, int n);

/* FB_OK when every output's folder exists, no output is (by device and inode, through any
 * symlink or hard link) an input file or a folder holding one, none lies inside another
 * output that is a folder, and no two outputs are the same path. Else FB_ERR_ARG (or
 * FB_ERR_IO for a missing folder) naming both paths. Nothing is created or changed. */
fb_status fb_outputs_check(const fb_output_path *outputs, int num_outputs,
                           const fb_input_path *inputs, int num_inputs);

#endif
