/*
 * config.c: the YAML tree (libyaml's event parser), typed getters and dotted overrides.
 *
 * Only what configuration files need is accepted: mappings, sequences and scalars. Aliases are
 * refused (a config that needs them is better written out), duplicate keys are errors, and a
 * file holds at most one document.
 */
#include "config.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/source.h"
#include "core/status.h"

#define MAX_DEPTH 64

fb_status fb_cfg_new(fb_cfg_kind kind, const char *scalar, fb_config **out)
{
    fb_config *n = fb_calloc(1, sizeof *n);
    if (!n) return FB_ERR_NOMEM;
    n->kind = kind;
    if (scalar) {
        n->value = fb_strdup(scalar);
        if (!n->value) {
            fb_free(n);
            return FB_ERR_NOMEM;
        }
    }
    *out = n;
    return FB_OK;
}

void fb_config_free(fb_config *n)
{
    if (!n) return;
    for (int i = 0; i < n->count; i++) {
        if (n->keys) fb_free(n->keys[i]);
        fb_config_free(n->items[i]);
    }
    fb_free(n->keys);
    fb_free(n->items);
    fb_free(n->value);
    fb_free(n->origin);
    fb_free(n);
}

static fb_status reserve_items(fb_config *n)
{
    if (n->count < n->cap) return FB_OK;
    int cap = n->cap ? 2 * n->cap : 4;
    fb_config **items = fb_realloc(n->items, (size_t)cap * sizeof *items);
    if (!items) return FB_ERR_NOMEM;
    n->items = items;
    if (n->kind == FB_CFG_MAP) {
        char **keys = fb_realloc(n->keys, (size_t)cap * sizeof *keys);
        if (!keys) return FB_ERR_NOMEM;
        n->keys = keys;
    }
    n->cap = cap;
    return FB_OK;
}

fb_config *fb_cfg_map_get(const fb_config *map, const char *key)
{
    if (!map || map->kind != FB_CFG_MAP) return NULL;
    for (int i = 0; i < map->count; i++)
        if (strcmp(map->keys[i], key) == 0) return map->items[i];
    return NULL;
}

fb_status fb_cfg_map_set(fb_config *map, const char *key, fb_config *value)
{
    for (int i = 0; i < map->count; i++) {
        if (strcmp(map->keys[i], key) == 0) {
            fb_config_free(map->items[i]);
            map->items[i] = value;
            return FB_OK;
        }
    }
    char *k = fb_strdup(key);
    if (!k || reserve_items(map)) {
        fb_free(k);
        fb_config_free(value);
        return FB_ERR_NOMEM;
    }
    map->keys[map->count] = k;
    map->items[map->count++] = value;
    return FB_OK;
}

void fb_cfg_map_remove(fb_config *map, const char *key)
{
    for (int i = 0; i < map->count; i++) {
        if (strcmp(map->keys[i], key) != 0) continue;
        fb_free(map->keys[i]);
        fb_config_free(map->items[i]);
        memmove(map->keys + i, map->keys + i + 1, (size_t)(map->count - i - 1) * sizeof(char *));
        memmove(map->items + i, map->items + i + 1,
                (size_t)(map->count - i - 1) * sizeof(fb_config *));
        map->count--;
        return;
    }
}

fb_status fb_cfg_seq_append(fb_config *seq, fb_config *value)
{
    if (reserve_items(seq)) {
        fb_config_free(value);
        return FB_ERR_NOMEM;
    }
    seq->items[seq->count++] = value;
    return FB_OK;
}

fb_status fb_cfg_copy(const fb_config *src, fb_config **out)
{
    fb_config *n;
    fb_status st = fb_cfg_new(src->kind, src->value, &n);
    if (st) return st;
    n->quoted = src->quoted;
    n->line = src->line;
    if (src->origin && !(n->origin = fb_strdup(src->origin))) st = FB_ERR_NOMEM;
    for (int i = 0; i < src->count && !st; i++) {
        fb_config *c;
        if ((st = fb_cfg_copy(src->items[i], &c))) break;
        st = src->kind == FB_CFG_MAP ? fb_cfg_map_set(n, src->keys[i], c)
                                     : fb_cfg_seq_append(n, c);
    }
    if (st) {
        fb_config_free(n);
        return st;
    }
    *out = n;
    return FB_OK;
}

