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

typedef struct fb_name_filter fb_name_filter; /* tensor-name patterns (params.c) */

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
    float *scratch;             /* this thread's scratch: scratch_per_element x count floats */
    uint8_t *masks;             /* methods with model_masks: num_models x count bytes to fill */
    void *acc;                  /* methods with merge_bytes: this thread's merge accumulator */
    float *out_alt;             /* with merge_alternative: the chunk of the alternative output */
    struct fb_fixups *fixups;   /* methods with merge_finish: see fb_merge_fixup */
    int64_t chunk_index;        /* begin / FB_MERGE_CHUNK */
    void *slot;                 /* methods with tensor_passes: this chunk's slot */
} fb_merge_chunk;

/* Number of values a fixup carries (one per outcome the method decides after the merge), and
 * how many fixups the driver keeps over all threads before it must merge again instead. */
enum { FB_FIXUP_VALUES = 3, FB_MERGE_FIXUPS = 65536 };

/* Records that element `index` of the chunk (0-based within it) should become values[v] once
 * merge_finish has chosen v; merge writes one of them meanwhile. Returns 0 when the thread's
 * list is full: the driver then merges again after merge_finish (see merge_finish). */
int fb_merge_fixup(const fb_merge_chunk *chunk, int64_t index, const float *values);

/* What the driver tells a method before merging: the models it will see. */
typedef struct fb_merge_setup {
    int num_models;
    const char *const *model_names;
    int has_base;
    int streamed; /* the output is streamed to a file (or discarded), not built in memory */
} fb_merge_setup;

/* One tensor of a restructured output (depth upscaling, passthrough slices): the tensor
 * `source` of input `input` (an index into the models, or num_models for the base), scaled. */
typedef struct fb_plan_entry {
    char *name;            /* output name (owned) */
    int input;
    const fb_tensor *source;
    float scale;           /* 1: copied as is */
} fb_plan_entry;

typedef struct fb_plan {
    fb_plan_entry *entries;
    int64_t count, cap;
} fb_plan;

/* Appends an entry (name is copied). */
fb_status fb_plan_add(fb_plan *plan, const char *name, int input, const fb_tensor *source,
                      float scale);
void fb_plan_free(fb_plan *plan);

/* Layer-structured names: "<prefix>.<index>.<rest>" where prefix ends in .layers, .h, .layer,
 * .block or .blocks (model.layers.3.mlp.up_proj.weight). Returns 1 and fills the parts. */
int fb_layer_name(const char *name, char *prefix, size_t prefix_size, int64_t *index,
                  const char **rest);

