/*
 * config.h: the YAML tree behind method parameters, model pool files and the CLI's composed
 * configuration, with typed getters that name the key in their errors and Hydra-style
 * dotted overrides ("method.weights=[0.5,0.3,0.2]").
 *
 * Scalars stay text until read: a getter decides whether "0.3" is a number or "true" a bool,
 * and a quoted scalar is always a string. Every node remembers the file it came from, so
 * relative paths can be taken from the config file's folder.
 */
#ifndef FB_CONFIG_CONFIG_H
#define FB_CONFIG_CONFIG_H

#include <stdint.h>

#include "fusionbench.h"

typedef enum fb_cfg_kind { FB_CFG_NULL, FB_CFG_SCALAR, FB_CFG_SEQ, FB_CFG_MAP } fb_cfg_kind;

struct fb_config {
    fb_cfg_kind kind;
    char *value;          /* scalars */
    int quoted;           /* scalar was quoted (or tagged !!str): a string, never a number */
    char **keys;          /* maps: keys, parallel to items */
    struct fb_config **items; /* maps: values; sequences: elements */
    int count, cap;
    char *origin;         /* file the node came from; NULL for the command line or code */
    int line;             /* 1-based line in origin, 0 if unknown */
};

/* Parses text; origin (may be NULL) is recorded on every node for messages and paths. */
fb_status fb_cfg_parse_text(const char *text, size_t len, const char *origin, fb_config **out);

fb_status fb_cfg_new(fb_cfg_kind kind, const char *scalar, fb_config **out);
fb_status fb_cfg_copy(const fb_config *node, fb_config **out);

/* Maps. get returns NULL if absent. set replaces or appends and takes ownership of value
 * (also on failure). remove frees the entry if present. */
fb_config *fb_cfg_map_get(const fb_config *map, const char *key);
fb_status fb_cfg_map_set(fb_config *map, const char *key, fb_config *value);
void fb_cfg_map_remove(fb_config *map, const char *key);
/* Appends to a sequence; takes ownership. */
fb_status fb_cfg_seq_append(fb_config *seq, fb_config *value);

/* Typed reads; `key` names the value in errors ("method.scaling_factor"). FB_ERR_CONFIG when
 * the node is of the wrong kind. */
int fb_cfg_is_null(const fb_config *node);
fb_status fb_cfg_bool(const fb_config *node, const char *key, int *out);
fb_status fb_cfg_double(const fb_config *node, const char *key, double *out);
fb_status fb_cfg_int(const fb_config *node, const char *key, int64_t *out);
fb_status fb_cfg_string(const fb_config *node, const char *key, const char **out);
/* A sequence of numbers; *out is allocated (caller frees with fb_free). */
fb_status fb_cfg_double_list(const fb_config *node, const char *key, double **out, int *count);

/* Sets the node at a dotted key to the value text parsed as YAML (Hydra's override values:
 * numbers, true/false, null, strings, [lists], {maps}); intermediate maps are created. */
fb_status fb_cfg_override(fb_config *root, const char *dotted_key, const char *value_text);

/* Resolves OmegaConf interpolation (${a.b}, ${..key}, ${oc.env:VAR,default}, ${now:FMT}) in
 * every value of root, in place (interp.c). Errors name the key, its file and line. */
fb_status fb_cfg_resolve(fb_config *root);

/* Renders as YAML into a malloc'd string (free with free()). */
char *fb_cfg_to_yaml(const fb_config *node);

/* "file:line" of a node for messages; "command line" for an override's nodes, "parameters"
 * for nodes made in code. Uses a thread-local buffer. */
const char *fb_cfg_where(const fb_config *node);

#endif