/* ------------------------------------------------------------------------ parsing -- */

typedef struct parser {
    yaml_parser_t yp;
    const char *origin;
} parser;

static fb_status parse_error(parser *p, const char *what, size_t line)
{
    return fb_set_error(FB_ERR_FORMAT, "%s:%zu: %s", p->origin ? p->origin : "<yaml>", line + 1,
                        what);
}

static fb_status next_event(parser *p, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&p->yp, ev)) {
        const char *problem = p->yp.problem ? p->yp.problem : "invalid YAML";
        return fb_set_error(FB_ERR_FORMAT, "%s:%zu:%zu: %s",
                            p->origin ? p->origin : "<yaml>", p->yp.problem_mark.line + 1,
                            p->yp.problem_mark.column + 1, problem);
    }
    return FB_OK;
}

static int is_null_text(const char *s)
{
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static fb_status parse_node(parser *p, yaml_event_t *ev, int depth, fb_config **out);

static fb_status set_origin(parser *p, fb_config *n, const yaml_event_t *ev)
{
    n->line = (int)ev->start_mark.line + 1;
    if (p->origin && !(n->origin = fb_strdup(p->origin))) return FB_ERR_NOMEM;
    return FB_OK;
}

/* Parses the node that starts with *ev (consumed); *out is the new node. */
static fb_status parse_node(parser *p, yaml_event_t *ev, int depth, fb_config **out)
{
    fb_status st;
    fb_config *n = NULL;
    *out = NULL;
    if (depth > MAX_DEPTH) return parse_error(p, "nesting too deep", ev->start_mark.line);
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        return parse_error(p, "YAML aliases (*name) are not supported in configs",
                           ev->start_mark.line);
    case YAML_SCALAR_EVENT: {
        const char *text = (const char *)ev->data.scalar.value;
        int quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_FOLDED_SCALAR_STYLE ||
                     (ev->data.scalar.tag &&
                      strcmp((const char *)ev->data.scalar.tag, YAML_STR_TAG) == 0);
        int null = !quoted && is_null_text(text);
        if ((st = fb_cfg_new(null ? FB_CFG_NULL : FB_CFG_SCALAR, null ? NULL : text, &n)))
            return st;
        n->quoted = quoted;
        if ((st = set_origin(p, n, ev))) goto fail;
        *out = n;
        return FB_OK;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int is_map = ev->type == YAML_MAPPING_START_EVENT;
        if ((st = fb_cfg_new(is_map ? FB_CFG_MAP : FB_CFG_SEQ, NULL, &n))) return st;
        if ((st = set_origin(p, n, ev))) goto fail;
        for (;;) {
            yaml_event_t e;
            if ((st = next_event(p, &e))) goto fail;
            if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
                yaml_event_delete(&e);
                break;
            }
            char *key = NULL;
            if (is_map) {
                if (e.type != YAML_SCALAR_EVENT) {
                    st = parse_error(p, "mapping keys must be plain scalars", e.start_mark.line);
                    yaml_event_delete(&e);
                    goto fail;
                }
                key = fb_strdup((const char *)e.data.scalar.value);
                size_t line = e.start_mark.line;
                yaml_event_delete(&e);
                if (!key) {
                    st = FB_ERR_NOMEM;
                    goto fail;
                }
                if (fb_cfg_map_get(n, key)) {
                    char msg[300];
                    snprintf(msg, sizeof msg, "duplicate key '%.200s'", key);
                    fb_free(key);
                    st = parse_error(p, msg, line);
                    goto fail;
                }
                if ((st = next_event(p, &e))) {
                    fb_free(key);
                    goto fail;
                }
            }
            fb_config *child;
            st = parse_node(p, &e, depth + 1, &child);
            yaml_event_delete(&e);
            if (!st) st = is_map ? fb_cfg_map_set(n, key, child) : fb_cfg_seq_append(n, child);
            fb_free(key);
            if (st) goto fail;
        }
        *out = n;
        return FB_OK;
    }
    default:
        return parse_error(p, "unexpected YAML event", ev->start_mark.line);
    }
