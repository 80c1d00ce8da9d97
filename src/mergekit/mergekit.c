/*
 * mergekit.c: mergekit's configuration files run on the project's streaming engine.
 *
 * A mergekit document (mergekit/config.py's MergeConfiguration) is translated, never
 * interpreted as a second driver:
 *   1. parse and validate every document (keys, method, parameter names and value shapes),
 *      before any model is opened;
 *   2. per document, open the models' headers, normalise `models:` into one slice as mergekit
 *      does (the base appended when it is not listed), and lay out the output tensors: the
 *      non-layer tensors before the layer stack from the first slice's sources, each slice's
 *      layers renumbered in order, the ones after from the last slice's sources;
 *   3. resolve every parameter of every output tensor with mergekit's precedence (source >
 *      slice > top level), gradients evaluated at t = layer / (slice layers - 1) (t = 1 for a
 *      one-layer slice, t = 0 for tensors outside the stack) and {filter, value} lists matched
 *      as substrings of the tensor's name: a missing required value is an error now;
 *   4. build a pool of views, one per source position (position p of every slice, renamed to
 *      the output's names; the base is "_pretrained_"), and run the registry method (the
 *      mergekit_* ones, or slerp/karcher) with the resolved parameters per tensor, streamed to
 *      the output folder with config.json, the tokenizer files, mergekit_config.yml and a card.
 * Named documents (mergekit-multi) are written to the intermediate folder in dependency order
 * and can be referenced by name from later ones.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/model.h"
#include "core/status.h"
#include "core/strmap.h"
#include "io/dataset.h"
#include "io/hub.h"
#include "io/lora.h"
#include "io/outputs.h"
#include "io/writer.h"
#include "method/method.h"
#include "pool/modelpool.h"

/* ------------------------------------------------------------------------- the methods -- */

enum { BASE_SEPARATE, BASE_OPTIONAL, BASE_AS_MODEL };

typedef struct mk_method {
    const char *name;      /* mergekit's name */
    const char *registry;  /* the project's method */
    int base;              /* BASE_* */
    const char *global[6]; /* mergekit's parameters() */
    const char *tensor[4]; /* mergekit's tensor_parameters() */
    const char *required;  /* a required parameter, or NULL */
} mk_method;

#define GTA_GLOBAL                                                                                 \
    {                                                                                              \
        "int8_mask", "normalize", "rescale", "lambda", NULL                                        \
    }
static const mk_method methods[] = {
    {"linear", "mergekit_linear", BASE_AS_MODEL, {"normalize", NULL}, {"weight", NULL}, "weight"},
    {"slerp", "slerp", BASE_SEPARATE, {"t", NULL}, {NULL}, "t"},
    {"nuslerp",
     "mergekit_nuslerp",
     BASE_OPTIONAL,
     {"nuslerp_row_wise", "nuslerp_flatten", NULL},
     {"weight", NULL},
     "weight"},
    {"multislerp",
     "mergekit_multislerp",
     BASE_OPTIONAL,
     {"normalize_weights", "eps", NULL},
     {"weight", NULL},
     "weight"},
    {"karcher", "karcher", BASE_AS_MODEL, {"max_iter", "tol", NULL}, {NULL}, NULL},
    {"passthrough", "mergekit_passthrough", BASE_AS_MODEL, {NULL}, {"scale", NULL}, NULL},
    {"model_stock", "mergekit_model_stock", BASE_SEPARATE, {"filter_wise", NULL}, {NULL}, NULL},
    {"arcee_fusion", "mergekit_arcee_fusion", BASE_SEPARATE, {NULL}, {NULL}, NULL},
    {"nearswap", "mergekit_nearswap", BASE_SEPARATE, {"t", NULL}, {NULL}, "t"},
    {"sce", "mergekit_sce", BASE_SEPARATE, {"int8_mask", "select_topk", NULL}, {NULL}, NULL},
    {"ram", "mergekit_ram", BASE_SEPARATE, {"epsilon", NULL}, {NULL}, NULL},
    {"ramplus_tl",
     "mergekit_ramplus_tl",
     BASE_SEPARATE,
     {"r", "alpha", "epsilon", NULL},
     {NULL},
     NULL},
    {"task_arithmetic",
     "mergekit_task_arithmetic",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", NULL},
     "weight"},
    {"ties", "mergekit_ties", BASE_SEPARATE, GTA_GLOBAL, {"weight", "density", NULL}, "weight"},
    {"dare_ties",
     "mergekit_dare_ties",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", NULL},
     "weight"},
    {"dare_linear",
     "mergekit_dare_linear",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", NULL},
     "weight"},
    {"breadcrumbs",
     "mergekit_breadcrumbs",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", "gamma", NULL},
     "weight"},
    {"breadcrumbs_ties",
     "mergekit_breadcrumbs_ties",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", "gamma", NULL},
     "weight"},
    {"della",
     "mergekit_della",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", "epsilon", NULL},
     "weight"},
    {"della_linear",
     "mergekit_della_linear",
     BASE_SEPARATE,
     GTA_GLOBAL,
     {"weight", "density", "epsilon", NULL},
     "weight"},
};
enum { NUM_METHODS = sizeof methods / sizeof methods[0] };

static int in_list(const char *const *list, const char *s)
{
    for (; *list; list++)
        if (!strcmp(*list, s)) return 1;
    return 0;
}

/* ----------------------------------------------------------------- the parsed document -- */

typedef struct mk_src {
    const char *model; /* the reference as written */
    int64_t lo, hi;    /* layer_range; -1 for the whole model (models:) */
    const fb_config *params;
} mk_src;

typedef struct mk_slice {
    mk_src *src;
    int n;
    const fb_config *params;
    const char *base;
    const fb_config *node;
} mk_slice;

typedef struct mk_doc {
    fb_config *root;
    char *text; /* the document's text, for mergekit_config.yml */
    const char *origin;
    const char *name; /* mergekit-multi: the intermediate's name, or NULL (final) */
    const mk_method *method;
    const char *base;
    int from_models;
    mk_slice *slices;
    int num_slices;
    const fb_config *params;
    int dtype_set, out_dtype_set;
    fb_dtype dtype, out_dtype;
    const char *tokenizer_source;
    const char *chat_template;
    int done;
} mk_doc;

static fb_status where_error(const fb_config *n, const char *fmt, const char *a, const char *b)
{
    return fb_set_error(FB_ERR_CONFIG, fmt, fb_cfg_where(n), a, b);
}

static fb_status check_keys(const fb_config *map, const char *what, const char *const *known)
{
    if (!map || map->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be a mapping", fb_cfg_where(map), what);
    for (int i = 0; i < map->count; i++) {
        if (in_list(known, map->keys[i])) continue;
        fb_buf b;
        fb_buf_init(&b);
        for (const char *const *k = known; *k; k++)
            fb_buf_printf(&b, "%s%s", k == known ? "" : ", ", *k);
        fb_status st =
            fb_set_error(FB_ERR_CONFIG, "%s: %s has no key '%s' (known: %s)",
                         fb_cfg_where(map->items[i]), what, map->keys[i], b.data ? b.data : "");
        fb_buf_free(&b);
        return st;
    }
    return FB_OK;
}

static int is_number(const fb_config *n, double *v)
{
    if (!n || n->kind != FB_CFG_SCALAR || n->quoted || !n->value[0]) return 0;
    char *end;
    errno = 0;
    double x = strtod(n->value, &end);
    if (*end || errno) return 0;
    if (v) *v = x;
    return 1;
}

/* Checks a parameter value's shape: a scalar, a non-empty list of scalars (a gradient), or a
 * non-empty list of {filter, value} entries whose values are again such values. */
static fb_status check_setting(const fb_config *v, const char *key)
{
    if (!v || v->kind == FB_CFG_NULL || v->kind == FB_CFG_SCALAR) return FB_OK;
    if (v->kind == FB_CFG_MAP)
        return where_error(v,
                           "%s: parameter '%s': a {filter, value} entry must stand in a list "
                           "(- filter: ...%s)",
                           key, "");
    if (v->count == 0)
        return where_error(v,
                           "%s: parameter '%s' is an empty list (a gradient needs at least "
                           "one value)%s",
                           key, "");
    int maps = 0;
    for (int i = 0; i < v->count; i++)
        maps += v->items[i]->kind == FB_CFG_MAP;
    if (maps && maps != v->count)
        return where_error(v,
                           "%s: parameter '%s' mixes {filter, value} entries with plain "
                           "values%s",
                           key, "");
    for (int i = 0; i < v->count; i++) {
        const fb_config *e = v->items[i];
        if (e->kind == FB_CFG_SEQ)
            return where_error(e, "%s: parameter '%s': a list inside a gradient%s", key, "");
        if (e->kind != FB_CFG_MAP) continue;
        static const char *const ck[] = {"filter", "value", NULL};
        fb_status st = check_keys(e, "a {filter, value} entry", ck);
        if (st) return st;
        const fb_config *val = fb_cfg_map_get(e, "value"), *f = fb_cfg_map_get(e, "filter");
        if (!val) return where_error(e, "%s: parameter '%s': an entry without a value%s", key, "");
        if (f && f->kind != FB_CFG_SCALAR && f->kind != FB_CFG_NULL)
            return where_error(f, "%s: parameter '%s': a filter must be a string%s", key, "");
        if ((st = check_setting(val, key))) return st;
    }
    return FB_OK;
}

static fb_status check_params(const fb_config *p, const mk_method *m, int per_source)
{
    if (!p || fb_cfg_is_null(p)) return FB_OK;
    if (p->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: parameters must be a mapping", fb_cfg_where(p));
    for (int i = 0; i < p->count; i++) {
        const char *k = p->keys[i];
        int tensor = in_list(m->tensor, k), global = in_list(m->global, k);
        if (!tensor && !global) {
            fb_buf b;
            fb_buf_init(&b);
            for (const char *const *q = m->global; *q; q++)
                fb_buf_printf(&b, "%s%s", b.len ? ", " : "", *q);
            for (const char *const *q = m->tensor; *q; q++)
                fb_buf_printf(&b, "%s%s", b.len ? ", " : "", *q);
            fb_status st =
                fb_set_error(FB_ERR_CONFIG,
                             "%s: merge method %s has no parameter "
                             "'%s' (known: %s)",
                             fb_cfg_where(p->items[i]), m->name, k, b.len ? b.data : "none");
            fb_buf_free(&b);
            return st;
        }
        if (per_source && !tensor)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: parameter '%s' of %s is not per model: set "
                                "it in the slice's or the top-level parameters",
                                fb_cfg_where(p->items[i]), k, m->name);
        fb_status st = check_setting(p->items[i], k);
        if (st) return st;
    }
    return FB_OK;
}

static fb_status parse_range(const fb_config *n, mk_src *s)
{
    double a, b;
    if (!n || n->kind != FB_CFG_SEQ || n->count != 2 || !is_number(n->items[0], &a) ||
        !is_number(n->items[1], &b) || a != floor(a) || b != floor(b))
        return fb_set_error(FB_ERR_CONFIG, "%s: layer_range must be [start, end] (integers)",
                            fb_cfg_where(n));
    if (a < 0 || b <= a)
        return fb_set_error(FB_ERR_CONFIG, "%s: layer_range [%g, %g] is empty or negative",
                            fb_cfg_where(n), a, b);
    s->lo = (int64_t)a;
    s->hi = (int64_t)b;
    return FB_OK;
}

static fb_status model_ref(const fb_config *n, const char *what, const char **out)
{
    if (!n || n->kind != FB_CFG_SCALAR || !n->value[0])
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be a model path or id", fb_cfg_where(n),
                            what);
    const char *plus = strchr(n->value, '+');
    if (plus && (plus == n->value || !plus[1] || strchr(plus + 1, '+')))
        return fb_set_error(FB_ERR_CONFIG, "%s: '%s': a model with an adapter is MODEL+ADAPTER",
                            fb_cfg_where(n), n->value);
    /* each part, the model and the adapter, may name one @revision */
    for (int part = 0; part < (plus ? 2 : 1); part++) {
        const char *from = part ? plus + 1 : n->value;
        const char *to = part || !plus ? from + strlen(from) : plus;
        int ats = 0;
        for (const char *c = from; c < to; c++)
            ats += *c == '@';
        if (ats > 1)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: '%s': a model reference holds at most one "
                                "'@'",
                                fb_cfg_where(n), n->value);
    }
    *out = n->value;
    return FB_OK;
}