typedef struct fb_method_ops {
    const char *name;          /* registry name, as FusionBench's config file name */
    const char *target_class;  /* FusionBench's class, for "_target_: fusion_bench.method.X" */
    const char *summary;       /* one line for --list-methods */
    const fb_param_spec *params; /* terminated by {NULL} */
    int needs_base;            /* the pool must have "_pretrained_" */
    int optional_base;         /* "_pretrained_" is used as the base when the pool has it */
    int min_models, max_models; /* models to merge (0: no limit) */
    /* f32 scratch per chunk element the kernel needs in chunk.scratch (NULL: none); called
     * after setup, so it may depend on the number of models */
    int (*scratch_per_element)(const void *state);
    int whole_tensor;          /* chunks are whole tensors, merged on the calling thread (the
                                * method may use OpenMP inside, with fixed-order reductions) */
    /* Parses the full parameter mapping (given values and defaults) into *state. */
    fb_status (*create)(const fb_config *params, void **state);
    /* Checks the method against the pool's models before any work (e.g. one weight each).
     * Called at the start of every merge: free what an earlier merge's setup allocated. */
    fb_status (*setup)(void *state, const fb_merge_setup *setup);
    /* Whether the method merges this float tensor (NULL: all). Others are copied from the
     * base model (or the first model when there is none), as FusionBench's remove_keys. */
    int (*merges_tensor)(const void *state, const fb_tensor *tensor);
    /* Global statistics, when the merge needs them (TIES's top-k over the whole task vector):
     * prepare_passes passes over every merged chunk before the merge. Each thread accumulates
     * into its own zeroed buffer of prepare_bytes(state); after each pass prepare_finish gets
     * the buffers in thread order and updates the state. Accumulate integers (or otherwise
     * order-free values) so the result does not depend on the thread count. */
    int prepare_passes;
    size_t (*prepare_bytes)(const void *state);
    fb_status (*prepare)(const void *state, int pass, const fb_merge_chunk *chunk, void *acc);
    fb_status (*prepare_finish)(void *state, int pass, void *const *accs, int num_accs);
    /* Which chunks pass `pass` visits (NULL: all): 0 skips the pass (prepare_finish is not
     * called), 1 visits every chunk, S > 1 a sample: chunks 0, S, 2S, ... of every tensor.
     * Asked just before the pass, so it may depend on what earlier passes found. */
    int (*prepare_stride)(const void *state, int pass);
    /* Statistics of each tensor (mergekit's per-tensor top-k and L1 norms) for methods that
     * merge in chunks: before a tensor is merged, tensor_passes passes over its chunks (pass p
     * skipped when tensor_pass_needed says 0). In each, tensor_prepare adds the chunk into its
     * thread's zeroed buffer of tensor_acc_bytes (order-free integer counts) and into
     * chunk.slot, the chunk's own slot of tensor_slot_bytes (zeroed before the first pass; for
     * sums that must add up in chunk order); tensor_finish then gets the buffers in thread
     * order and the slots in chunk order, and stores in the state what merge needs (it may
     * rewrite the slots, which later passes and the merge see in chunk.slot). Tensors are
     * merged one after another, so a state shared by several tensors holds the current one's. */
    int tensor_passes;
    fb_status (*tensor_begin)(void *state, const fb_tensor *tensor); /* before its passes */
    int (*tensor_pass_needed)(const void *state, int pass);
    size_t (*tensor_acc_bytes)(const void *state);
    size_t (*tensor_slot_bytes)(const void *state);
    fb_status (*tensor_prepare)(const void *state, int pass, const fb_merge_chunk *chunk,
                                void *acc);
    fb_status (*tensor_finish)(void *state, int pass, const fb_tensor *tensor, void *const *accs,
                               int num_accs, void *slots, int64_t num_chunks);
    /* Decisions that need the whole merge (TIES's majority sign): merge accumulates into
     * chunk.acc (merge_bytes per thread, zeroed) and records the elements whose value depends
     * on the decision with fb_merge_fixup; merge_finish gets the accumulators in thread order,
     * decides, and sets *choice to the fixup value to use (-1: the values merge wrote stand).
     * When a thread's fixup list overflowed, the driver instead merges every tensor again, and
     * merge must then use the decision stored in the state. */
    size_t (*merge_bytes)(const void *state);
    fb_status (*merge_finish)(void *state, void *const *accs, int num_accs, int *choice);
    /* For streamed outputs, instead of fixups: asked before the merge, 1 makes the driver
     * write a second, alternative output beside the first (merge fills chunk.out_alt too), and
     * merge_finish's *choice >= 0 then keeps the alternative (-1 the first). For decisions
     * that change too many elements to patch (TIES's majority on bf16 inputs). */
    int (*merge_alternative)(const void *state);
    /* Restructuring methods (depth upscaling, passthrough) plan the output instead of merging
     * element by element: entries say which input tensor each output tensor copies. The inputs
     * then need not agree on their tensors. */
    fb_status (*plan)(void *state, const fb_merge_setup *setup, const fb_model *const *inputs,
                      fb_plan *out);
    /* Per-model outputs besides the merged model: a 0/1 mask per model and merged tensor
     * (filled by merge in chunk.masks), and model_scalars F32 values per model, asked for with
     * scalar() after every tensor is merged. */
    int model_masks;
    int model_scalars;
    const char *const *scalar_names; /* model_scalars names: "<model>/<name>" in the extras */
    fb_status (*scalar)(void *state, int model, int index, float *value);
    /* Data-driven methods: learns what merge then needs (AdaMerging's coefficients) from the
     * pool and opts->taskpool's data, before any output is planned. Methods with learn fail
     * with a clear error when opts has no task pool. */
    fb_status (*learn)(void *state, fb_modelpool *pool, const fb_run_options *opts);
    /* Ensembles (1: weighted mean of the models' features, 2: the most confident model per
     * input) merge nothing: the task pool evaluates the pool's models together, with the
     * weights ensemble_weights gives. Merging with one is an error. */
    int ensemble;
    fb_status (*ensemble_weights)(const void *state, int num_models, double *weights);
    /* Upscaling methods (SMILE) whose output is not a merge of like tensors: build makes the
     * whole output model in memory from the pool (its tensors owned, its structure named in
     * its metadata); the driver then saves it (atomically) and/or hands it back. */
    fb_status (*build)(void *state, fb_modelpool *pool, const fb_run_options *opts,
                       fb_model **out);
    /* Files the method itself writes and reads beside the pool (AdaMerging's
     * save_merging_weights / weights, WEMoE's save_checkpoint / checkpoint): up to 2 each,
     * {path, parameter}, into write / read (path NULL: none). The run checks them with its
     * other outputs before any work. NULL op: none. */
    void (*files)(const void *state, fb_output_path *write, fb_output_path *read);
    /* Merges one chunk. Must not allocate or set errors unless it fails. */
    fb_status (*merge)(const void *state, const fb_merge_chunk *chunk);
    void (*destroy)(void *state);
} fb_method_ops;

