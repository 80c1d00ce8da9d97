/*
 * lora.c: a PEFT LoRA adapter applied to a model as its tensors are read.
 *
 * PEFT's files: adapter_config.json (peft_type LORA, r, lora_alpha, use_rslora, rank_pattern,
 * alpha_pattern, fan_in_fan_out, use_dora) and adapter_model.safetensors (or .bin) holding
 * base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r] for linear
 * modules, .lora_embedding_A [r, vocab] and .lora_embedding_B [dim, r] for embeddings,
 * .lora_B.bias [out] when biases were trained, and base_model.model.<module>.weight (or
 * .modules_to_save[.<name>].weight) for modules saved whole.
 *
 * An adapted weight becomes a tensor of a computed source (core/source.h): reading bytes
 * [offset, offset + n) reads the same bytes of W, widens them, adds scale * (L R) for those
 * entries (L = B, R = A; for embeddings L = A^T, R = B^T) accumulated over the rank in a fixed
 * order, and rounds once to W's dtype. The result does not depend on how the reads are cut.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "dataset.h"
#include "lora.h"

typedef struct delta {
    fb_source *src; /* W's bytes */
    uint64_t offset;
    fb_dtype dtype;
    int64_t rows, cols; /* W as rows x cols (a vector: 1 x n) */
    int64_t rank;       /* 0: an additive vector (`add`, cols entries) */
    float *L, *R;       /* rows x rank, rank x cols */
    float *add;
    float scale;
} delta;

static void delta_free(void *p)
{
    delta *d = p;
    if (!d) return;
    fb_source_unref(d->src);
    fb_free(d->L);
    fb_free(d->R);
    fb_free(d->add);
    fb_free(d);
}

static fb_status delta_read(void *p, uint64_t offset, size_t n, void *dst)
{
    const delta *d = p;
    const size_t es = fb_dtype_size(d->dtype);
    if (offset % es || n % es)
        return fb_set_error(FB_ERR_INTERNAL, "%s: unaligned read of an adapted tensor",
                            d->src->path);
    const int64_t e0 = (int64_t)(offset / es), count = (int64_t)(n / es);
    fb_status st = fb_source_pread(d->src, d->offset + offset, n, dst);
    float *w = st ? NULL : fb_malloc((size_t)(count ? count : 1) * sizeof *w);
    if (!st && !w) st = FB_ERR_NOMEM;
    if (!st) st = fb_convert_to_f32(d->dtype, dst, w, count);
    for (int64_t j = 0; !st && j < count;) {
        const int64_t e = e0 + j, row = e / d->cols, col = e % d->cols;
        int64_t seg = d->cols - col;
        if (seg > count - j) seg = count - j;
        float *out = w + j;
        if (d->rank == 0) {
            for (int64_t c = 0; c < seg; c++)
                out[c] += d->add[col + c];
        } else {
            float acc[256];
            for (int64_t c0 = 0; c0 < seg; c0 += 256) {
                int64_t m = seg - c0 < 256 ? seg - c0 : 256;
                memset(acc, 0, sizeof acc);
                for (int64_t k = 0; k < d->rank; k++) {
                    const float a = d->L[row * d->rank + k];
                    const float *r = d->R + k * d->cols + col + c0;
                    for (int64_t c = 0; c < m; c++)
                        acc[c] += a * r[c];
                }
                for (int64_t c = 0; c < m; c++)
                    out[c0 + c] += acc[c] * d->scale;
            }
        }
        j += seg;
    }
    if (!st) st = fb_convert_from_f32(d->dtype, w, dst, count);
    fb_free(w);
    return st;
}

static fb_status read_json(const char *path, cJSON **out)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return fb_set_error(FB_ERR_NOT_FOUND,
                            "%s: no adapter_config.json (a PEFT adapter folder "
                            "holds one)",
                            path);
    uint8_t *bytes;
    size_t n;
    fb_status st = fb_read_file(path, 4u << 20, &bytes, &n);
    if (st) return st;
    *out = cJSON_ParseWithLength((const char *)bytes, n);
    fb_free(bytes);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        return fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    return FB_OK;
}

/* PEFT's pattern lookup: a key of `patterns` that matches the module name as a whole or as
 * its last dotted components (regular expressions). */
static const cJSON *pattern_value(const cJSON *patterns, const char *module)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, patterns)
    {
        char re[1200];
        snprintf(re, sizeof re, "^(.*\\.)?(%s)$", e->string);
        regex_t rx;
        if (regcomp(&rx, re, REG_EXTENDED | REG_NOSUB)) continue;
        int hit = regexec(&rx, module, 0, NULL, 0) == 0;
        regfree(&rx);
        if (hit) return e;
    }
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

