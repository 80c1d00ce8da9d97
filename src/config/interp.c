/*
 * interp.c: OmegaConf's interpolation in a composed configuration, as FusionBench's files use
 * it: ${a.b.c} (from the root), ${.key} and ${..key} (relative: one dot is the mapping that
 * holds the value, each further dot one level up), ${oc.env:VAR} and ${oc.env:VAR,default}
 * (the default itself may interpolate), ${now:FORMAT} (strftime), and ${hydra:runtime.cwd} and
 * ${hydra:job.config_name}. A value that is exactly one ${...} takes the referenced node (a
 * number stays a number, a mapping a mapping); inside other text the reference must be a
 * scalar. Values referred to are resolved first; a cycle, a missing key or an unknown resolver
 * is an error naming the key, its file and line, and what it refers to.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"

enum { MAX_DEPTH = 64, MAX_ANCESTORS = 64 };

typedef struct resolver {
    fb_config *root;
    const fb_config *active[MAX_DEPTH]; /* values being resolved: a repeat is a cycle */
    int nactive;
    char key[512]; /* the dotted key of the value being resolved, for messages */
} resolver;

/* The chain of mappings from the root down to the one holding `target` (found by search),
 * and target's key there. */
static int find_path(fb_config *node, const fb_config *target, fb_config **chain, int depth,
                     int *len)
{
    if (depth >= MAX_ANCESTORS) return 0;
    for (int i = 0; i < node->count; i++) {
        fb_config *c = node->items[i];
        if (c == target) {
            chain[depth] = node;
            *len = depth + 1;
            return 1;
        }
        if (c->count && find_path(c, target, chain, depth + 1, len)) {
            chain[depth] = node;
            return 1;
        }
    }
    return 0;
}

static fb_status resolve_node(resolver *r, fb_config *node);

/* The node a key path names: absolute from the root, or relative to `at` (the mapping holding
 * the value) when it starts with dots. */
static fb_status lookup(resolver *r, const fb_config *value, const char *path, fb_config **out)
{
    fb_config *chain[MAX_ANCESTORS];
    int len = 0;
    fb_config *node = r->root;
    const char *p = path;
    if (*p == '.') {
        if (!find_path(r->root, value, chain, 0, &len) || len == 0)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: '%s' refers to ${%s}, but it has no enclosing "
                                "mapping",
                                fb_cfg_where(value), r->key, path);
        int ups = 0;
        while (*p == '.')
            ups++, p++;
        if (ups > len)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: '%s' refers to ${%s}, which climbs past the "
                                "root",
                                fb_cfg_where(value), r->key, path);
        node = chain[len - ups];
    }
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        char part[256];
        if (n == 0 || n >= sizeof part) break;
        memcpy(part, p, n);
        part[n] = '\0';
        fb_config *child = node && node->kind == FB_CFG_MAP ? fb_cfg_map_get(node, part) : NULL;
        if (!child)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: '%s' refers to ${%s}, which is not in the "
                                "configuration",
                                fb_cfg_where(value), r->key, path);
        node = child;
        p = dot ? dot + 1 : p + n;
    }
    *out = node;
    return resolve_node(r, node); /* its own references first */
}

/* The end of the ${...} starting at s (the index of its closing brace), nesting counted. */
static const char *closing(const char *s)
{
    int depth = 0;
    for (const char *p = s; *p; p++) {
        if (p[0] == '$' && p[1] == '{')
            depth++, p++;
        else if (*p == '}' && --depth == 0)
            return p;
    }
    return NULL;
}

static fb_status expand(resolver *r, const fb_config *value, const char *text, fb_buf *out);

/* One ${...} body: a resolver call or a key path. Scalars append their text to out; with
 * whole != NULL, the referenced node itself is returned there (for a value that is only it). */
static fb_status one(resolver *r, const fb_config *value, const char *body, fb_buf *out,
                     fb_config **whole)
{
    if (!strncmp(body, "oc.env:", 7)) {
        const char *arg = body + 7, *comma = strchr(arg, ',');
        char var[256];
        snprintf(var, sizeof var, "%.*s", (int)(comma ? (size_t)(comma - arg) : strlen(arg)), arg);
        const char *v = getenv(var);
        if (v) return fb_buf_printf(out, "%s", v), FB_OK;
        if (!comma)
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: '%s' needs the environment variable %s "
                                "(${oc.env:%s} has no default)",
                                fb_cfg_where(value), r->key, var, var);
        const char *def = comma + 1;
        while (*def == ' ')
            def++;
        size_t n = strlen(def);
        if (n >= 2 && (def[0] == '"' || def[0] == '\'') && def[n - 1] == def[0]) {
            fb_buf_printf(out, "%.*s", (int)n - 2, def + 1);
            return FB_OK;
        }
        return expand(r, value, def, out);
    }
    if (!strncmp(body, "now:", 4)) {
        char stamp[128] = "";
        time_t t = time(NULL);
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(stamp, sizeof stamp, body + 4, &tm);
        fb_buf_printf(out, "%s", stamp);
        return FB_OK;
    }
    if (!strcmp(body, "hydra:runtime.cwd")) {
        char cwd[4096];
        fb_buf_printf(out, "%s", getcwd(cwd, sizeof cwd) ? cwd : ".");
        return FB_OK;
    }
    if (!strcmp(body, "hydra:job.config_name")) {
        fb_buf_printf(out, "fusion_bench");
        return FB_OK;
    }
    if (strchr(body, ':'))
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: '%s': unknown resolver in ${%s} (known: oc.env, "
                            "now, hydra:runtime.cwd, hydra:job.config_name)",
                            fb_cfg_where(value), r->key, body);
    fb_config *ref = NULL;
    fb_status st = lookup(r, value, body, &ref);
    if (st) return st;
    if (whole) {
        *whole = ref;
        return FB_OK;
    }
    if (ref->kind != FB_CFG_SCALAR && ref->kind != FB_CFG_NULL)
        return fb_set_error(FB_ERR_CONFIG, "%s: '%s': ${%s} is a %s, which cannot be part of text",
                            fb_cfg_where(value), r->key, body,
                            ref->kind == FB_CFG_MAP ? "mapping" : "list");
    fb_buf_printf(out, "%s", ref->kind == FB_CFG_NULL ? "None" : ref->value);
    return FB_OK;
}

