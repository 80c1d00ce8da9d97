/*
 * card.c: what a merged model's folder holds beside its weights, so that from_pretrained and
 * the hub can use it: the base model's config.json (with the output's dtype, and the layer
 * count of a restructured model), its generation and processor configs, the tokenizer files of
 * the base or of `tokenizer_source`, and README.md, a model card in the hub's layout (YAML
 * front matter with base_model (the inputs' hub ids), library_name and tags; then the method,
 * its parameters, the input models with their revisions, the project's version and the
 * command).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "io/companions.h"
#include "io/writer.h"
#include "method.h"

/* The folder a pool model was read from, when it is a Hugging Face folder (the model's own
 * path, or the folder of its model.safetensors, index or pytorch_model.bin); NULL otherwise. */
static char *model_folder(const fb_model *m)
{
    struct stat st;
    if (!m || !m->path || stat(m->path, &st) != 0) return NULL;
    if (S_ISDIR(st.st_mode)) return fb_strdup(m->path);
    const char *base = strrchr(m->path, '/');
    base = base ? base + 1 : m->path;
    size_t n = strlen(base);
    int hf = !strcmp(base, "model.safetensors") || !strcmp(base, "pytorch_model.bin") ||
             (n > 11 && !strcmp(base + n - 11, ".index.json"));
    return hf ? fb_path_dirname(m->path) : NULL;
}

static const char *torch_dtype_name(fb_dtype d)
{
    switch (d) {
    case FB_F32: return "float32";
    case FB_F16: return "float16";
    case FB_BF16: return "bfloat16";
    case FB_F64: return "float64";
    default: return NULL;
    }
}

/* Distinct N in "...layers.N..." names (a restructured model's depth), or 0 when none. */
static int64_t count_layers(const fb_model *out)
{
    int64_t seen = 0, cap = 0, *ids = NULL;
    for (int64_t i = 0; i < out->count; i++) {
        const char *p = strstr(out->tensors[i]->name, "layers.");
        if (!p) continue;
        char *end;
        long long id = strtoll(p + 7, &end, 10);
        if (end == p + 7 || *end != '.') continue;
        int known = 0;
        for (int64_t k = 0; k < seen && !known; k++)
            known = ids[k] == id;
        if (known) continue;
        if (fb_reserve(&ids, &cap, seen + 1, sizeof *ids)) break;
        ids[seen++] = id;
    }
    fb_free(ids);
    return seen;
}

static void card_text(fb_buf *b, const fb_method *m, const fb_modelpool *pool,
                      const fb_run_options *opts, const char *out_path)
{
    /* the hub's base_model takes model ids: those of the models read that came from it */
    fb_buf_printf(b, "---\n");
    int ids = 0;
    for (int i = 0; i < pool->count; i++) {
        const fb_model *mm = pool->models[i];
        int read = !fb_modelpool_is_special(pool->names[i]) || fb_method_reads_pretrained(m, pool);
        if (read && mm->hub_id)
            fb_buf_printf(b, "%s- %s\n", ids++ ? "" : "base_model:\n", mm->hub_id);
    }
    fb_buf_printf(b, "library_name: transformers\ntags:\n- merge\n- fusionbench-c\n---\n\n");
    const char *slash = strrchr(out_path, '/');
    fb_buf_printf(b, "# %s\n\n", slash && slash[1] ? slash + 1 : out_path);
    fb_buf_printf(b, "A merge of the models below, made with FusionBench-C %s by `%s`",
                  FB_VERSION_STRING, m->ops->name);
    if (m->ops->target_class) fb_buf_printf(b, " (FusionBench's `%s`)", m->ops->target_class);
    fb_buf_printf(b, ": %s.\n\n## Parameters\n\n```yaml\n", m->ops->summary);
    char *params = fb_cfg_to_yaml(m->params);
    fb_buf_printf(b, "%s", params && *params ? params : "{}\n");
    free(params);
    fb_buf_printf(b, "```\n\n## Models\n\n| name | source | revision |\n|---|---|---|\n");
    for (int i = 0; i < pool->count; i++) {
        const fb_model *mm = pool->models[i];
        int read = !fb_modelpool_is_special(pool->names[i]) || fb_method_reads_pretrained(m, pool);
        if (!read) continue;
        fb_buf_printf(b, "| %s | %s | %s |\n", pool->names[i],
                      mm->hub_id ? mm->hub_id
                      : mm->path ? mm->path
                                 : "(in memory)",
                      mm->hub_commit ? mm->hub_commit : "");
    }
    if (opts && opts->command) fb_buf_printf(b, "\n## Command\n\n```sh\n%s\n```\n", opts->command);
}