typedef struct part {
    const fb_tensor *A, *B, *bias, *whole;
    int embedding;
    int used;
} part;

/* The module an adapter tensor belongs to and what it is, or an error naming it. */
static fb_status classify(const char *adapter, const fb_tensor *t, char *module, size_t size,
                          int *kind)
{
    static const char prefix[] = "base_model.model.";
    static const struct {
        const char *suffix;
        int kind;
    } kinds[] = {
        {".lora_A.weight", 1},    {".lora_B.weight", 2}, {".lora_embedding_A", 3},
        {".lora_embedding_B", 4}, {".lora_B.bias", 5},   {".modules_to_save.weight", 6},
        {".weight", 7},           {".bias", 8},
    };
    if (strncmp(t->name, prefix, sizeof prefix - 1))
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: tensor '%s' is not a PEFT adapter tensor "
                            "(base_model.model.*)",
                            adapter, t->name);
    const char *rest = t->name + sizeof prefix - 1;
    if (strstr(rest, "lora_magnitude_vector"))
        return fb_set_error(FB_ERR_UNSUPPORTED,
                            "%s: tensor '%s': DoRA adapters are not "
                            "supported",
                            adapter, t->name);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        if (!ends_with(rest, kinds[i].suffix)) continue;
        size_t len = strlen(rest) - strlen(kinds[i].suffix);
        if (len + 8 > size) break;
        memcpy(module, rest, len);
        module[len] = '\0';
        *kind = kinds[i].kind;
        char *mts = strstr(module, ".modules_to_save"); /* PEFT's wrapper, maybe with a name */
        if (mts && (*kind == 7 || *kind == 8)) {
            *mts = '\0';
            if (*kind == 8) strncat(module, ".bias", size - strlen(module) - 1);
            *kind = *kind == 7 ? 7 : 9;
            return FB_OK;
        }
        if (*kind == 8) { /* a whole bias: keep the suffix in the name */
            snprintf(module, size, "%s", rest);
            *kind = 9;
        }
        return FB_OK;
    }
    return fb_set_error(FB_ERR_FORMAT, "%s: tensor '%s' is not a LoRA or saved-module tensor",
                        adapter, t->name);
}

/* The computed tensor W + scale L R (or W + add) under W's name. */
static fb_status add_adapted(fb_model *out, const fb_tensor *W, const char *adapter_file, delta *d)
{
    if (!W->src) {
        delta_free(d);
        return fb_set_error(FB_ERR_UNSUPPORTED,
                            "tensor '%s': an adapter applies to models read "
                            "from files",
                            W->name);
    }
    fb_source_ref(W->src);
    d->src = W->src;
    d->offset = W->src_offset;
    d->dtype = W->dtype;
    fb_source *vs;
    fb_status st = fb_source_virtual(adapter_file, W->nbytes, delta_read, delta_free, d, &vs);
    if (st) return st;
    st = fb_model_add_tensor_lazy(out, W->name, W->dtype, W->ndim, W->shape, vs, 0);
    fb_source_unref(vs);
    return st;
}

