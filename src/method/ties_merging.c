/*
 * ties_merging.c: TIES-Merging (Yadav et al., "TIES-Merging: Resolving Interference When
 * Merging Models", NeurIPS 2023), and DARE-TIES (DARE's drops before TIES; Yu et al. 2024).
 *
 *     tau_i     = theta_i - theta_0                  (after DARE's drops, for dare_ties)
 *     trim:     keep the top `threshold` percent of |tau_i| over the WHOLE flattened task
 *               vector of model i (ties at the k-th value kept), zero the rest: t_i
 *     elect:    gamma = sign(sum_i t_i) per entry; entries where it is 0 take the sign of
 *               the sum of all the gammas (FusionBench's "majority")
 *     merge:    a = disjoint aggregate of the t_i whose sign agrees with gamma
 *               (sum | mean over the agreeing nonzero entries | max |t_i| times gamma)
 *     theta     = theta_0 + lambda * a
 *
 * Streaming and exact. k-th values come from a radix select on the bit patterns of |tau|
 * (non-negative floats order like their bits): pass 0 histograms the top 16 bits of every
 * entry per model, pass 1 the low 16 bits of the entries in the bin holding the k-th value;
 * pass 2 counts the elected signs for the majority; then the merge. Histograms and counts are
 * integers, so the result does not depend on the thread count. Memory: two 65536-bin
 * histograms per model per thread.
 *
 * As FusionBench: k = d - floor(d * K) with K = threshold / 100 (a threshold of at most 1 is
 * taken as a fraction), the k-th smallest |tau| is the cut, and entries >= the cut are kept.
 * d counts the merged (float, not removed) entries. remove_keys tensors keep the base's values.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "dare.h"

enum { BINS = 65536 };
enum { MERGE_SUM, MERGE_MEAN, MERGE_MAX };

typedef struct state {
    float lambda;
    double keep_fraction;
    int merge_func;
    fb_name_filter *remove;
    fb_dare dare;
    int n;              /* models */
    uint32_t *hi;       /* per model: top 16 bits of the cut */
    uint64_t *rank;     /* per model: rank of the cut within its top-16-bit bin (1-based) */
    uint32_t *cut;      /* per model: bit pattern of the k-th |tau|; entries >= it are kept */
    int majority;       /* sign for entries whose elected sign is 0 */
} state;

static const fb_param_spec ties_params[] = {
    {"scaling_factor", "0.3", "lambda, the scale of the merged task vector"},
    {"threshold", "20", "percent of each task vector's entries kept, by magnitude"},
    {"remove_keys", "[]", "tensor-name patterns left unmerged (the base's values)"},
    {"merge_func", "sum", "disjoint aggregate: sum, mean or max"},
    {NULL, NULL, NULL},
};

static const fb_param_spec dare_ties_params[] = {
    FB_DARE_PARAMS,
    {"scaling_factor", "0.5", "lambda, the scale of the merged task vector"},
    {"threshold", "20", "percent of each task vector's entries kept, by magnitude"},
    {"remove_keys", "[]", "tensor-name patterns left unmerged (the base's values)"},
    {"merge_func", "sum", "disjoint aggregate: sum, mean or max"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_name_filter_free(s->remove);
    fb_free(s->hi);
    fb_free(s->rank);
    fb_free(s->cut);
    fb_free(s);
}

static fb_status create_common(const fb_config *p, int with_dare, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    double lambda, threshold;
    const char *mf;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    if (!st) st = fb_param_double(p, "threshold", 0.0, 100.0, &threshold);
    if (!st && threshold == 0.0)
        st = fb_set_error(FB_ERR_ARG, "'threshold' is 0; it must be in (0, 100] (percent kept)");
    if (!st) st = fb_cfg_string(fb_cfg_map_get(p, "merge_func"), "merge_func", &mf);
    if (!st) {
        if (!strcmp(mf, "sum")) s->merge_func = MERGE_SUM;
        else if (!strcmp(mf, "mean")) s->merge_func = MERGE_MEAN;
        else if (!strcmp(mf, "max")) s->merge_func = MERGE_MAX;
        else st = fb_set_error(FB_ERR_ARG, "'merge_func' is '%s'; it must be sum, mean or max", mf);
    }
    if (!st) st = fb_name_filter_create(fb_cfg_map_get(p, "remove_keys"), "remove_keys", &s->remove);
    if (!st && with_dare) st = fb_dare_parse(p, &s->dare);
    if (st) {
        destroy(s);
        return st;
    }
    s->lambda = (float)lambda;
    s->keep_fraction = threshold > 1.0 ? threshold / 100.0 : threshold;
    *out = s;
    return FB_OK;
}

static fb_status create_ties(const fb_config *p, void **out) { return create_common(p, 0, out); }
static fb_status create_dare_ties(const fb_config *p, void **out)
{
    return create_common(p, 1, out);
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    s->n = m->num_models;
    fb_free(s->hi); /* a method object may run several merges */
    fb_free(s->rank);
    fb_free(s->cut);
    s->hi = fb_calloc((size_t)s->n, sizeof *s->hi);
    s->rank = fb_calloc((size_t)s->n, sizeof *s->rank);
    s->cut = fb_calloc((size_t)s->n, sizeof *s->cut);
    return s->hi && s->rank && s->cut ? FB_OK : FB_ERR_NOMEM;
}

/* the trimmed vector of every model, and the elected signs */
static int scratch_per_element(const void *p) { return ((const state *)p)->n + 1; }

static int merges_tensor(const void *p, const fb_tensor *t)
{
    return !fb_name_filter_matches(((const state *)p)->remove, fb_tensor_name(t));
}

/* Task vector entries of chunk c for model k, after DARE when enabled, into tau. */
static void task_vector(const state *s, const fb_merge_chunk *c, int k, float *tau)
{
    const float *m = c->models[k], *b = c->base;
    for (int64_t j = 0; j < c->count; j++) tau[j] = m[j] - b[j];
    if (fb_dare_applies(&s->dare, c->tensor))
        fb_dare_drop(&s->dare, fb_rng_key(s->dare.seed, c->tensor->name, (uint64_t)k), c->begin,
                     tau, c->count);
}

static inline uint32_t magnitude_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7fffffffu;
}

