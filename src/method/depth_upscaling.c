/*
 * depth_upscaling.c: depth up-scaling (Kim et al., "SOLAR 10.7B: Scaling Large Language Models
 * with Simple yet Effective Depth Up-Scaling", 2023) and passthrough slices (mergekit): build
 * a model whose layer stack is made of layers of the pool's models, renumbered.
 *
 *   depth_upscaling: new layer i = layer layer_indices[i] of the pool's one model
 *                    (layer_indices: integers and "range(a, b[, step])" strings, in order)
 *   passthrough:     slices [{model: NAME, layer_range: [a, b], scale: s}, ...]: layers a..b-1
 *                    of each named model in turn (mergekit's {sources: [...]} form accepted);
 *                    tensors outside the layer stack come from base_model (default: the first
 *                    slice's model). scale multiplies a slice's tensors.
 *
 * Layers are found by name: "<prefix>.<index>.<rest>" with prefix ending in .layers, .h,
 * .layer, .block or .blocks (model.layers.3.self_attn.q_proj.weight). A model with several
 * layer stacks needs layer_prefix to say which one. Nothing is computed: tensors are copied
 * (converted when an output dtype is set).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct slice {
    char *model;
    int64_t begin, end;
    float scale;
} slice;

typedef struct state {
    int passthrough;
    int64_t *indices; /* depth_upscaling */
    int64_t num_indices;
    slice *slices;    /* passthrough */
    int num_slices;
    char *base_model;
    char *layer_prefix;
} state;

static const fb_param_spec du_params[] = {
    {"layer_indices", "null", "the new layer stack: integers and \"range(a, b)\" strings"},
    {"layer_prefix", "null", "the layer stack's name prefix (default: found from the names)"},
    {NULL, NULL, NULL},
};

static const fb_param_spec pt_params[] = {
    {"slices", "null", "[{model: NAME, layer_range: [a, b], scale: 1.0}, ...], in order"},
    {"base_model", "null", "where tensors outside the layer stack come from (default: first slice's)"},
    {"layer_prefix", "null", "the layer stack's name prefix (default: found from the names)"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->indices);
    for (int i = 0; i < s->num_slices; i++) fb_free(s->slices[i].model);
    fb_free(s->slices);
    fb_free(s->base_model);
    fb_free(s->layer_prefix);
    fb_free(s);
}

static fb_status push_index(state *s, int64_t v, int64_t *cap)
{
    if (v < 0) return fb_set_error(FB_ERR_ARG, "layer index %lld is negative", (long long)v);
    if (s->num_indices == *cap) {
        *cap = *cap ? 2 * *cap : 32;
        int64_t *p = fb_realloc(s->indices, (size_t)*cap * sizeof *p);
        if (!p) return FB_ERR_NOMEM;
        s->indices = p;
    }
    s->indices[s->num_indices++] = v;
    return FB_OK;
}

/* "range(a, b)" or "range(a, b, step)" (Python's range), or "range(b)". */
static fb_status parse_range(state *s, const char *text, int64_t *cap)
{
    long long a = 0, b = 0, step = 1;
    char tail;
    int n = sscanf(text, " range ( %lld , %lld , %lld ) %c", &a, &b, &step, &tail);
    if (n != 3) {
        step = 1;
        n = sscanf(text, " range ( %lld , %lld ) %c", &a, &b, &tail);
        if (n != 2) {
            a = 0;
            n = sscanf(text, " range ( %lld ) %c", &b, &tail);
            if (n != 1)
                return fb_set_error(FB_ERR_CONFIG, "layer_indices: '%s' is neither an integer nor "
                                                   "range(a, b[, step])", text);
        }
    }
    if (step == 0) return fb_set_error(FB_ERR_CONFIG, "layer_indices: '%s' has step 0", text);
    for (long long v = a; step > 0 ? v < b : v > b; v += step) {
        fb_status st = push_index(s, v, cap);
        if (st) return st;
    }
    return FB_OK;
}

static fb_status optional_string(const fb_config *p, const char *key, char **out)
{
    const fb_config *n = fb_cfg_map_get(p, key);
    const char *v;
    *out = NULL;
    if (fb_cfg_is_null(n)) return FB_OK;
    fb_status st = fb_cfg_string(n, key, &v);
    if (st) return st;
    *out = fb_strdup(v);
    return *out ? FB_OK : FB_ERR_NOMEM;
}

