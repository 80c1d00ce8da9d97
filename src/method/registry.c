/*
 * registry.c: the list of methods, and making a method from a name or a config node.
 *
 * Parameters are checked here for every method alike: a key the method does not declare is
 * an error naming the key and the known ones, and missing keys take the declared defaults.
 */
#include <regex.h>
#include <stdio.h>
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
extern const fb_method_ops fb_method_breadcrumbs;
extern const fb_method_ops fb_method_breadcrumbs_ties;
extern const fb_method_ops fb_method_della;
extern const fb_method_ops fb_method_della_linear;
extern const fb_method_ops fb_method_depth_upscaling;
extern const fb_method_ops fb_method_passthrough;
extern const fb_method_ops fb_method_wudi;
extern const fb_method_ops fb_method_tall_mask;
extern const fb_method_ops fb_method_emr_merging;
extern const fb_method_ops fb_method_dummy;
extern const fb_method_ops fb_method_smile_upscaling;
extern const fb_method_ops fb_method_weight_ensembling_moe;
extern const fb_method_ops fb_method_sparse_weight_ensembling_moe;
extern const fb_method_ops fb_method_clip_task_wise_adamerging;
extern const fb_method_ops fb_method_clip_layer_wise_adamerging;
extern const fb_method_ops fb_method_fisher_merging;
extern const fb_method_ops fb_method_regmean;
extern const fb_method_ops fb_method_regmean_plusplus;
extern const fb_method_ops fb_method_simple_ensemble;
extern const fb_method_ops fb_method_weighted_ensemble;
extern const fb_method_ops fb_method_max_model_predictor;
extern const fb_method_ops fb_method_mergekit_task_arithmetic;
extern const fb_method_ops fb_method_mergekit_ties;
extern const fb_method_ops fb_method_mergekit_dare_ties;
extern const fb_method_ops fb_method_mergekit_dare_linear;
extern const fb_method_ops fb_method_mergekit_breadcrumbs;
extern const fb_method_ops fb_method_mergekit_breadcrumbs_ties;
extern const fb_method_ops fb_method_mergekit_della;
extern const fb_method_ops fb_method_mergekit_della_linear;
extern const fb_method_ops fb_method_mergekit_linear;
extern const fb_method_ops fb_method_mergekit_passthrough;
extern const fb_method_ops fb_method_mergekit_nearswap;
extern const fb_method_ops fb_method_mergekit_nuslerp;
extern const fb_method_ops fb_method_mergekit_multislerp;
extern const fb_method_ops fb_method_mergekit_model_stock;
extern const fb_method_ops fb_method_mergekit_sce;
extern const fb_method_ops fb_method_mergekit_ram;
extern const fb_method_ops fb_method_mergekit_ramplus_tl;
extern const fb_method_ops fb_method_mergekit_arcee_fusion;

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
    &fb_method_breadcrumbs,          &fb_method_breadcrumbs_ties,
    &fb_method_della,                &fb_method_della_linear,
    &fb_method_depth_upscaling,      &fb_method_passthrough,
    &fb_method_wudi,                 &fb_method_tall_mask,
    &fb_method_emr_merging,          &fb_method_dummy,
    &fb_method_smile_upscaling,
    &fb_method_weight_ensembling_moe,
    &fb_method_sparse_weight_ensembling_moe,
    &fb_method_clip_task_wise_adamerging, &fb_method_clip_layer_wise_adamerging,
    &fb_method_fisher_merging,       &fb_method_regmean,
    &fb_method_regmean_plusplus,
    &fb_method_simple_ensemble,      &fb_method_weighted_ensemble,
    &fb_method_max_model_predictor,
    &fb_method_mergekit_task_arithmetic,
    &fb_method_mergekit_ties,
    &fb_method_mergekit_dare_ties,
    &fb_method_mergekit_dare_linear,
    &fb_method_mergekit_breadcrumbs,
    &fb_method_mergekit_breadcrumbs_ties,
    &fb_method_mergekit_della,
    &fb_method_mergekit_della_linear,
    &fb_method_mergekit_linear,
    &fb_method_mergekit_passthrough,
    &fb_method_mergekit_nearswap,
    &fb_method_mergekit_nuslerp,
    &fb_method_mergekit_multislerp,
    &fb_method_mergekit_model_stock,
    &fb_method_mergekit_sce,
    &fb_method_mergekit_ram,
    &fb_method_mergekit_ramplus_tl,
    &fb_method_mergekit_arcee_fusion,
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