static fb_status parse_dtype(const fb_config *n, const char *key, fb_dtype *out)
{
    const char *s;
    fb_status st = fb_cfg_string(n, key, &s);
    if (st) return st;
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcmp(s, "bfloat16"))
        *out = FB_BF16;
    else if (!strcmp(s, "float16"))
        *out = FB_F16;
    else if (!strcmp(s, "float32"))
        *out = FB_F32;
    else
        return fb_set_error(FB_ERR_CONFIG, "%s: %s '%s' is not bfloat16, float16 or float32",
                            fb_cfg_where(n), key, s);
    return FB_OK;
}

static fb_status parse_sources(const fb_config *list, mk_slice *sl, const mk_method *m, int ranged)
{
    sl->n = list->count;
    sl->src = fb_calloc((size_t)(list->count ? list->count : 1), sizeof *sl->src);
    if (!sl->src) return FB_ERR_NOMEM;
    static const char *const model_keys[] = {"model", "parameters", NULL};
    static const char *const source_keys[] = {"model", "layer_range", "parameters", NULL};
    for (int i = 0; i < list->count; i++) {
        const fb_config *e = list->items[i];
        fb_status st = check_keys(e, ranged ? "a slice source" : "an entry of models",
                                  ranged ? source_keys : model_keys);
        if (!st) st = model_ref(fb_cfg_map_get(e, "model"), "model", &sl->src[i].model);
        sl->src[i].lo = sl->src[i].hi = -1;
        if (!st && ranged) st = parse_range(fb_cfg_map_get(e, "layer_range"), &sl->src[i]);
        sl->src[i].params = fb_cfg_map_get(e, "parameters");
        if (!st) st = check_params(sl->src[i].params, m, 1);
        if (st) return st;
    }
    return FB_OK;
}

static void doc_free(mk_doc *d)
{
    for (int i = 0; d->slices && i < d->num_slices; i++)
        fb_free(d->slices[i].src);
    fb_free(d->slices);
    fb_config_free(d->root);
    fb_free(d->text);
    memset(d, 0, sizeof *d);
}

static fb_status parse_doc(mk_doc *d)
{
    const fb_config *r = d->root;
    static const char *const top[] = {
        "name",      "merge_method",  "base_model", "models",    "slices",
        "modules",   "parameters",    "dtype",      "out_dtype", "tokenizer_source",
        "tokenizer", "chat_template", NULL};
    fb_status st = check_keys(r, "a mergekit configuration", top);
    if (st) return st;
    const fb_config *n = fb_cfg_map_get(r, "merge_method");
    if (!n || n->kind != FB_CFG_SCALAR)
        return fb_set_error(FB_ERR_CONFIG, "%s: merge_method is missing", fb_cfg_where(r));
    for (int i = 0; i < NUM_METHODS && !d->method; i++)
        if (!strcmp(methods[i].name, n->value)) d->method = &methods[i];
    if (!d->method) {
        fb_buf b;
        fb_buf_init(&b);
        for (int i = 0; i < NUM_METHODS; i++)
            fb_buf_printf(&b, "%s%s", i ? ", " : "", methods[i].name);
        st = fb_set_error(FB_ERR_CONFIG, "%s: unknown merge_method '%s' (known: %s)",
                          fb_cfg_where(n), n->value, b.data ? b.data : "");
        fb_buf_free(&b);
        return st;
    }
    if ((n = fb_cfg_map_get(r, "name")) && (st = fb_cfg_string(n, "name", &d->name))) return st;
    if ((n = fb_cfg_map_get(r, "base_model")) && !fb_cfg_is_null(n) &&
        (st = model_ref(n, "base_model", &d->base)))
        return st;
    if ((n = fb_cfg_map_get(r, "dtype")) && !fb_cfg_is_null(n)) {
        if ((st = parse_dtype(n, "dtype", &d->dtype))) return st;
        d->dtype_set = 1;
    }
    if ((n = fb_cfg_map_get(r, "out_dtype")) && !fb_cfg_is_null(n)) {
        if ((st = parse_dtype(n, "out_dtype", &d->out_dtype))) return st;
        d->out_dtype_set = 1;
    }
    if (fb_cfg_map_get(r, "modules"))
        return fb_set_error(FB_ERR_UNSUPPORTED,
                            "%s: mergekit's modules: syntax (multi-module "
                            "architectures) is not supported; use models: "
                            "or slices:",
                            fb_cfg_where(fb_cfg_map_get(r, "modules")));
    const fb_config *tok = fb_cfg_map_get(r, "tokenizer"),
                    *ts = fb_cfg_map_get(r, "tokenizer_source");
    if (tok && ts && !fb_cfg_is_null(tok) && !fb_cfg_is_null(ts))
        return fb_set_error(FB_ERR_CONFIG, "%s: give tokenizer_source or tokenizer, not both",
                            fb_cfg_where(tok));
    if (tok && !fb_cfg_is_null(tok)) {
        static const char *const tk[] = {"source", "tokens", "pad_to_multiple_of", NULL};
        if ((st = check_keys(tok, "tokenizer", tk))) return st;
        if (fb_cfg_map_get(tok, "tokens") || fb_cfg_map_get(tok, "pad_to_multiple_of"))
            return fb_set_error(FB_ERR_UNSUPPORTED,
                                "%s: tokenizer.tokens and pad_to_multiple_of "
                                "(new embedding rows) are not supported yet",
                                fb_cfg_where(tok));
        ts = fb_cfg_map_get(tok, "source");
    }
    if (ts && !fb_cfg_is_null(ts)) {
        if ((st = fb_cfg_string(ts, "tokenizer_source", &d->tokenizer_source))) return st;
    }
    if ((n = fb_cfg_map_get(r, "chat_template")) && !fb_cfg_is_null(n)) {
        if ((st = fb_cfg_string(n, "chat_template", &d->chat_template))) return st;
        if (!strstr(d->chat_template, "{%") && !strstr(d->chat_template, "{{"))
            return fb_set_error(FB_ERR_UNSUPPORTED,
                                "%s: chat_template '%s': only a Jinja "
                                "template text is supported, not mergekit's "
                                "named templates",
                                fb_cfg_where(n), d->chat_template);
    }
    d->params = fb_cfg_map_get(r, "parameters");
    if ((st = check_params(d->params, d->method, 0))) return st;
    const fb_config *models = fb_cfg_map_get(r, "models"), *slices = fb_cfg_map_get(r, "slices");
    int have_models = models && !fb_cfg_is_null(models),
        have_slices = slices && !fb_cfg_is_null(slices);
    if (have_models == have_slices)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: give exactly one of models: and slices:", fb_cfg_where(r));
    const fb_config *list = have_models ? models : slices;
    if (list->kind != FB_CFG_SEQ || list->count == 0)
        return fb_set_error(FB_ERR_CONFIG, "%s: %s must be a non-empty list", fb_cfg_where(list),
                            have_models ? "models" : "slices");
    d->from_models = have_models;
    d->num_slices = have_models ? 1 : list->count;
    d->slices = fb_calloc((size_t)d->num_slices, sizeof *d->slices);
    if (!d->slices) return FB_ERR_NOMEM;
    if (have_models) {
        d->slices[0].node = list;
        return parse_sources(list, &d->slices[0], d->method, 0);
    }
    static const char *const sk[] = {"sources", "base_model", "parameters", "residual_weight",
                                     NULL};
    for (int i = 0; i < list->count; i++) {
        mk_slice *sl = &d->slices[i];
        const fb_config *e = list->items[i];
        sl->node = e;
        if ((st = check_keys(e, "a slice", sk))) return st;
        if (fb_cfg_map_get(e, "residual_weight"))
            return fb_set_error(FB_ERR_UNSUPPORTED, "%s: residual_weight is not supported",
                                fb_cfg_where(fb_cfg_map_get(e, "residual_weight")));
        const fb_config *src = fb_cfg_map_get(e, "sources");
        if (!src || src->kind != FB_CFG_SEQ || src->count == 0)
            return fb_set_error(FB_ERR_CONFIG, "%s: slice %d needs a non-empty list of sources",
                                fb_cfg_where(e), i);
        if ((n = fb_cfg_map_get(e, "base_model")) && !fb_cfg_is_null(n) &&
            (st = model_ref(n, "base_model", &sl->base)))
            return st;
        sl->params = fb_cfg_map_get(e, "parameters");
        if ((st = check_params(sl->params, d->method, 0))) return st;
        if ((st = parse_sources(src, sl, d->method, 1))) return st;
        for (int k = 1; k < sl->n; k++)
            if (sl->src[k].hi - sl->src[k].lo != sl->src[0].hi - sl->src[0].lo)
                return fb_set_error(FB_ERR_CONFIG,
                                    "%s: slice %d: every source must hold the same "
                                    "number of layers (%lld and %lld)",
                                    fb_cfg_where(e), i, (long long)(sl->src[0].hi - sl->src[0].lo),
                                    (long long)(sl->src[k].hi - sl->src[k].lo));
        if (sl->n != d->slices[0].n)
            return fb_set_error(FB_ERR_UNSUPPORTED,
                                "%s: slice %d has %d sources and slice 0 has "
                                "%d: slices must have the same number of "
                                "sources",
                                fb_cfg_where(e), i, sl->n, d->slices[0].n);
    }
    return FB_OK;
}

