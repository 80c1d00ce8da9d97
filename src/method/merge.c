/*
 * merge.c: the streaming merge driver behind fb_method_run and fb_method_run_to_file.
 *
 * Plan: collect the inputs (the models to merge in pool order, then "_pretrained_" when the
 * method uses it), check that they agree on every tensor's name, dtype and shape (naming the
 * model and tensor when they do not), and lay out the output. Allocate: per-thread scratch
 * for one chunk of every input, sized once. Execute: tensor by tensor, cut into fixed chunks
 * of FB_MERGE_CHUNK elements scheduled on OpenMP threads; each chunk of each input is read
 * (pread, or a pointer when the model is in memory), widened to f32, merged by the method,
 * narrowed to the output dtype, and written at its final offset. Peak memory is
 * O(threads x inputs x chunk) for file outputs, whatever the model size.
 *
 * Determinism: chunks are the same for any thread count and each output element depends only
 * on the same elements of the inputs, so the bytes out never depend on threads. An error in a
 * worker is recorded with its chunk number; the lowest chunk's error is raised afterwards.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/alloc.h"
#include "core/buf.h"
#include "core/simd.h"
#include "core/status.h"
#include "io/companions.h"
#include "io/writer.h"
#include "method.h"

typedef struct job {
    const fb_method *method;
    int num_models, has_base, num_inputs; /* inputs = models, then the base */
    const fb_model **inputs;
    const char **names;
    const fb_model *ref;     /* the model others are checked against */
    const char *ref_name;
    fb_model *out;           /* the output: real tensors (memory) or declared (file) */
    int to_memory;
    fb_writer *writer;       /* file output, or NULL */
    int64_t chunk;           /* elements per chunk */
    int threads;
    float *f32;              /* threads x (inputs + 1) x chunk */
    uint8_t *raw;            /* threads x (inputs + 1) x chunk x 8 bytes */
    const float **ptrs;      /* threads x inputs */
    const fb_tensor **tensors; /* inputs: the current tensor of each input */
    size_t raw_es;           /* bytes per element of the raw buffers */
    float *kernel_scratch;   /* threads x scratch_per x chunk */
    int scratch_per;
    const fb_run_options *opts;
    fb_merge_setup setup;
    void **tstate;           /* per output tensor: the method state that merges it */
    fb_plan plan;            /* restructuring methods: where each output tensor comes from */
    fb_model *extras;        /* per-model masks and scalars, for methods that make them */
    fb_writer *extras_writer;
    int64_t *merged_index;   /* per output tensor: its index among merged tensors, or -1 */
    int64_t num_merged;
    uint8_t *mask_scratch;   /* threads x models x chunk */
    uint8_t *copy_buf;       /* two COPY_BYTES buffers for non-float tensors */
    void **accs;             /* prepare passes and merge_bytes: one accumulator per thread */
    size_t acc_bytes;
    struct fb_fixups *fixups; /* merge_finish: one list per thread */
    const char *path;         /* file output: where, and how */
    const fb_save_options *save;
    fb_writer *alt_writer;    /* merge_alternative: the second output */
    float *alt_f32;           /* threads x chunk */
    int pick_alt;             /* merge_finish chose the alternative output */
    int release;              /* inputs larger than memory: drop what the merge has read */
    uint8_t *keep;            /* release: per output tensor, whether prepare passes keep its
                               * input pages cached for the merge */
    /* the pool's selection (fb_pool_select): which tensors are merged */
    const fb_pool_select *sel;
    fb_name_filter *include, *exclude;
    const fb_tensor **out_src; /* per output tensor: the reference's tensor it comes from */
    uint8_t *copy_only;        /* per output tensor: copied from out_src, not merged */
    uint8_t *rows_differ;      /* per output tensor: models hold different numbers of rows */
    void **taccs;              /* tensor_passes: one accumulator per thread */
    size_t tacc_bytes;
    uint8_t *slots;            /* tensor_passes: one slot per chunk of the current tensor */
    size_t slot_bytes;
    int64_t max_chunks;
} job;

/* Elements whose merged value waits for merge_finish's decision (fb_merge_fixup). */
typedef struct fixup {
    int64_t tensor, index; /* output tensor, element of the flattened tensor */
    float values[FB_FIXUP_VALUES];
} fixup;

struct fb_fixups {
    fixup *items;
    int64_t count, cap;
    int overflowed;
};


int fb_merge_fixup(const fb_merge_chunk *c, int64_t index, const float *values)
{
    struct fb_fixups *f = c->fixups;
    if (f->count == f->cap) {
        f->overflowed = 1;
        return 0;
    }
    fixup *x = &f->items[f->count++];
    x->tensor = c->tensor_index;
    x->index = c->begin + index;
    memcpy(x->values, values, sizeof x->values);
    return 1;
}

enum { COPY_BYTES = 1 << 20 };

static const char *label(const job *J, int k)
{
    return J->names[k];
}

/* ---------------------------------------------------------------------- planning -- */

static void list_names(fb_buf *b, const char **names, int n, int total)
{
    for (int i = 0; i < n; i++) fb_buf_printf(b, "%s'%s'", i ? ", " : "", names[i]);
    if (total > n) fb_buf_printf(b, " (and %d more)", total - n);
}

/* Whether the pool's selection merges tensor `name` (every tensor without one). */
static int selected(const job *J, const char *name)
{
    return (fb_name_filter_empty(J->include) || fb_name_filter_matches(J->include, name)) &&
           !fb_name_filter_matches(J->exclude, name);
}

