/*
 * mergekit_common.h: what mergekit's methods share (mergekit_gta.c, mergekit_methods.c):
 * per-model parameters, its sparsifications (sparsify.py) and its sign election.
 *
 * A per-model parameter is a number (every model) or a list with one entry per model in pool
 * order; the mergekit translator (src/mergekit/) gives lists. Orderings (top-k, ranks) break
 * ties by element index, so masks never depend on a sort's whims or on threads.
 */
#ifndef FB_METHOD_MERGEKIT_COMMON_H
#define FB_METHOD_MERGEKIT_COMMON_H

#include <stdint.h>
#include <string.h>

#include "method.h"

typedef struct fb_mk_list {
    const char *name;
    double *v;       /* one value, or one per model; NULL when not given */
    int n;
    int required;
    double dflt;
} fb_mk_list;

/* Reads parameter `key` of p (null: not given). */
fb_status fb_mk_list_read(const fb_config *p, const char *key, int required, double dflt,
                          fb_mk_list *out);
/* Checks the list against the number of models (a list of another length, a missing required
 * value: one-line errors naming the parameter). */
fb_status fb_mk_list_check(const fb_mk_list *l, const char *method, int num_models);
double fb_mk_at(const fb_mk_list *l, int model);
void fb_mk_list_free(fb_mk_list *l);

/* Order-preserving unsigned key of a float: a < b as floats iff key(a) < key(b). */
static inline uint32_t fb_mk_float_key(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* The key of |x| (what magnitude selections order by). */
static inline uint32_t fb_mk_abs_key(float x)
{
    uint32_t b;
    memcpy(&b, &x, sizeof b);
    return b | 0x80000000u; /* |x| has the sign bit clear; setting it keeps the order */
}
/* *out = the value at ascending rank r (0-based) of keys[0..n). */
fb_status fb_mk_select(const uint32_t *keys, int64_t n, int64_t r, uint32_t *out);

/* mergekit's sparsifications of one task vector x of tensor t, in place: magnitude (top-k of
 * |x|), random (DARE's Bernoulli keep with probability density), magnitude outliers
 * (breadcrumbs: the gamma largest and the smallest dropped) and DELLA's magprune (keep
 * probabilities from ranks along dim 1), each optionally rescaled to the L1 norm it had.
 * `key` seeds the random ones (element j draws number j). Fails, with the error set, for a
 * density mergekit refuses. keys: n uint32 of scratch. */
enum { FB_MK_NONE, FB_MK_MAGNITUDE, FB_MK_RANDOM, FB_MK_OUTLIERS, FB_MK_DELLA };
fb_status fb_mk_sparsify(int how, float *x, const fb_tensor *t, double density, double gamma,
                         double epsilon, int rescale, uint64_t key, uint32_t *keys);

/* Keeps the k entries of largest |x| (ties: lower index first), zeroing the others. */
fb_status fb_mk_keep_topk(float *x, int64_t n, int64_t k, uint32_t *keys);

#endif