const char *fb_method_registry_target(int i)
{
    return i >= 0 && i < fb_method_registry_size ? fb_method_registry[i]->target_class : NULL;
}

/* FusionBench's algorithm names (its config's `name:`) where they differ from the method's. */
static const struct {
    const char *name, *method;
} name_aliases[] = {
    {"clip_weight_ensembling_moe", "weight_ensembling_moe"},
    {"sparse_clip_weight_ensembling_moe", "sparse_weight_ensembling_moe"},
};

const fb_method_ops *fb_method_lookup(const char *name)
{
    for (int i = 0; i < fb_method_registry_size; i++)
        if (strcmp(fb_method_registry[i]->name, name) == 0) return fb_method_registry[i];
    for (size_t i = 0; i < sizeof name_aliases / sizeof name_aliases[0]; i++)
        if (!strcmp(name_aliases[i].name, name)) return fb_method_lookup(name_aliases[i].method);
    return NULL;
}

/* FusionBench's other class names for methods the project has: older names, and variants for
 * a model family whose merge of state dicts is the same. */
static const struct {
    const char *cls, *method;
} target_aliases[] = {
    {"ISO_C_Merge", "iso_c"},
    {"ISO_CTS_Merge", "iso_cts"},
    {"FisherMergingForCLIPVisionModel", "fisher_merging"},
    {"TaskArithmeticForCausalLM", "task_arithmetic"},
    {"TiesMergingForCausalLM", "ties_merging"},
    {"SimpleAverageForCausalLM", "simple_average"},
    {"SlerpForCausalLM", "slerp"},
    {"WeightedAverageForLLama", "weighted_average"},
};

/* "_target_: fusion_bench.method.TaskArithmeticAlgorithm" (any module path) -> its method. */
static const fb_method_ops *lookup_target(const char *target)
{
    const char *dot = strrchr(target, '.');
    const char *cls = dot ? dot + 1 : target;
    for (int i = 0; i < fb_method_registry_size; i++)
        if (fb_method_registry[i]->target_class &&
            strcmp(fb_method_registry[i]->target_class, cls) == 0)
            return fb_method_registry[i];
    for (size_t i = 0; i < sizeof target_aliases / sizeof target_aliases[0]; i++)
        if (!strcmp(target_aliases[i].cls, cls)) return fb_method_lookup(target_aliases[i].method);
    return NULL;
}

/* Keys of FusionBench's method configs that only steer PyTorch (devices, progress bars, data
 * loader workers, where its program saves): accepted and listed as ignored. A key that would
 * change the result is not here: it stays an error unless the method implements it. */
static const char *const torch_only_keys[] = {"device_map", "show_pbar", "model_save_path",
                                              "save_tokenizer", "num_workers"};

/* dataloader_kwargs: batch_size becomes the method's own batch_size where it has one (Fisher,
 * RegMean: it changes the result); the rest (num_workers, pin_memory, ...) only steer
 * PyTorch. Flags that must be off here: push_to_hub, merge_backbone / backbone_only (a pool's
 * merge_backbone says it here). */