/* Shapes that differ in the first dimension only (a vocabulary's rows). */
static int rows_only_differ(const fb_tensor *a, const fb_tensor *b)
{
    if (a->ndim != b->ndim || a->ndim == 0) return 0;
    for (int d = 1; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* Input k must have exactly the reference's tensors, with the same dtypes and shapes; the
 * pool's selection relaxes that for tensors it does not merge, tensors only some models have
 * (missing: keep) and rows (vocab: base or union). */
static fb_status check_agreement(const job *J, int k)
{
    const fb_model *a = J->ref, *b = J->inputs[k];
    enum { SHOW = 3 };
    const char *missing[SHOW], *extra[SHOW];
    int nmissing = 0, nextra = 0;
    const int relax_missing = J->sel && J->sel->keep_missing;
    for (int64_t i = 0; i < a->count; i++) {
        const fb_tensor *ta = a->tensors[i], *tb = fb_model_find(b, ta->name);
        if (J->sel && !selected(J, ta->name)) continue; /* copied from the base, or left out */
        if (!tb) {
            if (relax_missing) continue;
            if (nmissing < SHOW) missing[nmissing] = ta->name;
            nmissing++;
            continue;
        }
        int upcast = J->opts && J->opts->inputs_as_f32 && fb_dtype_is_float(ta->dtype) &&
                     fb_dtype_is_float(tb->dtype);
        if (ta->dtype != tb->dtype && !upcast)
            return fb_set_error(FB_ERR_MISMATCH,
                                "tensor '%s' is %s in model '%s' (%s) but %s in model '%s' (%s); "
                                "input_dtype=f32 reads every float tensor as float32",
                                ta->name, fb_dtype_name(tb->dtype), label(J, k),
                                fb_model_label(b), fb_dtype_name(ta->dtype), J->ref_name,
                                fb_model_label(a));
        int same = ta->ndim == tb->ndim;
        for (int d = 0; same && d < ta->ndim; d++) same = ta->shape[d] == tb->shape[d];
        if (!same && J->sel && J->sel->vocab && rows_only_differ(ta, tb)) same = 1;
        if (!same) {
            fb_buf sa, sb;
            fb_buf_init(&sa);
            fb_buf_init(&sb);
            for (int d = 0; d < ta->ndim; d++)
                fb_buf_printf(&sa, "%s%lld", d ? ", " : "", (long long)ta->shape[d]);
            for (int d = 0; d < tb->ndim; d++)
                fb_buf_printf(&sb, "%s%lld", d ? ", " : "", (long long)tb->shape[d]);
            fb_status st = fb_set_error(
                FB_ERR_MISMATCH, "tensor '%s' has shape [%s] in model '%s' (%s) but [%s] in "
                                 "model '%s' (%s)",
                ta->name, sb.data ? sb.data : "", label(J, k), fb_model_label(b),
                sa.data ? sa.data : "", J->ref_name, fb_model_label(a));
            fb_buf_free(&sa);
            fb_buf_free(&sb);
            return st;
        }
    }
    for (int64_t i = 0; i < b->count; i++) {
        const char *name = b->tensors[i]->name;
        if (fb_model_find(a, name)) continue;
        if (J->sel && (!selected(J, name) || relax_missing)) continue; /* not in the output */
        if (nextra < SHOW) extra[nextra] = name;
        nextra++;
    }
    if (!nmissing && !nextra) return FB_OK;
    fb_buf msg;
    fb_buf_init(&msg);
    fb_buf_printf(&msg, "model '%s' (%s) does not have the same tensors as model '%s' (%s):",
                  label(J, k), fb_model_label(b), J->ref_name, fb_model_label(a));
    if (nmissing) {
        fb_buf_printf(&msg, " it lacks %d: ", nmissing);
        list_names(&msg, missing, nmissing < SHOW ? nmissing : SHOW, nmissing);
    }
    if (nextra) {
        fb_buf_printf(&msg, "%s it has %d extra: ", nmissing ? ";" : "", nextra);
        list_names(&msg, extra, nextra < SHOW ? nextra : SHOW, nextra);
    }
    if (!J->sel) /* what the pool file can say about it */
        fb_buf_printf(&msg, " (a model pool can merge only some tensors: include, exclude, "
                            "merge_backbone, missing: keep)");
    fb_status st = fb_set_error(FB_ERR_MISMATCH, "%s", msg.failed ? "tensor sets differ" : msg.data);
    fb_buf_free(&msg);
    return st;
}

int fb_method_reads_pretrained(const fb_method *m, const fb_modelpool *pool)
{
    int has = fb_modelpool_has_pretrained(pool);
    return m->ops->needs_base || (has && (m->ops->optional_base || m->remove));
}

static fb_status collect_inputs(job *J, const fb_method *m, const fb_modelpool *pool)
{
    J->num_models = fb_modelpool_num_models(pool);
    J->has_base = m->ops->needs_base || (m->ops->optional_base && fb_modelpool_has_pretrained(pool));
    if (J->num_models == 0)
        return fb_set_error(FB_ERR_ARG, "method %s: the model pool has no models to merge "
                                        "(names like _pretrained_ are not merged)",
                            m->ops->name);
    const fb_method_ops *ops = m->ops;
    if ((ops->min_models && J->num_models < ops->min_models) ||
        (ops->max_models && J->num_models > ops->max_models)) {
        if (ops->min_models == ops->max_models)
            return fb_set_error(FB_ERR_ARG, "method %s merges exactly %d model%s; the pool has %d",
                                ops->name, ops->min_models, ops->min_models == 1 ? "" : "s",
                                J->num_models);
        if (ops->max_models && J->num_models > ops->max_models)
            return fb_set_error(FB_ERR_ARG, "method %s merges at most %d models; the pool has %d",
                                ops->name, ops->max_models, J->num_models);
        return fb_set_error(FB_ERR_ARG, "method %s needs at least %d models; the pool has %d",
                            ops->name, ops->min_models, J->num_models);
    }
    if (J->has_base && !fb_modelpool_has_pretrained(pool))
        return fb_set_error(FB_ERR_ARG,
                            "method %s needs the base model: add '%s' to the model pool",
                            m->ops->name, FB_PRETRAINED);
    /* remove_keys and a pool's selection copy from the base: bring it in even when the method
     * does not use it; with a selection the base is the reference (its tensors the output's) */
    J->sel = fb_modelpool_selects(pool) ? &pool->select : NULL;
    fb_status fst = J->sel ? fb_name_filter_create(pool->select.include, "modelpool.include",
                                                   &J->include)
                           : FB_OK;
    if (!fst && J->sel)
        fst = fb_name_filter_create(pool->select.exclude, "modelpool.exclude", &J->exclude);
    if (fst) return fst;
    int copy_base = !J->has_base && (m->remove || J->sel) && fb_modelpool_has_pretrained(pool);
    J->num_inputs = J->num_models + (J->has_base || copy_base);
    J->inputs = fb_calloc((size_t)J->num_inputs, sizeof *J->inputs);
    J->names = fb_calloc((size_t)J->num_inputs, sizeof *J->names);
    if (!J->inputs || !J->names) return FB_ERR_NOMEM;
    for (int k = 0; k < J->num_models; k++) {
        J->names[k] = fb_modelpool_model_name(pool, k);
        J->inputs[k] = fb_modelpool_get(pool, J->names[k]);
    }
    if (J->num_inputs > J->num_models) {
        J->names[J->num_models] = FB_PRETRAINED;
        J->inputs[J->num_models] = fb_modelpool_get(pool, FB_PRETRAINED);
    }
    int r = J->has_base || (J->sel && copy_base) ? J->num_models : 0;
    J->ref = J->inputs[r];
    J->ref_name = J->names[r];
    for (int k = 0; k < J->num_inputs && !m->ops->plan; k++) {
        if (k == r) continue;
        fb_status st = check_agreement(J, k);
        if (st) return st;
    }
    J->setup = (fb_merge_setup){J->num_models, J->names, J->has_base, !J->to_memory};
    if (m->ops->setup) {
        fb_status st = m->ops->setup(m->state, &J->setup);
        if (st) return fb_error_prefix(st, "method %s", m->ops->name);
    }
    return FB_OK;
}

static fb_status output_dtype(const fb_tensor *t, const fb_run_options *opts, fb_dtype *out)
{
    *out = t->dtype;
    if (!fb_dtype_is_float(t->dtype)) return FB_OK;
    if (opts && opts->inputs_as_f32) *out = FB_F32;
    if (opts && opts->out_dtype_set) *out = opts->out_dtype;
    if (*out == FB_F64 || *out == FB_F32 || *out == FB_F16 || *out == FB_BF16) return FB_OK;
    return fb_set_error(FB_ERR_UNSUPPORTED,
                        "tensor '%s': cannot write %s output; set the output dtype to F32, "
                        "F16, BF16 or F64",
                        t->name, fb_dtype_name(*out));
}

/* The input tensor output tensor i is made from (the reference's, or the plan's source). */
static const fb_tensor *out_source(const job *J, int64_t i)
{
    return J->method->ops->plan ? J->plan.entries[i].source : J->out_src[i];
}

/* Output tensor for reference tensor t under the pool's selection: *skip when it is left out,
 * *copy when it is copied rather than merged, the rows it gets (vocab: union takes the most
 * any model has) and whether the models' rows differ. */
static void select_output(const job *J, const fb_tensor *t, int *skip, int *copy, int64_t *rows,
                          int *differ)
{
    *skip = *copy = *differ = 0;
    *rows = t->ndim ? t->shape[0] : 0;
    if (!J->sel) return;
    if (!selected(J, t->name) || !fb_dtype_is_float(t->dtype)) {
        int sel = selected(J, t->name);
        *skip = !sel && J->sel->drop_unmerged;
        *copy = !sel;
        if (sel) { /* a selected int buffer: merged as before (equal in every model) */
            for (int k = 0; k < J->num_inputs; k++) *copy |= !fb_model_find(J->inputs[k], t->name);
        }
        return;
    }
    for (int k = 0; k < J->num_inputs; k++) {
        const fb_tensor *o = fb_model_find(J->inputs[k], t->name);
        if (!o) {
            *copy = 1; /* missing: keep */
            continue;
        }
        if (o->ndim && o->shape[0] != t->shape[0]) *differ = 1;
        if (o->ndim && J->sel->vocab == FB_VOCAB_UNION && o->shape[0] > *rows) *rows = o->shape[0];
    }
    if (*copy) *differ = 0, *rows = t->ndim ? t->shape[0] : 0;
}

static fb_status plan_output(job *J, const fb_run_options *opts)
{
    fb_status st = fb_model_create(&J->out);
    if (st) return st;
    const fb_model *r = J->ref;
    int64_t count = r->count;
    if (J->method->ops->plan) {
        st = J->method->ops->plan(J->method->state, &J->setup, J->inputs, &J->plan);
        if (st) return fb_error_prefix(st, "method %s", J->method->ops->name);
        count = J->plan.count;
    } else {
        size_t n = (size_t)(count ? count : 1);
        J->out_src = fb_calloc(n, sizeof *J->out_src);
        J->copy_only = fb_calloc(n, 1);
        J->rows_differ = fb_calloc(n, 1);
        if (!J->out_src || !J->copy_only || !J->rows_differ) return FB_ERR_NOMEM;
    }
    int64_t ti = 0;
    for (int64_t i = 0; i < count && !st; i++) {
        const fb_tensor *t = J->method->ops->plan ? out_source(J, i) : r->tensors[i];
        const char *name = J->method->ops->plan ? J->plan.entries[i].name : t->name;
        int64_t shape[FB_MAX_DIMS];
        memcpy(shape, t->shape, sizeof shape);
        if (!J->method->ops->plan) {
            int skip, copy, differ;
            select_output(J, t, &skip, &copy, &shape[0], &differ);
            if (skip) continue;
            J->out_src[ti] = t;
            J->copy_only[ti] = (uint8_t)copy;
            J->rows_differ[ti] = (uint8_t)differ;
        }
        ti++;
        fb_dtype dt;
        if ((st = output_dtype(t, opts, &dt))) break;
        st = J->to_memory ? fb_model_add_tensor(J->out, name, dt, t->ndim, shape, NULL, NULL)
                          : fb_model_declare_tensor(J->out, name, dt, t->ndim, shape);
        if (st == FB_ERR_ARG)
            st = fb_set_error(FB_ERR_ARG, "method %s: the output would hold tensor '%s' twice",
                              J->method->ops->name, name);
    }
    for (int64_t i = 0; i < r->meta_count && !st; i++)
        st = fb_model_set_metadata(J->out, r->meta_keys[i], r->meta_values[i]);
    if (!st) st = fb_model_set_metadata(J->out, "fusion_bench_method", J->method->ops->name);
    return st;
}

fb_status fb_method_files(const fb_method *m, fb_output_path *outs, int *k,
                          fb_input_path **inputs, int *n, int64_t *cap)
{
    fb_output_path write[2] = {{0}}, read[2] = {{0}};
    fb_status st = FB_OK;
    if (m->ops->files) m->ops->files(m->state, write, read);
    for (int i = 0; i < 2; i++) {
        if (write[i].path) outs[(*k)++] = write[i];
        if (read[i].path && !st)
            st = fb_input_paths_add(inputs, n, cap, read[i].path, "method input", read[i].what);
    }
    return st;
}

/* Every path this merge writes (the model, its masks, the method's own files) against every
 * file of the pool, the models this method does not read included, the files the method
 * reads, and against each other: before any work. */
static fb_status check_outputs(const fb_method *m, const fb_modelpool *pool, const char *path,
                               const char *xpath)
{
    fb_input_path *inputs = NULL;
    int n = 0, k = 0;
    fb_status st = fb_modelpool_input_files(pool, &inputs, &n);
    int64_t cap = n;
    fb_output_path outs[4];
    if (path) outs[k++] = (fb_output_path){path, "merged model path"};
    if (xpath) outs[k++] = (fb_output_path){xpath, "masks path"};
    if (!st) st = fb_method_files(m, outs, &k, &inputs, &n, &cap);
    if (!st && k) st = fb_outputs_check(outs, k, inputs, n);
    fb_input_paths_free(inputs, n);
    return st;
}

static int is_merged(const job *J, int64_t ti);

/* The layout of the per-model extras: masks "<model>/<tensor>" (BOOL, the tensor's shape) for
 * every merged tensor, then scalars "<model>/<name>" (F32 [1]). */
static fb_status plan_extras(job *J)
{
    const fb_method_ops *ops = J->method->ops;
    if (!ops->model_masks && !ops->model_scalars) return FB_OK;
    J->merged_index = fb_malloc((size_t)(J->out->count ? J->out->count : 1) * sizeof *J->merged_index);
    fb_status st = J->merged_index ? fb_model_create(&J->extras) : FB_ERR_NOMEM;
    if (st) return st;
    for (int64_t ti = 0; ti < J->out->count; ti++)
        J->merged_index[ti] = is_merged(J, ti) ? J->num_merged++ : -1;
    char name[1024];
    for (int k = 0; k < J->num_models && ops->model_masks && !st; k++) {
        for (int64_t ti = 0; ti < J->out->count && !st; ti++) {
            if (J->merged_index[ti] < 0) continue;
            const fb_tensor *t = J->out->tensors[ti];
            snprintf(name, sizeof name, "%s/%s", J->names[k], t->name);
            st = J->to_memory ? fb_model_add_tensor(J->extras, name, FB_BOOL, t->ndim, t->shape, NULL, NULL)
                              : fb_model_declare_tensor(J->extras, name, FB_BOOL, t->ndim, t->shape);
        }
    }
    int64_t one = 1;
    for (int k = 0; k < J->num_models && !st; k++) {
        for (int i = 0; i < ops->model_scalars && !st; i++) {
            snprintf(name, sizeof name, "%s/%s", J->names[k], ops->scalar_names[i]);
            st = J->to_memory ? fb_model_add_tensor(J->extras, name, FB_F32, 1, &one, NULL, NULL)
                              : fb_model_declare_tensor(J->extras, name, FB_F32, 1, &one);
        }
    }
    if (!st) st = fb_model_set_metadata(J->extras, "fusion_bench_method", ops->name);
    return st;
}

/* After the merge: the per-model scalars into the extras. */
static fb_status store_scalars(job *J)
{
    const fb_method_ops *ops = J->method->ops;
    int64_t base = ops->model_masks ? (int64_t)J->num_models * J->num_merged : 0;
    for (int k = 0; k < J->num_models; k++) {
        for (int i = 0; i < ops->model_scalars; i++) {
            float v;
            fb_status st = ops->scalar(J->method->state, k, i, &v);
            if (st) return st;
            int64_t ei = base + (int64_t)k * ops->model_scalars + i;
            if (J->to_memory) memcpy(J->extras->tensors[ei]->data, &v, 4);
            else if (J->extras_writer && (st = fb_writer_write(J->extras_writer, ei, 0, &v, 4)))
                return st;
        }
    }
    return FB_OK;
}

/* Where a file output's extras go: "<path without .safetensors>.masks.safetensors". */
char *fb_extras_path(const char *path)
{
    size_t n = strlen(path);
    const char *suffix = ".safetensors";
    size_t m = strlen(suffix);
    if (n >= m && !strcmp(path + n - m, suffix)) n -= m;
    while (n > 1 && path[n - 1] == '/') n--;
    char *p = fb_malloc(n + 32);
    if (p) snprintf(p, n + 32, "%.*s.masks.safetensors", (int)n, path);
    return p;
}

/* Each tensor's method state: per-tensor parameters may give tensors their own. */
static fb_status resolve_states(job *J)
{
    fb_method *m = (fb_method *)J->method;
    fb_method_reset_variants(m);
    J->tstate = fb_calloc((size_t)(J->out->count ? J->out->count : 1), sizeof *J->tstate);
    if (!J->tstate) return FB_ERR_NOMEM;
    for (int64_t ti = 0; ti < J->out->count; ti++) {
        fb_status st = fb_method_state_for(m, J->out->tensors[ti]->name, &J->setup, &J->tstate[ti]);
        if (st) return st;
    }
    return FB_OK;
}

static fb_status allocate_scratch(job *J)
{
    const fb_method_ops *ops = J->method->ops;
#ifdef _OPENMP
    J->threads = omp_get_max_threads();
#else
    J->threads = 1;
#endif
    J->chunk = FB_MERGE_CHUNK;
    if (ops->whole_tensor) {
        J->threads = 1; /* whole tensors are merged on the calling thread */
        J->chunk = 1;
        for (int64_t i = 0; i < J->out->count; i++) { /* the output may have more rows */
            int64_t n = J->out->tensors[i]->numel > out_source(J, i)->numel ? J->out->tensors[i]->numel
                                                                              : out_source(J, i)->numel;
            if (n > J->chunk) J->chunk = n;
        }
    }
    /* raw buffers hold inputs that need widening and outputs that need narrowing */
    J->raw_es = 0;
    for (int64_t i = 0; i < J->out->count; i++) {
        const fb_tensor *in = out_source(J, i), *out = J->out->tensors[i];
        if (!fb_dtype_is_float(in->dtype)) continue;
        if (in->dtype != FB_F32 && fb_dtype_size(in->dtype) > J->raw_es)
            J->raw_es = fb_dtype_size(in->dtype);
        for (int k = 0; J->opts && J->opts->inputs_as_f32 && !ops->plan && k < J->num_inputs; k++) {
            const fb_tensor *t = fb_model_find(J->inputs[k], in->name); /* dtypes may differ */
            if (t && t->dtype != FB_F32 && fb_dtype_size(t->dtype) > J->raw_es)
                J->raw_es = fb_dtype_size(t->dtype);
        }
        if (out->dtype != FB_F32 && fb_dtype_size(out->dtype) > J->raw_es)
            J->raw_es = fb_dtype_size(out->dtype);
    }
    size_t slots = (size_t)J->threads * (size_t)(J->num_inputs + 1);
    J->f32 = fb_malloc(slots * (size_t)J->chunk * sizeof(float));
    J->raw = fb_malloc(slots * (size_t)J->chunk * (J->raw_es ? J->raw_es : 1));
    J->ptrs = fb_malloc((size_t)J->threads * (size_t)J->num_inputs * sizeof *J->ptrs);
    J->tensors = fb_malloc((size_t)J->num_inputs * sizeof *J->tensors);
    J->copy_buf = fb_malloc(2 * (size_t)COPY_BYTES);
    J->scratch_per = 0;
    for (int64_t ti = 0; ops->scratch_per_element && ti < J->out->count; ti++) {
        int per = ops->scratch_per_element(J->tstate[ti]);
        if (per > J->scratch_per) J->scratch_per = per;
    }
    size_t per = (size_t)J->scratch_per * (size_t)J->chunk;
    J->kernel_scratch = fb_malloc((size_t)J->threads * (per ? per : 1) * sizeof(float));
    if (!J->kernel_scratch) return FB_ERR_NOMEM;
    if (ops->model_masks) {
        J->mask_scratch = fb_malloc((size_t)J->threads * (size_t)J->num_models * (size_t)J->chunk);
        if (!J->mask_scratch) return FB_ERR_NOMEM;
    }
    if (!J->f32 || !J->raw || !J->ptrs || !J->tensors || !J->copy_buf) return FB_ERR_NOMEM;
    if (ops->merge_finish) {
        J->fixups = fb_calloc((size_t)J->threads, sizeof *J->fixups);
        if (!J->fixups) return FB_ERR_NOMEM;
        for (int t = 0; t < J->threads; t++) {
            J->fixups[t].cap = FB_MERGE_FIXUPS / J->threads;
            J->fixups[t].items = fb_malloc((size_t)J->fixups[t].cap * sizeof(fixup));
            if (!J->fixups[t].items) return FB_ERR_NOMEM;
        }
    }
    if (ops->tensor_passes) {
        for (int64_t ti = 0; ti < J->out->count; ti++) {
            size_t a = ops->tensor_acc_bytes(J->tstate[ti]), b = ops->tensor_slot_bytes(J->tstate[ti]);
            int64_t nc = (J->out->tensors[ti]->numel + J->chunk - 1) / J->chunk;
            if (a > J->tacc_bytes) J->tacc_bytes = a;
            if (b > J->slot_bytes) J->slot_bytes = b;
            if (nc > J->max_chunks) J->max_chunks = nc;
        }
        J->taccs = fb_calloc((size_t)J->threads, sizeof *J->taccs);
        J->slots = fb_malloc((size_t)(J->max_chunks ? J->max_chunks : 1) * (J->slot_bytes ? J->slot_bytes : 1));
        if (!J->taccs || !J->slots) return FB_ERR_NOMEM;
        for (int t = 0; t < J->threads; t++)
            if (!(J->taccs[t] = fb_malloc(J->tacc_bytes ? J->tacc_bytes : 1))) return FB_ERR_NOMEM;
    }
    if (ops->prepare_passes || ops->merge_bytes) {
        J->acc_bytes = ops->prepare_passes ? ops->prepare_bytes(J->method->state) : 0;
        size_t mb = ops->merge_bytes ? ops->merge_bytes(J->method->state) : 0;
        if (mb > J->acc_bytes) J->acc_bytes = mb;
        J->accs = fb_calloc((size_t)J->threads, sizeof *J->accs);
        if (!J->accs) return FB_ERR_NOMEM;
        for (int t = 0; t < J->threads; t++)
            if (!(J->accs[t] = fb_malloc(J->acc_bytes ? J->acc_bytes : 1))) return FB_ERR_NOMEM;
    }
    return FB_OK;
}

/* --------------------------------------------------------------------- execution -- */

/* What a pass over a tensor's chunks does with each chunk. */
enum { DO_MERGE = -1, DO_COPY_SOURCE = -2, DO_TENSOR_PASS = -16 }; /* >= 0: prepare pass number;
                                                                     * DO_TENSOR_PASS - p:
                                                                     * tensor pass p */

/* Index of the first entry of x[0, n) that is NaN or infinite, or -1. The test is on the
 * exponent bits, an integer reduction the compiler vectorises; the search runs only on a hit. */
static int64_t first_nonfinite(const float *x, int64_t n)
{
    uint32_t hit = 0;
    for (int64_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], 4);
        hit |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (!hit) return -1;
    for (int64_t j = 0; j < n; j++)
        if (!isfinite(x[j])) return j;
    return -1;
}

static int check_nonfinite(const job *J)
{
    return !J->opts || J->opts->nonfinite != FB_NONFINITE_PROPAGATE;
}

/* Reads chunk c of every input of the current tensor ti as f32 (thread tid's buffers). When
 * the models hold different numbers of rows (a pool's vocab: base or union), an input's
 * entries past its rows are the base's there, or, where the base has none either, the mean of
 * the inputs that have them: a model without a row adds no task vector to it. */
static fb_status load_chunk(const job *J, int64_t ti, int64_t c, int tid, fb_merge_chunk *mc)
{
    const int rows = J->rows_differ && J->rows_differ[ti];
    const int64_t total = J->out->tensors[ti]->numel;
    const fb_tensor *rt = J->tensors[J->has_base ? J->num_models : 0];
    for (int k = 0; rows && k < J->num_inputs; k++) /* one input has the output's shape */
        if (J->tensors[k]->numel == total) rt = J->tensors[k];
    int64_t begin = c * J->chunk;
    int64_t n = total - begin < J->chunk ? total - begin : J->chunk;
    size_t slot = (size_t)tid * (size_t)(J->num_inputs + 1);
    const float **ptrs = J->ptrs + (size_t)tid * (size_t)J->num_inputs;
    int64_t avail[64];
    int padded = 0;
    fb_status st;
    if (rows && J->num_inputs > 64)
        return fb_set_error(FB_ERR_UNSUPPORTED, "tensor '%s': rows that differ across more than 64 "
                                                "models",
                            rt->name);
    for (int k = 0; k < J->num_inputs; k++) {
        const fb_tensor *t = J->tensors[k];
        float *fbuf = J->f32 + (slot + (size_t)k) * (size_t)J->chunk;
        uint8_t *rbuf = J->raw + (slot + (size_t)k) * (size_t)J->chunk * J->raw_es;
        size_t es = fb_dtype_size(t->dtype);
        int64_t m = n;
        if (rows) {
            m = t->numel - begin < n ? t->numel - begin : n;
            if (m < 0) m = 0;
            avail[k] = m;
            padded |= m < n;
        }
        const void *p = fbuf;
        if (t->dtype == FB_F32) {
            if (m && (st = fb_tensor_view(t, (size_t)begin * 4, (size_t)m * 4, fbuf, &p))) return st;
            if (m < n && p != fbuf) memcpy(fbuf, p, (size_t)m * 4); /* to pad it below */
            ptrs[k] = m < n ? fbuf : p;
            continue;
        }
        if (m && (st = fb_tensor_view(t, (size_t)begin * es, (size_t)m * es, rbuf, &p))) return st;
        if (m && (st = fb_convert_to_f32(t->dtype, p, fbuf, m))) return st;
        ptrs[k] = fbuf;
    }
    if (padded) {
        float *fill = J->f32 + (slot + (size_t)J->num_inputs) * (size_t)J->chunk; /* output slot, free until the merge */
        const int base = J->num_inputs > J->num_models ? J->num_models : -1;
        for (int64_t j = 0; j < n; j++) {
            if (base >= 0 && avail[base] > j) {
                fill[j] = ptrs[base][j];
                continue;
            }
            double sum = 0;
            int have = 0;
            for (int k = 0; k < J->num_models; k++)
                if (avail[k] > j) sum += ptrs[k][j], have++;
            fill[j] = have ? (float)(sum / have) : 0.0f;
        }
        for (int k = 0; k < J->num_inputs; k++)
            for (int64_t j = avail[k]; j < n; j++) ((float *)ptrs[k])[j] = fill[j];
    }
    for (int k = 0; check_nonfinite(J) && k < J->num_inputs; k++) {
        int64_t bad = first_nonfinite(ptrs[k], n);
        if (bad >= 0)
            return fb_set_error(FB_ERR_FORMAT,
                                "tensor '%s' of model '%s' holds %s at element %lld; merging it "
                                "would spread it (nonfinite=propagate merges it anyway)",
                                J->tensors[k]->name, label(J, k),
                                isnan(ptrs[k][bad]) ? "NaN" : "an infinity",
                                (long long)(begin + bad));
    }
    *mc = (fb_merge_chunk){
        .tensor = rt,
        .begin = begin,
        .count = n,
        .base = J->has_base ? ptrs[J->num_models] : NULL,
        .models = ptrs,
        .num_models = J->num_models,
    };
    return FB_OK;
}

/* Writes bytes of output tensor ti to the file output(s): the alternative output too, with
 * alt_bytes there when given (else the same bytes). */
static fb_status write_out(const job *J, int64_t ti, size_t offset, const void *bytes,
                           const void *alt_bytes, size_t n)
{
    fb_status st = J->writer ? fb_writer_write(J->writer, ti, offset, bytes, n) : FB_OK;
    if (!st && J->alt_writer)
        st = fb_writer_write(J->alt_writer, ti, offset, alt_bytes ? alt_bytes : bytes, n);
    return st;
}

/* Stores a merged f32 chunk into the output tensor ti (memory, file(s), or nowhere). */
static fb_status store_chunk(const job *J, int64_t ti, const fb_merge_chunk *mc, int tid)
{
    fb_tensor *ot = J->out->tensors[ti];
    size_t slot = (size_t)tid * (size_t)(J->num_inputs + 1) + (size_t)J->num_inputs;
    uint8_t *orbuf = J->raw + slot * (size_t)J->chunk * J->raw_es;
    size_t oes = fb_dtype_size(ot->dtype);
    int64_t begin = mc->begin, n = mc->count;
    if (J->to_memory) {
        if (ot->dtype == FB_F32 && mc->out == (float *)ot->data + begin) return FB_OK;
        return fb_convert_from_f32(ot->dtype, mc->out, (uint8_t *)ot->data + (size_t)begin * oes,
                                   n);
    }
    fb_status st;
    for (int alt = 0; alt < 2; alt++) {
        fb_writer *w = alt ? J->alt_writer : J->writer;
        const float *f = alt && mc->out_alt ? mc->out_alt : mc->out;
        if (!w) continue;
        const void *bytes = f;
        if (ot->dtype != FB_F32) {
            if ((st = fb_convert_from_f32(ot->dtype, f, orbuf, n))) return st;
            bytes = orbuf;
        }
        if ((st = fb_writer_write(w, ti, (size_t)begin * oes, bytes, (size_t)n * oes))) return st;
    }
    return FB_OK;
}

/* The chunk's per-model masks into the extras: tensor k * num_merged + merged index. */
static fb_status store_masks(const job *J, int64_t ti, const fb_merge_chunk *mc)
{
    for (int k = 0; k < J->num_models; k++) {
        int64_t ei = (int64_t)k * J->num_merged + J->merged_index[ti];
        const uint8_t *m = mc->masks + (size_t)k * (size_t)mc->count;
        if (J->to_memory) {
            memcpy((uint8_t *)J->extras->tensors[ei]->data + mc->begin, m, (size_t)mc->count);
        } else if (J->extras_writer) {
            fb_status st = fb_writer_write(J->extras_writer, ei, (size_t)mc->begin, m,
                                           (size_t)mc->count);
            if (st) return st;
        }
    }
    return FB_OK;
}

/* A merged chunk of finite inputs must be finite, and fit the output dtype (f16 tops out at
 * 65504: larger values round to infinity). */
static fb_status check_merged(const fb_tensor *ot, const fb_merge_chunk *mc)
{
    for (int alt = 0; alt < 2; alt++) {
        const float *f = alt ? mc->out_alt : mc->out;
        if (!f) continue;
        int64_t bad = first_nonfinite(f, mc->count);
        if (bad >= 0)
            return fb_set_error(FB_ERR_ARG,
                                "merged tensor '%s' is %s at element %lld although every input is "
                                "finite: a scale or weight too large for float32?",
                                ot->name, isnan(f[bad]) ? "NaN" : "infinite",
                                (long long)(mc->begin + bad));
        for (int64_t j = 0; ot->dtype == FB_F16 && j < mc->count; j++)
            if (fabsf(f[j]) >= 65520.0f)
                return fb_set_error(FB_ERR_ARG,
                                    "merged tensor '%s' is %g at element %lld, past F16's largest "
                                    "value 65504 (choose dtype=bf16 or f32)",
                                    ot->name, (double)f[j], (long long)(mc->begin + j));
    }
    return FB_OK;
}

/* Does `what` to chunk c of the current float tensor ti on thread tid. */
static fb_status run_chunk(const job *J, int64_t ti, int64_t c, int tid, int what)
{
    fb_merge_chunk mc;
    fb_status st = load_chunk(J, ti, c, tid, &mc);
    if (st) return st;
    mc.tensor_index = ti;
    const fb_method_ops *ops = J->method->ops;
    mc.scratch = J->kernel_scratch + (size_t)tid * (size_t)J->scratch_per * (size_t)J->chunk;
    mc.acc = J->accs ? J->accs[tid] : NULL;
    mc.fixups = J->fixups ? &J->fixups[tid] : NULL;
    mc.out_alt = J->alt_f32 && what == DO_MERGE ? J->alt_f32 + (size_t)tid * (size_t)J->chunk : NULL;
    mc.chunk_index = c;
    mc.slot = J->slots ? J->slots + (size_t)c * J->slot_bytes : NULL;
    if (what <= DO_TENSOR_PASS) {
        st = ops->tensor_prepare(J->tstate[ti], DO_TENSOR_PASS - what, &mc, J->taccs[tid]);
        return st ? fb_error_prefix(st, "tensor '%s'", mc.tensor->name) : FB_OK;
    }
    if (what >= 0) {
        st = ops->prepare(J->method->state, what, &mc, J->accs[tid]);
        return st ? fb_error_prefix(st, "tensor '%s'", mc.tensor->name) : FB_OK;
    }
    fb_tensor *ot = J->out->tensors[ti];
    size_t slot = (size_t)tid * (size_t)(J->num_inputs + 1) + (size_t)J->num_inputs;
    float *obuf = J->f32 + slot * (size_t)J->chunk;
    mc.out = J->to_memory && ot->dtype == FB_F32 ? (float *)ot->data + mc.begin : obuf;
    if (what == DO_COPY_SOURCE) {
        /* an unmerged tensor: the base model's (or the first model's) values */
        const float *src = J->num_inputs > J->num_models ? J->ptrs[(size_t)tid * (size_t)J->num_inputs + (size_t)J->num_models]
                                                          : mc.models[0];
        memcpy(mc.out, src, (size_t)mc.count * sizeof(float));
    } else {
        if (J->mask_scratch)
            mc.masks = J->mask_scratch + (size_t)tid * (size_t)J->num_models * (size_t)J->chunk;
        if ((st = ops->merge(J->tstate[ti], &mc)))
            return fb_error_prefix(st, "tensor '%s'", mc.tensor->name);
        if (mc.masks && (st = store_masks(J, ti, &mc))) return st;
        if (check_nonfinite(J) && (st = check_merged(ot, &mc))) return st;
    }
    return store_chunk(J, ti, &mc, tid);
}

/* Runs every stride-th chunk of float tensor ti (0, stride, 2 stride, ...), in parallel
 * unless the method takes whole tensors. */
static fb_status run_tensor(job *J, int64_t ti, int what, int64_t stride)
{
    int64_t numel = J->out->tensors[ti]->numel; /* models' rows may differ (vocab) */
    int64_t nchunks = (numel + J->chunk - 1) / J->chunk;
    if (J->method->ops->whole_tensor) return nchunks ? run_chunk(J, ti, 0, 0, what) : FB_OK;
    int64_t err_chunk = INT64_MAX;
    fb_status err_status = FB_OK;
    char err_msg[FB_ERROR_MAX] = "";
    int64_t nvisit = (nchunks + stride - 1) / stride;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t v = 0; v < nvisit; v++) {
        int64_t c = v * stride;
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        if (__atomic_load_n(&err_chunk, __ATOMIC_RELAXED) < c) continue;
        fb_status st = run_chunk(J, ti, c, tid, what);
        if (st) {
#pragma omp critical(fb_merge_error)
            {
                if (c < err_chunk) {
                    __atomic_store_n(&err_chunk, c, __ATOMIC_RELAXED);
                    err_status = st;
                    memcpy(err_msg, fb_last_error(), sizeof err_msg);
                }
            }
        }
    }
    if (err_chunk != INT64_MAX) return fb_set_error(err_status, "%s", err_msg);
    return FB_OK;
}

