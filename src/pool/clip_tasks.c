/*
 * clip_tasks.c: FusionBench's CLIP benchmark task pool (see clip_tasks.h), translated into the
 * project's own task pool: each dataset becomes an image-folder source and a task, the heads
 * are made from the text tower once and kept in a cache folder.
 */
#include "clip_tasks.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/model.h"
#include "core/status.h"
#include "io/dataset.h"
#include "io/hub.h"
#include "io/writer.h"
#include "nn/clip_vit.h"
#include "tasks.h"

/* ------------------------------------------------------------- zero-shot heads -- */

/* template with every "{c}" replaced by name; fb_malloc'd */
static char *fill_template(const char *tmpl, const char *name)
{
    fb_buf b;
    fb_buf_init(&b);
    for (const char *p = tmpl; *p;) {
        const char *q = strstr(p, "{c}");
        if (!q) {
            fb_buf_puts(&b, p);
            break;
        }
        fb_buf_append(&b, p, (size_t)(q - p));
        fb_buf_puts(&b, name);
        p = q + 3;
    }
    if (b.failed) {
        fb_buf_free(&b);
        return NULL;
    }
    return b.data ? b.data : fb_strdup("");
}

fb_status fb_zeroshot_head(fb_clip_text *net, fb_clip_tokenizer *tok, const char *const *classnames,
                           int64_t K, const char *const *templates, int64_t NT, float *head)
{
    const fb_clip_text_config c = fb_clip_text_get_config(net);
    const int64_t L = c.max_positions, F = c.projection ? c.projection : c.hidden;
    int32_t *ids = fb_malloc((size_t)(NT * L) * sizeof *ids);
    int64_t *len = fb_malloc((size_t)NT * sizeof *len);
    float *feat = fb_malloc((size_t)(NT * F) * sizeof *feat);
    int32_t *one = fb_malloc((size_t)L * sizeof *one);
    double *mean = fb_malloc((size_t)F * sizeof *mean);
    fb_status st = ids && len && feat && one && mean ? FB_OK : FB_ERR_NOMEM;
    for (int64_t k = 0; k < K && !st; k++) {
        int64_t T = 0;
        for (int64_t j = 0; j < NT && !st; j++) {
            char *text = fill_template(templates[j], classnames[k]);
            if (!text) {
                st = FB_ERR_NOMEM;
                break;
            }
            st = fb_clip_tokenize(tok, text, one, L, &len[j]);
            fb_free(text);
            if (!st) {
                memcpy(ids + j * L, one, (size_t)len[j] * sizeof *one);
                T = len[j] > T ? len[j] : T;
            }
        }
        if (st) break;
        /* padded to the longest with the end token (CLIP's pad token); the pooled position is
         * each text's own end token, which attends only to earlier positions */
        for (int64_t j = 0; j < NT; j++) {
            memmove(one, ids + j * L, (size_t)len[j] * sizeof *one);
            for (int64_t t = len[j]; t < T; t++)
                one[t] = fb_clip_tokenizer_eos(tok);
            memcpy(ids + j * T, one, (size_t)T * sizeof *one);
        }
        if ((st = fb_clip_text_forward(net, ids, NT, T, feat))) break;
        for (int64_t f = 0; f < F; f++)
            mean[f] = 0.0;
        for (int64_t j = 0; j < NT; j++) {
            double s = 0.0;
            for (int64_t f = 0; f < F; f++)
                s += (double)feat[j * F + f] * feat[j * F + f];
            const double r = sqrt(s);
            for (int64_t f = 0; f < F; f++)
                mean[f] += r > 0 ? feat[j * F + f] / r : 0.0;
        }
        double s = 0.0;
        for (int64_t f = 0; f < F; f++) {
            mean[f] /= (double)NT;
            s += mean[f] * mean[f];
        }
        const double r = sqrt(s);
        for (int64_t f = 0; f < F; f++)
            head[k * F + f] = (float)(r > 0 ? mean[f] / r : 0.0);
    }
    fb_free(ids);
    fb_free(len);
    fb_free(feat);
    fb_free(one);
    fb_free(mean);
    return st;
}

