/*
 * fusionbench.h: the public C API of FusionBench-C, the only header users include.
 *
 * FusionBench-C merges neural networks that share one architecture. The API reads like the
 * Python FusionBench: make a model pool, make a method from a name and parameters (or from a
 * config node), run it on the pool, get a merged model back (in memory or streamed to a file).
 *
 *     fb_modelpool *pool;  fb_modelpool_create(&pool);
 *     fb_modelpool_add_path(pool, "_pretrained_", "base.safetensors");
 *     fb_modelpool_add_path(pool, "task_a", "a.safetensors");
 *     fb_method *m;        fb_method_create("task_arithmetic", "{scaling_factor: 0.3}", &m);
 *     fb_model *merged;    fb_method_run(m, pool, NULL, &merged);
 *
 * Conventions:
 * - Every function that can fail returns fb_status; FB_OK (0) is success. On failure,
 *   fb_last_error() returns a one-line message for this thread naming the file, tensor or key.
 * - Every *_create / *_load has a matching *_free. Pointers returned by getters are borrowed:
 *   they stay valid until the owning object is freed (or, for tensors, modified).
 * - Sizes: int64_t for element counts and shapes, size_t for bytes.
 */
#ifndef FUSIONBENCH_H
#define FUSIONBENCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FB_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- status and errors -- */

/* Status codes. The numbers are append-only: never renumbered, never reused. */
typedef enum fb_status {
    FB_OK = 0,
    FB_ERR_NOMEM = 1,       /* an allocation failed */
    FB_ERR_IO = 2,          /* open/read/write/rename failed (the message names the file) */
    FB_ERR_FORMAT = 3,      /* a file is malformed (safetensors header, JSON, YAML, ...) */
    FB_ERR_ARG = 4,         /* a bad argument or parameter value */
    FB_ERR_NOT_FOUND = 5,   /* a named model, tensor, method, file or key does not exist */
    FB_ERR_MISMATCH = 6,    /* models in a pool disagree (tensor names, shapes, dtypes) */
    FB_ERR_CONFIG = 7,      /* a config is invalid (unknown key, wrong type, bad override) */
    FB_ERR_UNSUPPORTED = 8, /* valid but not supported (e.g. writing an F8 dtype) */
    FB_ERR_INTERNAL = 9,    /* a bug: please report it */
    FB_ERR_INTERRUPTED = 10, /* fb_interrupt() stopped the run (nothing was written) */
} fb_status;

/* A constant name for a status code ("FB_ERR_IO"); never NULL. */
const char *fb_status_str(fb_status status);

/* The message of the last error set in this thread ("" if none). Valid until the next
 * failing call in this thread. */
const char *fb_last_error(void);

/* ---------------------------------------------------------------------------- dtypes -- */

/* Element types: every safetensors dtype. The numbers are append-only. F8 types are
 * read-only (they can be inputs, not outputs). */
typedef enum fb_dtype {
    FB_F64 = 0,
    FB_F32 = 1,
    FB_F16 = 2,
    FB_BF16 = 3,
    FB_I64 = 4,
    FB_I32 = 5,
    FB_I16 = 6,
    FB_I8 = 7,
    FB_U8 = 8,
    FB_BOOL = 9,
    FB_U16 = 10,
    FB_U32 = 11,
    FB_U64 = 12,
    FB_F8_E4M3 = 13,
    FB_F8_E5M2 = 14,
    FB_DTYPE_COUNT
} fb_dtype;

const char *fb_dtype_name(fb_dtype dtype);   /* safetensors spelling: "F32", "BF16", ... */
size_t fb_dtype_size(fb_dtype dtype);        /* bytes per element */
int fb_dtype_is_float(fb_dtype dtype);       /* 1 for F64/F32/F16/BF16/F8*, else 0 */
/* Parses "F32", "bf16", "float16", "bfloat16", "float32", "fp16", ... (case-insensitive). */
fb_status fb_dtype_from_name(const char *name, fb_dtype *out);

/* Exact conversions; float -> half types round to nearest, ties to even (as PyTorch does). */
float fb_f16_to_f32(uint16_t h);
uint16_t fb_f32_to_f16(float f);
float fb_bf16_to_f32(uint16_t h);
uint16_t fb_f32_to_bf16(float f);

/* Converts n elements of a float dtype to f32 / from f32 to a float dtype (not F8). */
fb_status fb_convert_to_f32(fb_dtype src_dtype, const void *src, float *dst, int64_t n);
fb_status fb_convert_from_f32(fb_dtype dst_dtype, const float *src, void *dst, int64_t n);