/* The same as a signed integer (magnitudes fit in 31 bits): SSE2 compares those directly. */
static inline int32_t magnitude_key(float x) { return (int32_t)magnitude_bits(x); }

/* Accumulator: pass 0/1 histograms (n x BINS), pass 2 two counters; then tau scratch. */
static size_t prepare_bytes(const void *p)
{
    const state *s = p;
    return (size_t)s->n * BINS * sizeof(uint64_t) + FB_MERGE_CHUNK * sizeof(float);
}

static fb_status prepare(const void *p, int pass, const fb_merge_chunk *c, void *acc)
{
    const state *s = p;
    uint64_t *hist = acc;
    float *tau = (float *)((uint64_t *)acc + (size_t)s->n * BINS);
    if (pass < 2) {
        for (int k = 0; k < s->n; k++) {
            uint64_t *h = hist + (size_t)k * BINS;
            task_vector(s, c, k, tau);
            if (pass == 0) {
                for (int64_t j = 0; j < c->count; j++) h[magnitude_bits(tau[j]) >> 16]++;
            } else if (s->rank[k]) {
                for (int64_t j = 0; j < c->count; j++) {
                    uint32_t b = magnitude_bits(tau[j]);
                    if ((b >> 16) == s->hi[k]) h[b & 0xffff]++;
                }
            }
        }
        return FB_OK;
    }
    /* pass 2: signs of the summed trimmed vectors, for the majority sign (model-outer loops
     * over the chunk scratch, as in merge) */
    float *restrict sum = c->scratch, *restrict tk = c->scratch + c->count;
    for (int k = 0; k < s->n; k++) {
        task_vector(s, c, k, tk);
        const int32_t cut = (int32_t)s->cut[k];
        if (k == 0) {
            for (int64_t j = 0; j < c->count; j++) sum[j] = magnitude_key(tk[j]) >= cut ? tk[j] : 0.0f;
        } else {
            for (int64_t j = 0; j < c->count; j++) sum[j] += magnitude_key(tk[j]) >= cut ? tk[j] : 0.0f;
        }
    }
    int64_t pos = 0, neg = 0;
    for (int64_t j = 0; j < c->count; j++) {
        pos += sum[j] > 0.0f;
        neg += sum[j] < 0.0f;
    }
    hist[0] += (uint64_t)pos;
    hist[1] += (uint64_t)neg;
    return FB_OK;
}

static fb_status prepare_finish(void *p, int pass, void *const *accs, int num_accs)
{
    state *s = p;
    if (pass == 2) {
        uint64_t pos = 0, neg = 0;
        for (int t = 0; t < num_accs; t++) {
            pos += ((const uint64_t *)accs[t])[0];
            neg += ((const uint64_t *)accs[t])[1];
        }
        s->majority = pos > neg ? 1 : pos < neg ? -1 : 0;
        return FB_OK;
    }
    for (int k = 0; k < s->n; k++) {
        /* the histogram of model k, summed over threads (integers: order-free) */
        uint64_t total = 0, want, before = 0;
        uint32_t bin = 0;
        if (pass == 0) {
            for (uint32_t b = 0; b < BINS; b++)
                for (int t = 0; t < num_accs; t++)
                    total += ((const uint64_t *)accs[t])[(size_t)k * BINS + b];
            uint64_t keep = (uint64_t)((double)total * s->keep_fraction);
            want = total - keep; /* k-th smallest, 1-based; 0: keep everything */
            if (want == 0 || total == 0) {
                s->rank[k] = 0;
                s->cut[k] = 0;
                continue;
            }
        } else {
            if (!s->rank[k]) continue;
            want = s->rank[k];
        }
        for (bin = 0; bin < BINS; bin++) {
            uint64_t count = 0;
            for (int t = 0; t < num_accs; t++)
                count += ((const uint64_t *)accs[t])[(size_t)k * BINS + bin];
            if (before + count >= want) break;
            before += count;
        }
        if (bin == BINS) return fb_set_error(FB_ERR_INTERNAL, "radix select lost the cut");
        if (pass == 0) {
            s->hi[k] = bin;
            s->rank[k] = want - before;
        } else {
            s->cut[k] = (s->hi[k] << 16) | bin;
        }
    }
    return FB_OK;
}