/* ---------------------------------------------------------- FusionBench's form -- */

static const char *const fb_keys[] = {
    "_target_", "_recursive_", "defaults", "test_datasets", "base_model", "clip_model", "processor",
    "data_processor", "dataloader_kwargs", "layer_wise_feature_save_path",
    "layer_wise_feature_first_token_only", "layer_wise_feature_max_num",
    /* the project's own */
    "data_root", "clip_tasks", "heads_cache", "image_cache", "split", "evaluate", "batch_size",
    NULL};

/* The defaults entry that selects the test datasets ("/dataset/.../test@test_datasets"). */
static const fb_config *defaults_datasets(const fb_config *node)
{
    const fb_config *d = fb_cfg_map_get(node, "defaults");
    if (!d || d->kind != FB_CFG_SEQ) return NULL;
    for (int i = 0; i < d->count; i++) {
        const fb_config *e = d->items[i];
        if (e->kind != FB_CFG_MAP) continue;
        for (int j = 0; j < e->count; j++) {
            const size_t n = strlen(e->keys[j]);
            if (n >= 14 && !strcmp(e->keys[j] + n - 14, "@test_datasets")) return e->items[j];
        }
    }
    return NULL;
}

int fb_clip_tasks_is_fusionbench(const fb_config *node)
{
    return node && node->kind == FB_CFG_MAP &&
           (fb_cfg_map_get(node, "test_datasets") || defaults_datasets(node));
}

typedef struct task_info {
    const char *name;
    fb_config *def; /* config/clip_tasks/<name>.yaml */
    const char **classnames, **templates;
    int64_t K, NT;
} task_info;

typedef struct ctx {
    const fb_config *node;
    task_info *tasks;
    int ntasks;
    char *snapshot, *clip_tasks_dir, *data_root, *cache_dir, *image_cache;
    fb_model *clip; /* the pretrained CLIPModel */
    int split;      /* FB_SPLIT_TEST or FB_SPLIT_TRAIN */
} ctx;

static fb_status dataset_names(ctx *c)
{
    const fb_config *td = fb_cfg_map_get(c->node, "test_datasets");
    if (fb_cfg_is_null(td) || (td->kind == FB_CFG_SCALAR && !strcmp(td->value, "???")))
        td = defaults_datasets(c->node); /* Hydra's "???": given by the defaults list */
    if (!td || (td->kind != FB_CFG_SEQ && td->kind != FB_CFG_MAP) || td->count == 0)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: taskpool.test_datasets must be a list of dataset "
                            "names (or FusionBench's mapping of them)",
                            fb_cfg_where(td ? td : c->node));
    c->tasks = fb_calloc((size_t)td->count, sizeof *c->tasks);
    if (!c->tasks) return FB_ERR_NOMEM;
    for (int i = 0; i < td->count; i++) {
        const char *s;
        if (td->kind == FB_CFG_MAP)
            s = td->keys[i];
        else if (fb_cfg_string(td->items[i], "taskpool.test_datasets", &s))
            return FB_ERR_CONFIG;
        if (!*s || strchr(s, '/') || s[0] == '.')
            return fb_set_error(FB_ERR_CONFIG, "%s: '%s' is not a dataset name", fb_cfg_where(td),
                                s);
        for (int j = 0; j < c->ntasks; j++)
            if (!strcmp(c->tasks[j].name, s))
                return fb_set_error(FB_ERR_CONFIG, "%s: dataset '%s' is listed twice",
                                    fb_cfg_where(td), s);
        c->tasks[c->ntasks++].name = s;
    }
    /* `evaluate` narrows them: only those are checked, loaded and given heads */
    const fb_config *ev = fb_cfg_map_get(c->node, "evaluate");
    if (fb_cfg_is_null(ev)) return FB_OK;
    if (ev->kind != FB_CFG_SEQ || ev->count == 0)
        return fb_set_error(FB_ERR_CONFIG, "%s: taskpool.evaluate must be a list of dataset names",
                            fb_cfg_where(ev));
    int kept = 0;
    for (int i = 0; i < c->ntasks; i++) {
        int want = 0;
        for (int j = 0; j < ev->count && !want; j++)
            want = ev->items[j]->kind == FB_CFG_SCALAR &&
                   !strcmp(ev->items[j]->value, c->tasks[i].name);
        if (want) c->tasks[kept++] = c->tasks[i];
    }
    for (int j = 0; j < ev->count; j++) {
        const char *s;
        if (fb_cfg_string(ev->items[j], "taskpool.evaluate", &s)) return FB_ERR_CONFIG;
        int found = 0;
        for (int i = 0; i < kept && !found; i++)
            found = !strcmp(c->tasks[i].name, s);
        if (!found)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: taskpool.evaluate: '%s' is not one of the "
                                "task pool's datasets",
                                fb_cfg_where(ev->items[j]), s);
    }
    c->ntasks = kept;
    return FB_OK;
}

