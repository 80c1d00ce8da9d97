/*
 * magnitude_diff_pruning.c: magnitude pruning of the difference between a fine-tuned model and
 * its base (as FusionBench's MagnitudeDiffPruningAlgorithm; magnitude pruning as in Han et al.
 * 2015, applied to the task vector).
 *
 *     d = theta_ft - theta_0, per tensor matching extract_names (default: linear weights)
 *     minor (FusionBench's default): in each row (the last dimension), the floor(cols *
 *                     prune_ratio) entries of smallest |d| are set to zero, ties to the earlier
 *                     entry (a stable sort of |d|, as FusionBench's unstructured_magnitude_prune_)
 *     major:          the same for the entries of largest |d| (a stable sort of -|d|)
 *     unstructured:   one cut per tensor: q = quantile(|d|, prune_ratio) (linear interpolation,
 *                     as torch.quantile); keep d where |d| > q (FusionBench's rule before 2025)
 *     semistructured: in every group of m consecutive entries of a row, keep the n largest |d|
 *     rescale:        minor, major: true multiplies the kept entries by 1 / prune_ratio, a
 *                     number multiplies them by that number (as FusionBench); unstructured,
 *                     semistructured: true divides by the fraction kept (1 - prune_ratio, n / m)
 *     theta = theta_0 + kept d;  other tensors keep the base's values
 *
 * FusionBench with rescale: false multiplies the kept difference by False, that is zero (it
 * returns the base); here rescale: false keeps the difference as it is, as magnitude pruning
 * means. A 1-D tensor is one row (FusionBench's rule needs two dimensions).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"

enum { MINOR, MAJOR, UNSTRUCTURED, SEMISTRUCTURED };

/* A row entry to sort: its key (|d| or -|d|) and position. */
typedef struct keyed {
    float key;
    int64_t at;
} keyed;

typedef struct state {
    float ratio;
    double ratio_exact; /* floor(cols * prune_ratio) in double, as Python computes it */
    int rescale, type;
    float rescale_by; /* minor, major: the kept entries' factor (1 without rescale) */
    keyed *order;
    int64_t order_len;
    int64_t n, m;
    fb_name_filter *extract;
    float *work;
    int64_t work_len;
} state;

static const fb_param_spec params[] = {
    {"prune_ratio", "0.5",
     "fraction of each row's (or tensor's) difference set to zero, in [0, 1)"},
    {"prune_type", "minor",
     "minor or major (per row, FusionBench), unstructured (per-tensor "
     "quantile) or semistructured (n:m)"},
    {"n", "2", "semistructured: entries kept per group"},
    {"m", "4", "semistructured: group size"},
    {"rescale", "false", "true, or a factor for the kept entries (see the method's docs)"},
    {"extract_names", "null", "tensor-name patterns to prune (default: linear-layer weights)"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_name_filter_free(s->extract);
    fb_free(s->work);
    fb_free(s->order);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    double ratio;
    const char *type;
    fb_status st = fb_param_double(p, "prune_ratio", 0.0, 1.0, &ratio);
    if (!st && ratio >= 1.0)
        st = fb_set_error(FB_ERR_ARG, "'prune_ratio' is 1; it must be below 1");
    if (!st) st = fb_cfg_string(fb_cfg_map_get(p, "prune_type"), "prune_type", &type);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "n"), "n", &s->n);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "m"), "m", &s->m);
    const fb_config *rs = fb_cfg_map_get(p, "rescale");
    double factor = 1.0;
    if (!st && !fb_cfg_is_null(rs) && fb_cfg_bool(rs, "rescale", &s->rescale)) { /* a factor */
        st = fb_cfg_double(rs, "rescale", &factor);
        if (st)
            st = fb_set_error(FB_ERR_CONFIG, "%s: 'rescale' must be true, false or a number",
                              fb_cfg_where(rs));
        s->rescale = 2;
    }
    if (!st)
        st =
            fb_name_filter_create(fb_cfg_map_get(p, "extract_names"), "extract_names", &s->extract);
    if (!st) {
        static const char *const types[] = {"minor", "major", "unstructured", "semistructured"};
        s->type = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(type, types[i])) s->type = i;
        if (s->type < 0)
            st = fb_set_error(FB_ERR_ARG,
                              "'prune_type' is '%s'; it must be minor, major, "
                              "unstructured or semistructured",
                              type);
    }
    if (!st && s->type == SEMISTRUCTURED && !(s->m >= 1 && s->n >= 0 && s->n <= s->m))
        st = fb_set_error(FB_ERR_ARG,
                          "semistructured pruning needs 0 <= n <= m and m >= 1 (got "
                          "n=%lld, m=%lld)",
                          (long long)s->n, (long long)s->m);
    if (!st && s->rescale == 1 && s->type <= MAJOR && ratio == 0.0)
        st = fb_set_error(FB_ERR_ARG, "rescale: true multiplies by 1 / prune_ratio, so "
                                      "prune_ratio may not be 0");
    if (st) {
        destroy(s);
        return st;
    }
    s->ratio_exact = ratio;
    s->rescale_by = s->rescale == 2 ? (float)factor : s->rescale ? (float)(1.0 / ratio) : 1.0f;
    s->ratio = (float)ratio;
    *out = s;
    return FB_OK;
}

