/*
 * registry.c: the list of methods, and making a method from a name or a config node.
 *
 * Parameters are checked here for every method alike: a key the method does not declare is
 * an error naming the key and the known ones, and missing keys take the declared defaults.
 */
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "method.h"

extern const fb_method_ops fb_method_simple_average;
extern const fb_method_ops fb_method_weighted_average;
extern const fb_method_ops fb_method_task_arithmetic;
extern const fb_method_ops fb_method_ties_merging;
extern const fb_method_ops fb_method_dare_task_arithmetic;
extern const fb_method_ops fb_method_dare_ties_merging;
extern const fb_method_ops fb_method_dare_simple_average;
extern const fb_method_ops fb_method_magmax;
extern const fb_method_ops fb_method_linear_interpolation;
extern const fb_method_ops fb_method_expo;
extern const fb_method_ops fb_method_slerp;
extern const fb_method_ops fb_method_karcher;
extern const fb_method_ops fb_method_model_stock;
extern const fb_method_ops fb_method_magnitude_diff_pruning;
extern const fb_method_ops fb_method_task_singular_vector;
extern const fb_method_ops fb_method_iso_c;
extern const fb_method_ops fb_method_iso_cts;
extern const fb_method_ops fb_method_consensus_task_arithmetic;

const fb_method_ops *const fb_method_registry[] = {
    &fb_method_simple_average,       &fb_method_weighted_average,
    &fb_method_task_arithmetic,      &fb_method_ties_merging,
    &fb_method_dare_task_arithmetic, &fb_method_dare_ties_merging,
    &fb_method_dare_simple_average,  &fb_method_magmax,
    &fb_method_linear_interpolation, &fb_method_expo,
    &fb_method_slerp,                &fb_method_karcher,
    &fb_method_model_stock,          &fb_method_magnitude_diff_pruning,
    &fb_method_task_singular_vector, &fb_method_iso_c,
    &fb_method_iso_cts,              &fb_method_consensus_task_arithmetic,
};
const int fb_method_registry_size = sizeof fb_method_registry / sizeof fb_method_registry[0];

int fb_method_registry_count(void) { return fb_method_registry_size; }

const char *fb_method_registry_name(int i)
{
    return i >= 0 && i < fb_method_registry_size ? fb_method_registry[i]->name : NULL;
}

const char *fb_method_registry_summary(int i)
{
    return i >= 0 && i < fb_method_registry_size ? fb_method_registry[i]->summary : NULL;
}

const fb_method_ops *fb_method_lookup(const char *name)
{
    for (int i = 0; i < fb_method_registry_size; i++)
        if (strcmp(fb_method_registry[i]->name, name) == 0) return fb_method_registry[i];
    return NULL;
}

/* "_target_: fusion_bench.method.TaskArithmeticAlgorithm" (any module path) -> its method. */
static const fb_method_ops *lookup_target(const char *target)
{
    const char *dot = strrchr(target, '.');
    const char *cls = dot ? dot + 1 : target;
    for (int i = 0; i < fb_method_registry_size; i++)
        if (fb_method_registry[i]->target_class &&
            strcmp(fb_method_registry[i]->target_class, cls) == 0)
            return fb_method_registry[i];
    return NULL;
}

fb_status fb_method_unknown(const char *name)
{
    fb_buf b;
    fb_buf_init(&b);
    for (int i = 0; i < fb_method_registry_size; i++)
        fb_buf_printf(&b, "%s%s", i ? ", " : "", fb_method_registry[i]->name);
    fb_status st = fb_set_error(FB_ERR_NOT_FOUND, "unknown method '%s' (known: %s)", name,
                                b.failed ? "?" : b.data);
    fb_buf_free(&b);
    return st;
}

/* Keys every method mapping may hold besides its parameters. */
static int is_meta_key(const char *k)
{
    return !strcmp(k, "name") || !strcmp(k, "_target_") || !strcmp(k, "_recursive_") ||
           !strcmp(k, "_partial_");
}