static fb_status string_list(const fb_config *def, const char *key, const char *file,
                             const char ***out, int64_t *n)
{
    const fb_config *l = fb_cfg_map_get(def, key);
    if (!l || l->kind != FB_CFG_SEQ || l->count == 0)
        return fb_set_error(FB_ERR_FORMAT, "%s: '%s' must be a non-empty list of strings", file,
                            key);
    *out = fb_calloc((size_t)l->count, sizeof **out);
    if (!*out) return FB_ERR_NOMEM;
    for (int i = 0; i < l->count; i++)
        if (fb_cfg_string(l->items[i], key, &(*out)[i])) return FB_ERR_FORMAT;
    *n = l->count;
    return FB_OK;
}

static fb_status load_task_defs(ctx *c)
{
    for (int i = 0; i < c->ntasks; i++) {
        task_info *t = &c->tasks[i];
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s.yaml", c->clip_tasks_dir, t->name);
        if (access(path, R_OK))
            return fb_set_error(FB_ERR_NOT_FOUND,
                                "dataset '%s': no class names and templates "
                                "(%s: %s; the tasks FusionBench-C has are the "
                                "files in %s)",
                                t->name, path, strerror(errno), c->clip_tasks_dir);
        fb_status st = fb_config_load(path, &t->def);
        if (!st) st = string_list(t->def, "classnames", path, &t->classnames, &t->K);
        if (!st) st = string_list(t->def, "templates", path, &t->templates, &t->NT);
        for (int64_t j = 0; j < t->NT && !st; j++)
            if (!strstr(t->templates[j], "{c}"))
                st = fb_set_error(FB_ERR_FORMAT, "%s: template '%s' has no {c}", path,
                                  t->templates[j]);
        if (st) return st;
    }
    return FB_OK;
}

/* The pretrained CLIPModel's snapshot folder: clip_model.pretrained_model_name_or_path, else
 * base_model, else FusionBench's default; a path, or a hub id found in the cache. */