fail:
    fb_config_free(n);
    return st;
}

fb_status fb_cfg_parse_text(const char *text, size_t len, const char *origin, fb_config **out)
{
    parser p = {.origin = origin};
    *out = NULL;
    if (!yaml_parser_initialize(&p.yp)) return fb_set_error(FB_ERR_NOMEM, "cannot start YAML parser");
    yaml_parser_set_input_string(&p.yp, (const unsigned char *)text, len);
    fb_config *root = NULL;
    fb_status st = FB_OK;
    int docs = 0;
    for (;;) {
        yaml_event_t ev;
        if ((st = next_event(&p, &ev))) break;
        yaml_event_type_t type = ev.type;
        if (type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (type == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
            st = parse_error(&p, "more than one YAML document", ev.start_mark.line);
            yaml_event_delete(&ev);
            break;
        }
        if (type == YAML_SCALAR_EVENT || type == YAML_SEQUENCE_START_EVENT ||
            type == YAML_MAPPING_START_EVENT || type == YAML_ALIAS_EVENT) {
            st = parse_node(&p, &ev, 0, &root);
            yaml_event_delete(&ev);
            if (st) break;
            continue;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p.yp);
    if (st) {
        fb_config_free(root);
        return st;
    }
    if (!root) { /* empty document */
        if ((st = fb_cfg_new(FB_CFG_NULL, NULL, &root))) return st;
    }
    *out = root;
    return FB_OK;
}

fb_status fb_config_parse(const char *text, fb_config **out)
{
    return fb_cfg_parse_text(text, strlen(text), NULL, out);
}

fb_status fb_config_load(const char *path, fb_config **out)
{
    *out = NULL;
    fb_source *src;
    fb_status st = fb_source_open(path, &src);
    if (st) return st;
    if (src->size > (16u << 20)) {
        fb_source_unref(src);
        return fb_set_error(FB_ERR_FORMAT, "%s: config file over 16 MB", path);
    }
    char *text = fb_malloc((size_t)src->size + 1);
    if (!text) {
        fb_source_unref(src);
        return FB_ERR_NOMEM;
    }
    st = fb_source_pread(src, 0, (size_t)src->size, text);
    size_t len = (size_t)src->size;
    fb_source_unref(src);
    if (!st) st = fb_cfg_parse_text(text, len, path, out);
    fb_free(text);
    return st;
}

const fb_config *fb_config_get(const fb_config *cfg, const char *dotted_key)
{
    char part[256];
    const char *s = dotted_key;
    while (cfg && *s) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (n >= sizeof part) return NULL;
        memcpy(part, s, n);
        part[n] = '\0';
        cfg = fb_cfg_map_get(cfg, part);
        s += n + (dot ? 1 : 0);
    }
    return cfg;
}

/* ------------------------------------------------------------------------ getters -- */

static _Thread_local char where_buf[512];

/* Nodes without a file: those of command-line overrides carry line -1, the rest came from
 * code (fb_method_create's parameters, fb_config_parse). */
const char *fb_cfg_where(const fb_config *n)
{
    if (!n || !n->origin) return n && n->line < 0 ? "command line" : "parameters";
    snprintf(where_buf, sizeof where_buf, "%s:%d", n->origin, n->line);
    return where_buf;
}

static fb_status wrong_type(const fb_config *n, const char *key, const char *want)
{
    const char *got = n->kind == FB_CFG_NULL ? "null"
                      : n->kind == FB_CFG_SEQ ? "a list"
                      : n->kind == FB_CFG_MAP ? "a mapping"
                                              : n->value;
    return fb_set_error(FB_ERR_CONFIG, "%s: '%s' must be %s, got %s%s%s", fb_cfg_where(n), key,
                        want, n->kind == FB_CFG_SCALAR ? "'" : "", got,
                        n->kind == FB_CFG_SCALAR ? "'" : "");
}

int fb_cfg_is_null(const fb_config *n) { return !n || n->kind == FB_CFG_NULL; }

fb_status fb_cfg_bool(const fb_config *n, const char *key, int *out)
{
    if (n && n->kind == FB_CFG_SCALAR && !n->quoted) {
        const char *v = n->value;
        if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))
            return *out = 1, FB_OK;
        if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))
            return *out = 0, FB_OK;
    }
    return wrong_type(n, key, "true or false");
}