static fb_status make_method(const fb_method_ops *ops, const fb_config *given, fb_method **out)
{
    *out = NULL;
    if (given && !fb_cfg_is_null(given) && given->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "method %s: parameters must be a mapping", ops->name);
    fb_config *params;
    fb_status st = fb_cfg_new(FB_CFG_MAP, NULL, &params);
    if (st) return st;
    /* given keys first, each one checked against the declared parameters */
    for (int i = 0; given && i < given->count && !st; i++) {
        const char *k = given->keys[i];
        if (is_meta_key(k)) continue;
        const fb_param_spec *p = ops->params;
        while (p->name && strcmp(p->name, k) != 0) p++;
        if (!p->name) {
            fb_buf b;
            fb_buf_init(&b);
            for (p = ops->params; p->name; p++)
                fb_buf_printf(&b, "%s%s", p == ops->params ? "" : ", ", p->name);
            st = fb_set_error(FB_ERR_CONFIG, "%s: method %s has no parameter '%s' (known: %s)",
                              fb_cfg_where(given->items[i]), ops->name, k,
                              b.len ? b.data : "none");
            fb_buf_free(&b);
            break;
        }
        fb_config *c;
        if (!(st = fb_cfg_copy(given->items[i], &c))) st = fb_cfg_map_set(params, k, c);
    }
    for (const fb_param_spec *p = ops->params; p->name && !st; p++) {
        if (fb_cfg_map_get(params, p->name)) continue;
        fb_config *def;
        if (!(st = fb_cfg_parse_text(p->default_yaml, strlen(p->default_yaml), NULL, &def)))
            st = fb_cfg_map_set(params, p->name, def);
    }
    fb_method *m = NULL;
    if (!st && !(m = fb_calloc(1, sizeof *m))) st = FB_ERR_NOMEM;
    if (!st) {
        m->ops = ops;
        m->params = params;
        st = ops->create(params, &m->state);
        if (st) fb_error_prefix(st, "method %s", ops->name);
    }
    if (st) {
        if (m) m->params = NULL;
        fb_free(m);
        fb_config_free(params);
        return st;
    }
    *out = m;
    return FB_OK;
}

fb_status fb_method_create(const char *name, const char *params_yaml, fb_method **out)
{
    *out = NULL;
    const fb_method_ops *ops = fb_method_lookup(name);
    if (!ops) return fb_method_unknown(name);
    fb_config *given = NULL;
    if (params_yaml) {
        fb_status st = fb_config_parse(params_yaml, &given);
        if (st) return fb_error_prefix(st, "method %s: parameters", name);
    }
    fb_status st = make_method(ops, given, out);
    fb_config_free(given);
    return st;
}

fb_status fb_method_create_from_config(const fb_config *node, fb_method **out)
{
    *out = NULL;
    if (!node || node->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "%s: a method must be a mapping with 'name' or "
                                           "'_target_'",
                            fb_cfg_where(node));
    const fb_config *name = fb_cfg_map_get(node, "name");
    const fb_config *target = fb_cfg_map_get(node, "_target_");
    const fb_method_ops *ops = NULL;
    const char *s;
    fb_status st;
    if (name && !fb_cfg_is_null(name)) {
        if ((st = fb_cfg_string(name, "method.name", &s))) return st;
        if (!(ops = fb_method_lookup(s))) return fb_method_unknown(s);
    } else if (target && !fb_cfg_is_null(target)) {
        if ((st = fb_cfg_string(target, "method._target_", &s))) return st;
        if (!(ops = lookup_target(s)))
            return fb_set_error(FB_ERR_NOT_FOUND,
                                "%s: method _target_ '%s' is not a method FusionBench-C has "
                                "(see fusion_bench --list-methods)",
                                fb_cfg_where(target), s);
    } else {
        return fb_set_error(FB_ERR_CONFIG, "%s: the method config names no method ('name' or "
                                           "'_target_')",
                            fb_cfg_where(node));
    }
    return make_method(ops, node, out);
}

void fb_method_free(fb_method *m)
{
    if (!m) return;
    if (m->ops->destroy) m->ops->destroy(m->state);
    else fb_free(m->state);
    fb_config_free(m->params);
    fb_free(m);
}

const char *fb_method_name(const fb_method *m) { return m->ops->name; }

const fb_config *fb_method_params(const fb_method *m) { return m->params; }