/* Replaces companion i's bytes with root printed. */
static fb_status replace_json(fb_companions *c, int i, cJSON *root)
{
    char *text = cJSON_Print(root);
    char *copy = text ? fb_strdup(text) : NULL;
    cJSON_free(text);
    if (!copy) return FB_ERR_NOMEM;
    fb_free((void *)c->files[i].data);
    c->files[i].data = copy;
    c->files[i].size = strlen(copy);
    return FB_OK;
}

/* Sets config.json's vocab_size (a vocabulary rebuilt by mergekit's tokenizer_source). */
static fb_status set_vocab_size(fb_companions *c, int64_t v)
{
    fb_status st = FB_OK;
    for (int i = 0; !st && i < c->count; i++) {
        if (strcmp(c->files[i].name, "config.json")) continue;
        cJSON *root = cJSON_ParseWithLength(c->files[i].data, c->files[i].size);
        if (!root) return fb_set_error(FB_ERR_FORMAT, "config.json is not JSON");
        cJSON_DeleteItemFromObjectCaseSensitive(root, "vocab_size");
        st = cJSON_AddNumberToObject(root, "vocab_size", (double)v) ? replace_json(c, i, root)
                                                                  : FB_ERR_NOMEM;
        cJSON_Delete(root);
    }
    return st;
}

/* Appends tokens (a JSON array of added-token entries with their ids) to tokenizer.json's
 * added_tokens and tokenizer_config.json's added_tokens_decoder (a union vocabulary). */
static fb_status add_tokens(fb_companions *c, const char *tokens)
{
    cJSON *list = cJSON_Parse(tokens);
    if (!list) return FB_ERR_NOMEM;
    fb_status st = FB_OK;
    for (int i = 0; !st && i < c->count; i++) {
        int tj = !strcmp(c->files[i].name, "tokenizer.json");
        int tc = !strcmp(c->files[i].name, "tokenizer_config.json");
        if (!tj && !tc) continue;
        cJSON *root = cJSON_ParseWithLength(c->files[i].data, c->files[i].size);
        if (!root || !cJSON_IsObject(root)) {
            cJSON_Delete(root);
            st = fb_set_error(FB_ERR_FORMAT, "%s is not a JSON object", c->files[i].name);
            break;
        }
        const char *key = tj ? "added_tokens" : "added_tokens_decoder";
        cJSON *into = cJSON_GetObjectItem(root, key);
        if (!into) into = tj ? cJSON_AddArrayToObject(root, key) : cJSON_AddObjectToObject(root, key);
        const cJSON *e;
        cJSON_ArrayForEach(e, list)
        {
            cJSON *copy = cJSON_Duplicate(e, 1);
            if (!copy || !into) {
                cJSON_Delete(copy);
                st = FB_ERR_NOMEM;
                break;
            }
            if (tj) {
                cJSON_AddItemToArray(into, copy);
            } else { /* keyed by id, without it */
                char id[32];
                snprintf(id, sizeof id, "%lld", (long long)cJSON_GetObjectItem(copy, "id")->valuedouble);
                cJSON_DeleteItemFromObjectCaseSensitive(copy, "id");
                cJSON_AddItemToObject(into, id, copy);
            }
        }
        if (!st) st = replace_json(c, i, root);
        cJSON_Delete(root);
    }
    cJSON_Delete(list);
    return st;
}