static int parse_double_text(const char *v, double *out)
{
    if (!strcmp(v, ".inf") || !strcmp(v, ".Inf") || !strcmp(v, "+.inf")) return *out = INFINITY, 1;
    if (!strcmp(v, "-.inf") || !strcmp(v, "-.Inf")) return *out = -INFINITY, 1;
    if (!strcmp(v, ".nan") || !strcmp(v, ".NaN")) return *out = NAN, 1;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno == ERANGE) return 0;
    /* strtod also takes "inf", "nan" and hex; YAML numbers are decimal */
    for (const char *c = v; *c; c++)
        if (!strchr("0123456789+-.eE", *c)) return 0;
    *out = d;
    return 1;
}

/* Every number a config gives ends up in float32 arithmetic (scales, weights, rates): NaN,
 * infinities and values past float32's range would make every output entry NaN or Inf, so
 * they are refused where they are written. */
fb_status fb_cfg_double(const fb_config *n, const char *key, double *out)
{
    if (n && n->kind == FB_CFG_SEQ) /* a method parameter can vary by tensor, not by model */
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: '%s' must be a number, got a list; to give tensors their own "
                            "values write [{filter: REGEX, value: V}, ..., {value: DEFAULT}] (one "
                            "weight per model is weighted_average's 'weights')",
                            fb_cfg_where(n), key);
    if (!(n && n->kind == FB_CFG_SCALAR && !n->quoted && parse_double_text(n->value, out)))
        return wrong_type(n, key, "a number");
    if (!isfinite(*out))
        return fb_set_error(FB_ERR_CONFIG, "%s: '%s' is %s; it must be a finite number",
                            fb_cfg_where(n), key, n->value);
    if (fabs(*out) > FLT_MAX)
        return fb_set_error(FB_ERR_CONFIG,
                            "%s: '%s' is %s, past float32's range (+-3.4e38) the merge computes in",
                            fb_cfg_where(n), key, n->value);
    return FB_OK;
}

fb_status fb_cfg_int(const fb_config *n, const char *key, int64_t *out)
{
    if (n && n->kind == FB_CFG_SCALAR && !n->quoted) {
        char *end;
        errno = 0;
        long long v = strtoll(n->value, &end, 10);
        if (end != n->value && !*end && errno != ERANGE) return *out = v, FB_OK;
    }
    return wrong_type(n, key, "an integer");
}

fb_status fb_cfg_string(const fb_config *n, const char *key, const char **out)
{
    if (n && n->kind == FB_CFG_SCALAR) return *out = n->value, FB_OK;
    return wrong_type(n, key, "a string");
}

fb_status fb_cfg_double_list(const fb_config *n, const char *key, double **out, int *count)
{
    if (!n || n->kind != FB_CFG_SEQ) return wrong_type(n, key, "a list of numbers");
    double *v = fb_malloc((size_t)(n->count ? n->count : 1) * sizeof *v);
    if (!v) return FB_ERR_NOMEM;
    for (int i = 0; i < n->count; i++) {
        char k[300];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        fb_status st = fb_cfg_double(n->items[i], k, &v[i]);
        if (st) {
            fb_free(v);
            return st;
        }
    }
    *out = v;
    *count = n->count;
    return FB_OK;
}

static void mark_command_line(fb_config *n)
{
    n->line = -1;
    for (int i = 0; i < n->count; i++) mark_command_line(n->items[i]);
}