/* --------------------------------------------------------------- tensors and models -- */

#define FB_MAX_DIMS 8

typedef struct fb_tensor fb_tensor; /* a named n-d array; owned by its model */
typedef struct fb_model fb_model;   /* an ordered state dict: named tensors + metadata */

const char *fb_tensor_name(const fb_tensor *t);
fb_dtype fb_tensor_dtype(const fb_tensor *t);
int fb_tensor_ndim(const fb_tensor *t);
const int64_t *fb_tensor_shape(const fb_tensor *t); /* fb_tensor_ndim() entries */
int64_t fb_tensor_numel(const fb_tensor *t);
size_t fb_tensor_nbytes(const fb_tensor *t);

/* The tensor's bytes. For a tensor of a model loaded from a file, the file is mapped on the
 * first call (read-only: do not write through the pointer). The pointer is borrowed. */
fb_status fb_tensor_data(const fb_tensor *t, const void **data);

/* Copies the tensor, converted to f32, into dst (fb_tensor_numel() floats). */
fb_status fb_tensor_to_f32(const fb_tensor *t, float *dst);

/* An empty in-memory model. */
fb_status fb_model_create(fb_model **out);

/* Loads a model lazily: a .safetensors file, a sharded checkpoint's
 * model.safetensors.index.json, or a folder holding either. Only headers are read and
 * validated here; tensor bytes are read or mapped when needed. */
fb_status fb_model_load(const char *path, fb_model **out);

void fb_model_free(fb_model *model);

/* Appends a tensor; its bytes are copied from data (or zeroed when data is NULL).
 * Tensor names are unique within a model. If t_out is not NULL it receives the new tensor,
 * whose bytes are writable through fb_tensor_mutable_data(). */
fb_status fb_model_add_tensor(fb_model *model, const char *name, fb_dtype dtype, int ndim,
                              const int64_t *shape, const void *data, fb_tensor **t_out);

/* Appends a tensor that borrows data: the caller keeps it alive and unchanged while the model
 * lives. */
fb_status fb_model_add_tensor_borrowed(fb_model *model, const char *name, fb_dtype dtype,
                                       int ndim, const int64_t *shape, const void *data);

/* Writable bytes of a tensor whose model owns them (added with fb_model_add_tensor or made
 * by a merge); NULL for a borrowed or file-backed tensor. */
void *fb_tensor_mutable_data(fb_tensor *t);

int64_t fb_model_num_tensors(const fb_model *model);
const fb_tensor *fb_model_tensor(const fb_model *model, int64_t index);
const fb_tensor *fb_model_find(const fb_model *model, const char *name); /* NULL if absent */
int64_t fb_model_num_params(const fb_model *model); /* sum of numel over tensors */

/* String metadata (safetensors __metadata__). Setting a key again replaces its value. */
fb_status fb_model_set_metadata(fb_model *model, const char *key, const char *value);
const char *fb_model_get_metadata(const fb_model *model, const char *key); /* NULL if absent */
int64_t fb_model_num_metadata(const fb_model *model);
void fb_model_metadata_at(const fb_model *model, int64_t i, const char **key,
                          const char **value);

/* Where and how a model is written. Zeroed options (or NULL) mean: one .safetensors file if
 * path ends in ".safetensors", else a Hugging Face folder with model.safetensors. */
/* A small file written beside the weights of a folder output (config.json, tokenizer files,
 * README.md). `name` is a plain file name; the bytes are borrowed until the save returns. */
typedef struct fb_file_blob {
    const char *name;
    const void *data;
    size_t size;
} fb_file_blob;

typedef struct fb_save_options {
    size_t max_shard_bytes; /* >0: folder with model-0000i-of-0000N.safetensors + index */
    const fb_file_blob *files; /* folder outputs: these files too, in the same atomic rename */
    int num_files;
} fb_save_options;

/* Writes the model to path atomically: to a temporary file (or folder) beside the target,
 * fsynced, then renamed over it. On failure nothing is left at path and no input changes. */
fb_status fb_model_save(const fb_model *model, const char *path, const fb_save_options *opts);

/* ------------------------------------------------------------------------- configs -- */

/* A YAML tree (mapping, sequence, scalar or null). Used for method parameters and the CLI's
 * composed configuration. */
typedef struct fb_config fb_config;