/* Non-float tensors (int buffers, masks) are copied when every input holds the same bytes. */
static fb_status copy_equal_tensor(job *J, int64_t ti)
{
    const fb_tensor *rt = J->tensors[J->has_base ? J->num_models : 0];
    fb_tensor *ot = J->out->tensors[ti];
    size_t es = fb_dtype_size(rt->dtype);
    uint8_t *a = J->copy_buf, *b = J->copy_buf + COPY_BYTES;
    fb_status st;
    for (size_t off = 0; off < rt->nbytes; off += COPY_BYTES) {
        size_t n = rt->nbytes - off < COPY_BYTES ? rt->nbytes - off : COPY_BYTES;
        if ((st = fb_tensor_read(rt, off, n, a))) return st;
        for (int k = 0; k < J->num_inputs; k++) {
            const fb_tensor *t = J->tensors[k];
            if (t == rt) continue;
            if ((st = fb_tensor_read(t, off, n, b))) return st;
            if (memcmp(a, b, n) == 0) continue;
            size_t i = 0;
            while (a[i] == b[i]) i++;
            return fb_set_error(FB_ERR_MISMATCH,
                                "tensor '%s' is %s, which is copied rather than merged, but "
                                "model '%s' differs from model '%s' at element %zu",
                                rt->name, fb_dtype_name(rt->dtype), J->names[k],
                                label(J, J->has_base ? J->num_models : 0), (off + i) / es);
        }
        if (J->to_memory) memcpy((uint8_t *)ot->data + off, a, n);
        else if ((st = write_out(J, ti, off, a, NULL, n))) return st;
    }
    return FB_OK;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Output tensor ti copied from src, scaled and converted where asked: a restructured model's
 * tensors, and those a pool's selection does not merge. */
static fb_status copy_source_tensor(job *J, int64_t ti, const fb_tensor *src, float scale)
{
    fb_tensor *ot = J->out->tensors[ti];
    fb_status st;
    if (!fb_dtype_is_float(src->dtype) || (src->dtype == ot->dtype && scale == 1.0f)) {
        for (size_t off = 0; off < src->nbytes; off += COPY_BYTES) {
            size_t n = src->nbytes - off < COPY_BYTES ? src->nbytes - off : COPY_BYTES;
            if ((st = fb_tensor_read(src, off, n, J->copy_buf))) return st;
            if (J->to_memory) memcpy((uint8_t *)ot->data + off, J->copy_buf, n);
            else if ((st = write_out(J, ti, off, J->copy_buf, NULL, n))) return st;
        }
        return FB_OK;
    }
    /* elements per step: raw (<= 8 bytes each) fits a copy buffer, f32 fits one chunk slot */
    const int64_t step = J->chunk < COPY_BYTES / 8 ? J->chunk : COPY_BYTES / 8;
    float *f = J->f32;
    uint8_t *raw = J->copy_buf, *outb = J->copy_buf + COPY_BYTES;
    size_t ies = fb_dtype_size(src->dtype), oes = fb_dtype_size(ot->dtype);
    for (int64_t begin = 0; begin < src->numel; begin += step) {
        int64_t n = src->numel - begin < step ? src->numel - begin : step;
        if ((st = fb_tensor_read(src, (size_t)begin * ies, (size_t)n * ies, raw))) return st;
        if ((st = fb_convert_to_f32(src->dtype, raw, f, n))) return st;
        for (int64_t j = 0; j < n; j++) f[j] *= scale;
        if ((st = fb_convert_from_f32(ot->dtype, f, outb, n))) return st;
        if (J->to_memory) memcpy((uint8_t *)ot->data + (size_t)begin * oes, outb, (size_t)n * oes);
        else if ((st = write_out(J, ti, (size_t)begin * oes, outb, NULL, (size_t)n * oes)))
            return st;
    }
    return FB_OK;
}

static void select_tensor(job *J, int64_t ti)
{
    const char *name = J->out->tensors[ti]->name;
    for (int k = 0; k < J->num_inputs; k++) J->tensors[k] = fb_model_find(J->inputs[k], name);
}

static int is_merged(const job *J, int64_t ti)
{
    const fb_tensor *t = out_source(J, ti);
    const fb_method_ops *ops = J->method->ops;
    return fb_dtype_is_float(t->dtype) && !fb_name_filter_matches(J->method->remove, t->name) &&
           !(J->copy_only && J->copy_only[ti]) &&
           (!ops->merges_tensor || ops->merges_tensor(J->tstate[ti], t));
}

static atomic_int interrupt_requested;

void fb_interrupt(void) { atomic_store(&interrupt_requested, 1); }

fb_status fb_method_check_interrupt(void)
{
    return atomic_load(&interrupt_requested)
               ? fb_set_error(FB_ERR_INTERRUPTED, "interrupted: the merge stopped; nothing was written")
               : FB_OK;
}

/* The per-tensor passes of methods with tensor_passes, before tensor ti is merged. */
static fb_status tensor_passes(job *J, int64_t ti)
{
    const fb_method_ops *ops = J->method->ops;
    void *state = J->tstate[ti];
    int64_t nchunks = (J->out->tensors[ti]->numel + J->chunk - 1) / J->chunk;
    memset(J->slots, 0, (size_t)nchunks * J->slot_bytes);
    fb_status bst = ops->tensor_begin ? ops->tensor_begin(state, J->out->tensors[ti]) : FB_OK;
    if (bst) return fb_error_prefix(bst, "tensor '%s'", J->out->tensors[ti]->name);
    for (int p = 0; p < ops->tensor_passes; p++) {
        if (ops->tensor_pass_needed && !ops->tensor_pass_needed(state, p)) continue;
        for (int t = 0; t < J->threads; t++) memset(J->taccs[t], 0, J->tacc_bytes);
        fb_status st = run_tensor(J, ti, DO_TENSOR_PASS - p, 1);
        if (!st) st = ops->tensor_finish(state, p, J->out->tensors[ti], J->taccs, J->threads,
                                         J->slots, nchunks);
        if (st) return fb_error_prefix(st, "tensor '%s'", J->out->tensors[ti]->name);
    }
    return FB_OK;
}

/* One pass over every output tensor: merged, copied or restructured. */
static fb_status merge_all(job *J, int report)
{
    const fb_method_ops *ops = J->method->ops;
    fb_status st;
    for (int64_t ti = 0; ti < J->out->count; ti++) {
        if ((st = fb_method_check_interrupt())) return st;
        double t0 = now_seconds();
        if (ops->plan) {
            st = copy_source_tensor(J, ti, J->plan.entries[ti].source, J->plan.entries[ti].scale);
        } else if (J->copy_only[ti]) {
            st = copy_source_tensor(J, ti, J->out_src[ti], 1.0f);
        } else {
            select_tensor(J, ti);
            int merged = is_merged(J, ti);
            if (!fb_dtype_is_float(J->tensors[0]->dtype)) st = copy_equal_tensor(J, ti);
            else if (merged && ops->tensor_passes && (st = tensor_passes(J, ti))) return st;
            else st = run_tensor(J, ti, merged ? DO_MERGE : DO_COPY_SOURCE, 1);
        }
        if (st) return st;
        for (int k = 0; J->release && !ops->plan && !J->copy_only[ti] && k < J->num_inputs; k++)
            fb_tensor_release_cache(J->tensors[k]);
        if (report && J->opts && J->opts->on_tensor)
            J->opts->on_tensor(J->opts->user, J->out->tensors[ti]->name, ti, J->out->count,
                               now_seconds() - t0);
    }
    return FB_OK;
}

/* Writes fixup value `choice` of every recorded element into the output. */
static fb_status apply_fixups(job *J, int choice)
{
    uint8_t bytes[8];
    for (int t = 0; t < J->threads; t++) {
        const struct fb_fixups *f = &J->fixups[t];
        for (int64_t i = 0; i < f->count; i++) {
            const fixup *x = &f->items[i];
            fb_tensor *ot = J->out->tensors[x->tensor];
            size_t oes = fb_dtype_size(ot->dtype);
            fb_status st = fb_convert_from_f32(ot->dtype, &x->values[choice], bytes, 1);
            if (st) return st;
            if (J->to_memory)
                memcpy((uint8_t *)ot->data + (size_t)x->index * oes, bytes, oes);
            else if (J->writer &&
                     (st = fb_writer_write(J->writer, x->tensor, (size_t)x->index * oes, bytes, oes)))
                return st;
        }
    }
    return FB_OK;
}

/* Bytes of the inputs that live in files. */
static double file_bytes(const job *J)
{
    double sum = 0;
    for (int k = 0; k < J->num_inputs; k++)
        for (int64_t i = 0; i < J->inputs[k]->count; i++) {
            const fb_tensor *t = J->inputs[k]->tensors[i];
            if (t->src && !t->data) sum += (double)t->nbytes;
        }
    return sum;
}

/* Memory the page cache could give us now: MemAvailable where /proc says it, else free pages. */
static double available_memory(void)
{
    double bytes = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            bytes = 1024.0 * (double)kb;
            break;
        }
    }
    if (f) fclose(f);
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (bytes <= 0 && pages > 0 && page > 0) bytes = (double)pages * (double)page;
    return bytes;
}