/* Splits the file into documents at lines "---"; each keeps its line numbers. */
static fb_status parse_file(const char *path, mk_doc **docs, int *ndocs)
{
    *docs = NULL;
    *ndocs = 0;
    uint8_t *bytes;
    size_t nbytes;
    fb_status rst = fb_read_file(path, 16u << 20, &bytes, &nbytes);
    if (rst) return rst;
    fb_buf text; /* the file, NUL-terminated */
    fb_buf_init(&text);
    fb_buf_append(&text, (const char *)bytes, nbytes);
    fb_free(bytes);
    if (text.failed) return FB_ERR_NOMEM;
    const char *s = text.data ? text.data : "";
    fb_status st = FB_OK;
    const char *start = s;
    for (const char *p = s;;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        int sep = len >= 3 && !strncmp(p, "---", 3) &&
                  (len == 3 || isspace((unsigned char)p[3]) || p[3] == '#');
        int end = !eol;
        if (sep || end) {
            const char *stop = sep ? p : p + len;
            /* the document's text, preceded by blank lines so its line numbers are the file's */
            fb_buf doc;
            fb_buf_init(&doc);
            int first_line = 0;
            for (const char *q = s; q < start; q++)
                first_line += *q == '\n';
            for (int k = 0; k < first_line; k++)
                fb_buf_printf(&doc, "\n");
            size_t pad = doc.len;
            fb_buf_append(&doc, start, (size_t)(stop - start));
            int blank = 1;
            for (size_t k = pad; k < doc.len && blank; k++) {
                char c = doc.data[k];
                if (c == '#') { /* a comment line */
                    while (k < doc.len && doc.data[k] != '\n')
                        k++;
                    continue;
                }
                blank = isspace((unsigned char)c);
            }
            if (doc.failed) st = FB_ERR_NOMEM;
            if (!st && !blank) {
                mk_doc *grown = fb_realloc(*docs, (size_t)(*ndocs + 1) * sizeof *grown);
                if (!grown)
                    st = FB_ERR_NOMEM;
                else {
                    *docs = grown;
                    mk_doc *d = &grown[(*ndocs)++];
                    memset(d, 0, sizeof *d);
                    d->origin = path;
                    d->text = fb_strdup(doc.data + pad);
                    st = d->text ? fb_cfg_parse_text(doc.data, doc.len, path, &d->root)
                                 : FB_ERR_NOMEM;
                    if (!st && (!d->root || d->root->kind != FB_CFG_MAP))
                        st = fb_set_error(FB_ERR_CONFIG, "%s: document %d is not a mapping", path,
                                          *ndocs);
                    if (!st) st = parse_doc(d);
                }
            }
            fb_buf_free(&doc);
            if (st || end) break;
            start = eol + 1;
        }
        if (end) break;
        p = eol + 1;
    }
    fb_buf_free(&text);
    if (!st && *ndocs == 0)
        st = fb_set_error(FB_ERR_CONFIG, "%s: no configuration in the file", path);
    /* names: unique, and exactly one document without one (the final merge) */
    int unnamed = 0;
    for (int i = 0; !st && i < *ndocs; i++) {
        unnamed += !(*docs)[i].name;
        for (int k = 0; k < i && !st; k++)
            if ((*docs)[i].name && (*docs)[k].name && !strcmp((*docs)[i].name, (*docs)[k].name))
                st = fb_set_error(FB_ERR_CONFIG, "%s: two documents are named '%s'", path,
                                  (*docs)[i].name);
    }
    if (!st && *ndocs > 1 && unnamed != 1)
        st = fb_set_error(FB_ERR_CONFIG,
                          "%s: %d documents without a name: a multi-document "
                          "configuration names every merge but the final one",
                          path, unnamed);
    if (st) {
        for (int i = 0; i < *ndocs; i++)
            doc_free(&(*docs)[i]);
        fb_free(*docs);
        *docs = NULL;
        *ndocs = 0;
    }
    return st;
}

/* --------------------------------------------------------------- parameter resolution -- */

/* mergekit's evaluate_setting: *out = a new scalar node, or NULL when the setting gives no
 * value for this tensor (null, or no filter matched). */
static fb_status evaluate(const fb_config *v, const char *tensor, double t, fb_config **out)
{
    *out = NULL;
    if (!v || v->kind == FB_CFG_NULL) return FB_OK;
    if (v->kind == FB_CFG_SCALAR) return fb_cfg_copy(v, out);
    if (v->items[0]->kind == FB_CFG_MAP) {
        for (int i = 0; i < v->count; i++) {
            const fb_config *f = fb_cfg_map_get(v->items[i], "filter");
            const char *pat = f && f->kind == FB_CFG_SCALAR ? f->value : NULL;
            if (!pat || !strcmp(pat, "*") || (tensor && strstr(tensor, pat)))
                return evaluate(fb_cfg_map_get(v->items[i], "value"), tensor, t, out);
        }
        return FB_OK;
    }
    int numeric = 1;
    for (int i = 0; i < v->count && numeric; i++)
        numeric = is_number(v->items[i], NULL);
    if (!numeric) return fb_cfg_copy(v->items[(int)(t * (v->count - 1))], out);
    double scaled = t * (v->count - 1);
    int i0 = (int)scaled, i1 = i0 + 1 < v->count ? i0 + 1 : v->count - 1;
    double frac = scaled - i0, a = 0.0, b = 0.0;
    is_number(v->items[i0], &a);
    is_number(v->items[i1], &b);
    char text[64];
    snprintf(text, sizeof text, "%.17g", (1.0 - frac) * a + frac * b);
    return fb_cfg_new(FB_CFG_SCALAR, text, out);
}

/* ------------------------------------------------------------------------- the models -- */

typedef struct mk_loaded {
    const char *ref;
    char *path; /* resolved file or folder */
    fb_model *model;
    char prefix[256]; /* the layer stack's prefix ("model.layers"), "" when none */
    int64_t layers;
    int several; /* more than one layer stack */
} mk_loaded;

typedef struct run {
    const fb_mergekit_options *opts;
    const mk_doc *docs;
    int ndocs;
    const char *inter_dir;
    mk_loaded **loaded; /* each allocated apart: plans keep pointers to them */
    int nloaded;
} run;

/* The path of a reference: an earlier document's output, an existing path, or a hub id at
 * an optional @revision. */
static fb_status resolve_ref(const run *R, const char *ref, char **out)
{
    *out = NULL;
    for (int i = 0; i < R->ndocs; i++)
        if (R->docs[i].name && !strcmp(R->docs[i].name, ref)) {
            fb_buf b;
            fb_buf_init(&b);
            fb_buf_printf(&b, "%s/%s", R->inter_dir, ref);
            if (b.failed) return FB_ERR_NOMEM;
            *out = b.data;
            return FB_OK;
        }
    struct stat sb;
    if (stat(ref, &sb) == 0) {
        *out = fb_strdup(ref);
        return *out ? FB_OK : FB_ERR_NOMEM;
    }
    char id[1024];
    snprintf(id, sizeof id, "%s", ref);
    char *at = strchr(id, '@');
    if (at) *at = '\0';
    if (!fb_hub_is_model_id(id))
        return fb_set_error(FB_ERR_NOT_FOUND, "model '%s': no such file or folder", ref);
    fb_status st = fb_hub_resolve(id, at ? at + 1 : NULL, out);
    return st ? fb_error_prefix(st, "model '%s'", ref) : FB_OK;
}

static fb_status find_layers(mk_loaded *L)
{
    L->prefix[0] = '\0';
    L->layers = 0;
    for (int64_t i = 0; i < L->model->count; i++) {
        char prefix[256];
        int64_t idx;
        const char *rest;
        if (!fb_layer_name(L->model->tensors[i]->name, prefix, sizeof prefix, &idx, &rest))
            continue;
        if (!L->prefix[0])
            snprintf(L->prefix, sizeof L->prefix, "%s", prefix);
        else if (strcmp(L->prefix, prefix))
            L->several = 1;
        if (!strcmp(L->prefix, prefix) && idx + 1 > L->layers) L->layers = idx + 1;
    }
    return FB_OK;
}

/* Loads MODEL or MODEL+ADAPTER (a PEFT LoRA applied as the tensors are read). */
static fb_status load_ref(const run *R, const char *ref, char **path, fb_model **model)
{
    *model = NULL;
    char *copy = fb_strdup(ref), *adapter_dir = NULL;
    if (!copy) return FB_ERR_NOMEM;
    char *plus = strchr(copy, '+');
    if (plus) *plus = '\0';
    fb_status st = resolve_ref(R, copy, path);
    if (!st) st = fb_model_load(*path, model);
    if (!st && plus) {
        fb_model *applied;
        st = resolve_ref(R, plus + 1, &adapter_dir);
        if (!st) st = fb_lora_apply(*model, adapter_dir, &applied);
        if (!st) {
            fb_model_free(*model);
            *model = applied;
        }
    }
    if (st) {
        fb_model_free(*model);
        *model = NULL;
        fb_free(*path);
        *path = NULL;
    }
    fb_free(adapter_dir);
    fb_free(copy);
    return st;
}

