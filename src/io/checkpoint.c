/*
 * checkpoint.c: fb_model_load, opening any checkpoint layout: a .safetensors file, a Hugging
 * Face sharded checkpoint (model.safetensors.index.json + shards), or a folder with either.
 *
 * A sharded index is checked against its shards: every tensor of the weight map is in the
 * shard it names, every tensor of every shard is in the weight map under that shard, and shard
 * names are plain file names (an index must not reach outside its folder).
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/status.h"
#include "safetensors.h"
#include "torch_bin.h"
#include "writer.h"

#define INDEX_NAME "model.safetensors.index.json"
#define BIN_INDEX_NAME "pytorch_model.bin.index.json"
#define INDEX_MAX_BYTES (256u << 20)

static fb_status read_text_file(const char *path, size_t max, char **out, size_t *len)
{
    fb_source *src;
    fb_status st = fb_source_open(path, &src);
    if (st) return st;
    if (src->size > max) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: %llu bytes, over the %zu-byte limit", path,
                          (unsigned long long)src->size, max);
        fb_source_unref(src);
        return st;
    }
    char *text = fb_malloc((size_t)src->size + 1);
    if (!text) {
        fb_source_unref(src);
        return FB_ERR_NOMEM;
    }
    st = fb_source_pread(src, 0, (size_t)src->size, text);
    text[src->size] = '\0';
    *len = (size_t)src->size;
    fb_source_unref(src);
    if (st) {
        fb_free(text);
        return st;
    }
    *out = text;
    return FB_OK;
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int ends_with(const char *s, const char *suffix);

/* One checkpoint file: safetensors, or PyTorch's zip format for .bin / .pt / .pth. */
static fb_status read_one_file(const char *path, fb_model *model)
{
    if (ends_with(path, ".bin") || ends_with(path, ".pt") || ends_with(path, ".pth"))
        return fb_torch_bin_read(path, model);
    return fb_safetensors_read(path, model);
}

static fb_status load_sharded(const char *index_path, fb_model *model)
{
    char *text = NULL, *dir = NULL;
    const char **shards = NULL;
    cJSON *root = NULL;
    size_t len = 0;
    fb_status st = read_text_file(index_path, INDEX_MAX_BYTES, &text, &len);
    if (st) return st;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object", index_path);
        goto done;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: missing 'weight_map' object", index_path);
        goto done;
    }
    /* distinct shard names, sorted, so tensors come in file order shard by shard */
    int n = cJSON_GetArraySize(map), nshards = 0;
    shards = fb_calloc((size_t)n + 1, sizeof *shards);
    if (!shards) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, map)
    {
        if (!cJSON_IsString(e)) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: weight_map entry '%s' is not a file name",
                              index_path, e->string);
            goto done;
        }
        const char *f = e->valuestring;
        if (!*f || strchr(f, '/') || strcmp(f, ".") == 0 || strcmp(f, "..") == 0) {
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: tensor '%s' names shard '%s', which is not a plain file "
                              "name in the checkpoint's folder",
                              index_path, e->string, f);
            goto done;
        }
        shards[nshards++] = f;
    }
    qsort(shards, (size_t)nshards, sizeof *shards, compare_strings);
    int uniq = 0;
    for (int i = 0; i < nshards; i++)
        if (uniq == 0 || strcmp(shards[uniq - 1], shards[i]) != 0) shards[uniq++] = shards[i];
    nshards = uniq;

    dir = fb_path_dirname(index_path);
    if (!dir) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    for (int s = 0; s < nshards; s++) {
        char *p = fb_path_join(dir, shards[s]);
        if (!p) {
            st = FB_ERR_NOMEM;
            goto done;
        }
        int64_t before = model->count;
        st = read_one_file(p, model);
        for (int64_t i = before; i < model->count && !st; i++) {
            const char *name = model->tensors[i]->name;
            const cJSON *want = cJSON_GetObjectItemCaseSensitive(map, name);
            if (!want)
                st = fb_set_error(FB_ERR_FORMAT,
                                  "%s: shard %s holds tensor '%s', which the weight_map does "
                                  "not list",
                                  index_path, shards[s], name);
            else if (strcmp(want->valuestring, shards[s]) != 0)
                st = fb_set_error(FB_ERR_FORMAT,
                                  "%s: tensor '%s' is in shard %s but the weight_map says %s",
                                  index_path, name, shards[s], want->valuestring);
        }
        fb_free(p);
        if (st) goto done;
    }
    cJSON_ArrayForEach(e, map)
    {
        if (!fb_model_find(model, e->string)) {
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: weight_map lists tensor '%s' in %s, but that shard does not "
                              "hold it",
                              index_path, e->string, e->valuestring);
            goto done;
        }
    }
done:
    fb_free(dir);
    fb_free(shards);
    cJSON_Delete(root);
    fb_free(text);
    return st;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

fb_status fb_model_load(const char *path, fb_model **out)
{
    *out = NULL;
    struct stat st_path;
    if (stat(path, &st_path) != 0)
        return fb_set_error(FB_ERR_NOT_FOUND, "%s: cannot open model: %s", path,
                            strerror(errno));
    char *file = NULL;
    int sharded = 0;
    if (S_ISDIR(st_path.st_mode)) {
        /* as transformers picks: safetensors (sharded, then single) before PyTorch's files */
        static const char *const names[] = {INDEX_NAME, "model.safetensors", BIN_INDEX_NAME,
                                            "pytorch_model.bin"};
        for (size_t i = 0; i < sizeof names / sizeof names[0] && !file; i++) {
            char *p = fb_path_join(path, names[i]);
            if (!p) return FB_ERR_NOMEM;
            if (is_file(p)) {
                file = p;
                sharded = ends_with(p, ".index.json");
            } else {
                fb_free(p);
            }
        }
        if (!file)
            return fb_set_error(FB_ERR_NOT_FOUND,
                                "%s: folder holds none of model.safetensors, %s, "
                                "pytorch_model.bin, %s",
                                path, INDEX_NAME, BIN_INDEX_NAME);
    } else {
        file = fb_strdup(path);
        if (!file) return FB_ERR_NOMEM;
        sharded = ends_with(path, ".index.json");
    }
    fb_model *m;
    fb_status st = fb_model_create(&m);
    if (!st) {
        m->path = file;
        file = NULL;
        st = sharded ? load_sharded(m->path, m) : read_one_file(m->path, m);
    }
    fb_free(file);
    if (st) {
        fb_model_free(m);
        return st;
    }
    *out = m;
    return FB_OK;
}