/* Model-outer loops over the chunk (they vectorise); each entry sees the formula's sequence
 * of f32 operations. scratch: the n trimmed vectors, then the elected signs. */
static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int n = s->n;
    const int64_t len = c->count;
    float *restrict t = c->scratch, *restrict sign = c->scratch + (int64_t)n * len;
    float *restrict out = c->out;
    const float *restrict base = c->base;
    for (int k = 0; k < n; k++) {
        float *restrict tk = t + (int64_t)k * len;
        task_vector(s, c, k, tk);
        const int32_t cut = (int32_t)s->cut[k];
        for (int64_t j = 0; j < len; j++) tk[j] = magnitude_key(tk[j]) >= cut ? tk[j] : 0.0f;
    }
    /* elect: the sign of the summed trimmed vectors, else the majority sign */
    for (int64_t j = 0; j < len; j++) out[j] = t[j];
    for (int k = 1; k < n; k++)
        for (int64_t j = 0; j < len; j++) out[j] += t[(int64_t)k * len + j];
    const float majority = (float)s->majority;
    for (int64_t j = 0; j < len; j++)
        sign[j] = out[j] > 0.0f ? 1.0f : out[j] < 0.0f ? -1.0f : majority;
    /* disjoint aggregate of the entries that agree with the elected sign: with the selection
     * sign e = +1 for a positive elected sign and -1 otherwise (FusionBench picks the negative
     * entries when the sign is 0), an entry agrees when e * t > 0 (e * t is exact). */
    if (s->merge_func == MERGE_MAX) {
        for (int64_t j = 0; j < len; j++) out[j] = 0.0f;
        for (int k = 0; k < n; k++) {
            const float *restrict tk = t + (int64_t)k * len;
            for (int64_t j = 0; j < len; j++) {
                float e = sign[j] > 0.0f ? 1.0f : -1.0f;
                float sel = e * tk[j] > 0.0f ? fabsf(tk[j]) : 0.0f;
                out[j] = sel > out[j] ? sel : out[j];
            }
        }
        for (int64_t j = 0; j < len; j++) out[j] *= sign[j];
    } else {
        float *restrict count = t; /* model 0's trimmed values are read first, then reused */
        for (int64_t j = 0; j < len; j++) {
            float e = sign[j] > 0.0f ? 1.0f : -1.0f;
            float sel = e * t[j] > 0.0f ? t[j] : 0.0f;
            out[j] = sel;
            count[j] = sel != 0.0f ? 1.0f : 0.0f;
        }
        for (int k = 1; k < n; k++) {
            const float *restrict tk = t + (int64_t)k * len;
            for (int64_t j = 0; j < len; j++) {
                float e = sign[j] > 0.0f ? 1.0f : -1.0f;
                float sel = e * tk[j] > 0.0f ? tk[j] : 0.0f;
                out[j] += sel;
                count[j] += sel != 0.0f ? 1.0f : 0.0f;
            }
        }
        if (s->merge_func == MERGE_MEAN)
            for (int64_t j = 0; j < len; j++) out[j] = out[j] / (count[j] > 1.0f ? count[j] : 1.0f);
    }
    const float lambda = s->lambda;
    for (int64_t j = 0; j < len; j++) out[j] = base[j] + lambda * out[j];
    return FB_OK;
}


const fb_method_ops fb_method_ties_merging = {
    .name = "ties_merging",
    .target_class = "TiesMergingAlgorithm",
    .summary = "trim task vectors to the top-k, elect signs, merge agreeing entries (TIES)",
    .params = ties_params,
    .needs_base = 1,
    .create = create_ties,
    .setup = setup,
    .scratch_per_element = scratch_per_element,
    .merges_tensor = merges_tensor,
    .prepare_passes = 3,
    .prepare_bytes = prepare_bytes,
    .prepare = prepare,
    .prepare_finish = prepare_finish,
    .merge = merge,
    .destroy = destroy,
};

const fb_method_ops fb_method_dare_ties_merging = {
    .name = "dare_ties_merging",
    .target_class = "DareTiesMerging",
    .summary = "TIES merging of DARE-dropped task vectors",
    .params = dare_ties_params,
    .needs_base = 1,
    .create = create_dare_ties,
    .setup = setup,
    .scratch_per_element = scratch_per_element,
    .merges_tensor = merges_tensor,
    .prepare_passes = 3,
    .prepare_bytes = prepare_bytes,
    .prepare = prepare,
    .prepare_finish = prepare_finish,
    .merge = merge,
    .destroy = destroy,
};
