/*
 * companions.c: a merged model's folder is complete when transformers' from_pretrained and
 * llama.cpp's converters can use it, which takes more than weights: config.json (from the base
 * model, with the output's dtype, and the layer count when a method changed it),
 * generation_config.json, the image processor's config, and the tokenizer's files, copied
 * byte for byte from the base model or the model named as the tokenizer's source.
 */
#include "companions.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/alloc.h"
#include "core/status.h"
#include "dataset.h"
#include "writer.h"

static const char *const model_files[] = {"config.json", "generation_config.json",
                                          "preprocessor_config.json"};
static const char *const tokenizer_files[] = {
    "tokenizer.json",     "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt",         "tokenizer.model",       "added_tokens.json",       "vocab.txt",
    "chat_template.jinja"};

int fb_companion_name(const char *name)
{
    if (!strcmp(name, "README.md") || !strcmp(name, "mergekit_config.yml") ||
        !strcmp(name, "adapter_config.json"))
        return 1;
    for (size_t i = 0; i < sizeof model_files / sizeof model_files[0]; i++)
        if (!strcmp(name, model_files[i])) return 1;
    for (size_t i = 0; i < sizeof tokenizer_files / sizeof tokenizer_files[0]; i++)
        if (!strcmp(name, tokenizer_files[i])) return 1;
    return 0;
}

fb_status fb_companions_add(fb_companions *c, const char *name, const char *text, size_t n)
{
    int64_t cap = c->cap;
    if (fb_reserve(&c->files, &cap, c->count + 1, sizeof *c->files)) return FB_ERR_NOMEM;
    c->cap = (int)cap;
    char *nm = fb_strdup(name), *data = fb_malloc(n ? n : 1);
    if (!nm || !data) {
        fb_free(nm);
        fb_free(data);
        return FB_ERR_NOMEM;
    }
    memcpy(data, text, n);
    c->files[c->count++] = (fb_file_blob){nm, data, n};
    return FB_OK;
}

void fb_companions_free(fb_companions *c)
{
    for (int i = 0; i < c->count; i++) {
        fb_free((char *)c->files[i].name);
        fb_free((void *)c->files[i].data);
    }
    fb_free(c->files);
    memset(c, 0, sizeof *c);
}

/* config.json with the output's dtype and layer count. */
static fb_status edit_config(const char *path, const uint8_t *text, size_t n, const char *dtype,
                             int64_t num_layers, char **out)
{
    cJSON *root = cJSON_ParseWithLength((const char *)text, n);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fb_set_error(FB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    if (dtype) { /* transformers reads torch_dtype, and dtype since 4.56 */
        cJSON_DeleteItemFromObjectCaseSensitive(root, "torch_dtype");
        cJSON_AddStringToObject(root, "torch_dtype", dtype);
        if (cJSON_GetObjectItemCaseSensitive(root, "dtype")) {
            cJSON_DeleteItemFromObjectCaseSensitive(root, "dtype");
            cJSON_AddStringToObject(root, "dtype", dtype);
        }
    }
    static const char *const layer_keys[] = {"num_hidden_layers", "n_layer", "num_layers"};
    for (size_t k = 0; num_layers > 0 && k < sizeof layer_keys / sizeof layer_keys[0]; k++) {
        if (!cJSON_GetObjectItemCaseSensitive(root, layer_keys[k])) continue;
        cJSON_DeleteItemFromObjectCaseSensitive(root, layer_keys[k]);
        cJSON_AddNumberToObject(root, layer_keys[k], (double)num_layers);
    }
    *out = cJSON_Print(root);
    cJSON_Delete(root);
    return *out ? FB_OK : FB_ERR_NOMEM;
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Copies the files of `names` that `dir` holds. */
static fb_status copy_files(const char *dir, const char *const *names, size_t count,
                            const char *dtype, int64_t num_layers, fb_companions *c)
{
    fb_status st = FB_OK;
    for (size_t i = 0; i < count && !st; i++) {
        char *p = fb_path_join(dir, names[i]);
        if (!p) return FB_ERR_NOMEM;
        uint8_t *data = NULL;
        size_t n = 0;
        if (is_file(p) && !(st = fb_read_file(p, (size_t)1 << 30, &data, &n))) {
            if (!strcmp(names[i], "config.json")) {
                char *edited = NULL;
                if (!(st = edit_config(p, data, n, dtype, num_layers, &edited))) {
                    size_t len = strlen(edited);
                    st = fb_companions_add(c, names[i], edited, len);
                    cJSON_free(edited);
                }
            } else {
                st = fb_companions_add(c, names[i], (const char *)data, n);
            }
        }
        fb_free(data);
        fb_free(p);
    }
    return st;
}

fb_status fb_companions_collect(const char *base_dir, const char *tokenizer_dir,
                                const char *torch_dtype, int64_t num_layers, fb_companions *out)
{
    memset(out, 0, sizeof *out);
    fb_status st = FB_OK;
    if (base_dir)
        st = copy_files(base_dir, model_files, sizeof model_files / sizeof model_files[0],
                        torch_dtype, num_layers, out);
    const char *tok = tokenizer_dir ? tokenizer_dir : base_dir;
    if (!st && tok)
        st = copy_files(tok, tokenizer_files, sizeof tokenizer_files / sizeof tokenizer_files[0],
                        NULL, 0, out);
    if (st) fb_companions_free(out);
    return st;
}
