/*
 * extract_lora.c: a PEFT LoRA adapter from a fine-tuned model and its base, as
 * mergekit-extract-lora makes one (mergekit/scripts/extract_lora.py), from the state dicts.
 *
 * Per module of the fine-tuned model (a tensor name without .weight / .bias):
 *   - include/exclude: regular expressions searched in the module name; a module that is not
 *     included, or excluded, is left out of the adapter;
 *   - modules named in save_modules (whole name or last component), and, without embed_lora,
 *     the input embeddings (names with "embed", "wte") and lm_head, are saved whole
 *     (modules_to_save);
 *   - 2-D weights are decomposed: the task vector D = W_ft - W_base (float32, exactly) is
 *     factored by SVD (LAPACK dgesdd in double), rank r = min(max_rank, rows, cols), cut
 *     further to the singular values above sv_epsilon (at least 1 kept); A = sqrt(S) Vt,
 *     B = U sqrt(S) (distribute_scale), else A = S Vt, B = U; embeddings with embed_lora are
 *     factored transposed into lora_embedding_A/B as PEFT stores them; a bias becomes
 *     lora_B.bias = b_ft - b_base;
 *   - other weights (norms, convolutions) are saved whole unless skip_undecomposable.
 * adapter_config.json says r = the largest rank, lora_alpha = r, and rank_pattern and
 * alpha_pattern (equal) for modules of smaller rank, so every module's scale is 1. The SVD's
 * sign choices depend on LAPACK, but B A does not.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/model.h"
#include "core/status.h"
#include "io/outputs.h"
#include "io/writer.h"
#include "method/linalg.h"

typedef struct rx_list {
    regex_t *rx;
    int n;
} rx_list;

static fb_status compile(const char *const *pats, const char *what, rx_list *out)
{
    out->rx = NULL;
    out->n = 0;
    int n = 0;
    while (pats && pats[n])
        n++;
    if (!n) return FB_OK;
    out->rx = fb_calloc((size_t)n, sizeof *out->rx);
    if (!out->rx) return FB_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        if (regcomp(&out->rx[i], pats[i], REG_EXTENDED | REG_NOSUB)) {
            for (int k = 0; k < out->n; k++)
                regfree(&out->rx[k]);
            fb_free(out->rx);
            out->rx = NULL;
            out->n = 0;
            return fb_set_error(FB_ERR_ARG, "%s '%s' is not a regular expression", what, pats[i]);
        }
        out->n++;
    }
    return FB_OK;
}

static int search(const rx_list *l, const char *s)
{
    for (int i = 0; i < l->n; i++)
        if (regexec(&l->rx[i], s, 0, NULL, 0) == 0) return 1;
    return 0;
}

static void rx_free(rx_list *l)
{
    for (int i = 0; i < l->n; i++)
        regfree(&l->rx[i]);
    fb_free(l->rx);
}

static const char *last_part(const char *module)
{
    const char *dot = strrchr(module, '.');
    return dot ? dot + 1 : module;
}

static int in_names(const char *const *names, const char *module)
{
    for (; names && *names; names++)
        if (!strcmp(*names, module) || !strcmp(*names, last_part(module))) return 1;
    return 0;
}

static void add_unique(cJSON *array, const char *s)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, array) if (!strcmp(e->valuestring, s)) return;
    cJSON_AddItemToArray(array, cJSON_CreateString(s));
}

/* A tensor of the fine-tuned model as f32 minus the base's (the task vector). */
static fb_status task_vector(const fb_tensor *ft, const fb_model *base, float **out)
{
    const fb_tensor *b = fb_model_find(base, ft->name);
    if (!b) return fb_set_error(FB_ERR_MISMATCH, "the base model has no tensor '%s'", ft->name);
    if (b->ndim != ft->ndim || memcmp(b->shape, ft->shape, (size_t)ft->ndim * sizeof *b->shape))
        return fb_set_error(FB_ERR_MISMATCH, "tensor '%s' has another shape in the base model",
                            ft->name);
    float *x = fb_malloc((size_t)(ft->numel ? ft->numel : 1) * sizeof *x);
    float *y = fb_malloc((size_t)(ft->numel ? ft->numel : 1) * sizeof *y);
    fb_status st = x && y ? FB_OK : FB_ERR_NOMEM;
    if (!st) st = fb_tensor_to_f32(ft, x);
    if (!st) st = fb_tensor_to_f32(b, y);
    for (int64_t j = 0; !st && j < ft->numel; j++)
        x[j] -= y[j];
    fb_free(y);
    if (st) {
        fb_free(x);
        return st;
    }
    *out = x;
    return FB_OK;
}