static fb_status load(run *R, const char *ref, mk_loaded **out)
{
    for (int i = 0; i < R->nloaded; i++)
        if (!strcmp(R->loaded[i]->ref, ref)) {
            *out = R->loaded[i];
            return FB_OK;
        }
    mk_loaded **grown = fb_realloc(R->loaded, (size_t)(R->nloaded + 1) * sizeof *grown);
    if (!grown) return FB_ERR_NOMEM;
    R->loaded = grown;
    mk_loaded *L = fb_calloc(1, sizeof *L);
    if (!L) return FB_ERR_NOMEM;
    L->ref = ref;
    fb_status st = load_ref(R, ref, &L->path, &L->model); /* its errors name the model */
    if (st) {
        fb_free(L);
        return st;
    }
    grown[R->nloaded++] = L;
    find_layers(L);
    *out = L;
    return FB_OK;
}

static void run_free(run *R)
{
    for (int i = 0; i < R->nloaded; i++) {
        fb_model_free(R->loaded[i]->model);
        fb_free(R->loaded[i]->path);
        fb_free(R->loaded[i]);
    }
    fb_free(R->loaded);
    R->loaded = NULL;
    R->nloaded = 0;
}

/* ---------------------------------------------------------------------------- the plan -- */

typedef struct mk_out {
    char *name;
    const fb_tensor **in; /* per slice source */
    int slice;
    double t;
    int params; /* index of its resolved parameter set */
} mk_out;

typedef struct plan {
    mk_slice *slices;  /* the normalised slices (models: one) */
    int num_slices, P; /* sources per slice */
    int *base_pos;     /* per slice: the base's source, or -1 */
    mk_loaded ***src;  /* per slice, per source */
    mk_out *outs;
    int64_t nouts, cap;
    int64_t out_layers;
    fb_config **sets; /* distinct parameter mappings */
    int nsets;
    fb_strmap by_name;
    fb_model *synth;    /* embeddings permuted to the output vocabulary (tokenizer_source) */
    int64_t vocab_size; /* >0: the output vocabulary's size, for config.json */
} plan;

static void plan_free(plan *p)
{
    for (int64_t i = 0; i < p->nouts; i++) {
        fb_free(p->outs[i].name);
        fb_free(p->outs[i].in);
    }
    fb_free(p->outs);
    for (int i = 0; i < p->nsets; i++)
        fb_config_free(p->sets[i]);
    fb_free(p->sets);
    for (int s = 0; p->src && s < p->num_slices; s++)
        fb_free(p->src[s]);
    fb_free(p->src);
    fb_free(p->base_pos);
    if (p->slices) {
        for (int s = 0; s < p->num_slices; s++)
            fb_free(p->slices[s].src);
        fb_free(p->slices);
    }
    fb_strmap_clear(&p->by_name);
    fb_model_free(p->synth);
}

static fb_status add_out(plan *p, const char *name, int slice, double t)
{
    if (fb_reserve(&p->outs, &p->cap, p->nouts + 1, sizeof *p->outs)) return FB_ERR_NOMEM;
    mk_out *o = &p->outs[p->nouts];
    memset(o, 0, sizeof *o);
    o->name = fb_strdup(name);
    o->in = fb_calloc((size_t)p->P, sizeof *o->in);
    if (!o->name || !o->in) {
        fb_free(o->name);
        fb_free(o->in);
        return FB_ERR_NOMEM;
    }
    o->slice = slice;
    o->t = t;
    p->nouts++;
    return FB_OK;
}

static fb_status need_tensor(const mk_loaded *L, const char *name, const fb_tensor **out)
{
    *out = fb_model_find(L->model, name);
    if (!*out)
        return fb_set_error(FB_ERR_MISMATCH, "model '%s' (%s) has no tensor '%s'", L->ref, L->path,
                            name);
    return FB_OK;
}

/* Non-layer tensors before the stack: embeddings (mergekit's pre_weights); the others
 * (final norm, lm_head) come after it. */
static int pre_weight(const char *name)
{
    return strstr(name, "embed") || strstr(name, "wte.") || strstr(name, "wpe.");
}

static fb_status plan_models(const run *R, plan *p)
{
    (void)R;
    mk_slice *sl = &p->slices[0];
    /* the reference: the base when there is one, else the first source */
    int ref = p->base_pos[0] >= 0 ? p->base_pos[0] : 0;
    const mk_loaded *L = p->src[0][ref];
    for (int k = 0; k < sl->n; k++)
        if (p->src[0][k]->layers != L->layers || strcmp(p->src[0][k]->prefix, L->prefix))
            return fb_set_error(FB_ERR_MISMATCH,
                                "models '%s' and '%s' have different layer stacks "
                                "(%lld and %lld layers of %s)",
                                L->ref, p->src[0][k]->ref, (long long)L->layers,
                                (long long)p->src[0][k]->layers, L->prefix[0] ? L->prefix : "none");
    for (int64_t i = 0; i < L->model->count; i++) {
        const fb_tensor *T = L->model->tensors[i];
        char prefix[256];
        int64_t idx;
        const char *rest;
        double t = 0.0;
        if (fb_layer_name(T->name, prefix, sizeof prefix, &idx, &rest) &&
            !strcmp(prefix, L->prefix))
            t = L->layers > 1 ? (double)idx / (double)(L->layers - 1) : 1.0;
        fb_status st = add_out(p, T->name, 0, t);
        for (int k = 0; !st && k < sl->n; k++)
            st = need_tensor(p->src[0][k], T->name, &p->outs[p->nouts - 1].in[k]);
        if (st) return st;
    }
    p->out_layers = 0; /* unchanged */
    return FB_OK;
}

static fb_status plan_slices(const run *R, plan *p)
{
    (void)R;
    const mk_loaded *first = p->src[0][0];
    for (int s = 0; s < p->num_slices; s++)
        for (int k = 0; k < p->P; k++) {
            const mk_loaded *L = p->src[s][k];
            const mk_src *src = &p->slices[s].src[k];
            if (!L->prefix[0] || L->several)
                return fb_set_error(FB_ERR_UNSUPPORTED,
                                    "model '%s': slices need one layer stack "
                                    "(model.layers.N...); it has %s",
                                    L->ref, L->several ? "several" : "none");
            if (strcmp(L->prefix, first->prefix))
                return fb_set_error(FB_ERR_MISMATCH,
                                    "models '%s' and '%s' name their layers "
                                    "differently (%s, %s)",
                                    first->ref, L->ref, first->prefix, L->prefix);
            if (src->hi > L->layers)
                return fb_set_error(FB_ERR_ARG,
                                    "slice %d: layer_range [%lld, %lld] of model '%s' "
                                    "is outside its %lld layers",
                                    s, (long long)src->lo, (long long)src->hi, L->ref,
                                    (long long)L->layers);
        }
    /* tensors before the stack, from the first slice's sources */
    const int last = p->num_slices - 1;
    for (int pass = 0; pass < 2; pass++) {
        const int s = pass ? last : 0;
        const mk_loaded *L = p->src[s][0];
        for (int64_t i = 0; i < L->model->count; i++) {
            const fb_tensor *T = L->model->tensors[i];
            char prefix[256];
            int64_t idx;
            const char *rest;
            if (fb_layer_name(T->name, prefix, sizeof prefix, &idx, &rest) &&
                !strcmp(prefix, L->prefix))
                continue;
            if (pre_weight(T->name) == pass) continue;
            fb_status st = add_out(p, T->name, s, 0.0);
            for (int k = 0; !st && k < p->P; k++)
                st = need_tensor(p->src[s][k], T->name, &p->outs[p->nouts - 1].in[k]);
            if (st) return st;
        }
        if (pass) break;
        /* the layers, renumbered */
        for (int sl = 0; sl < p->num_slices; sl++) {
            const mk_slice *S = &p->slices[sl];
            const int64_t len = S->src[0].hi - S->src[0].lo;
            for (int64_t l = 0; l < len; l++) {
                const double t = len > 1 ? (double)l / (double)(len - 1) : 1.0;
                const mk_loaded *R0 = p->src[sl][0];
                char want[300];
                snprintf(want, sizeof want, "%s.%lld.", R0->prefix, (long long)(S->src[0].lo + l));
                size_t wl = strlen(want);
                for (int64_t i = 0; i < R0->model->count; i++) {
                    const char *nm = R0->model->tensors[i]->name;
                    if (strncmp(nm, want, wl)) continue;
                    char out[1024], in[1024];
                    snprintf(out, sizeof out, "%s.%lld.%s", R0->prefix, (long long)p->out_layers,
                             nm + wl);
                    fb_status st = add_out(p, out, sl, t);
                    for (int k = 0; !st && k < p->P; k++) {
                        snprintf(in, sizeof in, "%s.%lld.%s", p->src[sl][k]->prefix,
                                 (long long)(S->src[k].lo + l), nm + wl);
                        st = need_tensor(p->src[sl][k], in, &p->outs[p->nouts - 1].in[k]);
                    }
                    if (st) return st;
                }
                p->out_layers++;
            }
        }
    }
    return FB_OK;
}

/* The value of parameter `key` for source k of output o: source > slice > top level. */
static fb_status lookup(const mk_doc *d, const plan *p, const mk_out *o, int k, const char *key,
                        fb_config **out)
{
    *out = NULL;
    const mk_slice *S = &p->slices[o->slice];
    const char *tensor = k >= 0 ? o->in[k]->name : o->name;
    fb_status st = FB_OK;
    if (k >= 0) {
        const char *model = S->src[k].model;
        for (int i = 0; i < S->n && !*out && !st; i++)
            if (!strcmp(S->src[i].model, model) && S->src[i].params)
                st = evaluate(fb_cfg_map_get(S->src[i].params, key), tensor, o->t, out);
    }
    if (!st && !*out && S->params) st = evaluate(fb_cfg_map_get(S->params, key), tensor, o->t, out);
    if (!st && !*out && d->params) st = evaluate(fb_cfg_map_get(d->params, key), tensor, o->t, out);
    return st;
}

static const char *spec_default(const fb_method_ops *ops, const char *key)
{
    for (const fb_param_spec *q = ops->params; q->name; q++)
        if (!strcmp(q->name, key)) return q->default_yaml;
    return NULL;
}

static fb_status default_node(const fb_method_ops *ops, const char *key, fb_config **out)
{
    const char *d = spec_default(ops, key);
    if (!d || !strcmp(d, "null")) return fb_cfg_new(FB_CFG_NULL, NULL, out);
    return fb_cfg_new(FB_CFG_SCALAR, d, out);
}