/* A parameter given per tensor: [{filter: REGEX, value: V}, ..., {value: DEFAULT}]. */
typedef struct fb_param_rules fb_param_rules;

/* A pattern of a method's parameters and the tensors it applied to in the last merge: an entry
 * of remove_keys, or an entry of a per-tensor parameter ([{filter, value}, ...]; the entry
 * without a filter, or entry -1 with pattern NULL when there is none, takes the tensors no
 * filter matched). */
typedef struct fb_pattern_use {
    const char *param;      /* "remove_keys" or the parameter's name (borrowed) */
    int entry;              /* index in its list, or -1 */
    const char *pattern;    /* the pattern (borrowed), or NULL */
    const fb_config *value; /* per-tensor parameters: the entry's value, or NULL (the default) */
    int64_t count;          /* tensors it applied to */
    char **tensors;         /* their names */
    int64_t cap;
} fb_pattern_use;

struct fb_method {
    const fb_method_ops *ops;
    fb_config *params; /* every parameter, defaults filled in (per-tensor lists as given) */
    void *state;       /* the state for tensors no per-tensor rule changes */
    fb_name_filter *remove;  /* generic remove_keys: tensors copied from the base unmerged */
    fb_param_rules *rules;   /* per-tensor parameters, or NULL */
    int num_rules;
    /* states made for other resolutions of the rules, for the current merge */
    char **variant_keys;
    void **variant_states;
    int num_variants;
    fb_pattern_use *uses; /* remove_keys' patterns, then each rule's entries */
    int num_uses;
    char ignored[512]; /* FusionBench keys that only steer PyTorch, accepted and ignored */
    /* Set by the mergekit translator (src/mergekit/), else zero: every tensor's full parameter
     * mapping (instead of per-tensor rules), and the output folder's layer count (>0: set in
     * config.json), tokenizer folder, chat template (set in tokenizer_config.json), model card
     * and one more file (mergekit_config.yml). All borrowed. */
    const fb_config *(*tensor_params)(void *user, const char *name);
    void *tensor_params_user;
    int64_t out_layers;
    int64_t out_vocab; /* >0: config.json's vocab_size */
    const char *added_tokens; /* a JSON array of tokens to add to the tokenizer files, or NULL */
    const char *tokenizer_dir, *chat_template, *card, *extra_name, *extra_text;
};

