/*
 * modelpool.c: the model pool, as FusionBench has it: named models in order, with the base
 * model under "_pretrained_". Models from files are opened lazily (headers only), so a pool
 * of checkpoints larger than memory costs almost nothing until a merge streams through it.
 */
#include "modelpool.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/source.h"
#include "core/status.h"
#include "io/hub.h"
#include "io/writer.h"

int fb_modelpool_is_special(const char *name)
{
    size_t n = strlen(name);
    return n >= 2 && name[0] == '_' && name[n - 1] == '_';
}

fb_status fb_modelpool_create(fb_modelpool **out)
{
    *out = fb_calloc(1, sizeof **out);
    return *out ? FB_OK : FB_ERR_NOMEM;
}

void fb_modelpool_free(fb_modelpool *pool)
{
    if (!pool) return;
    for (int i = 0; i < pool->count; i++) {
        fb_free(pool->names[i]);
        fb_model_free(pool->models[i]);
    }
    fb_free(pool->names);
    fb_free(pool->models);
    fb_config_free(pool->select.include);
    fb_config_free(pool->select.exclude);
    fb_free(pool);
}

int fb_modelpool_selects(const fb_modelpool *pool)
{
    const fb_pool_select *s = &pool->select;
    return s->include || s->exclude || s->drop_unmerged || s->keep_missing || s->vocab;
}

/* One of `choices` (a NULL-terminated list) for key, as its index; absent: 0. */
static fb_status choice(const fb_config *node, const char *key, const char *const *choices, int *out)
{
    const fb_config *v = fb_cfg_map_get(node, key);
    *out = 0;
    if (fb_cfg_is_null(v)) return FB_OK;
    const char *s;
    fb_status st = fb_cfg_string(v, key, &s);
    if (st) return st;
    for (int i = 0; choices[i]; i++)
        if (!strcmp(s, choices[i])) return *out = i, FB_OK;
    return fb_set_error(FB_ERR_CONFIG, "%s: modelpool '%s' is '%s'; it must be %s or %s",
                        fb_cfg_where(v), key, s, choices[0], choices[1] ? choices[1] : "");
}

/* include / exclude / merge_backbone / unmerged / missing / vocab. */
static fb_status read_select(const fb_config *node, fb_pool_select *sel)
{
    static const char *const unmerged[] = {"keep", "drop", NULL};
    static const char *const missing[] = {"error", "keep", NULL};
    static const char *const vocab[] = {"error", "base", "union", NULL};
    fb_status st = choice(node, "unmerged", unmerged, &sel->drop_unmerged);
    if (!st) st = choice(node, "missing", missing, &sel->keep_missing);
    if (!st) st = choice(node, "vocab", vocab, &sel->vocab);
    const char *lists[2] = {"include", "exclude"};
    fb_config **dst[2] = {&sel->include, &sel->exclude};
    for (int i = 0; i < 2 && !st; i++) {
        const fb_config *v = fb_cfg_map_get(node, lists[i]);
        if (fb_cfg_is_null(v)) continue;
        if (v->kind != FB_CFG_SEQ)
            return fb_set_error(FB_ERR_CONFIG, "%s: modelpool '%s' must be a list of tensor-name "
                                               "patterns",
                                fb_cfg_where(v), lists[i]);
        st = fb_cfg_copy(v, dst[i]);
    }
    int backbone = 0;
    const fb_config *b = fb_cfg_map_get(node, "merge_backbone");
    if (!st && !fb_cfg_is_null(b)) st = fb_cfg_bool(b, "merge_backbone", &backbone);
    if (!st && backbone) { /* FusionBench's CausalLMBackbonePool: the decoder layers only */
        if (sel->include)
            return fb_set_error(FB_ERR_CONFIG, "%s: modelpool gives both merge_backbone and "
                                               "include; choose one",
                                fb_cfg_where(b));
        const char *layers = "['^model\\.layers\\.']";
        st = fb_cfg_parse_text(layers, strlen(layers), NULL, &sel->include);
    }
    return st;
}

static int find(const fb_modelpool *pool, const char *name)
{
    for (int i = 0; i < pool->count; i++)
        if (strcmp(pool->names[i], name) == 0) return i;
    return -1;
}

fb_status fb_modelpool_add_model(fb_modelpool *pool, const char *name, fb_model *model)
{
    fb_status st = FB_OK;
    if (!name || !*name) st = fb_set_error(FB_ERR_ARG, "model name is empty");
    else if (!model) st = fb_set_error(FB_ERR_ARG, "model '%s' is NULL", name);
    else if (find(pool, name) >= 0)
        st = fb_set_error(FB_ERR_ARG, "model '%s' is already in the pool", name);
    if (st) {
        fb_model_free(model);
        return st;
    }
    if (pool->count == pool->cap) {
        int cap = pool->cap ? 2 * pool->cap : 8;
        char **names = fb_realloc(pool->names, (size_t)cap * sizeof *names);
        if (names) pool->names = names;
        fb_model **models = names ? fb_realloc(pool->models, (size_t)cap * sizeof *models) : NULL;
        if (models) pool->models = models;
        if (!names || !models) {
            fb_model_free(model);
            return FB_ERR_NOMEM;
        }
        pool->cap = cap;
    }
    char *n = fb_strdup(name);
    if (!n) {
        fb_model_free(model);
        return FB_ERR_NOMEM;
    }
    pool->names[pool->count] = n;
    pool->models[pool->count++] = model;
    return FB_OK;
}