/* The parameter mapping of output o: global values, and per-model lists in pool order. */
static fb_status resolve_params(const mk_doc *d, const plan *p, const fb_method_ops *ops,
                                const int *models, int nmodels, const mk_out *o, uint64_t seed,
                                fb_config **out)
{
    const mk_method *m = d->method;
    fb_config *map;
    fb_status st = fb_cfg_new(FB_CFG_MAP, NULL, &map);
    if (st) return st;
    for (const char *const *g = m->global; *g && !st; g++) {
        fb_config *v;
        if ((st = lookup(d, p, o, -1, *g, &v))) break;
        if (!v && m->required && !strcmp(m->required, *g)) {
            st = fb_set_error(FB_ERR_CONFIG,
                              "merge method %s needs parameter '%s' (none given "
                              "for tensor '%s')",
                              m->name, *g, o->name);
            break;
        }
        if (!v) st = default_node(ops, *g, &v); /* every tensor's mapping has every key */
        if (!st) st = fb_cfg_map_set(map, *g, v);
    }
    for (const char *const *tp = m->tensor; *tp && !st; tp++) {
        fb_config *list;
        if ((st = fb_cfg_new(FB_CFG_SEQ, NULL, &list))) break;
        int given = 0;
        for (int i = 0; i < nmodels && !st; i++) {
            const int k = models[i];
            fb_config *v;
            if ((st = lookup(d, p, o, k, *tp, &v))) break;
            if (!v && m->required && !strcmp(m->required, *tp)) {
                st = fb_set_error(FB_ERR_CONFIG,
                                  "model '%s' has no '%s' for tensor '%s' (merge "
                                  "method %s needs one per model)",
                                  p->slices[o->slice].src[k].model, *tp, o->in[k]->name, m->name);
                break;
            }
            if (v && !is_number(v, NULL)) {
                st = fb_set_error(FB_ERR_CONFIG,
                                  "model '%s': parameter '%s' is '%s' for tensor "
                                  "'%s', not a number",
                                  p->slices[o->slice].src[k].model, *tp, v->value, o->in[k]->name);
                fb_config_free(v);
                break;
            }
            given += v != NULL;
            if (!v) {
                const char *dflt = spec_default(ops, *tp);
                st = fb_cfg_new(FB_CFG_SCALAR, dflt && strcmp(dflt, "null") ? dflt : "1.0", &v);
            }
            if (!st) st = fb_cfg_seq_append(list, v);
        }
        if (!st && !given) { /* nobody gave one: the method's default (null stays null) */
            fb_config_free(list);
            if (!(st = default_node(ops, *tp, &list))) st = fb_cfg_map_set(map, *tp, list);
        } else if (!st) {
            st = fb_cfg_map_set(map, *tp, list);
        } else {
            fb_config_free(list);
        }
    }
    if (!st && spec_default(ops, "seed")) {
        char text[32];
        snprintf(text, sizeof text, "%llu", (unsigned long long)seed);
        fb_config *v;
        if (!(st = fb_cfg_new(FB_CFG_SCALAR, text, &v))) st = fb_cfg_map_set(map, "seed", v);
    }
    if (st) {
        fb_config_free(map);
        return st;
    }
    *out = map;
    return FB_OK;
}

/* The source of slice s that pool model v is (v < 0: "_pretrained_", the slice's base). */
static int position(const plan *p, int role, int s, int v)
{
    if (v < 0) return p->base_pos[s];
    for (int k = 0; k < p->P; k++) {
        if (role != BASE_AS_MODEL && k == p->base_pos[s]) continue;
        if (v-- == 0) return k;
    }
    return 0;
}

static const fb_config *tensor_params(void *user, const char *name)
{
    const plan *p = user;
    int64_t i = fb_strmap_get(&p->by_name, name);
    return i >= 0 ? p->sets[p->outs[i].params] : NULL;
}

/* ---------------------------------------------------------------------- the run -- */

static fb_status card_and_files(const mk_doc *d, const plan *p, fb_buf *card)
{
    fb_buf_printf(card, "---\nbase_model:\n");
    for (int k = 0; k < p->slices[0].n; k++)
        fb_buf_printf(card, "- %s\n", p->slices[0].src[k].model);
    fb_buf_printf(card,
                  "library_name: transformers\ntags:\n- mergekit\n- merge\n- fusionbench-c\n"
                  "---\n# %s\n\nThis model was merged with FusionBench-C's mergekit "
                  "translator (`fusion_bench mergekit`), which runs mergekit's configuration "
                  "on FusionBench-C's streaming engine.\n\n## Merge method\n\n"
                  "mergekit's `%s` (FusionBench-C method `%s`)",
                  d->name ? d->name : "Merged model", d->method->name, d->method->registry);
    if (d->base) fb_buf_printf(card, ", with `%s` as the base", d->base);
    fb_buf_printf(card, ".\n\n## Models merged\n\n");
    for (int s = 0; s < p->num_slices; s++)
        for (int k = 0; k < p->slices[s].n; k++) {
            int seen = 0;
            for (int s2 = 0; s2 <= s && !seen; s2++)
                for (int k2 = 0; k2 < (s2 == s ? k : p->slices[s2].n) && !seen; k2++)
                    seen = !strcmp(p->slices[s2].src[k2].model, p->slices[s].src[k].model);
            if (!seen) fb_buf_printf(card, "- `%s`\n", p->slices[s].src[k].model);
        }
    fb_buf_printf(card, "\n## Configuration\n\n```yaml\n%s%s```\n", d->text,
                  d->text[0] && d->text[strlen(d->text) - 1] == '\n' ? "" : "\n");
    return card->failed ? FB_ERR_NOMEM : FB_OK;
}

/* A tokenizer's vocabulary (tokenizer.json: the model's vocab, object or Unigram list, and the
 * added tokens): token -> id, the keys borrowed from json. */
typedef struct vocab {
    cJSON *json;
    fb_strmap ids;
    fb_strmap added; /* the added tokens: content -> index in json's added_tokens */
    int64_t size;
} vocab;

static void vocab_free(vocab *v)
{
    fb_strmap_clear(&v->ids);
    fb_strmap_clear(&v->added);
    cJSON_Delete(v->json);
    memset(v, 0, sizeof *v);
}

/* *found = 0 when the folder has no tokenizer.json (mergekit then assumes the base's). */
static fb_status vocab_read(const char *folder, vocab *v, int *found)
{
    memset(v, 0, sizeof *v);
    fb_strmap_init(&v->ids);
    fb_strmap_init(&v->added);
    *found = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", folder);
    struct stat sb;
    if (stat(path, &sb) != 0) return FB_OK;
    uint8_t *bytes;
    size_t nbytes;
    fb_status rst = fb_read_file(path, 256u << 20, &bytes, &nbytes);
    if (rst) return rst;
    v->json = cJSON_ParseWithLength((const char *)bytes, nbytes);
    fb_free(bytes);
    if (!v->json) return fb_set_error(FB_ERR_FORMAT, "%s: not JSON", path);
    *found = 1;
    const cJSON *model = cJSON_GetObjectItem(v->json, "model");
    const cJSON *entries = cJSON_GetObjectItem(model, "vocab"), *e;
    fb_status st = FB_OK;
    int64_t pos = 0;
    cJSON_ArrayForEach(e, entries)
    {
        /* BPE and WordPiece: "token": id; Unigram: ["token", score] at position id */
        const char *tok =
            cJSON_IsArray(e) ? cJSON_GetStringValue(cJSON_GetArrayItem(e, 0)) : e->string;
        int64_t id = cJSON_IsNumber(e) ? (int64_t)e->valuedouble : pos;
        pos++;
        if (!tok) continue;
        if (fb_strmap_get(&v->ids, tok) < 0 && (st = fb_strmap_put(&v->ids, tok, id))) break;
    }
    int64_t index = 0;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(v->json, "added_tokens"))
    {
        const char *tok = cJSON_GetStringValue(cJSON_GetObjectItem(e, "content"));
        const cJSON *id = cJSON_GetObjectItem(e, "id");
        if (!st && tok && cJSON_IsNumber(id) && fb_strmap_get(&v->ids, tok) < 0)
            st = fb_strmap_put(&v->ids, tok, (int64_t)id->valuedouble);
        if (!st && tok && fb_strmap_get(&v->added, tok) < 0)
            st = fb_strmap_put(&v->added, tok, index);
        index++;
    }
    v->size = v->ids.count;
    return st;
}

/* One model's embedding matrix in the output vocabulary's order (mergekit's
 * PermutedEmbeddings): row r is the model's row for that token, or, where the model lacks it,
 * the token's default row: the one model's that has it, else the base's, else the mean of those
 * that have it (float32, rounded once), else zeros. Read row by row from the models' files. */
typedef struct permuted {
    int nm;          /* models of this tensor's merge */
    fb_source **src; /* their tensor's file and offset */
    uint64_t *offset;
    fb_dtype dtype;
    int64_t width;
    int self;          /* which of them this matrix is */
    int64_t *row;      /* V x nm, V the output vocabulary: each model's row, or -1 */
    int32_t *fallback; /* V: the donor model, -1 the mean, -2 zeros */
} permuted;

static void permuted_free(void *p)
{
    permuted *q = p;
    if (!q) return;
    for (int m = 0; q->src && m < q->nm; m++)
        fb_source_unref(q->src[m]);
    fb_free(q->src);
    fb_free(q->offset);
    fb_free(q->row);
    fb_free(q->fallback);
    fb_free(q);
}

static fb_status model_row(const permuted *q, int m, int64_t r, float *tmp, void *raw)
{
    const size_t es = fb_dtype_size(q->dtype), bytes = (size_t)q->width * es;
    fb_status st = fb_source_pread(q->src[m], q->offset[m] + (uint64_t)r * bytes, bytes, raw);
    return st ? st : fb_convert_to_f32(q->dtype, raw, tmp, q->width);
}

