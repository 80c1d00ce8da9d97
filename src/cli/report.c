/*
 * report.c: the run report as JSON (cJSON), written atomically so a failed run never leaves a
 * half report behind.
 */
#include "report.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/simd.h"
#include "core/status.h"
#include "io/writer.h"

/* Unquoted scalars become JSON numbers, booleans or null when they read as such. */
static cJSON *config_to_json(const fb_config *n)
{
    if (!n || n->kind == FB_CFG_NULL) return cJSON_CreateNull();
    if (n->kind == FB_CFG_SCALAR) {
        double d;
        int b;
        if (!n->quoted && fb_cfg_bool(n, "", &b) == FB_OK) return cJSON_CreateBool(b);
        if (!n->quoted && fb_cfg_double(n, "", &d) == FB_OK) return cJSON_CreateNumber(d);
        return cJSON_CreateString(n->value);
    }
    cJSON *out = n->kind == FB_CFG_MAP ? cJSON_CreateObject() : cJSON_CreateArray();
    for (int i = 0; out && i < n->count; i++) {
        cJSON *c = config_to_json(n->items[i]);
        if (!c) {
            cJSON_Delete(out);
            return NULL;
        }
        if (n->kind == FB_CFG_MAP) cJSON_AddItemToObject(out, n->keys[i], c);
        else cJSON_AddItemToArray(out, c);
    }
    return out;
}

static cJSON *models_json(const fb_modelpool *pool, int pretrained_read)
{
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < pool->count; i++) {
        const fb_model *m = pool->models[i];
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddStringToObject(o, "name", pool->names[i]);
        if (m->path) cJSON_AddStringToObject(o, "path", m->path);
        else cJSON_AddNullToObject(o, "path");
        cJSON_AddNumberToObject(o, "num_tensors", (double)m->count);
        cJSON_AddNumberToObject(o, "num_parameters", (double)fb_model_num_params(m));
        /* special models other than a read _pretrained_ are not inputs of the merge */
        int read = !fb_modelpool_is_special(pool->names[i]) ||
                   (pretrained_read && !strcmp(pool->names[i], FB_PRETRAINED));
        cJSON_AddBoolToObject(o, "read", read);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static fb_status write_json(cJSON *root, const char *path);

fb_status fb_report_write(const fb_run_report *r, const char *path)
{
    cJSON *root = cJSON_CreateObject();
    if (!root) return fb_set_error(FB_ERR_NOMEM, "out of memory building the report");
    cJSON_AddStringToObject(root, "fusion_bench_version", FB_VERSION_STRING);
    cJSON_AddStringToObject(root, "method", r->method);
    if (r->num_patterns) { /* remove_keys and per-tensor values: which tensors each applied to */
        cJSON *arr = cJSON_AddArrayToObject(root, "patterns");
        for (int i = 0; arr && i < r->num_patterns; i++) {
            const fb_pattern_use *u = &r->patterns[i];
            cJSON *o = cJSON_CreateObject();
            if (!o) break;
            cJSON_AddStringToObject(o, "parameter", u->param);
            cJSON_AddNumberToObject(o, "entry", u->entry);
            if (u->pattern) cJSON_AddStringToObject(o, "pattern", u->pattern);
            else cJSON_AddNullToObject(o, "pattern");
            if (strcmp(u->param, "remove_keys")) {
                if (u->value) cJSON_AddItemToObject(o, "value", config_to_json(u->value));
                else cJSON_AddStringToObject(o, "value", "(the parameter's default)");
            }
            cJSON *names = cJSON_AddArrayToObject(o, "tensors");
            for (int64_t t = 0; names && t < u->count; t++)
                cJSON_AddItemToArray(names, cJSON_CreateString(u->tensors[t]));
            cJSON_AddItemToArray(arr, o);
        }
    }
    cJSON_AddItemToObject(root, "config", config_to_json(r->config));
    cJSON_AddItemToObject(root, "models", models_json(r->pool, r->pretrained_read));
    cJSON *merged = cJSON_AddObjectToObject(root, "merged_model");
    if (merged) {
        if (r->output_path) cJSON_AddStringToObject(merged, "path", r->output_path);
        else cJSON_AddNullToObject(merged, "path");
        cJSON_AddNumberToObject(merged, "num_tensors", (double)r->merged_tensors);
        cJSON_AddNumberToObject(merged, "num_parameters", (double)r->merged_params);
    }
    if (r->extras_path) {
        cJSON *x = cJSON_AddObjectToObject(root, "extras");
        if (x) cJSON_AddStringToObject(x, "path", r->extras_path);
        /* per-model scalars (emr_merging's rescalers): "<model>/<name>" F32 [1] tensors */
        for (int64_t i = 0; x && r->extras && i < fb_model_num_tensors(r->extras); i++) {
            const fb_tensor *t = fb_model_tensor(r->extras, i);
            const char *slash = strrchr(fb_tensor_name(t), '/');
            float v;
            if (!slash || slash[1] != '_' || fb_tensor_dtype(t) != FB_F32 || fb_tensor_numel(t) != 1 ||
                fb_tensor_to_f32(t, &v) != FB_OK)
                continue;
            cJSON *group = cJSON_GetObjectItem(x, slash + 1);
            if (!group) group = cJSON_AddObjectToObject(x, slash + 1);
            char model[512];
            snprintf(model, sizeof model, "%.*s", (int)(slash - fb_tensor_name(t)), fb_tensor_name(t));
            if (group) cJSON_AddNumberToObject(group, model, v);
        }
    }
    if (r->num_results) { /* as FusionBench's report: per task, then the average */
        cJSON *tp = cJSON_AddObjectToObject(root, "taskpool");
        double acc = 0, loss = 0;
        for (int i = 0; tp && i < r->num_results; i++) {
            cJSON *o = cJSON_AddObjectToObject(tp, r->results[i].task);
            if (!o) continue;
            cJSON_AddNumberToObject(o, "accuracy", r->results[i].accuracy);
            cJSON_AddNumberToObject(o, "loss", r->results[i].loss);
            cJSON_AddNumberToObject(o, "examples", (double)r->results[i].examples);
            acc += r->results[i].accuracy / r->num_results;
            loss += r->results[i].loss / r->num_results;
        }
        cJSON *avg = tp ? cJSON_AddObjectToObject(tp, "average") : NULL;
        if (avg) {
            cJSON_AddNumberToObject(avg, "accuracy", acc);
            cJSON_AddNumberToObject(avg, "loss", loss);
        }
    }
    cJSON *t = cJSON_AddObjectToObject(root, "timings_s");
    if (t) {
        cJSON_AddNumberToObject(t, "load", r->load_seconds);
        cJSON_AddNumberToObject(t, "merge", r->merge_seconds);
        if (r->num_results) cJSON_AddNumberToObject(t, "evaluate", r->eval_seconds);
        cJSON_AddNumberToObject(t, "total", r->total_seconds);
    }
    cJSON *slow = cJSON_AddArrayToObject(root, "slowest_tensors");
    for (int i = 0; slow && i < FB_REPORT_SLOWEST && r->slowest[i].seconds > 0; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        cJSON_AddStringToObject(o, "name", r->slowest[i].name);
        cJSON_AddNumberToObject(o, "seconds", r->slowest[i].seconds);
        cJSON_AddItemToArray(slow, o);
    }
    cJSON_AddNumberToObject(root, "peak_rss_bytes", (double)r->peak_rss_bytes);
    cJSON *io = cJSON_AddObjectToObject(root, "io");
    if (io) {
        cJSON_AddNumberToObject(io, "bytes_read", (double)r->io_read);
        cJSON_AddNumberToObject(io, "bytes_written", (double)r->io_written);
        cJSON_AddNumberToObject(io, "storage_bytes_read", (double)r->storage_read);
        cJSON_AddNumberToObject(io, "storage_bytes_written", (double)r->storage_written);
    }
    cJSON_AddNumberToObject(root, "threads", r->threads);
    cJSON_AddStringToObject(root, "simd", fb_simd_name(fb_simd_active()));
    cJSON_AddStringToObject(root, "blas_core", openblas_get_corename());
    return write_json(root, path);
}

/* FusionBench's report (its CLIP task pool's evaluate): model_info with parameter counts, then
 * {accuracy, loss} per task, then their average; a ensemble's model_info counts every model. */
fb_status fb_report_write_fusionbench(const fb_run_report *r, const char *path)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *info = root ? cJSON_AddObjectToObject(root, "model_info") : NULL;
    if (!info) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_NOMEM, "out of memory building the report");
    }
    /* its count_parameters: parameters (float tensors; buffers such as position_ids are not),
     * all of them trainable in a merged model */
    cJSON_AddNumberToObject(info, "trainable_params", (double)r->merged_float_params);
    cJSON_AddNumberToObject(info, "all_params", (double)r->merged_float_params);
    cJSON_AddNumberToObject(info, "trainable_percentage", r->merged_float_params ? 1.0 : 0.0);
    double acc = 0, loss = 0;
    for (int i = 0; i < r->num_results; i++) {
        cJSON *o = cJSON_AddObjectToObject(root, r->results[i].task);
        if (o) {
            cJSON_AddNumberToObject(o, "accuracy", r->results[i].accuracy);
            cJSON_AddNumberToObject(o, "loss", r->results[i].loss);
        }
        acc += r->results[i].accuracy / r->num_results;
        loss += r->results[i].loss / r->num_results;
    }
    if (r->num_results) {
        cJSON *avg = cJSON_AddObjectToObject(root, "average");
        if (avg) {
            cJSON_AddNumberToObject(avg, "accuracy", acc);
            cJSON_AddNumberToObject(avg, "loss", loss);
        }
    }
    return write_json(root, path);
}