/* Parses YAML text (a document, or a flow mapping like "{scaling_factor: 0.3}"). */
fb_status fb_config_parse(const char *text, fb_config **out);
fb_status fb_config_load(const char *path, fb_config **out);
void fb_config_free(fb_config *cfg);
/* The node at a dotted path ("method.scaling_factor"), or NULL. Borrowed. */
const fb_config *fb_config_get(const fb_config *cfg, const char *dotted_key);
/* Renders the tree as YAML; the caller frees the string with free(). NULL on failure. */
char *fb_config_to_yaml(const fb_config *cfg);

/* ---------------------------------------------------------------------- model pool -- */

/* An ordered map name -> model. "_pretrained_" is the base model. Names that start and end
 * with '_' are special: they are not among the models to merge. */
typedef struct fb_modelpool fb_modelpool;

fb_status fb_modelpool_create(fb_modelpool **out);
void fb_modelpool_free(fb_modelpool *pool);

/* Adds an in-memory model; the pool takes ownership of it (also on failure). */
fb_status fb_modelpool_add_model(fb_modelpool *pool, const char *name, fb_model *model);
/* Adds a model loaded lazily from a path (see fb_model_load), or, when no such path exists, a
 * Hugging Face model id ("org/name") found in the local hub cache, at its main revision. */
fb_status fb_modelpool_add_path(fb_modelpool *pool, const char *name, const char *path);

/* Builds a pool from a YAML file ("models: {_pretrained_: path, task_a: path, ...}"); relative
 * paths are taken from the file's folder. FusionBench's modelpool files are accepted. */
fb_status fb_modelpool_load_config(const char *yaml_path, fb_modelpool **out);

/* Models to merge (special names excluded), in pool order. */
int fb_modelpool_num_models(const fb_modelpool *pool);
const char *fb_modelpool_model_name(const fb_modelpool *pool, int index);
/* Any model by name, special ones included; NULL if absent. Borrowed. */
const fb_model *fb_modelpool_get(const fb_modelpool *pool, const char *name);
int fb_modelpool_has_pretrained(const fb_modelpool *pool);

/* ------------------------------------------------------------------------- methods -- */

typedef struct fb_method fb_method;

/* Makes a method from a registered name and parameters as YAML text (a flow mapping like
 * "{weights: [0.5, 0.3, 0.2], normalize: true}", or NULL for the defaults). Unknown
 * parameters and values of the wrong type are errors. */
fb_status fb_method_create(const char *name, const char *params_yaml, fb_method **out);

/* Makes a method from a config mapping: "name: NAME" or FusionBench's
 * "_target_: fusion_bench.method.ClassName", plus the parameters. */
fb_status fb_method_create_from_config(const fb_config *node, fb_method **out);

void fb_method_free(fb_method *method);
const char *fb_method_name(const fb_method *method);

/* Registered methods: count, name and a one-line description. */
int fb_method_registry_count(void);
const char *fb_method_registry_name(int index);
const char *fb_method_registry_summary(int index);
/* FusionBench's class name for the method ("TaskArithmeticAlgorithm"), or NULL if it has none. */
const char *fb_method_registry_target(int index);

/* How a merge is run. Zeroed options (or NULL) mean defaults. */
typedef struct fb_run_options {
    int out_dtype_set;  /* 1: write floating tensors as out_dtype; 0: as the inputs' dtype */
    fb_dtype out_dtype;
    /* Called after each output tensor is done (index of count), with the seconds it took;
     * for progress and per-tensor timing. May be NULL. */
    void (*on_tensor)(void *user, const char *name, int64_t index, int64_t count,
                      double seconds);
    void *user;
    /* Data-driven methods (adamerging, fisher_merging, regmean, ...): the task pool whose data
     * they learn from (fb_taskpool_load; NULL for data-free methods). */
    struct fb_taskpool *taskpool;
    /* Progress of a data-driven method: step (from 0) of steps, and its loss (NAN when the
     * step has none). May be NULL. */
    void (*on_step)(void *user, const char *what, int64_t step, int64_t steps, double loss);
    /* Merges to files: whether the inputs' and the output's pages leave the page cache once
     * the merge is done with them (advisory; the bytes out are the same either way).
     * FB_PAGE_CACHE_AUTO (0): when the inputs' files exceed 3/4 of the machine's memory, where
     * the cache cannot keep them between passes anyway. */
    int page_cache;
    /* NaN and infinities. FB_NONFINITE_ERROR (0): an input entry that is not finite, or a
     * merged entry that is not although its inputs are (a scale too large for float32, or an
     * f16 output past 65504), is an FB_ERR_ARG naming the model, tensor and element, before
     * anything is written at the output path. FB_NONFINITE_PROPAGATE: merged as they are
     * (each method then does what its formula does with them; docs/methods.md). */
    int nonfinite;
    /* 1: read every float tensor as float32, so models may hold the same tensor in different
     * float dtypes (f16 and bf16 checkpoints of one base); the output is then float32 unless
     * out_dtype is set. 0 (default): models that disagree on a dtype are an error. */
    int inputs_as_f32;
    /* Folder outputs get the base model's config and tokenizer files and a README.md model
     * card: the tokenizer files come from this pool model instead (NULL: the base), and the
     * card shows `command` (NULL: none). */
    const char *tokenizer_source;
    const char *command;
} fb_run_options;