fb_status fb_lora_apply(const fb_model *base, const char *adapter_dir, fb_model **out)
{
    *out = NULL;
    char path[4096];
    cJSON *cfg = NULL;
    fb_model *ad = NULL, *res = NULL;
    part *parts = NULL;
    char **modules = NULL;
    int nparts = 0;
    snprintf(path, sizeof path, "%s/adapter_config.json", adapter_dir);
    fb_status st = read_json(path, &cfg);
    if (st) return st;
    const cJSON *type = cJSON_GetObjectItem(cfg, "peft_type");
    const cJSON *r = cJSON_GetObjectItem(cfg, "r"), *alpha = cJSON_GetObjectItem(cfg, "lora_alpha");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA"))
        st = fb_set_error(FB_ERR_UNSUPPORTED, "%s: peft_type is not LORA", path);
    else if (!cJSON_IsNumber(r) || r->valuedouble < 1 || !cJSON_IsNumber(alpha))
        st = fb_set_error(FB_ERR_FORMAT, "%s: r and lora_alpha must be numbers", path);
    else if (cJSON_IsTrue(cJSON_GetObjectItem(cfg, "fan_in_fan_out")))
        st = fb_set_error(FB_ERR_UNSUPPORTED,
                          "%s: fan_in_fan_out adapters (GPT-2's Conv1D "
                          "layout) are not supported",
                          path);
    else if (cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_dora")))
        st = fb_set_error(FB_ERR_UNSUPPORTED, "%s: DoRA adapters (use_dora) are not supported",
                          path);
    const int rslora = cJSON_IsTrue(cJSON_GetObjectItem(cfg, "use_rslora"));
    const cJSON *rank_pattern = cJSON_GetObjectItem(cfg, "rank_pattern");
    const cJSON *alpha_pattern = cJSON_GetObjectItem(cfg, "alpha_pattern");
    char weights[4200];
    if (!st) {
        struct stat sb;
        snprintf(weights, sizeof weights, "%s/adapter_model.safetensors", adapter_dir);
        if (stat(weights, &sb) != 0)
            snprintf(weights, sizeof weights, "%s/adapter_model.bin", adapter_dir);
        st = fb_model_load(weights, &ad);
        if (st) st = fb_error_prefix(st, "LoRA adapter %s", adapter_dir);
    }
    /* group the adapter's tensors by module */
    if (!st) {
        parts = fb_calloc((size_t)(ad->count ? ad->count : 1), sizeof *parts);
        modules = fb_calloc((size_t)(ad->count ? ad->count : 1), sizeof *modules);
        if (!parts || !modules) st = FB_ERR_NOMEM;
    }
    for (int64_t i = 0; !st && i < ad->count; i++) {
        const fb_tensor *t = ad->tensors[i];
        char module[1024];
        int kind = 0;
        if ((st = classify(weights, t, module, sizeof module, &kind))) break;
        if (kind == 6 || kind == 7) strncat(module, ".weight", sizeof module - strlen(module) - 1);
        int k = 0;
        while (k < nparts && strcmp(modules[k], module))
            k++;
        if (k == nparts) {
            if (!(modules[k] = fb_strdup(module))) {
                st = FB_ERR_NOMEM;
                break;
            }
            nparts++;
        }
        part *p = &parts[k];
        if (kind == 1 || kind == 3) p->A = t;
        if (kind == 2 || kind == 4) p->B = t;
        if (kind == 3 || kind == 4) p->embedding = 1;
        if (kind == 5) p->bias = t;
        if (kind == 6 || kind == 7 || kind == 9) p->whole = t;
    }
    if (!st) st = fb_model_create(&res);
    if (!st && base->path && !(res->path = fb_strdup(base->path))) st = FB_ERR_NOMEM;
    for (int64_t i = 0; !st && i < base->count; i++) {
        const fb_tensor *W = base->tensors[i];
        char module[1024];
        snprintf(module, sizeof module, "%s", W->name);
        int is_bias = ends_with(module, ".bias");
        if (ends_with(module, ".weight"))
            module[strlen(module) - 7] = '\0';
        else if (is_bias)
            module[strlen(module) - 5] = '\0';
        part *p = NULL;
        for (int k = 0; k < nparts && !p; k++) {
            if (!strcmp(modules[k], W->name) && parts[k].whole)
                p = &parts[k];
            else if (!strcmp(modules[k], module) &&
                     (is_bias ? parts[k].bias != NULL : parts[k].A || parts[k].B))
                p = &parts[k];
        }
        if (!p) { /* untouched: the base's bytes */
            st = W->src ? fb_model_add_tensor_lazy(res, W->name, W->dtype, W->ndim, W->shape,
                                                   W->src, W->src_offset)
                        : fb_model_add_tensor_borrowed(res, W->name, W->dtype, W->ndim, W->shape,
                                                       W->data);
            continue;
        }
        if (p->whole) { /* a module saved whole replaces the base's tensor */
            const fb_tensor *T = p->whole;
            if (T->numel != W->numel || T->ndim != W->ndim)
                st = fb_set_error(FB_ERR_MISMATCH,
                                  "%s: tensor '%s' has another shape than the "
                                  "model's '%s'",
                                  weights, T->name, W->name);
            else
                st = fb_model_add_tensor_lazy(res, W->name, T->dtype, T->ndim, T->shape, T->src,
                                              T->src_offset);
            p->used = 1;
            continue;
        }
        if (!fb_dtype_is_float(W->dtype)) {
            st = fb_set_error(FB_ERR_MISMATCH, "%s: adapter for '%s', which is not a float tensor",
                              weights, W->name);
            break;
        }
        delta *d = fb_calloc(1, sizeof *d);
        if (!d) {
            st = FB_ERR_NOMEM;
            break;
        }
        p->used = 1;
        if (is_bias) {
            d->rows = 1;
            d->cols = W->numel;
            if (p->bias->numel != W->numel)
                st = fb_set_error(FB_ERR_MISMATCH, "%s: '%s' has %lld entries for the %lld of '%s'",
                                  weights, p->bias->name, (long long)p->bias->numel,
                                  (long long)W->numel, W->name);
            if (!st) st = fb_tensor_to_f32_copy(p->bias, &d->add);
        } else {
            const fb_tensor *A = p->A, *B = p->B;
            if (!A || !B || A->ndim != 2 || B->ndim != 2 || W->ndim != 2)
                st = fb_set_error(FB_ERR_FORMAT,
                                  "%s: module '%s' needs 2-D lora A and B for its "
                                  "2-D weight",
                                  weights, module);
            else {
                int64_t rank = A->shape[0];
                d->rows = W->shape[0];
                d->cols = W->shape[1];
                d->rank = rank;
                /* linear: B [out, r] A [r, in]; embedding: (B [dim, r] A [r, vocab])^T */
                int ok =
                    p->embedding
                        ? B->shape[1] == rank && A->shape[1] == d->rows && B->shape[0] == d->cols
                        : B->shape[1] == rank && A->shape[1] == d->cols && B->shape[0] == d->rows;
                if (!ok || rank < 1 || rank > 65536)
                    st = fb_set_error(FB_ERR_MISMATCH,
                                      "%s: module '%s': A %lldx%lld and B "
                                      "%lldx%lld do not fit '%s' (%lldx%lld)",
                                      weights, module, (long long)A->shape[0],
                                      (long long)A->shape[1], (long long)B->shape[0],
                                      (long long)B->shape[1], W->name, (long long)d->rows,
                                      (long long)d->cols);
                float *a = NULL, *b = NULL;
                if (!st) st = fb_tensor_to_f32_copy(A, &a);
                if (!st) st = fb_tensor_to_f32_copy(B, &b);
                if (!st && p->embedding) { /* L = A^T [vocab, r], R = B^T [r, dim] */
                    d->L = fb_malloc((size_t)(d->rows * rank) * sizeof *d->L);
                    d->R = fb_malloc((size_t)(rank * d->cols) * sizeof *d->R);
                    if (!d->L || !d->R) st = FB_ERR_NOMEM;
                    for (int64_t x = 0; !st && x < d->rows; x++)
                        for (int64_t k = 0; k < rank; k++)
                            d->L[x * rank + k] = a[k * d->rows + x];
                    for (int64_t k = 0; !st && k < rank; k++)
                        for (int64_t y = 0; y < d->cols; y++)
                            d->R[k * d->cols + y] = b[y * rank + k];
                    fb_free(a);
                    fb_free(b);
                } else if (!st) {
                    d->L = b;
                    d->R = a;
                } else {
                    fb_free(a);
                    fb_free(b);
                }
                double rr = r->valuedouble, al = alpha->valuedouble;
                const cJSON *pr = pattern_value(rank_pattern, module);
                const cJSON *pa = pattern_value(alpha_pattern, module);
                if (pr && cJSON_IsNumber(pr)) rr = pr->valuedouble;
                if (pa && cJSON_IsNumber(pa)) al = pa->valuedouble;
                if (!st && (int64_t)rr != rank)
                    st = fb_set_error(FB_ERR_MISMATCH,
                                      "%s: module '%s' has rank %lld; the config "
                                      "says %g",
                                      path, module, (long long)rank, rr);
                d->scale = (float)(rslora ? al / sqrt(rr) : al / rr);
            }
        }
        if (st) {
            delta_free(d);
            break;
        }
        st = add_adapted(res, W, weights, d);
    }
    for (int k = 0; !st && k < nparts; k++) {
        const part *p = &parts[k];
        if (p->used) continue;
        const fb_tensor *t = p->whole ? p->whole : p->A ? p->A : p->B ? p->B : p->bias;
        st = fb_set_error(FB_ERR_MISMATCH,
                          "%s: adapter tensor '%s' matches no tensor of the "
                          "model (%s)",
                          weights, t->name, base->path ? base->path : "in memory");
    }
    for (int64_t i = 0; !st && i < base->meta_count; i++)
        st = fb_model_set_metadata(res, base->meta_keys[i], base->meta_values[i]);
    for (int k = 0; k < nparts; k++)
        fb_free(modules[k]);
    fb_free(modules);
    fb_free(parts);
    fb_model_free(ad);
    cJSON_Delete(cfg);
    if (st) {
        fb_model_free(res);
        return st;
    }
    *out = res;
    return FB_OK;
}