/* The patterns of m's parameters with the tensors each applied to in the last merge (the
 * CLI warns of a pattern that matched nothing and lists them in the report). */
int fb_method_pattern_uses(const fb_method *m, const fb_pattern_use **uses);

/* The state to merge tensor `name` with: m->state, or the state made for the values the
 * per-tensor rules give this tensor (made and set up on first use in this merge). */
fb_status fb_method_state_for(fb_method *m, const char *name, const fb_merge_setup *setup,
                              void **state);
/* Drops the per-tensor states of an earlier merge. */
void fb_method_reset_variants(fb_method *m);

/* Where a merge to `path` puts its per-model extras: "<path without .safetensors>.masks.
 * safetensors" (fb_malloc'd; NULL when out of memory). */
char *fb_extras_path(const char *path);

/* Adds the files m itself writes (as outputs, after outs[*k]; outs has room for 2 more) and
 * reads (to the input list) to a run's check (fb_outputs_check). */
fb_status fb_method_files(const fb_method *m, fb_output_path *outs, int *k,
                          fb_input_path **inputs, int *n, int64_t *cap);

/* FB_ERR_INTERRUPTED (with its message) once fb_interrupt() asked the running merge to stop:
 * methods that learn or build for long call it between steps. */
fb_status fb_method_check_interrupt(void);

/* The registry: every method, in the order --list-methods shows them. */
const fb_method_ops *fb_method_lookup(const char *name);
/* Sets the "unknown method 'x' (known: ...)" error and returns FB_ERR_NOT_FOUND. */
fb_status fb_method_unknown(const char *name);
extern const fb_method_ops *const fb_method_registry[];
extern const int fb_method_registry_size;

/* Helpers shared by method files (params.c). */

/* A list of regular expressions (POSIX extended, matched against the whole tensor name). */
/* Builds a filter from a config node: null or [] is an empty filter; `key` names it in errors. */
fb_status fb_name_filter_create(const fb_config *node, const char *key, fb_name_filter **out);
int fb_name_filter_matches(const fb_name_filter *f, const char *name); /* 0 when empty */
int fb_name_filter_first(const fb_name_filter *f, const char *name); /* matching pattern or -1 */
int fb_name_filter_empty(const fb_name_filter *f);
void fb_name_filter_free(fb_name_filter *f);

/* Whether a tensor is the weight of a linear layer, judged from the state dict alone: a 2-D
 * tensor named "*.weight" that is not an embedding table (no "embed" in its name). */
int fb_is_linear_weight(const fb_tensor *t);

/* Reads a number parameter and checks lo <= value <= hi (either bound may be NAN: none). */
fb_status fb_param_double(const fb_config *params, const char *key, double lo, double hi,
                          double *out);

/* The mean of the chunk's task vectors (theta_i - theta_0) as a running mean, the way
 * FusionBench averages tensors its SVD methods do not decompose:
 * m_1 = tau_1, m_i = m_{i-1} + (tau_i - m_{i-1}) / i, each step in f32. */
void fb_task_vector_running_mean(const fb_merge_chunk *c, float *out);

/* sum_j a[j] * b[j], accumulated in double in index order (whole-tensor methods). */
double fb_dot(const float *a, const float *b, int64_t n);

/* The full parameter mapping of a method (for reports and --print-config). */
const fb_config *fb_method_params(const fb_method *m);

/* The files a folder output of m gets beside its weights: the base model's config.json (dtype
 * and, for restructurings, layer count updated), generation and processor configs, the
 * tokenizer files of the base or of opts->tokenizer_source, and a README.md model card
 * (card.c). Missing source files are skipped. */
struct fb_companions;
fb_status fb_method_output_companions(const fb_method *m, const fb_modelpool *pool,
                                      const fb_run_options *opts, const fb_model *out,
                                      const char *out_path, struct fb_companions *c);

/* 1 if a run of m on pool reads "_pretrained_" (as the base, or to copy removed keys from). */
int fb_method_reads_pretrained(const fb_method *m, const fb_modelpool *pool);

#endif