static fb_status find_model(ctx *c)
{
    const char *id = "openai/clip-vit-base-patch32";
    const fb_config *n = fb_cfg_map_get(c->node, "base_model");
    if (!fb_cfg_is_null(n) && fb_cfg_string(n, "taskpool.base_model", &id)) return FB_ERR_CONFIG;
    const fb_config *cm = fb_cfg_map_get(c->node, "clip_model");
    const fb_config *p = cm && cm->kind == FB_CFG_MAP
                             ? fb_cfg_map_get(cm, "pretrained_model_name_or_path")
                         : cm && cm->kind == FB_CFG_SCALAR ? cm
                                                           : NULL;
    const char *s;
    if (!fb_cfg_is_null(p) && !fb_cfg_string(p, "taskpool.clip_model", &s) && s[0] != '$') id = s;
    struct stat sb;
    if (!stat(id, &sb) && S_ISDIR(sb.st_mode)) {
        c->snapshot = fb_strdup(id);
        return c->snapshot ? FB_OK : FB_ERR_NOMEM;
    }
    if (!fb_hub_is_model_id(id))
        return fb_set_error(FB_ERR_NOT_FOUND,
                            "taskpool: CLIP model '%s' is neither a folder nor "
                            "a Hugging Face model id",
                            id);
    return fb_hub_resolve(id, NULL, &c->snapshot);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* dir's class folders must be the labels 0..K-1, in byte order (zero-padded to one width). */
static fb_status check_class_folders(const char *dir, const task_info *t)
{
    DIR *d = opendir(dir);
    if (!d) return FB_ERR_IO;
    char **names = NULL;
    int64_t n = 0, cap = 0;
    fb_status st = FB_OK;
    struct dirent *e;
    while ((e = readdir(d)) && !st) {
        if (e->d_name[0] == '.') continue;
        char path[PATH_MAX];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &sb) || !S_ISDIR(sb.st_mode)) continue;
        if (fb_reserve(&names, &cap, n + 1, sizeof *names) || !(names[n] = fb_strdup(e->d_name)))
            st = FB_ERR_NOMEM;
        else
            n++;
    }
    closedir(d);
    if (!st && n) qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int64_t i = 0; i < n && !st; i++) {
        char *end;
        errno = 0;
        const long long v = strtoll(names[i], &end, 10);
        if (*end || end == names[i] || names[i][0] == '-' || names[i][0] == '+' || v != i)
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: class folder '%s': the folders must be the "
                              "labels 0..%lld, zero-padded to one width (as the "
                              "export command in docs/benchmark.md writes them)",
                              dir, names[i], (long long)t->K - 1);
    }
    if (!st && n != t->K)
        st = fb_set_error(FB_ERR_FORMAT,
                          "%s: %lld class folders, but dataset '%s' has %lld "
                          "classes",
                          dir, (long long)n, t->name, (long long)t->K);
    for (int64_t i = 0; i < n; i++)
        fb_free(names[i]);
    fb_free(names);
    return st;
}

/* The data root: taskpool.data_root, else $FUSION_BENCH_DATA. */
static fb_status find_data(ctx *c)
{
    const fb_config *n = fb_cfg_map_get(c->node, "data_root");
    if (!fb_cfg_is_null(n)) {
        fb_status st = fb_cfg_path(n, "taskpool.data_root", &c->data_root);
        if (st) return st;
    } else {
        const char *env = getenv("FUSION_BENCH_DATA");
        if (!env || !*env)
            return fb_set_error(FB_ERR_CONFIG,
                                "taskpool: no data root: set FUSION_BENCH_DATA or "
                                "taskpool.data_root to the folder holding "
                                "<dataset>/%s/<label>/<image> (docs/benchmark.md)",
                                fb_split_names[c->split]);
        if (!(c->data_root = fb_strdup(env))) return FB_ERR_NOMEM;
    }
    for (int i = 0; i < c->ntasks; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s/%s", c->data_root, c->tasks[i].name,
                 fb_split_names[c->split]);
        struct stat sb;
        if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) {
            const char *hf = NULL;
            const fb_config *ds = fb_cfg_map_get(c->tasks[i].def, "dataset");
            if (!fb_cfg_is_null(ds)) fb_cfg_string(ds, "dataset", &hf);
            return fb_set_error(FB_ERR_NOT_FOUND,
                                "dataset '%s': no folder %s; export it on a "
                                "machine with the datasets package: "
                                "python3 tools/export_dataset.py %s %s %s",
                                c->tasks[i].name, dir, hf ? hf : "DATASET",
                                fb_split_names[c->split], dir);
        }
        fb_status st = check_class_folders(dir, &c->tasks[i]);
        if (st) return st;
    }
    return FB_OK;
}