/* With inputs larger than most of memory, the page cache cannot hold them from one pass to the
 * next, and a kernel left to choose evicts exactly the pages the next pass reads first. So a
 * full prepare pass drops each tensor's input pages once read, except for the last tensors,
 * as many as half the available memory holds; the merge then reads the first tensors from the
 * disk into the memory they left free, dropping what it has merged (and the output once written
 * back), and finds the last ones still cached. Advisory only: nothing changes in the bytes. */
static fb_status plan_release(job *J)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    int policy = J->opts ? J->opts->page_cache : FB_PAGE_CACHE_AUTO;
    if (policy == FB_PAGE_CACHE_AUTO)
        J->release = pages > 0 && page > 0 && file_bytes(J) > 0.75 * (double)pages * (double)page;
    else
        J->release = policy == FB_PAGE_CACHE_DROP;
    if (J->to_memory || !J->release) {
        J->release = 0;
        return FB_OK;
    }
    J->keep = fb_calloc((size_t)J->out->count + 1, 1);
    if (!J->keep) return FB_ERR_NOMEM;
    double room = 0.5 * available_memory(), kept = 0;
    for (int64_t ti = J->out->count - 1; ti >= 0; ti--) {
        if (J->method->ops->plan || !is_merged(J, ti)) continue;
        select_tensor(J, ti);
        for (int k = 0; k < J->num_inputs; k++) kept += (double)J->tensors[k]->nbytes;
        J->keep[ti] = kept <= room;
    }
    return FB_OK;
}