fb_status fb_modelpool_add_path(fb_modelpool *pool, const char *name, const char *path)
{
    if (find(pool, name) >= 0)
        return fb_set_error(FB_ERR_ARG, "model '%s' is already in the pool", name);
    fb_model *m;
    struct stat sb;
    char *resolved = NULL;
    fb_status st = FB_OK;
    /* a path that exists wins; else "org/name" is looked up in the hub cache */
    if (stat(path, &sb) != 0 && strchr(path, '/') && fb_hub_is_model_id(path)) {
        if ((st = fb_hub_resolve(path, NULL, &resolved)))
            return fb_error_prefix(st, "model '%s': no file or folder %s; as a hub id", name, path);
    }
    st = fb_model_load(resolved ? resolved : path, &m);
    fb_free(resolved);
    if (st) return fb_error_prefix(st, "model '%s'", name);
    return fb_modelpool_add_model(pool, name, m);
}

int fb_modelpool_num_models(const fb_modelpool *pool)
{
    int n = 0;
    for (int i = 0; i < pool->count; i++) n += !fb_modelpool_is_special(pool->names[i]);
    return n;
}

const char *fb_modelpool_model_name(const fb_modelpool *pool, int index)
{
    for (int i = 0; i < pool->count; i++) {
        if (fb_modelpool_is_special(pool->names[i])) continue;
        if (index-- == 0) return pool->names[i];
    }
    return NULL;
}

const fb_model *fb_modelpool_get(const fb_modelpool *pool, const char *name)
{
    int i = find(pool, name);
    return i >= 0 ? pool->models[i] : NULL;
}

int fb_modelpool_has_pretrained(const fb_modelpool *pool)
{
    return find(pool, FB_PRETRAINED) >= 0;
}

fb_status fb_modelpool_input_files(const fb_modelpool *pool, fb_input_path **out, int *n)
{
    fb_input_path *list = NULL;
    int64_t cap = 0;
    fb_status st = FB_OK;
    *out = NULL;
    *n = 0;
    for (int k = 0; k < pool->count && !st; k++) {
        const fb_model *m = pool->models[k];
        const char *name = pool->names[k];
        if (m->path) {
            st = fb_input_paths_add(&list, n, &cap, m->path, "model", name);
            char *index = st ? NULL : fb_path_join(m->path, "model.safetensors.index.json");
            if (!st && !index) st = FB_ERR_NOMEM;
            if (!st) st = fb_input_paths_add(&list, n, &cap, index, "model", name); /* checked only if it exists */
            fb_free(index);
        }
        const fb_source *prev = NULL;
        for (int64_t i = 0; i < m->count && !st; i++) {
            const fb_source *s = m->tensors[i]->src;
            if (!s || s == prev) continue; /* a file's tensors are adjacent */
            prev = s;
            st = fb_input_paths_add(&list, n, &cap, s->path, "model", name);
        }
    }
    if (st) {
        fb_input_paths_free(list, *n);
        *n = 0;
        return st;
    }
    *out = list;
    return FB_OK;
}

const char *fb_modelpool_path(const fb_modelpool *pool, const char *name)
{
    const fb_model *m = fb_modelpool_get(pool, name);
    return m ? m->path : NULL;
}

/* A model entry is a path, or FusionBench's mapping form with the path under
 * pretrained_model_name_or_path (or path). */
static fb_status entry_path(const char *name, const fb_config *v, const char **path,
                            const char **revision)
{
    *revision = NULL;
    if (v && v->kind == FB_CFG_MAP) {
        for (int i = 0; i < v->count; i++) {
            const char *k = v->keys[i];
            if (strcmp(k, "_target_") && strcmp(k, "pretrained_model_name_or_path") &&
                strcmp(k, "path") && strcmp(k, "revision"))
                return fb_set_error(FB_ERR_CONFIG,
                                    "%s: model '%s': unknown key '%s' (expected "
                                    "pretrained_model_name_or_path or path, and revision)",
                                    fb_cfg_where(v), name, k);
        }
        const fb_config *r = fb_cfg_map_get(v, "revision");
        if (!fb_cfg_is_null(r)) {
            char key[300];
            snprintf(key, sizeof key, "models.%s.revision", name);
            fb_status st = fb_cfg_string(r, key, revision);
            if (st) return st;
        }
        const fb_config *p = fb_cfg_map_get(v, "pretrained_model_name_or_path");
        if (!p) p = fb_cfg_map_get(v, "path");
        if (!p)
            return fb_set_error(FB_ERR_CONFIG, "%s: model '%s' has no path", fb_cfg_where(v),
                                name);
        v = p;
    }
    char key[300];
    snprintf(key, sizeof key, "models.%s", name);
    return fb_cfg_string(v, key, path);
}

