/*
 * dummy.c: FusionBench's DummyAlgorithm: no fusion; the result is one model of the pool as it
 * is, `_pretrained_` when the pool has it, else the first model, or the one named by
 * `model_name`. With a task pool this evaluates a pretrained or fine-tuned model on its own.
 */
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    char *model_name; /* NULL: _pretrained_ or the first model */
    int input;        /* after setup: index into models, or -1 for the base */
} state;

static const fb_param_spec params[] = {
    {"model_name", "null", "the pool model to return (null: _pretrained_, else the first)"},
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, void **out)
{
    const fb_config *n = fb_cfg_map_get(p, "model_name");
    const char *name = NULL;
    if (!fb_cfg_is_null(n)) {
        fb_status st = fb_cfg_string(n, "model_name", &name);
        if (st) return st;
    }
    state *s = fb_calloc(1, sizeof *s);
    if (!s || (name && !(s->model_name = fb_strdup(name)))) {
        fb_free(s);
        return FB_ERR_NOMEM;
    }
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *su)
{
    state *s = p;
    if (!s->model_name) {
        s->input = su->has_base ? -1 : 0;
        return FB_OK;
    }
    if (!strcmp(s->model_name, "_pretrained_") && su->has_base) {
        s->input = -1;
        return FB_OK;
    }
    for (int i = 0; i < su->num_models; i++)
        if (!strcmp(su->model_names[i], s->model_name)) {
            s->input = i;
            return FB_OK;
        }
    return fb_set_error(FB_ERR_NOT_FOUND, "method.model_name: the pool has no model '%s'",
                        s->model_name);
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const float *src = s->input < 0 ? c->base : c->models[s->input];
    memcpy(c->out, src, (size_t)c->count * sizeof(float));
    return FB_OK;
}

static void destroy(void *p)
{
    state *s = p;
    fb_free(s->model_name);
    fb_free(s);
}

const fb_method_ops fb_method_dummy = {
    .name = "dummy",
    .target_class = "DummyAlgorithm",
    .summary = "no fusion: one pool model as it is (_pretrained_, the first, or model_name)",
    .params = params,
    .optional_base = 1,
    .min_models = 1,
    .create = create,
    .setup = setup,
    .merge = merge,
    .destroy = destroy,
};
