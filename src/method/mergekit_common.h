/*
 * mergekit_common.h: what mergekit's methods share (mergekit_gta.c, mergekit_methods.c):
 * per-model parameters, exact selection, DELLA's sparsification.
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
    double *v; /* one value, or one per model; NULL when not given */
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

/* The kinds of mergekit's sparsification (mergekit_gta.c). */
enum { FB_MK_NONE, FB_MK_MAGNITUDE, FB_MK_RANDOM, FB_MK_OUTLIERS, FB_MK_DELLA };

/* DELLA's magprune of one task vector x of tensor t, in place: entries ranked by |x| along dim
 * 1 (a vector is one row), rank r of len kept with probability (density - epsilon) + 2 epsilon
 * r / (len - 1) (number j of stream `key`), then rescaled to the L1 norm x had (rescale).
 * Fails, with the error set, when density +/- epsilon leaves (0, 1). */
fb_status fb_mk_della(float *x, const fb_tensor *t, double density, double epsilon, int rescale,
                      uint64_t key);

/* Keeps the k entries of largest |x| (ties: lower index first), zeroing the others. */
fb_status fb_mk_keep_topk(float *x, int64_t n, int64_t k, uint32_t *keys);

#endif