/* ------------------------------------------------------------------ the cache -- */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* What a head depends on: the model snapshot (path, and size and time of each file the text
 * tower and tokenizer come from) and the task's names and templates. */
static uint64_t head_key(const ctx *c, const task_info *t)
{
    uint64_t h = 0xcbf29ce484222325ull;
    char real[PATH_MAX];
    const char *snap = realpath(c->snapshot, real) ? real : c->snapshot;
    h = fnv(h, snap, strlen(snap) + 1);
    static const char *const files[] = {"config.json",       "model.safetensors",
                                        "pytorch_model.bin", "model.safetensors.index.json",
                                        "vocab.json",        "merges.txt"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char p[PATH_MAX];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", c->snapshot, files[i]);
        int64_t v[3] = {-1, -1, -1};
        if (!stat(p, &sb)) v[0] = sb.st_size, v[1] = sb.st_mtim.tv_sec, v[2] = sb.st_mtim.tv_nsec;
        h = fnv(h, v, sizeof v);
    }
    for (int64_t k = 0; k < t->K; k++)
        h = fnv(h, t->classnames[k], strlen(t->classnames[k]) + 1);
    h = fnv(h, "\x01", 1);
    for (int64_t j = 0; j < t->NT; j++)
        h = fnv(h, t->templates[j], strlen(t->templates[j]) + 1);
    return h;
}

/* The cache folders: heads_cache and image_cache, else under $XDG_CACHE_HOME/fusionbench-c
 * (or ~/.cache/fusionbench-c); none when neither variable is set. */
static fb_status find_caches(ctx *c)
{
    const char *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    char base[PATH_MAX] = "";
    if (x && *x)
        snprintf(base, sizeof base, "%s/fusionbench-c", x);
    else if (home && *home)
        snprintf(base, sizeof base, "%s/.cache/fusionbench-c", home);
    const char *keys[2] = {"heads_cache", "image_cache"}, *sub[2] = {"zeroshot_heads", "images"};
    char **dst[2] = {&c->cache_dir, &c->image_cache};
    for (int i = 0; i < 2; i++) {
        const fb_config *n = fb_cfg_map_get(c->node, keys[i]);
        char k[64], p[PATH_MAX];
        snprintf(k, sizeof k, "taskpool.%s", keys[i]);
        if (!fb_cfg_is_null(n)) {
            fb_status st = fb_cfg_path(n, k, dst[i]);
            if (st) return st;
        } else if (*base) {
            snprintf(p, sizeof p, "%s/%s", base, sub[i]);
            if (!(*dst[i] = fb_strdup(p))) return FB_ERR_NOMEM;
        }
    }
    return FB_OK;
}

/* Every task's head into heads (tensor = task name): from the cache when there, else made with
 * the text tower (built once) and written to the cache (a cache that cannot be written is
 * skipped: the heads are still used). */