/* Adds name (dtype of like) with the f32 values v to the adapter. */
static fb_status add_f32(fb_model *ad, const char *name, fb_dtype dt, int ndim,
                         const int64_t *shape, const float *v)
{
    fb_tensor *t;
    fb_status st = fb_model_add_tensor(ad, name, dt, ndim, shape, NULL, &t);
    if (st) return st;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return fb_convert_from_f32(dt, v, fb_tensor_mutable_data(t), n);
}

/* The decomposition of D (m x n) into B (m x r) and A (r x n); *rank_out = r. */
static fb_status decompose(const float *D, int64_t m, int64_t n, const fb_lora_extract_options *o,
                           const char *what, float **A, float **B, int64_t *rank_out)
{
    const int64_t k = m < n ? m : n;
    double *a = fb_malloc((size_t)(m * n) * sizeof *a), *U = fb_malloc((size_t)(m * k) * sizeof *U);
    double *S = fb_malloc((size_t)k * sizeof *S), *Vt = fb_malloc((size_t)(k * n) * sizeof *Vt);
    fb_status st = a && U && S && Vt ? FB_OK : FB_ERR_NOMEM;
    for (int64_t j = 0; !st && j < m * n; j++)
        a[j] = D[j];
    if (!st) st = fb_svd(a, m, n, U, S, Vt, what);
    int64_t r = k < o->max_rank ? k : o->max_rank;
    if (!st && o->sv_epsilon > 0) {
        int64_t above = 0;
        for (int64_t i = 0; i < k; i++)
            above += S[i] > o->sv_epsilon;
        if (above < r) r = above > 0 ? above : 1;
    }
    float *fa = st ? NULL : fb_malloc((size_t)(r * n) * sizeof *fa);
    float *fb = st ? NULL : fb_malloc((size_t)(m * r) * sizeof *fb);
    if (!st && (!fa || !fb)) st = FB_ERR_NOMEM;
    for (int64_t i = 0; !st && i < r; i++) {
        double sa = o->no_distribute_scale ? S[i] : sqrt(S[i]);
        double sb = o->no_distribute_scale ? 1.0 : sqrt(S[i]);
        for (int64_t j = 0; j < n; j++)
            fa[i * n + j] = (float)(sa * Vt[i * n + j]);
        for (int64_t j = 0; j < m; j++)
            fb[j * r + i] = (float)(U[j * k + i] * sb);
    }
    fb_free(a);
    fb_free(U);
    fb_free(S);
    fb_free(Vt);
    if (st) {
        fb_free(fa);
        fb_free(fb);
        return st;
    }
    *A = fa;
    *B = fb;
    *rank_out = r;
    return FB_OK;
}

static int is_input_embedding(const char *module)
{
    return strstr(module, "embed") || !strcmp(last_part(module), "wte");
}

