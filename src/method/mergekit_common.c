/*
 * mergekit_common.c: per-model parameters, exact selection over a whole tensor (SCE's top-k,
 * arcee_fusion's quantiles) and DELLA's magprune (mergekit/sparsify.py's della_magprune, with
 * rescaled_masked_tensor's L1 rescale). The other sparsifications run in chunks, with the
 * per-tensor passes of mergekit_gta.c.
 *
 * Selection is a two-pass radix select on 32-bit order-preserving keys (16 high bits, then 16
 * low), so top-k over a tensor is O(n) rather than a sort. Where mergekit sorts and cuts, the
 * cut falls between equal values by element index (lower index ranks first).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/model.h"
#include "core/rng.h"
#include "core/status.h"
#include "mergekit_common.h"

fb_status fb_mk_list_read(const fb_config *p, const char *key, int required, double dflt,
                          fb_mk_list *out)
{
    *out = (fb_mk_list){key, NULL, 0, required, dflt};
    const fb_config *n = fb_cfg_map_get(p, key);
    if (!n || fb_cfg_is_null(n)) return FB_OK;
    if (n->kind == FB_CFG_SEQ) {
        if (n->count == 0)
            return fb_set_error(FB_ERR_CONFIG, "%s: '%s' is an empty list", fb_cfg_where(n), key);
        return fb_cfg_double_list(n, key, &out->v, &out->n);
    }
    out->v = fb_malloc(sizeof *out->v);
    if (!out->v) return FB_ERR_NOMEM;
    out->n = 1;
    fb_status st = fb_cfg_double(n, key, out->v);
    if (st) fb_mk_list_free(out);
    return st;
}

fb_status fb_mk_list_check(const fb_mk_list *l, const char *method, int num_models)
{
    if (!l->v && l->required)
        return fb_set_error(FB_ERR_CONFIG,
                            "method %s: parameter '%s' is required (a number, "
                            "or one per model)",
                            method, l->name);
    if (l->v && l->n != 1 && l->n != num_models)
        return fb_set_error(FB_ERR_CONFIG, "method %s: '%s' has %d values for %d models", method,
                            l->name, l->n, num_models);
    for (int i = 0; l->v && i < l->n; i++)
        if (!isfinite(l->v[i]))
            return fb_set_error(FB_ERR_CONFIG, "method %s: '%s' holds %g", method, l->name,
                                l->v[i]);
    return FB_OK;
}

double fb_mk_at(const fb_mk_list *l, int model)
{
    if (!l->v) return l->dflt;
    return l->n == 1 ? l->v[0] : l->v[model];
}

void fb_mk_list_free(fb_mk_list *l)
{
    fb_free(l->v);
    l->v = NULL;
    l->n = 0;
}

fb_status fb_mk_select(const uint32_t *keys, int64_t n, int64_t r, uint32_t *out)
{
    enum { B = 1 << 16 };
    int64_t *h = fb_calloc(B, sizeof *h);
    if (!h) return FB_ERR_NOMEM;
    for (int64_t j = 0; j < n; j++)
        h[keys[j] >> 16]++;
    uint32_t hi = 0;
    while (r >= h[hi])
        r -= h[hi++];
    memset(h, 0, B * sizeof *h);
    for (int64_t j = 0; j < n; j++)
        if ((keys[j] >> 16) == hi) h[keys[j] & 0xFFFF]++;
    uint32_t lo = 0;
    while (r >= h[lo])
        r -= h[lo++];
    fb_free(h);
    *out = hi << 16 | lo;
    return FB_OK;
}

static void abs_keys(const float *x, int64_t n, uint32_t *keys)
{
    for (int64_t j = 0; j < n; j++)
        keys[j] = fb_mk_float_key(fabsf(x[j]));
}

fb_status fb_mk_keep_topk(float *x, int64_t n, int64_t k, uint32_t *keys)
{
    if (k >= n) return FB_OK;
    if (k <= 0) {
        memset(x, 0, (size_t)n * sizeof *x);
        return FB_OK;
    }
    abs_keys(x, n, keys);
    uint32_t v;
    fb_status st = fb_mk_select(keys, n, n - k, &v);
    if (st) return st;
    int64_t greater = 0;
    for (int64_t j = 0; j < n; j++)
        greater += keys[j] > v;
    int64_t ties = k - greater;
    for (int64_t j = 0; j < n; j++) {
        if (keys[j] > v) continue;
        if (keys[j] == v && ties > 0) {
            ties--;
            continue;
        }
        x[j] = 0.0f;
    }
    return FB_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* DELLA's magprune: entries ranked by |x| along dim 1 (a vector is one row); rank r of len
 * gets keep probability (density - epsilon) + 2 epsilon (r - 1) / (len - 1). */
static fb_status della(float *x, const fb_tensor *t, double density, double epsilon, uint64_t key)
{
    int64_t outer = 1, len = t->numel, inner = 1;
    if (t->ndim >= 2) {
        outer = t->shape[0];
        len = t->shape[1];
        inner = len && outer ? t->numel / (outer * len) : 1;
    }
    uint64_t *line = fb_malloc((size_t)(len ? len : 1) * sizeof *line);
    if (!line) return FB_ERR_NOMEM;
    const float lo = (float)(density - epsilon), span = (float)(2.0 * epsilon);
    for (int64_t o = 0; o < outer; o++) {
        for (int64_t in = 0; in < inner; in++) {
            const int64_t base = o * len * inner + in;
            for (int64_t r = 0; r < len; r++)
                line[r] = (uint64_t)fb_mk_float_key(fabsf(x[base + r * inner])) << 32 | (uint64_t)r;
            qsort(line, (size_t)len, sizeof *line, cmp_u64);
            for (int64_t r = 0; r < len; r++) {
                int64_t j = base + (int64_t)(uint32_t)line[r] * inner;
                float norm = len > 1 ? (float)r / (float)(len - 1) : 0.0f;
                float p = lo + norm * span;
                if (!(fb_rng_uniform(key, (uint64_t)j) < p)) x[j] = 0.0f;
            }
        }
    }
    fb_free(line);
    return FB_OK;
}

fb_status fb_mk_della(float *x, const fb_tensor *t, double density, double epsilon, int rescale,
                      uint64_t key)
{
    const int64_t n = t->numel;
    if (density >= 1.0) return FB_OK;
    if (density <= 0.0) {
        memset(x, 0, (size_t)n * sizeof *x);
        return FB_OK;
    }
    if (density + epsilon >= 1.0 || density - epsilon <= 0.0)
        return fb_set_error(FB_ERR_ARG,
                            "tensor '%s': density %g and epsilon %g: density "
                            "+/- epsilon must lie in (0, 1)",
                            t->name, density, epsilon);
    double before = 0.0;
    for (int64_t j = 0; rescale && j < n; j++)
        before += fabs((double)x[j]);
    fb_status st = della(x, t, density, epsilon, key);
    if (st || !rescale) return st;
    double after = 0.0;
    for (int64_t j = 0; j < n; j++)
        after += fabs((double)x[j]);
    if (before < 1e-7 || after < 1e-7) return FB_OK;
    const float s = (float)(before / after);
    for (int64_t j = 0; j < n; j++)
        x[j] *= s;
    return FB_OK;
}