static fb_status torch_only(char *ignored, size_t cap, const fb_method_ops *ops,
                            const fb_config *given, int i, fb_config *params, int *handled)
{
    const char *k = given->keys[i];
    const fb_config *v = given->items[i];
    *handled = 1;
    for (size_t j = 0; j < sizeof torch_only_keys / sizeof torch_only_keys[0]; j++)
        if (!strcmp(k, torch_only_keys[j])) {
            snprintf(ignored + strlen(ignored), cap - strlen(ignored), "%s%s",
                     ignored[0] ? ", " : "", k);
            return FB_OK;
        }
    if (!strcmp(k, "push_to_hub") || !strcmp(k, "merge_backbone") || !strcmp(k, "backbone_only")) {
        int on = 0;
        if (!fb_cfg_is_null(v) && fb_cfg_bool(v, k, &on)) return FB_ERR_CONFIG;
        if (on)
            return fb_set_error(FB_ERR_UNSUPPORTED, "%s: method %s: '%s: true' is not done by the "
                                                    "method here%s",
                                fb_cfg_where(v), ops->name, k,
                                strcmp(k, "push_to_hub") ? " (set merge_backbone: true in the "
                                                           "model pool)"
                                                         : " (nothing is uploaded)");
        snprintf(ignored + strlen(ignored), cap - strlen(ignored), "%s%s", ignored[0] ? ", " : "", k);
        return FB_OK;
    }
    if (!strcmp(k, "dataloader_kwargs") && v->kind == FB_CFG_MAP) {
        for (int j = 0; j < v->count; j++) {
            int has_batch = 0;
            for (const fb_param_spec *q = ops->params; q->name; q++)
                has_batch |= !strcmp(q->name, "batch_size");
            if (!strcmp(v->keys[j], "batch_size") && has_batch) {
                if (!fb_cfg_map_get(given, "batch_size")) {
                    fb_config *c;
                    fb_status st = fb_cfg_copy(v->items[j], &c);
                    if (!st) st = fb_cfg_map_set(params, "batch_size", c);
                    if (st) return st;
                }
                continue;
            }
            snprintf(ignored + strlen(ignored), cap - strlen(ignored), "%sdataloader_kwargs.%s",
                     ignored[0] ? ", " : "", v->keys[j]);
        }
        return FB_OK;
    }
    *handled = 0;
    return FB_OK;
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

struct fb_param_rules {
    const char *param;      /* borrowed from the method's params */
    int count;
    regex_t *filters;       /* count entries; unused where has_filter is 0 */
    int *has_filter;
    const fb_config **values;
};

/* A per-tensor parameter: a non-empty list of mappings with "value" and an optional "filter". */
static int is_rule_list(const fb_config *v)
{
    if (!v || v->kind != FB_CFG_SEQ || v->count == 0) return 0;
    for (int i = 0; i < v->count; i++) {
        const fb_config *e = v->items[i];
        if (e->kind != FB_CFG_MAP || !fb_cfg_map_get(e, "value")) return 0;
        for (int k = 0; k < e->count; k++)
            if (strcmp(e->keys[k], "value") && strcmp(e->keys[k], "filter")) return 0;
    }
    return 1;
}

static void free_rules(fb_param_rules *r, int n)
{
    for (int i = 0; r && i < n; i++) {
        for (int k = 0; k < r[i].count; k++)
            if (r[i].has_filter && r[i].has_filter[k]) regfree(&r[i].filters[k]);
        fb_free(r[i].filters);
        fb_free(r[i].has_filter);
        fb_free(r[i].values);
    }
    fb_free(r);
}

static fb_status parse_rules(fb_method *m)
{
    const fb_config *p = m->params;
    int n = 0;
    for (int i = 0; i < p->count; i++) n += is_rule_list(p->items[i]);
    if (!n) return FB_OK;
    m->rules = fb_calloc((size_t)n, sizeof *m->rules);
    if (!m->rules) return FB_ERR_NOMEM;
    for (int i = 0; i < p->count; i++) {
        const fb_config *v = p->items[i];
        if (!is_rule_list(v)) continue;
        fb_param_rules *r = &m->rules[m->num_rules++];
        r->param = p->keys[i];
        r->filters = fb_calloc((size_t)v->count, sizeof *r->filters);
        r->has_filter = fb_calloc((size_t)v->count, sizeof *r->has_filter);
        r->values = fb_calloc((size_t)v->count, sizeof *r->values);
        if (!r->filters || !r->has_filter || !r->values) return FB_ERR_NOMEM;
        for (int k = 0; k < v->count; k++) {
            const fb_config *f = fb_cfg_map_get(v->items[k], "filter");
            r->values[k] = fb_cfg_map_get(v->items[k], "value");
            r->count = k + 1;
            if (fb_cfg_is_null(f)) continue;
            const char *pattern;
            char key[300];
            snprintf(key, sizeof key, "%s[%d].filter", r->param, k);
            fb_status st = fb_cfg_string(f, key, &pattern);
            if (st) return st;
            int rc = regcomp(&r->filters[k], pattern, REG_EXTENDED | REG_NOSUB);
            if (rc)
                return fb_set_error(FB_ERR_CONFIG, "%s: %s: '%s' is not a valid pattern",
                                    fb_cfg_where(f), key, pattern);
            r->has_filter[k] = 1;
        }
    }
    return FB_OK;
}

/* The entries of m->uses: remove_keys' patterns in order, then each rule's entries, and a
 * default entry for a rule whose every entry has a filter. */
static fb_status plan_pattern_uses(fb_method *m, const fb_config *remove)
{
    int n = remove && remove->kind == FB_CFG_SEQ ? remove->count : 0;
    for (int i = 0; i < m->num_rules; i++) {
        int unfiltered = 0;
        for (int k = 0; k < m->rules[i].count; k++) unfiltered |= !m->rules[i].has_filter[k];
        n += m->rules[i].count + !unfiltered;
    }
    if (!n) return FB_OK;
    if (!(m->uses = fb_calloc((size_t)n, sizeof *m->uses))) return FB_ERR_NOMEM;
    for (int k = 0; remove && remove->kind == FB_CFG_SEQ && k < remove->count; k++)
        m->uses[m->num_uses++] = (fb_pattern_use){.param = "remove_keys", .entry = k,
                                                   .pattern = remove->items[k]->value};
    for (int i = 0; i < m->num_rules; i++) {
        const fb_config *list = fb_cfg_map_get(m->params, m->rules[i].param);
        int unfiltered = 0;
        for (int k = 0; k < m->rules[i].count; k++) {
            const fb_config *f = fb_cfg_map_get(list->items[k], "filter");
            unfiltered |= !m->rules[i].has_filter[k];
            m->uses[m->num_uses++] = (fb_pattern_use){
                .param = m->rules[i].param, .entry = k,
                .pattern = m->rules[i].has_filter[k] ? f->value : NULL,
                .value = m->rules[i].values[k]};
        }
        if (!unfiltered)
            m->uses[m->num_uses++] = (fb_pattern_use){.param = m->rules[i].param, .entry = -1};
    }
    return FB_OK;
}

static fb_status record_use(fb_pattern_use *u, const char *name)
{
    if (fb_reserve(&u->tensors, &u->cap, u->count + 1, sizeof *u->tensors)) return FB_ERR_NOMEM;
    if (!(u->tensors[u->count] = fb_strdup(name))) return FB_ERR_NOMEM;
    u->count++;
    return FB_OK;
}

/* Counts tensor `name` under the remove_keys pattern that matches it and under the entry each
 * per-tensor rule picks for it. */
static fb_status record_pattern_uses(fb_method *m, const char *name)
{
    fb_status st = FB_OK;
    int nremove = 0;
    while (nremove < m->num_uses && !strcmp(m->uses[nremove].param, "remove_keys")) nremove++;
    int hit = fb_name_filter_first(m->remove, name);
    if (hit >= 0 && hit < nremove) st = record_use(&m->uses[hit], name);
    int u = nremove;
    for (int i = 0; i < m->num_rules && !st; i++) {
        const fb_param_rules *rule = &m->rules[i];
        int pick = -1, unfiltered = 0;
        for (int k = 0; k < rule->count; k++) {
            unfiltered |= !rule->has_filter[k];
            if (pick < 0 && (!rule->has_filter[k] || regexec(&rule->filters[k], name, 0, NULL, 0) == 0))
                pick = k;
        }
        st = record_use(&m->uses[u + (pick >= 0 ? pick : rule->count)], name);
        u += rule->count + !unfiltered;
    }
    return st;
}

int fb_method_pattern_uses(const fb_method *m, const fb_pattern_use **uses)
{
    *uses = m->uses;
    return m->num_uses;
}

/* The parameters for tensor `name` (or, with name NULL, for a tensor no filter matches;
 * `force` picks entry `force_entry` of rule `force_rule` instead, for validation). */
static fb_status resolve(const fb_method *m, const char *name, int force_rule, int force_entry,
                         fb_config **out)
{
    fb_config *r;
    fb_status st = fb_cfg_copy(m->params, &r);
    if (st) return st;
    for (int i = 0; i < m->num_rules && !st; i++) {
        const fb_param_rules *rule = &m->rules[i];
        int pick = -1;
        if (i == force_rule) pick = force_entry;
        for (int k = 0; k < rule->count && pick < 0; k++) {
            if (!rule->has_filter[k]) pick = k;
            else if (name && regexec(&rule->filters[k], name, 0, NULL, 0) == 0) pick = k;
        }
        if (pick < 0) {
            /* no default: a tensor no filter matches keeps the parameter's declared default */
            const fb_param_spec *ps = m->ops->params;
            while (ps->name && strcmp(ps->name, rule->param)) ps++;
            fb_config *def;
            if (!(st = fb_cfg_parse_text(ps->default_yaml, strlen(ps->default_yaml), NULL, &def)))
                st = fb_cfg_map_set(r, rule->param, def);
            continue;
        }
        fb_config *v;
        if (!(st = fb_cfg_copy(rule->values[pick], &v))) st = fb_cfg_map_set(r, rule->param, v);
    }
    if (st) {
        fb_config_free(r);
        return st;
    }
    *out = r;
    return FB_OK;
}

static void destroy_state(const fb_method_ops *ops, void *state)
{
    if (ops->destroy) ops->destroy(state);
    else fb_free(state);
}

void fb_method_reset_variants(fb_method *m)
{
    for (int i = 0; i < m->num_uses; i++) {
        for (int64_t t = 0; t < m->uses[i].count; t++) fb_free(m->uses[i].tensors[t]);
        fb_free(m->uses[i].tensors);
        m->uses[i].tensors = NULL;
        m->uses[i].count = m->uses[i].cap = 0;
    }
    for (int i = 0; i < m->num_variants; i++) {
        fb_free(m->variant_keys[i]);
        destroy_state(m->ops, m->variant_states[i]);
    }
    fb_free(m->variant_keys);
    fb_free(m->variant_states);
    m->variant_keys = NULL;
    m->variant_states = NULL;
    m->num_variants = 0;
}

fb_status fb_method_state_for(fb_method *m, const char *name, const fb_merge_setup *setup,
                              void **state)
{
    *state = m->state;
    fb_status rec = m->num_uses ? record_pattern_uses(m, name) : FB_OK;
    if (rec) return rec;
    if (!m->num_rules && !m->tensor_params) return FB_OK;
    fb_config *r = NULL;
    fb_status st;
    if (m->tensor_params) {
        const fb_config *given = m->tensor_params(m->tensor_params_user, name);
        if (!given) return FB_OK;
        st = fb_cfg_copy(m->params, &r); /* every parameter, then the tensor's values */
        for (int i = 0; !st && i < given->count; i++) {
            fb_config *v;
            if (!(st = fb_cfg_copy(given->items[i], &v))) st = fb_cfg_map_set(r, given->keys[i], v);
        }
        if (st) fb_config_free(r);
    } else {
        st = resolve(m, name, -1, -1, &r);
    }
    if (st) return st;
    char *key = fb_cfg_to_yaml(r);
    if (!key) {
        fb_config_free(r);
        return FB_ERR_NOMEM;
    }
    for (int i = 0; i < m->num_variants; i++) {
        if (strcmp(m->variant_keys[i], key) == 0) {
            *state = m->variant_states[i];
            fb_free(key);
            fb_config_free(r);
            return FB_OK;
        }
    }
    void *s = NULL;
    st = m->ops->create(r, &s);
    fb_config_free(r);
    if (!st && m->ops->setup) st = m->ops->setup(s, setup);
    char **keys = st ? NULL : fb_realloc(m->variant_keys, (size_t)(m->num_variants + 1) * sizeof *keys);
    if (keys) m->variant_keys = keys;
    void **states = keys ? fb_realloc(m->variant_states, (size_t)(m->num_variants + 1) * sizeof *states) : NULL;
    if (states) m->variant_states = states;
    if (st || !keys || !states) {
        if (s) destroy_state(m->ops, s);
        fb_free(key);
        return st ? fb_error_prefix(st, "method %s, tensor '%s'", m->ops->name, name)
                  : FB_ERR_NOMEM;
    }
    m->variant_keys[m->num_variants] = key;
    m->variant_states[m->num_variants++] = s;
    *state = s;
    return FB_OK;
}

static fb_status make_method(const fb_method_ops *ops, const fb_config *given, fb_method **out)
{
    *out = NULL;
    if (given && !fb_cfg_is_null(given) && given->kind != FB_CFG_MAP)
        return fb_set_error(FB_ERR_CONFIG, "method %s: parameters must be a mapping", ops->name);
    fb_config *params;
    fb_status st = fb_cfg_new(FB_CFG_MAP, NULL, &params);
    if (st) return st;
    /* given keys first, each one checked against the declared parameters; remove_keys is
     * accepted by every method (unless it declares its own) */
    const fb_config *remove = NULL;
    char ignored[512] = "";
    for (int i = 0; given && i < given->count && !st; i++) {
        const char *k = given->keys[i];
        if (is_meta_key(k)) continue;
        int declared = 0, handled = 0;
        for (const fb_param_spec *q = ops->params; q->name; q++) declared |= !strcmp(q->name, k);
        if (!declared && ((st = torch_only(ignored, sizeof ignored, ops, given, i, params, &handled)) ||
                          handled))
            continue;
        if (!declared && !strcmp(k, "remove_keys")) {
            remove = given->items[i];
            fb_config *c;
            if (!(st = fb_cfg_copy(remove, &c))) st = fb_cfg_map_set(params, k, c);
            continue;
        }
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
    if (st) {
        fb_config_free(params);
        return st;
    }
    m->ops = ops;
    m->params = params;
    snprintf(m->ignored, sizeof m->ignored, "%s", ignored);
    if (remove) st = fb_name_filter_create(remove, "remove_keys", &m->remove);
    if (!st && remove && ops->plan)
        st = fb_set_error(FB_ERR_UNSUPPORTED, "remove_keys does not apply to a restructuring method");
    if (!st) st = parse_rules(m);
    if (!st) st = plan_pattern_uses(m, remove ? fb_cfg_map_get(m->params, "remove_keys") : NULL);
    if (!st && m->num_rules && (ops->prepare_passes || ops->merge_finish))
        st = fb_set_error(FB_ERR_UNSUPPORTED,
                          "per-tensor values of '%s' are not supported: the method computes "
                          "statistics over the whole model",
                          m->rules[0].param);
    /* every value of every per-tensor rule must make a valid method */
    for (int i = 0; i < m->num_rules && !st; i++) {
        for (int k = 0; k < m->rules[i].count && !st; k++) {
            fb_config *r;
            void *s = NULL;
            if ((st = resolve(m, NULL, i, k, &r))) break;
            st = ops->create(r, &s);
            fb_config_free(r);
            if (s) destroy_state(ops, s);
            if (st) fb_error_prefix(st, "%s[%d]", m->rules[i].param, k);
        }
    }
    if (!st) {
        fb_config *r;
        if (!(st = resolve(m, NULL, -1, -1, &r))) {
            st = ops->create(r, &m->state);
            fb_config_free(r);
        }
    }
    if (st) {
        fb_error_prefix(st, "method %s", ops->name);
        fb_method_free(m);
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
        if (!strcmp(s, "?" "?" "?"))
            return fb_set_error(FB_ERR_CONFIG,
                                "%s: method name is '?" "?" "?' (a value FusionBench's config "
                                "leaves to you): give method.name=NAME",
                                fb_cfg_where(name));
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
    fb_method_reset_variants(m);
    if (m->state) destroy_state(m->ops, m->state);
    free_rules(m->rules, m->num_rules);
    fb_name_filter_free(m->remove);
    fb_free(m->uses);
    fb_config_free(m->params);
    fb_free(m);
}

const char *fb_method_name(const fb_method *m) { return m->ops->name; }

const fb_config *fb_method_params(const fb_method *m) { return m->params; }