/* text with every ${...} replaced, into out. */
static fb_status expand(resolver *r, const fb_config *value, const char *text, fb_buf *out)
{
    const char *p = text;
    while (*p) {
        const char *at = strstr(p, "${");
        if (!at) {
            fb_buf_printf(out, "%s", p);
            break;
        }
        fb_buf_printf(out, "%.*s", (int)(at - p), p);
        const char *end = closing(at);
        if (!end)
            return fb_set_error(FB_ERR_CONFIG, "%s: '%s': '${' without its closing '}' in '%s'",
                                fb_cfg_where(value), r->key, text);
        char *body = fb_strndup(at + 2, (size_t)(end - at - 2));
        if (!body) return FB_ERR_NOMEM;
        fb_status st = one(r, value, body, out, NULL);
        fb_free(body);
        if (st) return st;
        p = end + 1;
    }
    return out->failed ? FB_ERR_NOMEM : FB_OK;
}

/* Replaces the contents of dst by a copy of src's (origin and line stay dst's). */
static fb_status replace_with(fb_config *dst, const fb_config *src)
{
    fb_config *copy;
    fb_status st = fb_cfg_copy(src, &copy);
    if (st) return st;
    fb_config tmp = *dst;
    dst->kind = copy->kind;
    dst->value = copy->value;
    dst->quoted = copy->quoted;
    dst->keys = copy->keys;
    dst->items = copy->items;
    dst->count = copy->count;
    dst->cap = copy->cap;
    copy->value = tmp.value;
    copy->keys = tmp.keys;
    copy->items = tmp.items;
    copy->count = tmp.count;
    copy->kind = FB_CFG_SCALAR;
    fb_config_free(copy); /* frees dst's old contents */
    return FB_OK;
}

static fb_status resolve_node(resolver *r, fb_config *node)
{
    for (int i = 0; i < r->nactive; i++)
        if (r->active[i] == node)
            return fb_set_error(FB_ERR_CONFIG, "%s: '%s': ${...} references go round in a cycle",
                                fb_cfg_where(node), r->key);
    if (r->nactive >= MAX_DEPTH)
        return fb_set_error(FB_ERR_CONFIG, "%s: '%s': ${...} references nest deeper than %d",
                            fb_cfg_where(node), r->key, MAX_DEPTH);
    fb_status st = FB_OK;
    r->active[r->nactive++] = node;
    if (node->kind == FB_CFG_SCALAR && node->value && strstr(node->value, "${")) {
        const char *v = node->value;
        const char *end = !strncmp(v, "${", 2) ? closing(v) : NULL;
        fb_buf out;
        fb_buf_init(&out);
        if (end && end[1] == '\0' && strncmp(v + 2, "oc.env:", 7) && strncmp(v + 2, "now:", 4) &&
            !strchr(v + 2, ':')) { /* exactly one reference: the node itself */
            char *body = fb_strndup(v + 2, (size_t)(end - v - 2));
            fb_config *ref = NULL;
            st = body ? one(r, node, body, &out, &ref) : FB_ERR_NOMEM;
            fb_free(body);
            if (!st) st = replace_with(node, ref);
        } else {
            st = expand(r, node, v, &out);
            if (!st) {
                char *s = fb_strdup(out.data ? out.data : "");
                if (!s)
                    st = FB_ERR_NOMEM;
                else {
                    fb_free(node->value); /* typed as the value was written (plain or quoted) */
                    node->value = s;
                }
            }
        }
        fb_buf_free(&out);
    }
    for (int i = 0; !st && i < node->count; i++)
        st = resolve_node(r, node->items[i]);
    r->nactive--;
    return st;
}

/* The dotted keys are kept for messages while walking from the root. */
static fb_status walk(resolver *r, fb_config *node, size_t keylen)
{
    fb_status st = FB_OK;
    for (int i = 0; !st && i < node->count; i++) {
        if (node->kind == FB_CFG_MAP)
            snprintf(r->key + keylen, sizeof r->key - keylen, "%s%s", keylen ? "." : "",
                     node->keys[i]);
        else
            snprintf(r->key + keylen, sizeof r->key - keylen, "[%d]", i);
        fb_config *c = node->items[i];
        if (c->kind == FB_CFG_SCALAR)
            st = resolve_node(r, c);
        else
            st = walk(r, c, strlen(r->key));
        r->key[keylen] = '\0';
    }
    return st;
}

fb_status fb_cfg_resolve(fb_config *root)
{
    resolver r = {.root = root};
    return walk(&r, root, 0);
}