static fb_status make_heads(ctx *c, int64_t F, fb_model *heads)
{
    fb_clip_text *net = NULL;
    fb_clip_tokenizer *tok = NULL;
    fb_status st = FB_OK;
    for (int i = 0; i < c->ntasks && !st; i++) {
        const task_info *t = &c->tasks[i];
        char path[PATH_MAX] = "";
        if (c->cache_dir)
            snprintf(path, sizeof path, "%s/%s-%016llx.safetensors", c->cache_dir, t->name,
                     (unsigned long long)head_key(c, t));
        fb_model *cached = NULL;
        const fb_tensor *h = NULL;
        if (*path && !access(path, R_OK) && !fb_model_load(path, &cached))
            h = fb_model_find(cached, t->name);
        const int64_t shape[2] = {t->K, F};
        fb_tensor *dst;
        if ((st = fb_model_add_tensor(heads, t->name, FB_F32, 2, shape, NULL, &dst))) {
            fb_model_free(cached);
            break;
        }
        float *w = fb_tensor_mutable_data(dst);
        if (h && fb_tensor_ndim(h) == 2 && fb_tensor_shape(h)[0] == t->K &&
            fb_tensor_shape(h)[1] == F && fb_tensor_dtype(h) == FB_F32 && !fb_tensor_to_f32(h, w)) {
            fb_model_free(cached);
            continue;
        }
        fb_model_free(cached);
        fb_clear_error();
        if (!net) {
            char cfg[PATH_MAX], vocab[PATH_MAX], merges[PATH_MAX];
            snprintf(cfg, sizeof cfg, "%s/config.json", c->snapshot);
            snprintf(vocab, sizeof vocab, "%s/vocab.json", c->snapshot);
            snprintf(merges, sizeof merges, "%s/merges.txt", c->snapshot);
            fb_clip_text_config tc;
            st = fb_clip_text_config_load(cfg, &tc);
            if (!st && (tc.projection ? tc.projection : tc.hidden) != F)
                st = fb_set_error(FB_ERR_MISMATCH,
                                  "%s: the text features have %lld entries, the "
                                  "image features %lld",
                                  cfg, (long long)(tc.projection ? tc.projection : tc.hidden),
                                  (long long)F);
            if (!st) st = fb_clip_text_create(&tc, c->clip, &net);
            if (!st) st = fb_clip_tokenizer_load(vocab, merges, &tok);
            if (st) break;
        }
        st = fb_zeroshot_head(net, tok, t->classnames, t->K, t->templates, t->NT, w);
        if (!st && *path) {
            fb_model *one;
            fb_mkdirs(c->cache_dir);
            if (!fb_model_create(&one)) {
                if (!fb_model_add_tensor_borrowed(one, t->name, FB_F32, 2, shape, w) &&
                    !fb_model_set_metadata(one, "model", c->snapshot))
                    fb_model_save(one, path, NULL);
                fb_model_free(one);
            }
            fb_clear_error();
        }
    }
    fb_clip_text_free(net);
    fb_clip_tokenizer_free(tok);
    return st;
}

/* ------------------------------------------------------------------ translate -- */

/* crop size, mean and std from the snapshot's preprocessor_config.json (CLIP's defaults when
 * there is none) */
static fb_status processor(const ctx *c, int64_t image_size, int64_t *size, double mean[3],
                           double std[3])
{
    static const double m0[3] = {0.48145466, 0.4578275, 0.40821073};
    static const double s0[3] = {0.26862954, 0.26130258, 0.27577711};
    memcpy(mean, m0, sizeof m0);
    memcpy(std, s0, sizeof s0);
    *size = image_size;
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/preprocessor_config.json", c->snapshot);
    uint8_t *data;
    size_t len;
    if (access(p, R_OK)) return FB_OK;
    fb_status st = fb_read_file(p, 1 << 20, &data, &len);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength((const char *)data, len);
    fb_free(data);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object", p);
    }
    const cJSON *crop = cJSON_GetObjectItemCaseSensitive(root, "crop_size");
    if (cJSON_IsObject(crop)) crop = cJSON_GetObjectItemCaseSensitive(crop, "height");
    if (cJSON_IsNumber(crop)) *size = (int64_t)crop->valuedouble;
    const char *keys[2] = {"image_mean", "image_std"};
    double *dst[2] = {mean, std};
    for (int k = 0; k < 2 && !st; k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        if (!a) continue;
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: '%s' must be three numbers", p, keys[k]);
            break;
        }
        for (int i = 0; i < 3; i++) {
            const cJSON *v = cJSON_GetArrayItem(a, i);
            if (!cJSON_IsNumber(v) || (k == 1 && !(v->valuedouble > 0))) {
                st = fb_set_error(FB_ERR_FORMAT, "%s: '%s' must be three numbers", p, keys[k]);
                break;
            }
            dst[k][i] = v->valuedouble;
        }
    }
    cJSON_Delete(root);
    if (!st && *size != image_size)
        st = fb_set_error(FB_ERR_FORMAT, "%s: crop_size %lld, but the vision tower takes %lld", p,
                          (long long)*size, (long long)image_size);
    return st;
}