static fb_status permuted_read(void *p, uint64_t offset, size_t n, void *dst)
{
    const permuted *q = p;
    const size_t es = fb_dtype_size(q->dtype);
    const int64_t e0 = (int64_t)(offset / es), e1 = (int64_t)((offset + n) / es);
    if (offset % es || n % es) return fb_set_error(FB_ERR_INTERNAL, "unaligned embedding read");
    float *row = fb_malloc((size_t)q->width * 2 * sizeof *row);
    void *raw = fb_malloc((size_t)q->width * 8);
    fb_status st = row && raw ? FB_OK : FB_ERR_NOMEM;
    for (int64_t r = e0 / q->width; !st && r * q->width < e1; r++) {
        const int64_t own = q->row[r * q->nm + q->self];
        float *acc = row, *tmp = row + q->width;
        if (own >= 0) {
            st = model_row(q, q->self, own, acc, raw);
        } else if (q->fallback[r] >= 0) {
            st = model_row(q, q->fallback[r], q->row[r * q->nm + q->fallback[r]], acc, raw);
        } else {
            int count = 0;
            memset(acc, 0, (size_t)q->width * sizeof *acc);
            for (int m = 0; !st && q->fallback[r] == -1 && m < q->nm; m++) {
                const int64_t src = q->row[r * q->nm + m];
                if (src < 0) continue;
                if ((st = model_row(q, m, src, tmp, raw))) break;
                for (int64_t j = 0; j < q->width; j++)
                    acc[j] += tmp[j];
                count++;
            }
            for (int64_t j = 0; count && j < q->width; j++)
                acc[j] /= (float)count;
        }
        /* the part of row r inside [e0, e1) */
        const int64_t from = r * q->width > e0 ? r * q->width : e0;
        const int64_t to = (r + 1) * q->width < e1 ? (r + 1) * q->width : e1;
        if (!st)
            st = fb_convert_from_f32(q->dtype, acc + (from - r * q->width),
                                     (uint8_t *)dst + (size_t)(from - e0) * es, to - from);
    }
    fb_free(row);
    fb_free(raw);
    return st;
}

static int embedding_name(const char *name)
{
    return strstr(name, "embed_tokens") || strstr(name, "lm_head") || strstr(name, "wte.");
}

static int64_t embedding_rows(const mk_loaded *L, int64_t fallback)
{
    for (int64_t i = 0; i < L->model->count; i++)
        if (embedding_name(L->model->tensors[i]->name) && L->model->tensors[i]->ndim == 2)
            return L->model->tensors[i]->shape[0];
    return fallback;
}

typedef struct tok_id {
    const char *tok;
    int64_t id;
} tok_id;

static int cmp_tok_id(const void *a, const void *b)
{
    int64_t x = ((const tok_id *)a)->id, y = ((const tok_id *)b)->id;
    return (x > y) - (x < y);
}

/* mergekit's union tokenizer: the base's tokens (below its embedding rows) at their ids, then
 * every model's other tokens (base first, then the sources in order; each model's by
 * ascending id, as far as its embedding rows go), then the added tokens that are still new,
 * with their settings; a token added in any model counts as added. *appended: the JSON array
 * of the new entries for the output tokenizer's added_tokens. The models' vocabularies stay
 * in *keep (the map borrows their strings); the caller frees them. */
static fb_status union_vocab(const plan *p, const mk_loaded *base, vocab *out, vocab **keep,
                             int *nkeep, char **appended)
{
    const mk_loaded *models[256];
    int n = 0;
    models[n++] = base;
    for (int s = 0; s < p->num_slices; s++)
        for (int k = 0; k < p->slices[s].n; k++) {
            int seen = 0;
            for (int i = 0; i < n; i++)
                seen |= models[i] == p->src[s][k];
            if (!seen && n < 256) models[n++] = p->src[s][k];
        }
    vocab *mv = fb_calloc((size_t)n, sizeof *mv);
    int *has = fb_calloc((size_t)n, sizeof *has);
    tok_id *list = NULL;
    cJSON *added = cJSON_CreateArray();
    fb_status st = mv && has && added ? FB_OK : FB_ERR_NOMEM;
    memset(out, 0, sizeof *out);
    fb_strmap_init(&out->ids);
    fb_strmap_init(&out->added);
    for (int i = 0; !st && i < n; i++) {
        struct stat sb;
        char *dir = stat(models[i]->path, &sb) == 0 && S_ISDIR(sb.st_mode)
                        ? fb_strdup(models[i]->path)
                        : fb_path_dirname(models[i]->path);
        st = dir ? vocab_read(dir, &mv[i], &has[i]) : FB_ERR_NOMEM;
        fb_free(dir);
    }
    if (!st && !has[0])
        st = fb_set_error(FB_ERR_NOT_FOUND,
                          "tokenizer_source union: the base model '%s' has no "
                          "tokenizer.json",
                          base->ref);
    int64_t V = 0, count = 0;
    const int64_t rows0 = st ? 0 : embedding_rows(base, mv[0].ids.count);
    for (int64_t j = 0; !st && j < mv[0].ids.cap; j++) {
        if (!mv[0].ids.keys[j] || mv[0].ids.values[j] >= rows0) continue;
        st = fb_strmap_put(&out->ids, mv[0].ids.keys[j], mv[0].ids.values[j]);
        if (mv[0].ids.values[j] + 1 > V) V = mv[0].ids.values[j] + 1;
        count++;
    }
    if (!st && count != V)
        st = fb_set_error(FB_ERR_UNSUPPORTED,
                          "tokenizer_source union: the base's token ids are not "
                          "0..%lld",
                          (long long)(count - 1));
    for (int pass = 0; !st && pass < 2; pass++) /* plain tokens, then added ones */
        for (int i = 0; !st && i < n; i++) {
            if (!has[i]) continue; /* no tokenizer: the base's, nothing new */
            const int64_t rows = embedding_rows(models[i], mv[i].ids.count);
            int64_t m = 0;
            fb_free(list);
            list = fb_malloc((size_t)(mv[i].ids.count ? mv[i].ids.count : 1) * sizeof *list);
            if (!list) {
                st = FB_ERR_NOMEM;
                break;
            }
            for (int64_t j = 0; j < mv[i].ids.cap; j++) {
                const char *tok = mv[i].ids.keys[j];
                if (!tok || mv[i].ids.values[j] >= rows) continue;
                int is_added = 0;
                for (int x = 0; x < n; x++)
                    is_added |= has[x] && fb_strmap_get(&mv[x].added, tok) >= 0;
                if (is_added != pass) continue;
                list[m++] = (tok_id){tok, mv[i].ids.values[j]};
            }
            qsort(list, (size_t)m, sizeof *list, cmp_tok_id);
            for (int64_t j = 0; !st && j < m; j++) {
                if (fb_strmap_get(&out->ids, list[j].tok) >= 0) continue;
                st = fb_strmap_put(&out->ids, list[j].tok, V);
                cJSON *e;
                int64_t at = fb_strmap_get(&mv[i].added, list[j].tok);
                if (pass && at >= 0) { /* the added token's settings, at its new id */
                    e = cJSON_Duplicate(
                        cJSON_GetArrayItem(cJSON_GetObjectItem(mv[i].json, "added_tokens"),
                                           (int)at),
                        1);
                    if (e) cJSON_DeleteItemFromObjectCaseSensitive(e, "id");
                } else { /* what add_tokens gives a plain string */
                    e = cJSON_CreateObject();
                    if (e) {
                        cJSON_AddStringToObject(e, "content", list[j].tok);
                        cJSON_AddBoolToObject(e, "single_word", 0);
                        cJSON_AddBoolToObject(e, "lstrip", 0);
                        cJSON_AddBoolToObject(e, "rstrip", 0);
                        cJSON_AddBoolToObject(e, "normalized", 1);
                        cJSON_AddBoolToObject(e, "special", 0);
                    }
                }
                if (!e || !cJSON_AddNumberToObject(e, "id", (double)V))
                    st = FB_ERR_NOMEM;
                else
                    cJSON_AddItemToArray(added, e);
                V++;
            }
        }
    out->size = V;
    *appended = st ? NULL : cJSON_PrintUnformatted(added);
    if (!st && !*appended) st = FB_ERR_NOMEM;
    cJSON_Delete(added);
    fb_free(list);
    fb_free(has);
    *keep = mv;
    *nkeep = mv ? n : 0;
    return st;
}

/* mergekit's tokenizer_source: every model's embedding rows (embed_tokens, lm_head) rebuilt in
 * the output tokenizer's order, token by token (tokenizer.json's vocabulary and added tokens;
 * a model without one has the base's), resized to that vocabulary; the base's vocabulary is cut
 * to its embedding rows. When that changes nothing the tensors stay as they are. */