/* Renders root (which it frees) and writes it to path atomically, with a final newline. */
static fb_status write_json(cJSON *root, const char *path)
{
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return fb_set_error(FB_ERR_NOMEM, "out of memory rendering the report");
    size_t n = strlen(text);
    char *with_nl = fb_malloc(n + 2);
    fb_status st = FB_ERR_NOMEM;
    if (with_nl) {
        memcpy(with_nl, text, n);
        with_nl[n] = '\n';
        with_nl[n + 1] = '\0';
        st = fb_write_text_atomic(path, with_nl);
    }
    fb_free(with_nl);
    cJSON_free(text);
    return st;
}

/* Peak resident memory of this process. VmHWM belongs to this address space, so unlike
 * getrusage's ru_maxrss it does not include a parent's memory when we were spawned with
 * vfork semantics (posix_spawn), which Linux carries across exec. */
long fb_peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb < 0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        kb = ru.ru_maxrss;
    }
    return kb * 1024L;
}

/* This process's I/O so far (/proc/self/io): read/write call bytes, and storage bytes. */
void fb_io_counters(fb_run_report *r)
{
    r->io_read = r->io_written = r->storage_read = r->storage_written = -1;
    FILE *f = fopen("/proc/self/io", "r");
    char line[128];
    long long v;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "rchar: %lld", &v) == 1) r->io_read = v;
        else if (sscanf(line, "wchar: %lld", &v) == 1) r->io_written = v;
        else if (sscanf(line, "read_bytes: %lld", &v) == 1) r->storage_read = v;
        else if (sscanf(line, "write_bytes: %lld", &v) == 1) r->storage_written = v;
    }
    if (f) fclose(f);
}