enum { FB_PAGE_CACHE_AUTO = 0, FB_PAGE_CACHE_DROP = 1, FB_PAGE_CACHE_KEEP = 2 };
enum { FB_NONFINITE_ERROR = 0, FB_NONFINITE_PROPAGATE = 1 };

/* Merges the pool into a new in-memory model (the caller frees it). A method object may run
 * any number of merges, one at a time (not concurrently from several threads). */
fb_status fb_method_run(fb_method *method, fb_modelpool *pool, const fb_run_options *opts,
                        fb_model **merged);

/* As fb_method_run, for methods that also produce per-model data (emr_merging's masks and
 * rescalers, tall_mask's masks): *extras receives it as a model of BOOL tensors
 * "<model>/<tensor>" and F32 scalars "<model>/__rescaler__" (NULL for other methods). */
fb_status fb_method_run_extras(fb_method *method, fb_modelpool *pool, const fb_run_options *opts,
                               fb_model **merged, fb_model **extras);

/* Merges the pool and streams the result to path (see fb_model_save for the layout), tensor
 * by tensor: memory stays O(models x chunk), not O(model size). path == NULL computes the
 * merge and discards it. Atomic: on failure nothing is left at path. A method's per-model
 * data (see fb_method_run_extras) goes to "<path without .safetensors>.masks.safetensors". */
fb_status fb_method_run_to_file(fb_method *method, fb_modelpool *pool,
                                const fb_run_options *opts, const char *path,
                                const fb_save_options *save);

/* ------------------------------------------------------------------------ mergekit -- */

/* Options of fb_mergekit_run; zeroed (or NULL) means mergekit's defaults. */
typedef struct fb_mergekit_options {
    size_t max_shard_bytes;       /* output shards (0: 5 GB, mergekit's --out-shard-size) */
    uint64_t random_seed;         /* dare_* and della*: masks keyed by (seed, tensor, model) */
    const char *intermediate_dir; /* mergekit-multi's named merges (NULL: OUT_DIR.intermediates) */
    const fb_run_options *run;    /* progress callbacks, page cache, non-finite policy (or NULL) */
    int dry_run;                  /* 1: validate, read every header and resolve every
                                   * parameter, then stop before merging */
    const char *report_path;      /* a file the caller writes after the run (or NULL): checked
                                   * with the outputs against every input before any work */
} fb_mergekit_options;

/* Runs a mergekit configuration file (mergekit-yaml's CONFIG.yml, or mergekit-multi's
 * documents separated by "---") into the Hugging Face folder out_dir, on the streaming
 * engine: docs/mergekit.md says what is supported and where it departs from mergekit. Every
 * document is validated, and every model's headers read, before any tensor is merged; the
 * output appears atomically. */
fb_status fb_mergekit_run(const char *config_path, const char *out_dir,
                          const fb_mergekit_options *opts);

/* Options of fb_lora_extract (mergekit-extract-lora's); zeroed means its defaults. */
typedef struct fb_lora_extract_options {
    int max_rank;                       /* 0: 128 */
    double sv_epsilon;                  /* >0: drop singular values at most this */
    const char *const *include_regexes; /* NULL-terminated; modules must match one (NULL: all) */
    const char *const *exclude_regexes; /* modules matching one are left out */
    const char *const *save_modules;    /* modules saved whole (name or last component) */
    int embed_lora;                     /* decompose the embeddings too (else saved whole) */
    int no_distribute_scale;            /* A = S Vt, B = U (default: sqrt(S) on each side) */
    int skip_undecomposable;            /* leave norms and convolutions out (else saved whole) */
} fb_lora_extract_options;