/* Sets "chat_template" in the folder's tokenizer_config.json (made when there is none). */
static fb_status set_chat_template(fb_companions *c, const char *tmpl)
{
    int at = -1;
    for (int i = 0; i < c->count; i++)
        if (!strcmp(c->files[i].name, "tokenizer_config.json")) at = i;
    cJSON *root = at >= 0 ? cJSON_ParseWithLength(c->files[at].data, c->files[at].size)
                          : cJSON_CreateObject();
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return at >= 0 ? fb_set_error(FB_ERR_FORMAT, "tokenizer_config.json is not a JSON object")
                       : FB_ERR_NOMEM;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(root, "chat_template");
    fb_status st = FB_OK;
    if (!cJSON_AddStringToObject(root, "chat_template", tmpl)) st = FB_ERR_NOMEM;
    else if (at >= 0) st = replace_json(c, at, root);
    else {
        char *text = cJSON_Print(root);
        st = text ? fb_companions_add(c, "tokenizer_config.json", text, strlen(text)) : FB_ERR_NOMEM;
        cJSON_free(text);
    }
    cJSON_Delete(root);
    return st;
}

fb_status fb_method_output_companions(const fb_method *m, const fb_modelpool *pool,
                                      const fb_run_options *opts, const fb_model *out,
                                      const char *out_path, fb_companions *c)
{
    memset(c, 0, sizeof *c);
    const fb_model *base = fb_modelpool_get(pool, "_pretrained_");
    if (!base && pool->count) base = pool->models[0];
    const char *tok_name = opts ? opts->tokenizer_source : NULL;
    const fb_model *tok = tok_name ? fb_modelpool_get(pool, tok_name) : base;
    if (tok_name && !tok)
        return fb_set_error(FB_ERR_ARG, "tokenizer_source '%s' is not a model of the pool",
                            tok_name);
    char *base_dir = model_folder(base);
    char *tok_dir = m->tokenizer_dir ? fb_strdup(m->tokenizer_dir) : model_folder(tok);
    if (tok_name && !tok_dir) {
        fb_free(base_dir);
        return fb_set_error(FB_ERR_ARG,
                            "tokenizer_source '%s' (%s) is not a Hugging Face folder to take "
                            "tokenizer files from",
                            tok_name, fb_model_label(tok));
    }
    fb_dtype dt = FB_F32;
    for (int64_t i = 0; i < out->count; i++)
        if (fb_dtype_is_float(out->tensors[i]->dtype)) {
            dt = out->tensors[i]->dtype;
            break;
        }
    int64_t layers = m->out_layers > 0 ? m->out_layers : m->ops->plan ? count_layers(out) : 0;
    fb_status st = fb_companions_collect(base_dir, tok_dir, torch_dtype_name(dt), layers, c);
    fb_free(base_dir);
    fb_free(tok_dir);
    if (st) return st;
    if (m->chat_template) st = set_chat_template(c, m->chat_template);
    if (!st && m->out_vocab > 0) st = set_vocab_size(c, m->out_vocab);
    if (!st && m->added_tokens) st = add_tokens(c, m->added_tokens);
    if (!st && m->extra_name)
        st = fb_companions_add(c, m->extra_name, m->extra_text, strlen(m->extra_text));
    fb_buf card;
    fb_buf_init(&card);
    if (m->card) fb_buf_printf(&card, "%s", m->card);
    else card_text(&card, m, pool, opts, out_path);
    if (!st) st = card.failed ? FB_ERR_NOMEM : fb_companions_add(c, "README.md", card.data, card.len);
    fb_buf_free(&card);
    if (st) fb_companions_free(c);
    return st;
}