static fb_status permute_vocabularies(plan *p, const char *tok_dir, const mk_loaded *base,
                                      int from_base, const vocab *given)
{
    vocab out, base_vocab;
    int found = 1, base_found = 0;
    fb_status st = FB_OK;
    if (given) { /* the union's: its map, borrowed (cleared below without freeing its json) */
        out = *given;
        out.json = NULL;
        from_base = 0;
    } else {
        st = vocab_read(tok_dir, &out, &found);
    }
    if (!st && base) {
        struct stat sb;
        char *dir = stat(base->path, &sb) == 0 && S_ISDIR(sb.st_mode) ? fb_strdup(base->path)
                                                                      : fb_path_dirname(base->path);
        st = dir ? vocab_read(dir, &base_vocab, &base_found) : FB_ERR_NOMEM;
        fb_free(dir);
    } else {
        memset(&base_vocab, 0, sizeof base_vocab);
        fb_strmap_init(&base_vocab.ids);
    }
    if (st || !found) goto done;
    /* the output's ids: 0 .. V-1; "base" keeps the base's tokens below its embedding rows */
    int64_t V = 0, base_rows = -1;
    for (int64_t i = 0; base && from_base && i < base->model->count; i++)
        if (embedding_name(base->model->tensors[i]->name) && base->model->tensors[i]->ndim == 2)
            base_rows = base->model->tensors[i]->shape[0];
    for (int64_t i = 0; i < out.ids.cap; i++) {
        if (!out.ids.keys[i]) continue;
        if (base_rows >= 0 && out.ids.values[i] >= base_rows) {
            out.ids.keys[i] = NULL; /* stripped (the map is only iterated from now on) */
            continue;
        }
        if (out.ids.values[i] + 1 > V) V = out.ids.values[i] + 1;
    }
    int64_t count = 0;
    for (int64_t i = 0; i < out.ids.cap; i++)
        count += out.ids.keys[i] != NULL;
    if (count != V) {
        st = fb_set_error(FB_ERR_UNSUPPORTED, "%s: the tokenizer's ids are not 0..%lld", tok_dir,
                          (long long)(count - 1));
        goto done;
    }
    /* each output embedding tensor: its models' permutations, defaults, new tensors */
    for (int64_t o = 0; !st && o < p->nouts; o++) {
        mk_out *O = &p->outs[o];
        if (!embedding_name(O->name) || O->in[0]->ndim != 2) continue;
        const int nm = p->P, bpos = p->base_pos[O->slice];
        int64_t *row = fb_malloc((size_t)(V * nm) * sizeof *row);
        int32_t *fallback = fb_malloc((size_t)(V ? V : 1) * sizeof *fallback);
        int identity = 1;
        if (!row || !fallback) st = FB_ERR_NOMEM;
        for (int m = 0; !st && m < nm; m++) {
            const mk_loaded *L = p->src[O->slice][m];
            const fb_tensor *T = O->in[m];
            struct stat sb;
            char *dir = stat(L->path, &sb) == 0 && S_ISDIR(sb.st_mode) ? fb_strdup(L->path)
                                                                       : fb_path_dirname(L->path);
            vocab mv;
            int has = 0;
            st = dir ? vocab_read(dir, &mv, &has) : FB_ERR_NOMEM;
            fb_free(dir);
            const vocab *use = has ? &mv : &base_vocab;
            if (!st && !has && !base_found) use = &out; /* nobody says otherwise */
            for (int64_t i = 0; !st && i < out.ids.cap; i++) {
                if (!out.ids.keys[i]) continue;
                int64_t r = out.ids.values[i], src = fb_strmap_get(&use->ids, out.ids.keys[i]);
                if (src >= T->shape[0]) src = -1; /* padding rows beyond the embedding */
                row[r * nm + m] = src;
                identity &= src == r;
            }
            identity &= T->shape[0] == V;
            if (!st && (T->dtype != O->in[0]->dtype || T->shape[1] != O->in[0]->shape[1]))
                st = fb_set_error(FB_ERR_MISMATCH, "'%s' differs in dtype or width between models",
                                  O->name);
            vocab_free(&mv);
        }
        if (st || identity) {
            fb_free(row);
            fb_free(fallback);
            continue;
        }
        for (int64_t r = 0; r < V; r++) { /* mergekit's assign_embedding_sources */
            int present = 0, donor = -1;
            for (int m = 0; m < nm; m++)
                if (row[r * nm + m] >= 0) present++, donor = m;
            fallback[r] = present == 1                           ? donor
                          : present == 0                         ? -2
                          : bpos >= 0 && row[r * nm + bpos] >= 0 ? bpos
                                                                 : -1;
        }
        if (!p->synth && (st = fb_model_create(&p->synth))) break;
        for (int m = 0; !st && m < nm; m++) {
            permuted *q = fb_calloc(1, sizeof *q);
            if (!q) {
                st = FB_ERR_NOMEM;
                break;
            }
            q->nm = nm;
            q->self = m;
            q->dtype = O->in[0]->dtype;
            q->width = O->in[0]->shape[1];
            q->src = fb_calloc((size_t)nm, sizeof *q->src);
            q->offset = fb_calloc((size_t)nm, sizeof *q->offset);
            q->row = fb_malloc((size_t)(V * nm) * sizeof *q->row);
            q->fallback = fb_malloc((size_t)(V ? V : 1) * sizeof *q->fallback);
            if (!q->src || !q->offset || !q->row || !q->fallback) st = FB_ERR_NOMEM;
            for (int k = 0; !st && k < nm; k++) {
                const fb_tensor *T = O->in[k];
                if (!T->src) {
                    st = fb_set_error(FB_ERR_UNSUPPORTED, "'%s': an in-memory tensor", T->name);
                    break;
                }
                fb_source_ref(T->src);
                q->src[k] = T->src;
                q->offset[k] = T->src_offset;
            }
            if (!st) {
                memcpy(q->row, row, (size_t)(V * nm) * sizeof *row);
                memcpy(q->fallback, fallback, (size_t)V * sizeof *fallback);
            }
            fb_source *vs = NULL;
            if (st)
                permuted_free(q);
            else
                st = fb_source_virtual(O->in[m]->src->path,
                                       (uint64_t)(V * q->width) * fb_dtype_size(q->dtype),
                                       permuted_read, permuted_free, q, &vs);
            /* the synthetic tensor, named as the output, stands for input m from now on */
            char name[1200];
            snprintf(name, sizeof name, "%s#%lld.%d", O->name, (long long)o, m);
            int64_t shape[2] = {V, q->width};
            fb_dtype dt = O->in[m]->dtype;
            if (!st) st = fb_model_add_tensor_lazy(p->synth, name, dt, 2, shape, vs, 0);
            if (vs) fb_source_unref(vs);
            if (!st) O->in[m] = fb_model_find(p->synth, name);
        }
        fb_free(row);
        fb_free(fallback);
        p->vocab_size = V;
    }
    if (given) p->vocab_size = V;
done:
    if (!given) vocab_free(&out);
    vocab_free(&base_vocab);
    return st;
}

static fb_status run_doc(run *R, const mk_doc *d, const char *out_dir)
{
    plan p = {0};
    fb_strmap_init(&p.by_name);
    fb_method *method = NULL;
    fb_modelpool *pool = NULL;
    fb_buf card;
    fb_buf_init(&card);
    char *tok_dir = NULL;
    fb_status st = FB_OK;
    /* normalise: models -> one slice (the base appended when it is not listed) */
    p.num_slices = d->num_slices;
    p.slices = fb_calloc((size_t)d->num_slices, sizeof *p.slices);
    if (!p.slices) return FB_ERR_NOMEM;
    for (int s = 0; s < d->num_slices && !st; s++) {
        p.slices[s] = d->slices[s];
        int n = d->slices[s].n;
        p.slices[s].src = fb_calloc((size_t)n + 1, sizeof *p.slices[s].src);
        if (!p.slices[s].src)
            st = FB_ERR_NOMEM;
        else
            memcpy(p.slices[s].src, d->slices[s].src, (size_t)n * sizeof *p.slices[s].src);
    }
    if (!st && d->from_models && d->base) {
        int listed = 0;
        for (int k = 0; k < p.slices[0].n; k++)
            listed |= !strcmp(p.slices[0].src[k].model, d->base);
        if (!listed) p.slices[0].src[p.slices[0].n++] = (mk_src){d->base, -1, -1, NULL};
    }
    p.P = p.slices[0].n;
    p.base_pos = fb_calloc((size_t)p.num_slices, sizeof *p.base_pos);
    p.src = fb_calloc((size_t)p.num_slices, sizeof *p.src);
    if (!st && (!p.base_pos || !p.src)) st = FB_ERR_NOMEM;
    const int role = d->method->base;
    for (int s = 0; s < p.num_slices && !st; s++) {
        const mk_slice *S = &p.slices[s];
        const char *base = S->base ? S->base : d->base;
        p.base_pos[s] = -1;
        for (int k = 0; base && k < S->n && p.base_pos[s] < 0; k++)
            if (!strcmp(S->src[k].model, base)) p.base_pos[s] = k;
        if (role == BASE_SEPARATE && !base)
            st = fb_set_error(FB_ERR_CONFIG, "%s: merge method %s needs base_model", d->origin,
                              d->method->name);
        else if (role != BASE_AS_MODEL && base && p.base_pos[s] < 0)
            st = fb_set_error(FB_ERR_CONFIG,
                              "%s: slice %d: base_model '%s' is not among its "
                              "sources",
                              d->origin, s, base);
        if (!st && !(p.src[s] = fb_calloc((size_t)S->n, sizeof *p.src[s]))) st = FB_ERR_NOMEM;
        for (int k = 0; k < S->n && !st; k++)
            st = load(R, S->src[k].model, &p.src[s][k]);
    }
    /* for the output's companions: the base (or the first model) and the tokenizer source */
    const char *cfg_ref = d->base ? d->base : p.slices[0].src[0].model;
    mk_loaded *cfg_model = NULL;
    if (!st) st = load(R, cfg_ref, &cfg_model);
    const int union_tok = d->tokenizer_source && !strcmp(d->tokenizer_source, "union");
    if (!st && d->tokenizer_source) {
        mk_loaded *tm;
        const char *ref =
            strcmp(d->tokenizer_source, "base") && !union_tok ? d->tokenizer_source : cfg_ref;
        if (!(st = load(R, ref, &tm))) {
            struct stat sb;
            tok_dir = stat(tm->path, &sb) == 0 && S_ISDIR(sb.st_mode) ? fb_strdup(tm->path)
                                                                      : fb_path_dirname(tm->path);
            if (!tok_dir) st = FB_ERR_NOMEM;
        }
    }
    if (!st) st = d->from_models ? plan_models(R, &p) : plan_slices(R, &p);
    mk_loaded *base_loaded = NULL;
    vocab uv, *keep = NULL;
    int nkeep = 0;
    char *appended = NULL;
    memset(&uv, 0, sizeof uv);
    if (!st && tok_dir && d->base) st = load(R, d->base, &base_loaded);
    if (!st && union_tok) st = union_vocab(&p, cfg_model, &uv, &keep, &nkeep, &appended);
    if (!st && tok_dir)
        st = permute_vocabularies(&p, tok_dir, base_loaded, !strcmp(d->tokenizer_source, "base"),
                                  union_tok ? &uv : NULL);
    /* the pool's models: every source but the base (kept apart for methods that use it) */
    int models[256], nmodels = 0;
    for (int k = 0; k < p.P && !st; k++) {
        if (role != BASE_AS_MODEL && k == p.base_pos[0]) continue;
        if (nmodels == 256)
            st = fb_set_error(FB_ERR_UNSUPPORTED, "more than 256 models");
        else
            models[nmodels++] = k;
    }
    /* base positions may differ between slices; the non-base positions keep their order */
    const fb_method_ops *ops = fb_method_lookup(d->method->registry);
    if (!st && !ops)
        st = fb_set_error(FB_ERR_INTERNAL, "method %s is not registered", d->method->registry);
    for (int64_t i = 0; i < p.nouts && !st; i++) {
        mk_out *o = &p.outs[i];
        int sm[256], n = 0;
        for (int k = 0; k < p.P; k++)
            if (role == BASE_AS_MODEL || k != p.base_pos[o->slice]) sm[n++] = k;
        fb_config *set;
        st = resolve_params(d, &p, ops, sm, n, o, R->opts ? R->opts->random_seed : 0, &set);
        if (st) break;
        char *key = fb_cfg_to_yaml(set);
        int found = -1;
        for (int k = 0; key && k < p.nsets && found < 0; k++) {
            char *other = fb_cfg_to_yaml(p.sets[k]);
            if (other && !strcmp(other, key)) found = k;
            free(other);
        }
        if (!key) st = FB_ERR_NOMEM;
        free(key);
        if (!st && found < 0) {
            fb_config **grown = fb_realloc(p.sets, (size_t)(p.nsets + 1) * sizeof *grown);
            if (!grown)
                st = FB_ERR_NOMEM;
            else {
                p.sets = grown;
                p.sets[p.nsets] = set;
                set = NULL;
                found = p.nsets++;
            }
        }
        fb_config_free(set);
        o->params = found;
        if (!st) st = fb_strmap_put(&p.by_name, o->name, i);
        if (st == FB_ERR_ARG)
            st = fb_set_error(FB_ERR_ARG, "the output would hold tensor '%s' twice", o->name);
    }
    /* the method, made with the first tensor's parameters */
    if (!st && p.nouts == 0) st = fb_set_error(FB_ERR_ARG, "%s: nothing to merge", d->origin);
    if (!st) {
        char *yaml = fb_cfg_to_yaml(p.sets[p.outs[0].params]);
        st = yaml ? fb_method_create(ops->name, yaml, &method) : FB_ERR_NOMEM;
        free(yaml);
    }
    if (!st) {
        method->tensor_params = tensor_params;
        method->tensor_params_user = &p;
        method->out_layers = p.out_layers;
        method->tokenizer_dir = tok_dir;
        method->out_vocab = p.vocab_size;
        method->added_tokens = appended;
        method->chat_template = d->chat_template;
    }
    /* the views: model v is the v-th source that is not the base, in every slice, under the
     * output's names; "_pretrained_" is each slice's base */
    if (!st) st = fb_modelpool_create(&pool);
    for (int v = -1; v < nmodels && !st; v++) {
        if (v < 0 && (role == BASE_AS_MODEL || p.base_pos[0] < 0)) continue;
        fb_model *view;
        if ((st = fb_model_create(&view))) break;
        const mk_loaded *named = p.src[0][v < 0 ? p.base_pos[0] : models[v]];
        /* the first model of a pool without _pretrained_ gives the output its config.json */
        const mk_loaded *folder = v == 0 && role == BASE_AS_MODEL ? cfg_model : named;
        if (!(view->path = fb_strdup(folder->path))) st = FB_ERR_NOMEM;
        for (int64_t i = 0; i < p.nouts && !st; i++) {
            const mk_out *o = &p.outs[i];
            const fb_tensor *T = o->in[position(&p, role, o->slice, v)];
            st = T->src ? fb_model_add_tensor_lazy(view, o->name, T->dtype, T->ndim, T->shape,
                                                   T->src, T->src_offset)
                        : fb_model_add_tensor_borrowed(view, o->name, T->dtype, T->ndim, T->shape,
                                                       T->data);
        }
        char name[300];
        snprintf(name, sizeof name, "%s", v < 0 ? FB_PRETRAINED : named->ref);
        for (int dup = 2; !st && fb_modelpool_get(pool, name); dup++)
            snprintf(name, sizeof name, "%s#%d", named->ref, dup);
        if (st)
            fb_model_free(view);
        else
            st = fb_modelpool_add_model(pool, name, view);
    }
    if (!st) st = card_and_files(d, &p, &card);
    if (!st) {
        method->card = card.data;
        method->extra_name = "mergekit_config.yml";
        method->extra_text = d->text;
    }
    fb_run_options ro = R->opts && R->opts->run ? *R->opts->run : (fb_run_options){0};
    if (d->dtype_set) ro.inputs_as_f32 = 1;
    if (d->out_dtype_set || d->dtype_set) {
        ro.out_dtype_set = 1;
        ro.out_dtype = d->out_dtype_set ? d->out_dtype : d->dtype;
    }
    fb_save_options save = {0};
    save.max_shard_bytes =
        R->opts && R->opts->max_shard_bytes ? R->opts->max_shard_bytes : (size_t)5000000000ull;
    if (!st && !(R->opts && R->opts->dry_run))
        st = fb_method_run_to_file(method, pool, &ro, out_dir, &save);
    fb_method_free(method);
    fb_modelpool_free(pool);
    fb_buf_free(&card);
    fb_free(tok_dir);
    plan_free(&p);
    fb_strmap_clear(&uv.ids);
    fb_strmap_clear(&uv.added);
    for (int i = 0; i < nkeep; i++)
        vocab_free(&keep[i]);
    fb_free(keep);
    cJSON_free(appended);
    return st;
}