static fb_status execute(job *J)
{
    const fb_method_ops *ops = J->method->ops;
    fb_status st;
    if ((st = plan_release(J))) return st;
    for (int pass = 0; pass < ops->prepare_passes; pass++) {
        int stride = ops->prepare_stride ? ops->prepare_stride(J->method->state, pass) : 1;
        if (stride <= 0) continue;
        for (int t = 0; t < J->threads; t++) memset(J->accs[t], 0, J->acc_bytes);
        for (int64_t ti = 0; ti < J->out->count; ti++) {
            if (!is_merged(J, ti)) continue;
            if ((st = fb_method_check_interrupt())) return st;
            select_tensor(J, ti);
            if ((st = run_tensor(J, ti, pass, stride))) return st;
            for (int k = 0; J->release && stride == 1 && !J->keep[ti] && k < J->num_inputs; k++)
                fb_tensor_release_cache(J->tensors[k]);
        }
        st = ops->prepare_finish(J->method->state, pass, J->accs, J->threads);
        if (st) return fb_error_prefix(st, "method %s", ops->name);
    }
    for (int t = 0; ops->merge_bytes && t < J->threads; t++) memset(J->accs[t], 0, J->acc_bytes);
    int alternative = !J->to_memory && ops->merge_alternative && ops->merge_alternative(J->method->state);
    if (alternative) {
        J->alt_f32 = fb_malloc((size_t)J->threads * (size_t)J->chunk * sizeof(float));
        if (!J->alt_f32) return FB_ERR_NOMEM;
        if (J->writer && (st = fb_writer_open(J->path, J->save, J->out, &J->alt_writer))) return st;
    }
    if (J->release) {
        fb_writer_release_cache(J->writer);
        fb_writer_release_cache(J->alt_writer);
    }
    if ((st = merge_all(J, 1))) return st;
    if (ops->merge_finish) {
        int choice = -1, overflowed = 0;
        st = ops->merge_finish(J->method->state, J->accs, J->threads, &choice);
        if (st) return fb_error_prefix(st, "method %s", ops->name);
        for (int t = 0; t < J->threads; t++) overflowed |= J->fixups[t].overflowed;
        if (choice >= FB_FIXUP_VALUES)
            return fb_set_error(FB_ERR_INTERNAL, "method %s chose fixup %d", ops->name, choice);
        if (alternative) {
            J->pick_alt = choice >= 0;
        } else if (choice >= 0 && overflowed) {
            /* too many to patch: merge again, now that the state holds the decision */
            for (int t = 0; t < J->threads; t++) J->fixups[t].count = 0;
            if ((st = merge_all(J, 0))) return st;
        } else if (choice >= 0 && (st = apply_fixups(J, choice))) {
            return st;
        }
    }
    return ops->model_scalars ? store_scalars(J) : FB_OK;
}

