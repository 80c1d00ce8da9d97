/*
 * params.c: helpers method files share: tensor-name filters (regular expressions matched
 * anywhere in a name, for remove_keys and extract_names), the linear-weight rule, bounded
 * numbers.
 */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

struct fb_name_filter {
    regex_t *res;
    int count;
};

fb_status fb_name_filter_create(const fb_config *node, const char *key, fb_name_filter **out)
{
    *out = NULL;
    fb_name_filter *f = fb_calloc(1, sizeof *f);
    if (!f) return FB_ERR_NOMEM;
    if (fb_cfg_is_null(node)) {
        *out = f;
        return FB_OK;
    }
    if (node->kind != FB_CFG_SEQ) {
        fb_free(f);
        return fb_set_error(FB_ERR_CONFIG, "%s: '%s' must be a list of tensor-name patterns",
                            fb_cfg_where(node), key);
    }
    f->res = fb_calloc((size_t)(node->count ? node->count : 1), sizeof *f->res);
    if (!f->res) {
        fb_free(f);
        return FB_ERR_NOMEM;
    }
    fb_status st = FB_OK;
    for (int i = 0; i < node->count && !st; i++) {
        const char *pattern;
        char k[300];
        snprintf(k, sizeof k, "%s[%d]", key, i);
        if ((st = fb_cfg_string(node->items[i], k, &pattern))) break;
        /* matched anywhere in the name, as per-tensor filters are (Python's re.search, mergekit's
         * substring test); ^ and $ anchor. A full name given as is matches that tensor. */
        int rc = regcomp(&f->res[f->count], pattern, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char msg[200];
            regerror(rc, NULL, msg, sizeof msg);
            st = fb_set_error(FB_ERR_CONFIG, "%s: %s: '%s' is not a valid pattern: %s",
                              fb_cfg_where(node->items[i]), k, pattern, msg);
            break;
        }
        f->count++;
    }
    if (st) {
        fb_name_filter_free(f);
        return st;
    }
    *out = f;
    return FB_OK;
}

int fb_name_filter_first(const fb_name_filter *f, const char *name)
{
    for (int i = 0; f && i < f->count; i++)
        if (regexec(&f->res[i], name, 0, NULL, 0) == 0) return i;
    return -1;
}

int fb_name_filter_matches(const fb_name_filter *f, const char *name)
{
    return fb_name_filter_first(f, name) >= 0;
}

int fb_name_filter_empty(const fb_name_filter *f) { return !f || f->count == 0; }

void fb_name_filter_free(fb_name_filter *f)
{
    if (!f) return;
    for (int i = 0; i < f->count; i++) regfree(&f->res[i]);
    fb_free(f->res);
    fb_free(f);
}

int fb_is_linear_weight(const fb_tensor *t)
{
    const char *name = fb_tensor_name(t);
    size_t n = strlen(name);
    return fb_tensor_ndim(t) == 2 && n >= 7 && strcmp(name + n - 7, ".weight") == 0 &&
           !strstr(name, "embed");
}

fb_status fb_param_double(const fb_config *params, const char *key, double lo, double hi,
                          double *out)
{
    fb_status st = fb_cfg_double(fb_cfg_map_get(params, key), key, out);
    if (st) return st;
    if ((!isnan(lo) && !(*out >= lo)) || (!isnan(hi) && !(*out <= hi))) {
        char range[64];
        if (isnan(lo)) snprintf(range, sizeof range, "at most %g", hi);
        else if (isnan(hi)) snprintf(range, sizeof range, "at least %g", lo);
        else snprintf(range, sizeof range, "in [%g, %g]", lo, hi);
        return fb_set_error(FB_ERR_ARG, "'%s' is %g; it must be %s", key, *out, range);
    }
    return FB_OK;
}

double fb_dot(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t j = 0; j < n; j++) s += (double)a[j] * (double)b[j];
    return s;
}

void fb_task_vector_running_mean(const fb_merge_chunk *c, float *out)
{
    for (int64_t j = 0; j < c->count; j++) out[j] = c->models[0][j] - c->base[j];
    for (int i = 1; i < c->num_models; i++) {
        const float div = (float)(i + 1);
        for (int64_t j = 0; j < c->count; j++)
            out[j] += ((c->models[i][j] - c->base[j]) - out[j]) / div;
    }
}

fb_status fb_plan_add(fb_plan *plan, const char *name, int input, const fb_tensor *source,
                      float scale)
{
    if (plan->count == plan->cap) {
        int64_t cap = plan->cap ? 2 * plan->cap : 64;
        fb_plan_entry *e = fb_realloc(plan->entries, (size_t)cap * sizeof *e);
        if (!e) return FB_ERR_NOMEM;
        plan->entries = e;
        plan->cap = cap;
    }
    char *n = fb_strdup(name);
    if (!n) return FB_ERR_NOMEM;
    plan->entries[plan->count++] = (fb_plan_entry){n, input, source, scale};
    return FB_OK;
}

void fb_plan_free(fb_plan *plan)
{
    for (int64_t i = 0; i < plan->count; i++) fb_free(plan->entries[i].name);
    fb_free(plan->entries);
    plan->entries = NULL;
    plan->count = plan->cap = 0;
}

int fb_layer_name(const char *name, char *prefix, size_t prefix_size, int64_t *index,
                  const char **rest)
{
    static const char *const containers[] = {"layers", "h", "layer", "block", "blocks"};
    for (const char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        /* p points at the '.' before a candidate index */
        const char *digits = p + 1, *end = digits;
        while (*end >= '0' && *end <= '9') end++;
        if (end == digits || *end != '.') continue;
        const char *comp = p;
        while (comp > name && comp[-1] != '.') comp--;
        size_t clen = (size_t)(p - comp);
        for (size_t i = 0; i < sizeof containers / sizeof containers[0]; i++) {
            if (strlen(containers[i]) != clen || strncmp(comp, containers[i], clen)) continue;
            size_t plen = (size_t)(p - name);
            if (plen + 1 > prefix_size) return 0;
            memcpy(prefix, name, plen);
            prefix[plen] = '\0';
            *index = strtoll(digits, NULL, 10);
            *rest = end + 1;
            return 1;
        }
    }
    return 0;
}
