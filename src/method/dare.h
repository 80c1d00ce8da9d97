/*
 * dare.h: DARE's drop-and-rescale of task-vector entries (Yu et al. 2024), shared by the
 * dare_* methods and dare_ties_merging.
 */
#ifndef FB_METHOD_DARE_H
#define FB_METHOD_DARE_H

#include "core/rng.h"
#include "method.h"

typedef struct fb_dare {
    int enabled;
    float sparsity;   /* p: the probability of dropping an entry */
    float divisor;    /* 1 - p, as f32 */
    int rescale;
    int only_linear;  /* only linear-layer weights are dropped */
    uint64_t seed;
} fb_dare;

/* The DARE parameters as FusionBench names them, with their declared defaults. */
#define FB_DARE_PARAMS                                                                      \
    {"sparsity_ratio", "0.5", "p: the fraction of task-vector entries dropped at random"},  \
        {"only_on_linear_weights", "false", "drop only in linear-layer weights"},           \
        {"rescale", "true", "divide kept entries by 1 - p"},                                \
        {"seed", "0", "seed of the counter-based generator (same result for any threads)"}

fb_status fb_dare_parse(const fb_config *params, fb_dare *out);

/* Whether DARE applies to this tensor at all. */
static inline int fb_dare_applies(const fb_dare *d, const fb_tensor *t)
{
    return d->enabled && (!d->only_linear || fb_is_linear_weight(t));
}

/* DARE's drop over entries [begin, begin + n) of task k's vector, in place: each entry stays
 * (divided by 1 - p when rescaling) when its uniform draw exceeds p, else becomes 0.
 * key = fb_rng_key(seed, tensor name, k); the draw of entry i is fb_rng_uniform(key, i). */
void fb_dare_drop(const fb_dare *d, uint64_t key, int64_t begin, float *tau, int64_t n);

#endif