static void job_free(job *J)
{
    fb_name_filter_free(J->include);
    fb_name_filter_free(J->exclude);
    fb_free(J->out_src);
    fb_free(J->copy_only);
    fb_free(J->rows_differ);
    fb_free(J->inputs);
    fb_free(J->names);
    fb_free(J->f32);
    fb_free(J->raw);
    fb_free(J->ptrs);
    fb_free(J->tensors);
    fb_free(J->copy_buf);
    fb_free(J->kernel_scratch);
    fb_free(J->tstate);
    fb_plan_free(&J->plan);
    fb_model_free(J->extras);
    fb_free(J->merged_index);
    fb_free(J->mask_scratch);
    fb_free(J->keep);
    for (int t = 0; J->accs && t < J->threads; t++) fb_free(J->accs[t]);
    fb_free(J->accs);
    for (int t = 0; J->taccs && t < J->threads; t++) fb_free(J->taccs[t]);
    fb_free(J->taccs);
    fb_free(J->slots);
    for (int t = 0; J->fixups && t < J->threads; t++) fb_free(J->fixups[t].items);
    fb_free(J->fixups);
    fb_free(J->alt_f32);
    fb_writer_abort(J->alt_writer);
    fb_model_free(J->out);
}

static fb_status run(fb_method *m, fb_modelpool *pool, const fb_run_options *opts, int to_memory,
                     const char *path, const fb_save_options *save, fb_model **merged,
                     fb_model **extras)
{
    job J = {.method = m, .to_memory = to_memory, .opts = opts, .path = path, .save = save};
    char *xpath = NULL;
    fb_status st = fb_simd_get(NULL); /* an unusable FB_SIMD is an error before any work */
    if (st) return st;
    atomic_store(&interrupt_requested, 0); /* a request belongs to the run it interrupted */
    if (m->ops->ensemble)
        return fb_set_error(FB_ERR_ARG, "method %s is an ensemble, not one model: evaluate it with "
                            "a taskpool (taskpool=NAME_OR_PATH)", m->ops->name);
    if (m->ops->learn && (!opts || !opts->taskpool))
        st = fb_set_error(FB_ERR_ARG, "method %s learns from task data: give it a taskpool "
                          "(taskpool=NAME_OR_PATH)", m->ops->name);
    if (!st && path && (m->ops->model_masks || m->ops->model_scalars) &&
        !(xpath = fb_extras_path(path)))
        st = FB_ERR_NOMEM;
    if (!st) st = check_outputs(m, pool, path, xpath); /* before any work */
    if (!st && m->ops->build) { /* the whole output made by the method */
        fb_model *out = NULL;
        st = m->ops->build(m->state, pool, opts, &out);
        if (!st && path) st = fb_model_save(out, path, save);
        if (!st && merged) *merged = out;
        else fb_model_free(out);
        fb_free(xpath);
        return st;
    }
    if (!st) st = collect_inputs(&J, m, pool);
    if (!st && m->ops->learn) st = m->ops->learn(m->state, pool, opts); /* inputs checked first */
    if (!st) st = plan_output(&J, opts);
    if (!st) st = resolve_states(&J);
    if (!st) st = plan_extras(&J);
    if (!st && xpath && !J.extras) { /* no extras after all: nothing written there */
        fb_free(xpath);
        xpath = NULL;
    }
    if (!st) st = allocate_scratch(&J);
    /* a folder output gets the base's config and tokenizer files and a model card */
    fb_companions comp = {0};
    fb_save_options with_files = save ? *save : (fb_save_options){0};
    size_t plen = path ? strlen(path) : 0;
    int folder = path && !(plen >= 12 && !strcmp(path + plen - 12, ".safetensors"));
    if (!st && folder && !(st = fb_method_output_companions(m, pool, opts, J.out, path, &comp))) {
        with_files.files = comp.files;
        with_files.num_files = comp.count;
    }
    J.save = &with_files; /* an alternative output (merge_alternative) gets the same files */
    if (!st && path) st = fb_writer_open(path, &with_files, J.out, &J.writer);
    if (!st && xpath) st = fb_writer_open(xpath, NULL, J.extras, &J.extras_writer);
    if (!st) st = execute(&J);
    /* the merged model first, then its extras: each file is replaced atomically */
    if (J.writer) {
        if (!st && J.pick_alt) { /* the alternative output is the one: it takes the path */
            fb_writer_abort(J.writer);
            J.writer = J.alt_writer;
            J.alt_writer = NULL;
        }
        if (st) fb_writer_abort(J.writer);
        else st = fb_writer_commit(J.writer);
    }
    if (J.extras_writer) {
        if (st) fb_writer_abort(J.extras_writer);
        else st = fb_writer_commit(J.extras_writer);
    }
    if (!st && merged) {
        *merged = J.out;
        J.out = NULL;
    }
    if (!st && extras) {
        *extras = J.extras;
        J.extras = NULL;
    }
    fb_free(xpath);
    fb_companions_free(&comp);
    job_free(&J);
    return st;
}

fb_status fb_method_run(fb_method *m, fb_modelpool *pool, const fb_run_options *opts,
                        fb_model **merged)
{
    *merged = NULL;
    return run(m, pool, opts, 1, NULL, NULL, merged, NULL);
}

fb_status fb_method_run_extras(fb_method *m, fb_modelpool *pool, const fb_run_options *opts,
                               fb_model **merged, fb_model **extras)
{
    *merged = NULL;
    *extras = NULL;
    return run(m, pool, opts, 1, NULL, NULL, merged, extras);
}

fb_status fb_method_run_to_file(fb_method *m, fb_modelpool *pool, const fb_run_options *opts,
                                const char *path, const fb_save_options *save)
{
    return run(m, pool, opts, 0, path, save, NULL, NULL);
}