static int merges_tensor(const void *p, const fb_tensor *t)
{
    const state *s = p;
    if (!fb_name_filter_empty(s->extract))
        return fb_name_filter_matches(s->extract, fb_tensor_name(t));
    return fb_is_linear_weight(t);
}

/* Ascending keys, equal keys in position order: a stable sort, as torch.sort(stable=True). */
static int by_key_then_position(const void *pa, const void *pb)
{
    const keyed *a = pa, *b = pb;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return (a->at > b->at) - (a->at < b->at);
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the work buffer is reused from tensor to tensor */
    const int64_t n = c->count;
    const float *ft = c->models[0], *base = c->base;
    float *d = c->out;
    for (int64_t j = 0; j < n; j++)
        d[j] = ft[j] - base[j];
    if (n == 0) return FB_OK;
    if (fb_reserve(&s->work, &s->work_len, n, sizeof *s->work)) return FB_ERR_NOMEM;
    if (s->type == MINOR || s->type == MAJOR) {
        int64_t cols = c->tensor->ndim >= 2 ? c->tensor->shape[c->tensor->ndim - 1] : n;
        int64_t prune = (int64_t)((double)cols * s->ratio_exact); /* int() truncates, as here */
        if (fb_reserve(&s->order, &s->order_len, cols ? cols : 1, sizeof *s->order))
            return FB_ERR_NOMEM;
        for (int64_t row = 0; row < n; row += cols) {
            for (int64_t j = 0; j < cols; j++) {
                float a = fabsf(d[row + j]);
                s->order[j] = (keyed){s->type == MINOR ? a : -a, j};
            }
            qsort(s->order, (size_t)cols, sizeof *s->order, by_key_then_position);
            for (int64_t j = 0; j < cols; j++)
                s->work[row + j] = d[row + j] * s->rescale_by;
            for (int64_t j = 0; j < prune; j++)
                s->work[row + s->order[j].at] = 0.0f;
        }
        for (int64_t j = 0; j < n; j++)
            c->out[j] = base[j] + s->work[j];
        return FB_OK;
    }
    if (s->type == UNSTRUCTURED) {
        for (int64_t j = 0; j < n; j++)
            s->work[j] = fabsf(d[j]);
        float q = fb_quantile_f32(s->work, n, s->ratio);
        float keep = (float)(1.0 - (double)s->ratio);
        for (int64_t j = 0; j < n; j++) {
            float v = fabsf(d[j]) > q ? d[j] : 0.0f;
            c->out[j] = base[j] + (s->rescale == 1   ? v / keep
                                   : s->rescale == 2 ? v * s->rescale_by
                                                     : v);
        }
        return FB_OK;
    }
    /* n:m along each row (the last dimension), the first entries winning ties */
    int64_t cols = c->tensor->ndim ? c->tensor->shape[c->tensor->ndim - 1] : 1;
    float keep = (float)((double)s->n / (double)s->m);
    for (int64_t row = 0; row < n; row += cols) {
        for (int64_t g = 0; g < cols; g += s->m) {
            int64_t len = cols - g < s->m ? cols - g : s->m;
            float *x = d + row + g;
            for (int64_t a = 0; a < len; a++) {
                int64_t larger = 0; /* entries that beat x[a]: larger, or equal and earlier */
                for (int64_t b = 0; b < len; b++)
                    larger += fabsf(x[b]) > fabsf(x[a]) || (fabsf(x[b]) == fabsf(x[a]) && b < a);
                s->work[row + g + a] = larger < s->n ? x[a] : 0.0f;
            }
        }
    }
    for (int64_t j = 0; j < n; j++)
        c->out[j] = base[j] + (s->rescale == 1 && s->n ? s->work[j] / keep
                               : s->rescale == 2       ? s->work[j] * s->rescale_by
                                                       : s->work[j]);
    return FB_OK;
}

const fb_method_ops fb_method_magnitude_diff_pruning = {
    .name = "magnitude_diff_pruning",
    .target_class = "MagnitudeDiffPruningAlgorithm",
    .summary = "prune the smallest (or largest) entries of a fine-tuned model's difference from "
               "_pretrained_",
    .params = params,
    .needs_base = 1,
    .min_models = 1,
    .max_models = 1,
    .whole_tensor = 1,
    .create = create,
    .merges_tensor = merges_tensor,
    .merge = merge,
    .destroy = destroy,
};