fb_status fb_cfg_override(fb_config *root, const char *dotted_key, const char *value_text)
{
    if (root->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "cannot override '%s': the config is not a mapping",
                            dotted_key);
    fb_config *value;
    fb_status st = fb_cfg_parse_text(value_text, strlen(value_text), NULL, &value);
    if (st)
        return fb_set_error(FB_ERR_CONFIG, "override %s=%s: the value is not valid YAML",
                            dotted_key, value_text);
    mark_command_line(value);
    fb_config *node = root;
    const char *s = dotted_key;
    for (;;) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (n == 0 || n > 255) {
            fb_config_free(value);
            return fb_set_error(FB_ERR_CONFIG, "override '%s': malformed key", dotted_key);
        }
        char part[256];
        memcpy(part, s, n);
        part[n] = '\0';
        if (!dot) return fb_cfg_map_set(node, part, value);
        fb_config *child = fb_cfg_map_get(node, part);
        if (!child || child->kind == FB_CFG_NULL) {
            if ((st = fb_cfg_new(FB_CFG_MAP, NULL, &child))) {
                fb_config_free(value);
                return st;
            }
            child->line = -1;
            if ((st = fb_cfg_map_set(node, part, child))) {
                fb_config_free(value);
                return st;
            }
        } else if (child->kind != FB_CFG_MAP) {
            fb_config_free(value);
            return fb_set_error(FB_ERR_CONFIG,
                                "override '%s': '%.*s' is not a mapping, so it has no key '%s'",
                                dotted_key, (int)(dot - dotted_key), dotted_key, dot + 1);
        }
        node = child;
        s = dot + 1;
    }
}

/* ---------------------------------------------------------------------- rendering -- */

/* Plain YAML scalars that read back as the same text and type. */
static int needs_quotes(const fb_config *n)
{
    const char *v = n->value;
    if (!*v || is_null_text(v)) return 1;
    if (n->quoted) {
        double d;
        if (parse_double_text(v, &d) || !strcmp(v, "true") || !strcmp(v, "false")) return 1;
    }
    if (strchr("!&*{}[]|>'\"%@`#,?:- ", v[0])) return 1;
    for (const char *c = v; *c; c++) {
        if ((unsigned char)*c < 0x20) return 1;
        if ((*c == ':' || *c == '#') && (c[1] == ' ' || c[1] == '\0')) return 1;
        if (*c == ' ' && c[1] == '#') return 1;
    }
    size_t len = strlen(v);
    return v[len - 1] == ' ';
}

static void render_scalar(fb_buf *b, const fb_config *n)
{
    if (n->kind == FB_CFG_NULL) fb_buf_puts(b, "null");
    else if (needs_quotes(n)) fb_buf_json_string(b, n->value);
    else fb_buf_puts(b, n->value);
}

static int is_leaf(const fb_config *n)
{
    return n->kind == FB_CFG_NULL || n->kind == FB_CFG_SCALAR || n->count == 0;
}

static void render_leaf(fb_buf *b, const fb_config *n)
{
    if (n->kind == FB_CFG_MAP) fb_buf_puts(b, "{}");
    else if (n->kind == FB_CFG_SEQ) fb_buf_puts(b, "[]");
    else render_scalar(b, n);
}

static void render(fb_buf *b, const fb_config *n, int indent)
{
    for (int i = 0; i < n->count; i++) {
        const fb_config *c = n->items[i];
        fb_buf_printf(b, "%*s", indent, "");
        if (n->kind == FB_CFG_MAP) {
            fb_config key = {.kind = FB_CFG_SCALAR, .value = n->keys[i]};
            render_scalar(b, &key);
            fb_buf_puts(b, is_leaf(c) ? ": " : ":\n");
        } else {
            fb_buf_puts(b, is_leaf(c) ? "- " : "-\n");
        }
        if (is_leaf(c)) {
            render_leaf(b, c);
            fb_buf_puts(b, "\n");
        } else {
            render(b, c, indent + 2);
        }
    }
}

char *fb_cfg_to_yaml(const fb_config *n)
{
    fb_buf b;
    fb_buf_init(&b);
    if (is_leaf(n)) {
        render_leaf(&b, n);
        fb_buf_puts(&b, "\n");
    } else {
        render(&b, n, 0);
    }
    if (b.failed) {
        fb_buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *fb_config_to_yaml(const fb_config *cfg) { return fb_cfg_to_yaml(cfg); }
