/*
 * method.h: what a fusion method is, for the files that implement one.
 *
 * A method declares its parameters (name, default, one line of help), parses them into its
 * own state in `create`, and merges through the streaming driver (merge.c): the driver hands
 * it, chunk by chunk, the same element range of every input tensor as f32, and takes back
 * the merged chunk. Element-wise methods see chunks of FB_MERGE_CHUNK elements on any thread;
 * methods that need a whole tensor at once (SVD, norms) set whole_tensor.
 */
#ifndef FB_METHOD_METHOD_H
#define FB_METHOD_METHOD_H

#include "config/config.h"
#include "pool/modelpool.h"

/* Elements per chunk of the parallel driver: a chunk of every input plus the output fits in
 * a core's L2 cache for a typical pool. Fixed, so the work split never depends on threads. */
#define FB_MERGE_CHUNK 16384

typedef struct fb_param_spec {
    const char *name;
    const char *default_yaml; /* the default as YAML text; "null" for none */
    const char *help;
} fb_param_spec;

/* One element range of one tensor, every input as f32. */
typedef struct fb_merge_chunk {
    const fb_tensor *tensor;    /* the reference input tensor: name, shape */
    int64_t tensor_index;       /* position in the output */
    int64_t begin, count;       /* elements [begin, begin + count) of the flattened tensor */
    const float *base;          /* the "_pretrained_" model's elements, or NULL */
    const float *const *models; /* num_models inputs, in pool order */
    int num_models;
    float *out;                 /* count merged elements go here */
} fb_merge_chunk;

/* What the driver tells a method before merging: the models it will see. */
typedef struct fb_merge_setup {
    int num_models;
    const char *const *model_names;
    int has_base;
} fb_merge_setup;

typedef struct fb_method_ops {
    const char *name;          /* registry name, as FusionBench's config file name */
    const char *target_class;  /* FusionBench's class, for "_target_: fusion_bench.method.X" */
    const char *summary;       /* one line for --list-methods */
    const fb_param_spec *params; /* terminated by {NULL} */
    int needs_base;            /* the pool must have "_pretrained_" */
    int whole_tensor;          /* chunks are whole tensors */
    /* Parses the full parameter mapping (given values and defaults) into *state. */
    fb_status (*create)(const fb_config *params, void **state);
    /* Checks the method against the pool's models before any work (e.g. one weight each). */
    fb_status (*setup)(void *state, const fb_merge_setup *setup);
    /* Merges one chunk. Must not allocate or set errors unless it fails. */
    fb_status (*merge)(const void *state, const fb_merge_chunk *chunk);
    void (*destroy)(void *state);
} fb_method_ops;

struct fb_method {
    const fb_method_ops *ops;
    fb_config *params; /* every parameter, defaults filled in */
    void *state;
};

/* The registry: every method, in the order --list-methods shows them. */
const fb_method_ops *fb_method_lookup(const char *name);
extern const fb_method_ops *const fb_method_registry[];
extern const int fb_method_registry_size;

/* The full parameter mapping of a method (for reports and --print-config). */
const fb_config *fb_method_params(const fb_method *m);

#endif