/* Writes a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors, README.md)
 * at out_dir holding the low-rank SVD of each 2-D weight's difference between the fine-tuned
 * model and its base (mergekit-extract-lora's job; docs/mergekit.md). Atomic. */
fb_status fb_lora_extract(const char *model, const char *base_model, const char *out_dir,
                          const fb_lora_extract_options *opts);

/* ----------------------------------------------------------------------- task pool -- */

/* Tasks (image classification datasets with a head per task) on which a model is evaluated,
 * and whose data the data-driven methods learn from: put it in fb_run_options.taskpool. The
 * model is a CLIP vision tower in Hugging Face layout; see docs/tasks.md for the YAML. */
typedef struct fb_taskpool fb_taskpool;

/* Opens a task pool from a YAML file (as config/taskpool/NAME.yaml; relative paths are taken
 * from the file's folder), checking every key and loading the evaluated split's data, the
 * model config and the heads. */
fb_status fb_taskpool_load(const char *yaml_path, fb_taskpool **out);
void fb_taskpool_free(fb_taskpool *taskpool);

int fb_taskpool_num_tasks(const fb_taskpool *taskpool);
const char *fb_taskpool_task_name(const fb_taskpool *taskpool, int index);

typedef struct fb_task_result {
    const char *task; /* borrowed from the task pool */
    int64_t examples;
    double accuracy, loss; /* fraction correct; mean cross-entropy */
} fb_task_result;

/* Evaluates model on every task: results[fb_taskpool_num_tasks(taskpool)], as FusionBench's
 * taskpool.evaluate(model). */
fb_status fb_taskpool_evaluate_model(fb_taskpool *taskpool, const fb_model *model,
                                     fb_task_result *results);

/* ------------------------------------------------------------ interrupted runs -- */

/* Asks the merge running now (in any thread) to stop: it returns FB_ERR_INTERRUPTED at its next
 * tensor (or adaptation step), its temporaries removed and nothing at the output path. Async-signal-safe; the
 * request is cleared when the next run starts. */
void fb_interrupt(void);

/* Removes the temporary files and folders of every output being written now (merged models,
 * masks, reports). Async-signal-safe: call it from a SIGINT/SIGTERM handler, then end the
 * process; the fusion_bench command does. Whichever thread runs it, a temporary being created
 * at that moment on another thread is waited for and removed too, and no new one can be
 * created after it (creating one fails with EINTR): call it only when the process is ending.
 * Temporaries a killed run could not remove are removed by the next output written into the
 * same folder. */
void fb_remove_temporaries(void);

/* ---------------------------------------------------------------------- SIMD level -- */

/* The instruction sets the library's own kernels may use. Every level gives the same bytes;
 * only speed differs (OpenBLAS, used by the SVD methods, RegMean and the nn engine, picks its
 * own kernels: see docs/reliability.md). */
typedef enum fb_simd {
    FB_SIMD_SCALAR = 0, /* plain C (SSE2, the x86-64 baseline) */
    FB_SIMD_AVX2 = 1,   /* AVX2 + FMA (x86-64-v3) */
    FB_SIMD_AVX512 = 2, /* AVX-512 F, DQ, BW, VL (x86-64-v4) */
} fb_simd;

/* "scalar", "avx2", "avx512" ("unknown" for any other value). */
const char *fb_simd_name(fb_simd level);
/* The best level this CPU supports. */
fb_simd fb_simd_best(void);
/* The level in use: the environment's FB_SIMD (read once, at first use) or else the best.
 * FB_ERR_ARG if FB_SIMD names no level, FB_ERR_UNSUPPORTED if the CPU lacks it (*out is then
 * the best level, which kernels use meanwhile). Merges and evaluations check it first. */
fb_status fb_simd_get(fb_simd *out);
/* Sets the level for the whole process by name ("scalar", "avx2", "avx512"), NULL for the
 * best; overrides FB_SIMD. Errors as fb_simd_get. Not to be called while a merge runs. */
fb_status fb_simd_set(const char *name);

/* ------------------------------------------------------------------------- threads -- */

/* Threads used by merges (OpenMP). n <= 0 restores the default. Results never depend on it. */
void fb_set_num_threads(int n);
int fb_get_num_threads(void);

#ifdef __cplusplus
}
#endif
#endif /* FUSIONBENCH_H */