fb_status fb_modelpool_from_config(const fb_config *node, fb_modelpool **out)
{
    *out = NULL;
    if (!node || node->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: a modelpool must be a mapping with 'models'",
                            fb_cfg_where(node));
    for (int i = 0; i < node->count; i++) {
        const char *k = node->keys[i];
        static const char *const known[] = {"models", "_target_", "_recursive_", "_usage_",
                                            "include", "exclude", "merge_backbone", "unmerged",
                                            "missing", "vocab", NULL};
        /* FusionBench's pool keys that do not change a merge here: its data sets (the task
         * pool holds the data), the image processor (the task pool preprocesses), the hub */
        static const char *const ignored[] = {"defaults", "processor", "train_datasets",
                                              "test_datasets", "val_datasets", "tokenizer", NULL};
        int ok = 0;
        for (int j = 0; known[j] && !ok; j++) ok = !strcmp(k, known[j]);
        for (int j = 0; ignored[j] && !ok; j++) ok = !strcmp(k, ignored[j]);
        if (!ok && !strcmp(k, "platform")) {
            const char *plat = NULL;
            ok = !fb_cfg_string(node->items[i], "platform", &plat) && !strcmp(plat, "hf");
            if (!ok)
                return fb_set_error(FB_ERR_CONFIG, "%s: modelpool platform '%s': only hf (the "
                                                   "Hugging Face cache) is read here",
                                    fb_cfg_where(node->items[i]), plat ? plat : "?");
        }
        if (!ok)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: unknown modelpool key '%s' (known: models, _target_, "
                                "_recursive_, _usage_, include, exclude, merge_backbone, "
                                "unmerged, missing, vocab; FusionBench's defaults, processor, "
                                "platform and *_datasets are accepted and ignored)",
                                fb_cfg_where(node->items[i]), k);
    }
    const fb_config *models = fb_cfg_map_get(node, "models");
    if (!models || models->kind != FB_CFG_MAP || models->count == 0)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: modelpool needs 'models', a mapping of name: path",
                            fb_cfg_where(models ? models : node));
    fb_modelpool *pool;
    fb_status st = fb_modelpool_create(&pool);
    if (st) return st;
    st = read_select(node, &pool->select);
    for (int i = 0; i < models->count && !st; i++) {
        const fb_config *v = models->items[i];
        const char *rel, *revision;
        if ((st = entry_path(models->keys[i], v, &rel, &revision))) break;
        char *dir = v->origin ? fb_path_dirname(v->origin) : NULL;
        char *path = (v->origin && !dir) ? NULL : fb_path_join(dir, rel);
        fb_free(dir);
        struct stat sb;
        /* a path that exists wins; else a hub id ("org/name") names a snapshot in the cache */
        int missing = path && stat(path, &sb) != 0, hub = 0;
        if (path && missing && (revision || strchr(rel, '/')) && fb_hub_is_model_id(rel)) {
            hub = 1;
            char *local = path;
            path = NULL;
            st = fb_hub_resolve(rel, revision, &path);
            if (st)
                fb_error_prefix(st, "model '%s': no file or folder %s; as a hub id", models->keys[i],
                                local);
            fb_free(local);
            if (st) break;
        } else if (path && revision) {
            fb_free(path);
            st = fb_set_error(FB_ERR_CONFIG, "%s: model '%s': a revision needs a hub id "
                                             "(org/name), not the path '%s'",
                              fb_cfg_where(v), models->keys[i], rel);
            break;
        }
        if (!path) st = FB_ERR_NOMEM;
        else st = fb_modelpool_add_path(pool, models->keys[i], path);
        if (!st && hub) { /* remembered for the model card: id and snapshot */
            fb_model *m = pool->models[pool->count - 1];
            const char *slash = strrchr(path, '/');
            if (!(m->hub_id = fb_strdup(rel)) || !(m->hub_commit = fb_strdup(slash ? slash + 1 : path)))
                st = FB_ERR_NOMEM;
        }
        fb_free(path);
    }
    if (st) {
        fb_modelpool_free(pool);
        return st;
    }
    *out = pool;
    return FB_OK;
}

fb_status fb_modelpool_load_config(const char *yaml_path, fb_modelpool **out)
{
    *out = NULL;
    fb_config *cfg;
    fb_status st = fb_config_load(yaml_path, &cfg);
    if (st) return st;
    st = fb_modelpool_from_config(cfg, out);
    fb_config_free(cfg);
    return st;
}