fb_status fb_mergekit_run(const char *config_path, const char *out_dir,
                          const fb_mergekit_options *opts)
{
    mk_doc *docs;
    int ndocs;
    fb_status st = parse_file(config_path, &docs, &ndocs);
    if (st) return st;
    char *inter = NULL;
    if (ndocs > 1) {
        if (opts && opts->intermediate_dir)
            inter = fb_strdup(opts->intermediate_dir);
        else {
            fb_buf b;
            fb_buf_init(&b);
            fb_buf_printf(&b, "%s.intermediates", out_dir);
            inter = b.data;
        }
        if (!inter) st = FB_ERR_NOMEM;
    }
    /* every model that is not an intermediate is opened (headers) before the first merge, and
     * every path the run writes is checked against every file it reads */
    fb_input_path *inputs = NULL;
    int ninputs = 0;
    int64_t icap = 0;
    if (!st) st = fb_input_paths_add(&inputs, &ninputs, &icap, config_path, "configuration", "");
    for (int i = 0; !st && i < ndocs; i++) {
        run R = {.opts = opts, .docs = docs, .ndocs = ndocs, .inter_dir = inter};
        const mk_doc *d = &docs[i];
        for (int s = -1; !st && s < d->num_slices; s++) {
            for (int k = s < 0 ? -1 : 0; !st && k < (s < 0 ? 0 : d->slices[s].n); k++) {
                const char *ref = s < 0 ? d->base : d->slices[s].src[k].model;
                int named = 0;
                for (int j = 0; ref && j < ndocs; j++)
                    named |=
                        docs[j].name && !strncmp(ref, docs[j].name, strlen(docs[j].name)) &&
                        (ref[strlen(docs[j].name)] == '\0' || ref[strlen(docs[j].name)] == '+');
                mk_loaded *L;
                if (ref && !named) st = load(&R, ref, &L);
            }
        }
        for (int m = 0; !st && m < R.nloaded; m++) {
            const fb_model *M = R.loaded[m]->model;
            if (M->path)
                st = fb_input_paths_add(&inputs, &ninputs, &icap, M->path, "model",
                                        R.loaded[m]->ref);
            for (int64_t t = 0; !st && t < M->count; t++)
                if (M->tensors[t]->src)
                    st = fb_input_paths_add(&inputs, &ninputs, &icap, M->tensors[t]->src->path,
                                            "model", R.loaded[m]->ref);
        }
        run_free(&R);
        if (st && strncmp(fb_last_error(), config_path, strlen(config_path)) != 0)
            st = fb_error_prefix(st, "%s", config_path);
    }
    if (!st) {
        fb_output_path outs[3] = {{out_dir, "output folder"}};
        int nouts = 1;
        if (opts && opts->report_path)
            outs[nouts++] = (fb_output_path){opts->report_path, "report"};
        if (inter) outs[nouts++] = (fb_output_path){inter, "intermediate folder"};
        st = fb_outputs_check(outs, nouts, inputs, ninputs);
    }
    fb_input_paths_free(inputs, ninputs);
    int made_inter = 0; /* this run made the intermediate folder */
    if (!st && inter) {
        made_inter = mkdir(inter, 0777) == 0;
        if (!made_inter && errno != EEXIST)
            st = fb_set_error(FB_ERR_IO, "%s: %s", inter, strerror(errno));
    }
    /* dependency order: a document runs once every document it names has run */
    for (int done = 0; !st && done < ndocs;) {
        int progressed = 0;
        for (int i = 0; i < ndocs && !st; i++) {
            mk_doc *d = &docs[i];
            if (d->done) continue;
            int ready = 1;
            for (int k = 0; k < ndocs && ready; k++) {
                if (k == i || docs[k].done || !docs[k].name) continue;
                const char *nm = docs[k].name;
                if (d->base && !strcmp(d->base, nm)) ready = 0;
                for (int s = 0; s < d->num_slices && ready; s++) {
                    if (d->slices[s].base && !strcmp(d->slices[s].base, nm)) ready = 0;
                    for (int j = 0; j < d->slices[s].n && ready; j++)
                        if (!strcmp(d->slices[s].src[j].model, nm)) ready = 0;
                }
            }
            if (!ready) continue;
            run R = {.opts = opts, .docs = docs, .ndocs = ndocs, .inter_dir = inter};
            char path[4096];
            if (d->name && ndocs > 1)
                snprintf(path, sizeof path, "%s/%s", inter, d->name);
            else
                snprintf(path, sizeof path, "%s", out_dir);
            st = run_doc(&R, d, path);
            if (st && d->name && ndocs > 1) st = fb_error_prefix(st, "merge '%s'", d->name);
            if (st && st != FB_ERR_INTERRUPTED &&
                strncmp(fb_last_error(), config_path, strlen(config_path)) != 0)
                st = fb_error_prefix(st, "%s", config_path); /* every message names the file */
            run_free(&R);
            d->done = 1;
            done++;
            progressed = 1;
        }
        if (!st && !progressed)
            st = fb_set_error(FB_ERR_CONFIG, "%s: the documents reference each other in a cycle",
                              config_path);
    }
    /* a run that failed before any intermediate was kept leaves no empty folder behind
     * (finished intermediates stay, as mergekit-multi keeps them for the next run) */
    if (st && made_inter) rmdir(inter);
    for (int i = 0; i < ndocs; i++)
        doc_free(&docs[i]);
    fb_free(docs);
    fb_free(inter);
    return st;
}