static fb_status create_du(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    const fb_config *li = fb_cfg_map_get(p, "layer_indices");
    fb_status st = optional_string(p, "layer_prefix", &s->layer_prefix);
    int64_t cap = 0;
    if (!st && (!li || li->kind != FB_CFG_SEQ || li->count == 0))
        st = fb_set_error(FB_ERR_CONFIG, "'layer_indices' is required: a list of layer numbers "
                                         "and \"range(a, b)\" strings");
    for (int i = 0; !st && i < li->count; i++) {
        const fb_config *e = li->items[i];
        int64_t v;
        if (e->kind == FB_CFG_SCALAR && !e->quoted && fb_cfg_int(e, "layer_indices", &v) == FB_OK)
            st = push_index(s, v, &cap);
        else if (e->kind == FB_CFG_SCALAR)
            st = parse_range(s, e->value, &cap);
        else
            st = fb_set_error(FB_ERR_CONFIG, "%s: layer_indices[%d] must be an integer or a range "
                                             "string", fb_cfg_where(e), i);
    }
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status parse_slice(const fb_config *e, int i, slice *out)
{
    const fb_config *src = e;
    const fb_config *sources = fb_cfg_map_get(e, "sources");
    if (sources) { /* mergekit: {sources: [{model, layer_range}]}: one source per slice */
        if (sources->kind != FB_CFG_SEQ || sources->count != 1)
            return fb_set_error(FB_ERR_CONFIG, "%s: slices[%d].sources must hold exactly one "
                                               "source for passthrough", fb_cfg_where(e), i);
        src = sources->items[0];
    }
    const char *model;
    double *range = NULL;
    int n = 0;
    char key[64];
    snprintf(key, sizeof key, "slices[%d].model", i);
    fb_status st = fb_cfg_string(fb_cfg_map_get(src, "model"), key, &model);
    snprintf(key, sizeof key, "slices[%d].layer_range", i);
    if (!st) st = fb_cfg_double_list(fb_cfg_map_get(src, "layer_range"), key, &range, &n);
    if (!st && (n != 2 || range[0] < 0 || range[1] < range[0]))
        st = fb_set_error(FB_ERR_CONFIG, "%s: %s must be [begin, end] with 0 <= begin <= end",
                          fb_cfg_where(src), key);
    double scale = 1.0;
    const fb_config *sc = fb_cfg_map_get(src, "scale");
    const fb_config *params = fb_cfg_map_get(src, "parameters");
    if (!sc && params) sc = fb_cfg_map_get(params, "scale");
    if (!st && !fb_cfg_is_null(sc)) st = fb_cfg_double(sc, "scale", &scale);
    if (!st) {
        out->model = fb_strdup(model);
        out->begin = (int64_t)range[0];
        out->end = (int64_t)range[1];
        out->scale = (float)scale;
        if (!out->model) st = FB_ERR_NOMEM;
    }
    fb_free(range);
    return st;
}

static fb_status create_pt(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->passthrough = 1;
    const fb_config *sl = fb_cfg_map_get(p, "slices");
    fb_status st = optional_string(p, "layer_prefix", &s->layer_prefix);
    if (!st) st = optional_string(p, "base_model", &s->base_model);
    if (!st && (!sl || sl->kind != FB_CFG_SEQ || sl->count == 0))
        st = fb_set_error(FB_ERR_CONFIG, "'slices' is required: [{model: NAME, layer_range: [a, b]}, ...]");
    if (!st && !(s->slices = fb_calloc((size_t)sl->count, sizeof *s->slices))) st = FB_ERR_NOMEM;
    for (int i = 0; !st && i < sl->count; i++) {
        st = parse_slice(sl->items[i], i, &s->slices[i]);
        if (!st) s->num_slices++;
    }
    if (st) {
        destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

/* The layer stack's prefix in model m: layer_prefix, or the one prefix its names use. */
static fb_status find_prefix(const state *s, const fb_model *m, const char *label, char *prefix,
                             size_t size)
{
    if (s->layer_prefix) {
        snprintf(prefix, size, "%s", s->layer_prefix);
        return FB_OK;
    }
    prefix[0] = '\0';
    char p[512];
    int64_t idx;
    const char *rest;
    for (int64_t i = 0; i < fb_model_num_tensors(m); i++) {
        const char *name = fb_tensor_name(fb_model_tensor(m, i));
        if (!fb_layer_name(name, p, sizeof p, &idx, &rest)) continue;
        if (!prefix[0]) snprintf(prefix, size, "%s", p);
        else if (strcmp(prefix, p))
            return fb_set_error(FB_ERR_ARG, "model '%s' has two layer stacks ('%s' and '%s'); set "
                                            "layer_prefix to the one to restructure",
                                label, prefix, p);
    }
    if (!prefix[0])
        return fb_set_error(FB_ERR_ARG, "model '%s' has no numbered layers (names like "
                                        "model.layers.0.*); set layer_prefix", label);
    return FB_OK;
}

/* Layer `index` of the stack under `prefix`: is name one of its tensors? */
static int in_layer(const char *name, const char *prefix, int64_t *index, const char **rest)
{
    size_t n = strlen(prefix);
    if (strncmp(name, prefix, n) || name[n] != '.') return 0;
    const char *d = name + n + 1, *e = d;
    while (*e >= '0' && *e <= '9') e++;
    if (e == d || *e != '.') return 0;
    *index = strtoll(d, NULL, 10);
    *rest = e + 1;
    return 1;
}

static int model_index(const fb_merge_setup *setup, const char *name)
{
    for (int k = 0; k < setup->num_models; k++)
        if (!strcmp(setup->model_names[k], name)) return k;
    if (setup->has_base && !strcmp(name, "_pretrained_")) return setup->num_models;
    return -1;
}

/* Appends layer `from` of input k as layer `to`: every tensor of that layer, renamed. */
static fb_status copy_layer(const fb_model *m, const char *label, const char *prefix, int k,
                            int64_t from, int64_t to, float scale, fb_plan *out)
{
    int found = 0;
    char name[1024];
    for (int64_t i = 0; i < fb_model_num_tensors(m); i++) {
        const fb_tensor *t = fb_model_tensor(m, i);
        int64_t idx;
        const char *rest;
        if (!in_layer(fb_tensor_name(t), prefix, &idx, &rest) || idx != from) continue;
        snprintf(name, sizeof name, "%s.%lld.%s", prefix, (long long)to, rest);
        fb_status st = fb_plan_add(out, name, k, t, scale);
        if (st) return st;
        found++;
    }
    if (!found)
        return fb_set_error(FB_ERR_ARG, "model '%s' has no layer %lld under '%s'", label,
                            (long long)from, prefix);
    return FB_OK;
}

/* Tensors outside the layer stack, from input k, in its order. */
static fb_status copy_rest(const fb_model *m, const char *prefix, int k, fb_plan *out)
{
    for (int64_t i = 0; i < fb_model_num_tensors(m); i++) {
        const fb_tensor *t = fb_model_tensor(m, i);
        int64_t idx;
        const char *rest;
        if (in_layer(fb_tensor_name(t), prefix, &idx, &rest)) continue;
        fb_status st = fb_plan_add(out, fb_tensor_name(t), k, t, 1.0f);
        if (st) return st;
    }
    return FB_OK;
}

static fb_status plan_du(void *p, const fb_merge_setup *setup, const fb_model *const *inputs,
                         fb_plan *out)
{
    const state *s = p;
    char prefix[512];
    const char *label = setup->model_names[0];
    fb_status st = find_prefix(s, inputs[0], label, prefix, sizeof prefix);
    if (!st) st = copy_rest(inputs[0], prefix, 0, out);
    for (int64_t i = 0; !st && i < s->num_indices; i++)
        st = copy_layer(inputs[0], label, prefix, 0, s->indices[i], i, 1.0f, out);
    return st;
}

static fb_status plan_pt(void *p, const fb_merge_setup *setup, const fb_model *const *inputs,
                         fb_plan *out)
{
    const state *s = p;
    const char *base = s->base_model ? s->base_model : s->slices[0].model;
    int kb = model_index(setup, base);
    if (kb < 0)
        return fb_set_error(FB_ERR_NOT_FOUND, "base_model '%s' is not in the pool", base);
    char prefix[512];
    fb_status st = find_prefix(s, inputs[kb], base, prefix, sizeof prefix);
    if (!st) st = copy_rest(inputs[kb], prefix, kb, out);
    int64_t to = 0;
    for (int i = 0; !st && i < s->num_slices; i++) {
        const slice *sl = &s->slices[i];
        int k = model_index(setup, sl->model);
        if (k < 0) return fb_set_error(FB_ERR_NOT_FOUND, "slices[%d]: model '%s' is not in the pool", i, sl->model);
        for (int64_t from = sl->begin; !st && from < sl->end; from++)
            st = copy_layer(inputs[k], sl->model, prefix, k, from, to++, sl->scale, out);
    }
    return st;
}

const fb_method_ops fb_method_depth_upscaling = {
    .name = "depth_upscaling",
    .target_class = "DepthUpscalingAlgorithm",
    .summary = "a deeper model from the layers of one model, in a given order (SOLAR)",
    .params = du_params,
    .optional_base = 0,
    .min_models = 1,
    .max_models = 1,
    .create = create_du,
    .plan = plan_du,
    .destroy = destroy,
};

const fb_method_ops fb_method_passthrough = {
    .name = "passthrough",
    .target_class = NULL,
    .summary = "a layer stack made of slices of several models (mergekit's passthrough)",
    .params = pt_params,
    .optional_base = 1,
    .create = create_pt,
    .plan = plan_pt,
    .destroy = destroy,
};