fb_status fb_lora_extract(const char *model_path, const char *base_path, const char *out_dir,
                          const fb_lora_extract_options *opts)
{
    fb_lora_extract_options o = opts ? *opts : (fb_lora_extract_options){0};
    if (o.max_rank <= 0) o.max_rank = 128;
    fb_model *ft = NULL, *base = NULL, *ad = NULL;
    rx_list inc = {0}, exc = {0};
    cJSON *cfg = cJSON_CreateObject(), *targets = cJSON_CreateArray(), *saved = cJSON_CreateArray();
    cJSON *ranks = cJSON_CreateObject();
    fb_status st = cfg && targets && saved && ranks ? FB_OK : FB_ERR_NOMEM;
    if (!st) st = compile(o.include_regexes, "include regex", &inc);
    if (!st) st = compile(o.exclude_regexes, "exclude regex", &exc);
    if (!st) st = fb_model_load(model_path, &ft);
    if (!st) st = fb_model_load(base_path, &base);
    if (!st) { /* the adapter folder must not be, or hold, a file of either model */
        fb_input_path *in = NULL;
        int nin = 0;
        int64_t cap = 0;
        const fb_model *ms[2] = {ft, base};
        for (int k = 0; k < 2 && !st; k++) {
            if (ms[k]->path)
                st = fb_input_paths_add(&in, &nin, &cap, ms[k]->path, "model",
                                        k ? base_path : model_path);
            for (int64_t i = 0; !st && i < ms[k]->count; i++)
                if (ms[k]->tensors[i]->src)
                    st = fb_input_paths_add(&in, &nin, &cap, ms[k]->tensors[i]->src->path, "model",
                                            k ? base_path : model_path);
        }
        fb_output_path out = {out_dir, "adapter folder"};
        if (!st) st = fb_outputs_check(&out, 1, in, nin);
        fb_input_paths_free(in, nin);
    }
    if (!st) st = fb_model_create(&ad);
    /* embeddings of different vocabularies are saved whole (mergekit does the same) */
    int embed_lora = o.embed_lora;
    for (int64_t i = 0; !st && i < ft->count && embed_lora; i++) {
        const fb_tensor *t = ft->tensors[i], *b = fb_model_find(base, t->name);
        if (is_input_embedding(t->name) && b && b->shape[0] != t->shape[0]) embed_lora = 0;
    }
    int64_t max_r = 0;
    for (int64_t i = 0; !st && i < ft->count; i++) {
        const fb_tensor *t = ft->tensors[i];
        char module[1024], name[1100];
        snprintf(module, sizeof module, "%s", t->name);
        int is_bias = strlen(module) > 5 && !strcmp(module + strlen(module) - 5, ".bias");
        int is_weight = strlen(module) > 7 && !strcmp(module + strlen(module) - 7, ".weight");
        if (is_bias)
            module[strlen(module) - 5] = '\0';
        else if (is_weight)
            module[strlen(module) - 7] = '\0';
        if (!fb_dtype_is_float(t->dtype)) continue;
        if ((inc.n && !search(&inc, module)) || search(&exc, module)) continue;
        char weight_name[1100];
        snprintf(weight_name, sizeof weight_name, "%s.weight", module);
        const fb_tensor *w = fb_model_find(ft, weight_name);
        int embedding = w && w->ndim == 2 && is_input_embedding(module);
        int head = w && w->ndim == 2 && !strcmp(last_part(module), "lm_head");
        int lowrank = w && w->ndim == 2;
        int whole = in_names(o.save_modules, module) || (!embed_lora && (embedding || head));
        if (!whole && !lowrank) { /* a norm or a convolution: whole, or left out */
            if (o.skip_undecomposable) continue;
            whole = 1;
        }
        if (whole) { /* the fine-tuned tensor as it is */
            snprintf(name, sizeof name, "base_model.model.%s", t->name);
            st = t->src
                     ? fb_model_add_tensor_lazy(ad, name, t->dtype, t->ndim, t->shape, t->src,
                                                t->src_offset)
                     : fb_model_add_tensor_borrowed(ad, name, t->dtype, t->ndim, t->shape, t->data);
            if (!st) add_unique(saved, last_part(module));
            continue;
        }
        float *D = NULL;
        if ((st = task_vector(t, base, &D))) break;
        if (is_bias) {
            snprintf(name, sizeof name, "base_model.model.%s.lora_B.bias", module);
            st = add_f32(ad, name, t->dtype, t->ndim, t->shape, D);
            fb_free(D);
            continue;
        }
        const int transpose = embedding; /* embed_lora: PEFT's lora_embedding_A/B */
        int64_t m = t->shape[0], n = t->shape[1];
        if (transpose) {
            float *T = fb_malloc((size_t)(m * n) * sizeof *T);
            if (!T) st = FB_ERR_NOMEM;
            for (int64_t x = 0; !st && x < m; x++)
                for (int64_t y = 0; y < n; y++)
                    T[y * m + x] = D[x * n + y];
            fb_free(D);
            D = T;
            int64_t tmp = m;
            m = n;
            n = tmp;
            if (st) break;
        }
        float *A = NULL, *B = NULL;
        int64_t r = 0;
        st = decompose(D, m, n, &o, t->name, &A, &B, &r);
        fb_free(D);
        if (st) break;
        int64_t sa[2] = {r, n}, sb[2] = {m, r};
        snprintf(name, sizeof name, "base_model.model.%s.%s", module,
                 transpose ? "lora_embedding_A" : "lora_A.weight");
        st = add_f32(ad, name, t->dtype, 2, sa, A);
        snprintf(name, sizeof name, "base_model.model.%s.%s", module,
                 transpose ? "lora_embedding_B" : "lora_B.weight");
        if (!st) st = add_f32(ad, name, t->dtype, 2, sb, B);
        fb_free(A);
        fb_free(B);
        if (!st) {
            add_unique(targets, last_part(module));
            cJSON_AddNumberToObject(ranks, module, (double)r);
            if (r > max_r) max_r = r;
        }
    }
    if (!st && ad->count == 0)
        st = fb_set_error(FB_ERR_ARG, "%s: no tensor to extract (check include/exclude)",
                          model_path);
    char *json = NULL;
    if (!st) {
        cJSON *pattern = cJSON_CreateObject(), *apattern = cJSON_CreateObject();
        const cJSON *e;
        cJSON_ArrayForEach(e, ranks) if ((int64_t)e->valuedouble != max_r)
        {
            cJSON_AddNumberToObject(pattern, e->string, e->valuedouble);
            cJSON_AddNumberToObject(apattern, e->string, e->valuedouble);
        }
        cJSON_AddStringToObject(cfg, "base_model_name_or_path", base_path);
        cJSON_AddStringToObject(cfg, "peft_type", "LORA");
        cJSON_AddBoolToObject(cfg, "use_rslora", 0);
        cJSON_AddItemToObject(cfg, "target_modules", targets);
        cJSON_AddItemToObject(cfg, "modules_to_save", saved);
        targets = saved = NULL;
        cJSON_AddStringToObject(cfg, "task_type", "CAUSAL_LM");
        cJSON_AddNumberToObject(cfg, "r", (double)(max_r ? max_r : 1));
        cJSON_AddNumberToObject(cfg, "lora_alpha", (double)(max_r ? max_r : 1));
        cJSON_AddItemToObject(cfg, "rank_pattern", pattern);
        cJSON_AddItemToObject(cfg, "alpha_pattern", apattern);
        cJSON_AddNumberToObject(cfg, "lora_dropout", 0.0);
        cJSON_AddBoolToObject(cfg, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(cfg, "inference_mode", 1);
        json = cJSON_Print(cfg);
        if (!json) st = FB_ERR_NOMEM;
    }
    fb_buf card;
    fb_buf_init(&card);
    if (!st) {
        fb_buf_printf(&card,
                      "---\nbase_model: %s\nlibrary_name: peft\ntags:\n- mergekit\n"
                      "- peft\n- fusionbench-c\n---\n# LoRA adapter\n\nExtracted with "
                      "`fusion_bench mergekit-extract-lora` (FusionBench-C) from `%s` "
                      "relative to `%s`: the largest rank is %lld",
                      base_path, model_path, base_path, (long long)max_r);
        if (o.sv_epsilon > 0) fb_buf_printf(&card, ", singular values above %g kept", o.sv_epsilon);
        fb_buf_printf(&card, ".\n");
        if (card.failed) st = FB_ERR_NOMEM;
    }
    if (!st) {
        fb_file_blob files[2] = {{"adapter_config.json", json, strlen(json)},
                                 {"README.md", card.data, card.len}};
        fb_save_options so = {.files = files, .num_files = 2};
        st = fb_model_save_as(ad, out_dir, &so, "adapter_model");
    }
    fb_buf_free(&card);
    cJSON_free(json);
    cJSON_Delete(cfg);
    cJSON_Delete(targets);
    cJSON_Delete(saved);
    cJSON_Delete(ranks);
    rx_free(&inc);
    rx_free(&exc);
    fb_model_free(ad);
    fb_model_free(ft);
    fb_model_free(base);
    return st;
}