static fb_status check_keys(const fb_config *node)
{
    for (int i = 0; i < node->count; i++) {
        int j = 0;
        while (fb_keys[j] && strcmp(fb_keys[j], node->keys[i]))
            j++;
        if (!fb_keys[j])
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: unknown key '%s' in FusionBench's "
                                "CLIPVisionModelTaskPool (see docs/benchmark.md)",
                                fb_cfg_where(node->items[i]), node->keys[i]);
    }
    const fb_config *f = fb_cfg_map_get(node, "layer_wise_feature_save_path");
    if (!fb_cfg_is_null(f))
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: taskpool.layer_wise_feature_save_path is not "
                            "implemented",
                            fb_cfg_where(f));
    return FB_OK;
}

static void ctx_free(ctx *c)
{
    for (int i = 0; i < c->ntasks; i++) {
        fb_config_free(c->tasks[i].def);
        fb_free(c->tasks[i].classnames);
        fb_free(c->tasks[i].templates);
    }
    fb_free(c->tasks);
    fb_free(c->snapshot);
    fb_free(c->clip_tasks_dir);
    fb_free(c->data_root);
    fb_free(c->cache_dir);
    fb_free(c->image_cache);
    fb_model_free(c->clip);
}

fb_status fb_clip_tasks_translate(const fb_config *node, fb_config **native, fb_model **heads,
                                  char **model_config)
{
    *native = NULL;
    *heads = NULL;
    *model_config = NULL;
    ctx c = {.node = node, .split = FB_SPLIT_TEST};
    fb_status st = check_keys(node);
    const fb_config *n;
    if (!st && !fb_cfg_is_null(n = fb_cfg_map_get(node, "split"))) {
        const char *s;
        if (!(st = fb_cfg_string(n, "taskpool.split", &s))) {
            if (!strcmp(s, "train"))
                c.split = FB_SPLIT_TRAIN;
            else if (strcmp(s, "test"))
                st = fb_set_error(FB_ERR_CONFIG,
                                  "%s: taskpool.split must be test or train for "
                                  "FusionBench's datasets",
                                  fb_cfg_where(n));
        }
    }
    if (!st) st = dataset_names(&c);
    n = fb_cfg_map_get(node, "clip_tasks");
    if (!st && fb_cfg_is_null(n))
        st = fb_set_error(FB_ERR_CONFIG, "taskpool.clip_tasks: the folder of task definitions "
                                         "is not set (the CLI sets it to its config/clip_tasks)");
    if (!st) st = fb_cfg_path(n, "taskpool.clip_tasks", &c.clip_tasks_dir);
    if (!st) st = load_task_defs(&c);
    if (!st) st = find_model(&c);
    char cfg[PATH_MAX];
    fb_clip_config vc;
    if (!st) {
        snprintf(cfg, sizeof cfg, "%s/config.json", c.snapshot);
        st = fb_clip_config_load(cfg, &vc);
    }
    if (!st) st = find_data(&c);
    int64_t size = 0;
    double mean[3], sd[3];
    if (!st) st = processor(&c, vc.image_size, &size, mean, sd);
    if (!st) st = fb_model_load(c.snapshot, &c.clip);
    const fb_tensor *ls = st ? NULL : fb_model_find(c.clip, "logit_scale");
    float scale = 0.0f;
    if (!st && (!ls || fb_tensor_numel(ls) != 1 || fb_tensor_to_f32(ls, &scale)))
        st = fb_set_error(FB_ERR_NOT_FOUND,
                          "%s: no scalar 'logit_scale': not a CLIPModel "
                          "checkpoint",
                          fb_model_label(c.clip));
    if (!st) st = find_caches(&c);
    if (!st) st = fb_model_create(heads);
    if (!st) st = make_heads(&c, vc.projection ? vc.projection : vc.hidden, *heads);
    /* the project's own task pool */
    fb_buf b;
    fb_buf_init(&b);
    if (!st) {
        int64_t batch = 128; /* FusionBench's dataloader_kwargs.batch_size */
        const fb_config *dk = fb_cfg_map_get(node, "dataloader_kwargs");
        const fb_config *bs = fb_cfg_map_get(node, "batch_size");
        if (fb_cfg_is_null(bs) && dk && dk->kind == FB_CFG_MAP)
            bs = fb_cfg_map_get(dk, "batch_size");
        if (!fb_cfg_is_null(bs)) st = fb_cfg_int(bs, "taskpool.batch_size", &batch);
        fb_buf_printf(&b,
                      "image_size: %lld\nchannels: %lld\nmean: [%.9g, %.9g, %.9g]\n"
                      "std: [%.9g, %.9g, %.9g]\nlogit_scale: %.9g\nbatch_size: %lld\n"
                      "split: %s\nresample: clip\nstorage: bytes\n",
                      (long long)size, (long long)vc.channels, mean[0], mean[1], mean[2], sd[0],
                      sd[1], sd[2], (double)expf(scale), (long long)batch, fb_split_names[c.split]);
        if (c.image_cache) {
            fb_buf_puts(&b, "image_cache: ");
            fb_buf_json_string(&b, c.image_cache);
            fb_buf_puts(&b, "\n");
        }
    }
    if (!st) {
        fb_buf_puts(&b, "sources:\n");
        for (int i = 0; i < c.ntasks; i++) {
            const task_info *t = &c.tasks[i];
            char dir[PATH_MAX];
            fb_buf_puts(&b, "  ");
            fb_buf_json_string(&b, t->name);
            fb_buf_puts(&b, ":\n    type: image_folder\n");
            for (int s = 0; s < 2; s++) {
                const int sp = s ? FB_SPLIT_TRAIN : FB_SPLIT_TEST;
                snprintf(dir, sizeof dir, "%s/%s/%s", c.data_root, t->name, fb_split_names[sp]);
                struct stat sb;
                if (stat(dir, &sb) || !S_ISDIR(sb.st_mode)) continue;
                fb_buf_printf(&b, "    %s: ", fb_split_names[sp]);
                fb_buf_json_string(&b, dir);
                fb_buf_puts(&b, "\n");
            }
            fb_buf_puts(&b, "    class_names: [");
            for (int64_t k = 0; k < t->K; k++) {
                fb_buf_puts(&b, k ? ", " : "");
                fb_buf_json_string(&b, t->classnames[k]);
            }
            fb_buf_puts(&b, "]\n");
        }
        fb_buf_puts(&b, "tasks:\n");
        for (int i = 0; i < c.ntasks; i++) {
            fb_buf_puts(&b, "  ");
            fb_buf_json_string(&b, c.tasks[i].name);
            fb_buf_puts(&b, ": {source: ");
            fb_buf_json_string(&b, c.tasks[i].name);
            fb_buf_puts(&b, ", val: 0}\n");
        }
        if (b.failed) st = FB_ERR_NOMEM;
    }
    if (!st) st = fb_cfg_parse_text(b.data, b.len, NULL, native);
    if (!st && !(*model_config = fb_strdup(cfg))) st = FB_ERR_NOMEM;
    fb_buf_free(&b);
    ctx_free(&c);
    if (st) {
        fb_config_free(*native);
        fb_model_free(*heads);
        fb_free(*model_config);
        *native = NULL;
        *heads = NULL;
        *model_config = NULL;
    }
    return st;
}
