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
 * Streaming and exact, in two passes over the inputs in practice. The k-th largest |tau| of
 * each model is found by a radix select on the bit patterns of |tau| (non-negative floats
 * order like their bits), narrowed by a sample:
 *   pass 0  a sample (every SAMPLE_STRIDE-th chunk of each tensor) histograms the top 16 bits
 *           of |tau|, each sampled entry weighted by how many entries it stands for; the bins
 *           around the estimated cut make a window of at most WINDOW_BINS bins;
 *   pass 1  every entry: count those above the window, and histogram those inside it on all
 *           31 bits; the cut is exact when it lies inside;
 *   pass 2, 3 only for a model whose cut the window missed (a sample far from the whole):
 *           the plain radix select, top 16 bits of every entry, then the low 16 bits of those
 *           in the cut's bin.
 * The elected sign of an entry whose trimmed vectors sum to 0 is FusionBench's "majority", the
 * sign of the sum of all elected signs, which needs the cuts. Pass 1 counts it anyway: only
 * the entries with a |tau| inside a window wait for the cut, and they are few enough to be
 * counted per window bin (or per group of bins) and settled when the cuts are known (see
 * `exact`). When it cannot (a cut outside its window, too many such groups), the merge writes
 * the value for a provisional majority (estimated on the sampled chunks in pass 1), records
 * the entries whose value depends on it (fb_merge_fixup) and merge_finish picks the right ones
 * when the guess was wrong (the driver merges again when there were too many to patch). When
 * pass 1's sample foresees more of them than the driver keeps (bf16 task vectors cancel
 * often), a streamed merge writes both outputs instead (merge_alternative), and otherwise
 * pass 4 counts the majority before the merge.
 * Memory: per thread and model, WINDOW_BINS x 65536 counters twice (pass 1; one 65536-bin
 * histogram in passes 0 and 2), and a 2.5 MB table.
 *
 * As FusionBench: k = d - floor(d * K) with K = threshold / 100 (a threshold of at most 1 is
 * taken as a fraction), the k-th smallest |tau| is the cut, and entries >= the cut are kept.
 * d counts the merged (float, not removed) entries. remove_keys tensors keep the base's values.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/alloc.h"
#include "core/simd.h"
#include "core/status.h"
#include "dare.h"

enum { BINS = 65536 };
enum { SAMPLE_STRIDE = 32, WINDOW_BINS = 2 };
enum { PASS_SAMPLE, PASS_WINDOW, PASS_HIGH, PASS_LOW, PASS_MAJORITY, PASSES };
enum { MERGE_SUM, MERGE_MEAN, MERGE_MAX };

typedef struct state {
    float lambda;
    double keep_fraction;
    int merge_func;
    fb_name_filter *remove;
    fb_dare dare;
    int n;              /* models */
    uint64_t total;     /* d: merged entries per model */
    uint64_t *want;     /* per model: rank of the cut among the |tau| (1-based, ascending);
                         * 0: everything is kept */
    uint32_t *win_lo;   /* per model: first top-16-bit bin of the window */
    int *radix;         /* per model: the window missed the cut, passes 2 and 3 find it */
    uint32_t *hi;       /* per model (radix): top 16 bits of the cut */
    uint64_t *rank;     /* per model (radix): rank of the cut within its top-16-bit bin */
    uint32_t *cut;      /* per model: bit pattern of the k-th |tau|; entries >= it are kept */
    int majority;       /* sign for entries whose elected sign is 0 */
    int majority_known; /* counted in pass 1, or set by merge_finish (a second merge uses it) */
    int provisional;    /* the majority the merge writes before it is known: estimated from
                         * the sampled chunks in pass 1 */
    int majority_pass;  /* pass 4 counts the majority exactly: the sample foresaw more entries
                         * waiting for it than the driver keeps as fixups */
    int streamed;       /* the output goes to a file ... */
    int dual;           /* ... so with that many, both outputs are written instead (sum, mean)
                         * and merge_finish keeps the right one */
    int exact;          /* pass 1 counts the majority: the sample saw entries cancel */
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

static void free_arrays(state *s)
{
    fb_free(s->want);
    fb_free(s->win_lo);
    fb_free(s->radix);
    fb_free(s->hi);
    fb_free(s->rank);
    fb_free(s->cut);
    s->want = NULL;
    s->win_lo = NULL;
    s->radix = NULL;
    s->hi = NULL;
    s->rank = NULL;
    s->cut = NULL;
}

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_name_filter_free(s->remove);
    free_arrays(s);
    fb_free(s);
}

static fb_status create_common(const fb_config *p, int with_dare, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    double lambda, threshold;
    const char *mf;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    if (!st && !isfinite(lambda))
        st = fb_set_error(FB_ERR_ARG, "'scaling_factor' must be a finite number");
    if (!st) st = fb_param_double(p, "threshold", 0.0, 100.0, &threshold);
    if (!st && threshold == 0.0)
        st = fb_set_error(FB_ERR_ARG, "'threshold' is 0; it must be in (0, 100] (percent kept)");
    if (!st) st = fb_cfg_string(fb_cfg_map_get(p, "merge_func"), "merge_func", &mf);
    if (!st) {
        if (!strcmp(mf, "sum"))
            s->merge_func = MERGE_SUM;
        else if (!strcmp(mf, "mean"))
            s->merge_func = MERGE_MEAN;
        else if (!strcmp(mf, "max"))
            s->merge_func = MERGE_MAX;
        else
            st = fb_set_error(FB_ERR_ARG, "'merge_func' is '%s'; it must be sum, mean or max", mf);
    }
    if (!st)
        st = fb_name_filter_create(fb_cfg_map_get(p, "remove_keys"), "remove_keys", &s->remove);
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

static fb_status create_ties(const fb_config *p, void **out)
{
    return create_common(p, 0, out);
}
static fb_status create_dare_ties(const fb_config *p, void **out)
{
    return create_common(p, 1, out);
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    s->n = m->num_models;
    free_arrays(s); /* a method object may run several merges */
    size_t n = (size_t)s->n;
    s->want = fb_calloc(n, sizeof *s->want);
    s->win_lo = fb_calloc(n, sizeof *s->win_lo);
    s->radix = fb_calloc(n, sizeof *s->radix);
    s->hi = fb_calloc(n, sizeof *s->hi);
    s->rank = fb_calloc(n, sizeof *s->rank);
    s->cut = fb_calloc(n, sizeof *s->cut);
    s->total = 0;
    s->majority = 0;
    s->majority_known = 0;
    s->provisional = -1;
    s->majority_pass = 0;
    s->streamed = m->streamed;
    s->dual = 0;
    s->exact = 0;
    int ok = s->want && s->win_lo && s->radix && s->hi && s->rank && s->cut;
    return ok ? FB_OK : FB_ERR_NOMEM;
}

/* the trimmed vector of every model, and the elected signs */
static int scratch_per_element(const void *p)
{
    return ((const state *)p)->n + 3; /* + the elected signs, a flag and a count per entry */
}

static int merges_tensor(const void *p, const fb_tensor *t)
{
    return !fb_name_filter_matches(((const state *)p)->remove, fb_tensor_name(t));
}

static inline uint32_t magnitude_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7fffffffu;
}

/* The same as a signed integer (magnitudes fit in 31 bits): SSE2 compares those directly. */
static inline int32_t magnitude_key(float x)
{
    return (int32_t)magnitude_bits(x);
}

/* x when its magnitude reaches the cut, else 0 */
static inline float trim(float x, int32_t cut)
{
    return magnitude_key(x) >= cut ? x : 0.0f;
}

/* Task vector entries of chunk c for model k, after DARE when enabled. Without DARE, tau is
 * computed into the scratch only when `always`; otherwise *out points at NULL and the caller
 * subtracts on the fly. */
static inline __attribute__((always_inline)) void
task_vector(const state *s, const fb_merge_chunk *c, int k, float *tau)
{
    const float *m = c->models[k], *b = c->base;
    for (int64_t j = 0; j < c->count; j++)
        tau[j] = m[j] - b[j];
    if (fb_dare_applies(&s->dare, c->tensor))
        fb_dare_drop(&s->dare, fb_rng_key(s->dare.seed, c->tensor->name, (uint64_t)k), c->begin,
                     tau, c->count);
}

/* Accumulator: per model STRIDE words: passes 0, 2 and 3 a histogram of BINS 64-bit
 * counters; pass 1 the count above the window, the count inside it, then WINDOW_BINS x BINS
 * 32-bit counters (half the cache footprint; a thread that puts more than 2^32 - 1 entries in
 * a window could overflow one, and the exact radix passes then take over). Then four
 * counters (pass 0: entries; passes 1 and 4: positive and negative sums, and in pass 1 the
 * zero sums of entries not all zero); then pass 1's count of the majority (below), then
 * scratch for tau, the sums and their bits. */
enum { STRIDE = 2 + WINDOW_BINS * BINS / 2 };

/* Pass 1 also counts the majority sign exactly, so that the merge knows it from the start
 * (no fixups, no second output): sum over entries of the sign of the summed trimmed vectors.
 * Only entries with a |tau| inside its model's window wait for the cut:
 *   none    the sign is known: added to `signs`;
 *   one     (model u, |tau_u| bits v) how the sign changes when tau_u is kept is added to
 *           u's `delta` counter of v; prepare_finish adds the counters at or above u's cut;
 *   several (at most MAX_WAITING models) the sign for every subset of them kept is added to
 *           a table keyed by the models and their bins (bf16 task vectors crowd a few
 *           values, so entries share keys); prepare_finish picks each key's subset. When the
 *           table fills, or more models wait, the old ways take over.
 * On an f32 pool where it buys nothing this made TIES about a fifth slower, so it is done only
 * when many entries will wait for the majority: pass 0 counts the sampled entries where two
 * task vectors cancel exactly (common with bf16 task vectors, rare in f32), and pass 1 counts
 * the majority only when they would overflow the driver's fixups.
 * Every sum is formed in the merge's order of f32 operations, so the signs are the merge's. */
enum { MAX_WAITING = 4, GROUPS = 1 << 14 };

typedef struct exact {
    int64_t signs;    /* entries settled in the pass */
    uint64_t groups;  /* keys in the table */
    uint64_t full;    /* the table filled, or an entry had too many models waiting */
    uint64_t cancels; /* pass 0: sampled entries where two task vectors cancel exactly */
    uint64_t sampled; /* pass 0: entries sampled */
} exact;

/* Entries with several models waiting and the same models and bins. */
typedef struct group {
    uint16_t model[MAX_WAITING]; /* model + 1; 0: unused */
    uint32_t bin[MAX_WAITING];   /* |tau| bits minus the window's start */
    int64_t signs[1 << MAX_WAITING]; /* per subset kept (bit i: model[i]), summed signs */
} group;

/* Where things are in a thread's accumulator. */
typedef struct layout {
    uint64_t *hist;   /* n x STRIDE, then the four counters */
    exact *ex;
    int32_t *delta;   /* n x WINDOW_BINS x BINS */
    group *groups;    /* GROUPS (a hash table; model[0] == 0 when free) */
    float *tau, *sum; /* a chunk each */
    uint32_t *bits;   /* a chunk */
    float *taus;      /* n chunks: DARE's dropped task vectors in pass 1 */
    float *settled;   /* a chunk: pass 1's sums with the window entries trimmed */
    uint32_t *wait;   /* a chunk: per entry 65536 x (models in their window) + the last one */
    int32_t *waiting; /* a chunk: the entries with wait != 0 */
} layout;

static size_t delta_words(int n)
{
    return (size_t)n * WINDOW_BINS * BINS / 2;
}

static layout locate(const state *s, void *acc)
{
    layout L;
    size_t n = (size_t)s->n;
    L.hist = acc;
    L.ex = (exact *)(L.hist + n * STRIDE + 4);
    L.delta = (int32_t *)(L.ex + 1);
    L.groups = (group *)((uint64_t *)L.delta + delta_words(s->n));
    L.tau = (float *)(L.groups + GROUPS);
    L.sum = L.tau + FB_MERGE_CHUNK;
    L.bits = (uint32_t *)(L.sum + FB_MERGE_CHUNK);
    L.taus = (float *)(L.bits + FB_MERGE_CHUNK);
    L.settled = L.taus + n * FB_MERGE_CHUNK;
    L.wait = (uint32_t *)(L.settled + FB_MERGE_CHUNK);
    L.waiting = (int32_t *)(L.wait + FB_MERGE_CHUNK);
    return L;
}

static size_t prepare_bytes(const void *p)
{
    const state *s = p;
    return ((size_t)s->n * STRIDE + 4) * sizeof(uint64_t) + sizeof(exact) +
           delta_words(s->n) * sizeof(uint64_t) + GROUPS * sizeof(group) +
           ((size_t)s->n + 6) * FB_MERGE_CHUNK * sizeof(float);
}

static int prepare_stride(const void *p, int pass)
{
    const state *s = p;
    if (pass == PASS_SAMPLE) return SAMPLE_STRIDE;
    if (pass == PASS_MAJORITY) return s->majority_pass;
    int any = 0;
    for (int k = 0; k < s->n; k++)
        any |= pass == PASS_WINDOW ? s->want[k] != 0 : s->radix[k];
    return any;
}

/* Pass 1's per-chunk outputs besides the counts: the sums with window entries trimmed, and
 * which entries wait for a cut (layout's settled, wait and waiting). */
typedef struct pending {
    float *settled;
    uint32_t *wait;
    int32_t *waiting;
    int64_t count; /* entries in waiting */
} pending;

/* Entry j of model k lies inside its window. */
static inline void mark_waiting(pending *w, int64_t j, int k)
{
    if (!w->wait[j]) w->waiting[w->count++] = (int32_t)j;
    w->wait[j] = (w->wait[j] & 0xffff0000u) + 65536u + (uint32_t)k;
}

/* Pass 1 over model k's tau (m - b, or tau itself when b is NULL): how many entries lie at or
 * above the window's end, a histogram of those inside it, the running sums with the entries
 * below the window's end trimmed, and the entries inside it marked (these two only with w). */
static void scan_window(const float *restrict m, const float *restrict b, int64_t n, uint32_t lo,
                        int k, uint64_t *restrict counts, uint32_t *restrict fine, pending *w,
                        int64_t from)
{
    const uint32_t width = (uint32_t)WINDOW_BINS << 16;
    float *restrict settled = w ? w->settled : NULL;
    uint64_t above = 0, inside = 0;
    for (int64_t j = from; j < n; j++) {
        float v = b ? m[j] - b[j] : m[j];
        uint32_t x = magnitude_bits(v);
        float t = x >= lo + width ? v : 0.0f;
        if (w) settled[j] = k ? settled[j] + t : t;
        above += x >= lo + width;
        if (x - lo < width) {
            fine[x - lo]++;
            inside++;
            if (w) mark_waiting(w, j, k);
        }
    }
    counts[0] += above;
    counts[1] += inside;
}

#if defined(__x86_64__)
/* The same with AVX2, eight entries at a time: two signed compares (magnitudes fit in 31
 * bits), and the lanes inside the window (rare) taken from a movemask. */
__attribute__((target("avx2"))) static void scan_window_avx2(const float *restrict m,
                                                             const float *restrict b, int64_t n,
                                                             uint32_t lo, int k,
                                                             uint64_t *restrict counts,
                                                             uint32_t *restrict fine, pending *w)
{
    const uint32_t width = (uint32_t)WINDOW_BINS << 16;
    const __m256i mag = _mm256_set1_epi32(0x7fffffff);
    const __m256i at_lo = _mm256_set1_epi32((int32_t)lo - 1); /* x > lo - 1: x >= lo */
    const __m256i at_hi = _mm256_set1_epi32((int32_t)(lo + width) - 1);
    float *restrict settled = w ? w->settled : NULL;
    uint64_t above = 0, inside = 0;
    int64_t j = 0;
    while (j + 8 <= n) {
        /* lane counts stay far below 2^31 within a block of 2^20 vectors */
        int64_t end = n - j > ((int64_t)8 << 20) ? j + ((int64_t)8 << 20) : n;
        __m256i up = _mm256_setzero_si256();
        for (; j + 8 <= end; j += 8) {
            __m256 v = _mm256_loadu_ps(m + j);
            if (b) v = _mm256_sub_ps(v, _mm256_loadu_ps(b + j));
            __m256i x = _mm256_and_si256(_mm256_castps_si256(v), mag);
            __m256i ge_hi = _mm256_cmpgt_epi32(x, at_hi);
            __m256i in = _mm256_andnot_si256(ge_hi, _mm256_cmpgt_epi32(x, at_lo));
            if (w) {
                __m256 t = _mm256_and_ps(v, _mm256_castsi256_ps(ge_hi)); /* +0 when trimmed */
                if (k) t = _mm256_add_ps(_mm256_loadu_ps(settled + j), t);
                _mm256_storeu_ps(settled + j, t);
            }
            up = _mm256_sub_epi32(up, ge_hi);
            unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(in));
            if (!mask) continue;
            uint32_t lanes[8];
            _mm256_storeu_si256((__m256i *)lanes, x);
            inside += (uint64_t)__builtin_popcount(mask);
            for (; mask; mask &= mask - 1) {
                int lane = __builtin_ctz(mask);
                fine[lanes[lane] - lo]++;
                if (w) mark_waiting(w, j + lane, k);
            }
        }
        uint32_t c[8];
        _mm256_storeu_si256((__m256i *)c, up);
        for (int i = 0; i < 8; i++)
            above += c[i];
    }
    counts[0] += above;
    counts[1] += inside;
    scan_window(m, b, n, lo, k, counts, fine, w, j);
}
#endif

static inline int sign_of(float x)
{
    return (x > 0.0f) - (x < 0.0f);
}

/* Entry j of model k's task vector in pass 1: DARE's dropped ones are stored. */
static inline float pass1_tau(const fb_merge_chunk *c, const float *taus, int k,
                              int64_t j)
{
    if (taus) return taus[(int64_t)k * c->count + j];
    return c->models[k][j] - c->base[j];
}

/* Model k's trimmed entry where it does not wait: kept at or above the window's end. */
static inline float pass1_settled(const state *s, float tau, int k)
{
    if (!s->want[k]) return tau;
    return trim(tau, (int32_t)((s->win_lo[k] << 16) + ((uint32_t)WINDOW_BINS << 16)));
}

static inline int in_window(const state *s, int k, float tau)
{
    return s->want[k] && magnitude_bits(tau) - (s->win_lo[k] << 16) < ((uint32_t)WINDOW_BINS << 16);
}

/* The entries of a chunk that wait for a cut: one model's change goes to its counters,
 * several models' values to the list. */
static void settle_waiting(const state *s, const fb_merge_chunk *c, layout *L, const float *taus,
                           pending *w)
{
    const int n = s->n;
    if (n > 65535) { /* more models than a wait code holds: no exact count */
        for (int64_t i = 0; i < w->count; i++) w->wait[w->waiting[i]] = 0;
        L->ex->full = 1;
        w->count = 0;
        return;
    }
    for (int64_t i = 0; i < w->count; i++) {
        int64_t j = w->waiting[i];
        uint32_t code = w->wait[j];
        w->wait[j] = 0;
        int before = sign_of(w->settled[j]);
        if (code >> 16 == 1) {
            int u = (int)(code & 0xffff);
            float tu = pass1_tau(c, taus, u, j), sum = 0.0f;
            for (int k = 0; k < n; k++) {
                float x = k == u ? tu : pass1_settled(s, pass1_tau(c, taus, k, j), k);
                sum = k ? sum + x : x;
            }
            uint32_t bin = magnitude_bits(tu) - (s->win_lo[u] << 16);
            L->delta[(size_t)u * WINDOW_BINS * BINS + bin] += sign_of(sum) - before;
            continue;
        }
        L->ex->signs -= before;
        int nu = (int)(code >> 16), us[MAX_WAITING];
        float x[MAX_WAITING];
        if (nu > MAX_WAITING) {
            L->ex->full = 1;
            continue;
        }
        uint64_t h = 0x9e3779b97f4a7c15u;
        for (int k = 0, i = 0; k < n; k++) {
            float t = pass1_tau(c, taus, k, j);
            if (!in_window(s, k, t)) continue;
            us[i] = k;
            x[i++] = t;
            h = (h ^ ((uint64_t)k << 32 | magnitude_bits(t))) * 0xff51afd7ed558ccdu;
        }
        group *g = NULL;
        for (uint64_t probe = 0, at = (h >> 32) % GROUPS; probe < 64; probe++, at = (at + 1) % GROUPS) {
            group *q = &L->groups[at];
            int same = q->model[0] != 0;
            for (int i = 0; same && i < MAX_WAITING; i++)
                same = i < nu ? q->model[i] == us[i] + 1 &&
                                    q->bin[i] == magnitude_bits(x[i]) - (s->win_lo[us[i]] << 16)
                              : q->model[i] == 0;
            if (same) {
                g = q;
                break;
            }
            if (q->model[0] == 0 && L->ex->groups < GROUPS / 2) {
                g = q; /* the pass starts from a zeroed accumulator */
                for (int i = 0; i < nu; i++) {
                    g->model[i] = (uint16_t)(us[i] + 1);
                    g->bin[i] = magnitude_bits(x[i]) - (s->win_lo[us[i]] << 16);
                }
                L->ex->groups++;
                break;
            }
        }
        if (!g) {
            L->ex->full = 1;
            continue;
        }
        for (int subset = 0; subset < 1 << nu; subset++) {
            float sum = 0.0f;
            for (int k = 0, i = 0; k < n; k++) {
                float v;
                if (i < nu && us[i] == k) {
                    v = (subset >> i) & 1 ? x[i] : 0.0f;
                    i++;
                } else {
                    v = pass1_settled(s, pass1_tau(c, taus, k, j), k);
                }
                sum = k ? sum + v : v;
            }
            g->signs[subset] += sign_of(sum);
        }
    }
    w->count = 0;
}

/* Pass 1 over a chunk: every model's window counts and the exact majority count (above); on
 * the sampled chunks also the signs of the summed trimmed vectors at the window's middle (the
 * estimated cuts), from which the merge guesses the majority sign when pass 1 cannot count it. */
static void window_pass(const state *s, const fb_merge_chunk *c, layout *L)
{
#if defined(__x86_64__)
    int avx2 = fb_simd_active() >= FB_SIMD_AVX2;
#endif
    int dare = fb_dare_applies(&s->dare, c->tensor);
    int sampled = (c->begin / FB_MERGE_CHUNK) % SAMPLE_STRIDE == 0;
    float *sum = L->sum;
    uint32_t *bits = L->bits;
    pending w = {.settled = L->settled, .wait = L->wait, .waiting = L->waiting};
    pending *wp = s->exact ? &w : NULL;
    for (int k = 0; k < s->n; k++) {
        uint64_t *h = L->hist + (size_t)k * STRIDE;
        const float *m = c->models[k], *b = c->base;
        if (dare) {
            float *tau = L->taus + (size_t)k * (size_t)c->count;
            task_vector(s, c, k, tau);
            m = tau;
            b = NULL;
        }
        if (sampled) {
            int32_t est = s->want[k] ? (int32_t)((s->win_lo[k] << 16) + ((uint32_t)WINDOW_BINS << 15)) : 0;
            for (int64_t j = 0; j < c->count; j++) {
                float x = trim(b ? m[j] - b[j] : m[j], est);
                uint32_t u;
                memcpy(&u, &x, 4);
                sum[j] = k ? sum[j] + x : x;
                bits[j] = k ? bits[j] | u : u;
            }
        }
        if (!s->want[k]) { /* everything kept */
            for (int64_t j = 0; wp && j < c->count; j++) {
                float x = b ? m[j] - b[j] : m[j];
                w.settled[j] = k ? w.settled[j] + x : x;
            }
            continue;
        }
        uint32_t *fine = (uint32_t *)(h + 2);
#if defined(__x86_64__)
        if (avx2) {
            scan_window_avx2(m, b, c->count, s->win_lo[k] << 16, k, h, fine, wp);
            continue;
        }
#endif
        scan_window(m, b, c->count, s->win_lo[k] << 16, k, h, fine, wp, 0);
    }
    if (wp) {
        int64_t signs = 0;
        for (int64_t j = 0; j < c->count; j++)
            signs += sign_of(w.settled[j]);
        L->ex->signs += signs;
        settle_waiting(s, c, L, dare ? L->taus : NULL, &w);
    }
    if (!sampled) return;
    uint64_t *counters = L->hist + (size_t)s->n * STRIDE + 1;
    for (int64_t j = 0; j < c->count; j++) {
        counters[0] += sum[j] > 0.0f;
        counters[1] += sum[j] < 0.0f;
        counters[2] += sum[j] == 0.0f && bits[j];
    }
}

static fb_status prepare(const void *p, int pass, const fb_merge_chunk *c, void *acc)
{
    const state *s = p;
    layout L = locate(s, acc);
    uint64_t *hist = L.hist;
    float *tau = L.tau, *sum = L.sum;
    if (pass == PASS_SAMPLE) {
        /* the chunk stands for itself and the stride - 1 chunks after it (fewer at the end of
         * the tensor); weights are 16.16 fixed point so sums stay integers */
        int64_t stands = c->tensor->numel - c->begin;
        if (stands > (int64_t)SAMPLE_STRIDE * FB_MERGE_CHUNK)
            stands = (int64_t)SAMPLE_STRIDE * FB_MERGE_CHUNK;
        uint64_t w = ((uint64_t)stands << 16) / (uint64_t)c->count;
        hist[(size_t)s->n * STRIDE] += (uint64_t)stands;
        const int64_t len = c->count;
        for (int k = 0; k < s->n; k++) {
            uint64_t *h = hist + (size_t)k * STRIDE;
            float *t = L.taus + (size_t)k * (size_t)len;
            task_vector(s, c, k, t);
            for (int64_t j = 0; j < len; j++)
                h[magnitude_bits(t[j]) >> 16] += w;
        }
        uint32_t *cancel = L.bits;
        memset(cancel, 0, (size_t)len * sizeof *cancel);
        for (int k = 0; k < s->n; k++)
            for (int l = k + 1; l < s->n; l++) {
                const float *a = L.taus + (size_t)k * (size_t)len, *b = L.taus + (size_t)l * (size_t)len;
                for (int64_t j = 0; j < len; j++)
                    cancel[j] |= (uint32_t)(a[j] == -b[j]) & (uint32_t)(a[j] != 0.0f);
            }
        uint64_t cancels = 0;
        for (int64_t j = 0; j < len; j++)
            cancels += cancel[j];
        L.ex->cancels += cancels;
        L.ex->sampled += (uint64_t)len;
        return FB_OK;
    }
    if (pass == PASS_WINDOW) {
        window_pass(s, c, &L);
        return FB_OK;
    }
    if (pass == PASS_MAJORITY) {
        /* the signs of the summed trimmed vectors, with the exact cuts */
        int dare = fb_dare_applies(&s->dare, c->tensor);
        for (int k = 0; k < s->n; k++) {
            const float *m = c->models[k], *b = c->base;
            const int32_t cut = (int32_t)s->cut[k];
            if (dare) {
                task_vector(s, c, k, tau);
                for (int64_t j = 0; j < c->count; j++) sum[j] = k ? sum[j] + trim(tau[j], cut) : trim(tau[j], cut);
            } else {
                for (int64_t j = 0; j < c->count; j++) {
                    float x = trim(m[j] - b[j], cut);
                    sum[j] = k ? sum[j] + x : x;
                }
            }
        }
        uint64_t *signs = hist + (size_t)s->n * STRIDE + 1;
        for (int64_t j = 0; j < c->count; j++) {
            signs[0] += sum[j] > 0.0f;
            signs[1] += sum[j] < 0.0f;
        }
        return FB_OK;
    }
    for (int k = 0; k < s->n; k++) {
        uint64_t *h = hist + (size_t)k * STRIDE;
        if (!s->radix[k]) continue;
        task_vector(s, c, k, tau);
        if (pass == PASS_HIGH) {
            for (int64_t j = 0; j < c->count; j++)
                h[magnitude_bits(tau[j]) >> 16]++;
        } else {
            for (int64_t j = 0; j < c->count; j++) {
                uint32_t b = magnitude_bits(tau[j]);
                if ((b >> 16) == s->hi[k]) h[b & 0xffff]++;
            }
        }
    }
    return FB_OK;
}

/* Bin of model k's histogram (summed over the threads' accumulators) that holds its want-th
 * smallest entry, and the count before that bin; BINS when it holds fewer. */
static uint32_t find_bin(void *const *accs, int num_accs, int k, uint64_t want, uint64_t *before)
{
    uint64_t sum = 0;
    for (uint32_t bin = 0; bin < BINS; bin++) {
        uint64_t count = 0;
        for (int t = 0; t < num_accs; t++)
            count += ((const uint64_t *)accs[t])[(size_t)k * STRIDE + bin];
        if (sum + count >= want) {
            *before = sum;
            return bin;
        }
        sum += count;
    }
    *before = sum;
    return BINS;
}

/* After the sample: the window of WINDOW_BINS bins around each model's estimated cut. */
static void choose_windows(state *s, void *const *accs, int num_accs)
{
    uint64_t d = 0;
    for (int t = 0; t < num_accs; t++)
        d += ((const uint64_t *)accs[t])[(size_t)s->n * STRIDE];
    s->total = d;
    for (int k = 0; k < s->n; k++) {
        uint64_t keep = (uint64_t)((double)d * s->keep_fraction);
        s->want[k] = d - keep; /* 0: keep everything */
        s->radix[k] = 0;
        s->cut[k] = 0;
        if (!s->want[k]) continue;
        /* the estimated cut (weights are 16.16), the bins where the estimate is 0.4 % of d
         * lower and higher, and a window around the estimate that reaches toward them */
        uint64_t before, margin = d / 256 + 1, w = s->want[k];
        uint32_t est = find_bin(accs, num_accs, k, w << 16, &before);
        uint32_t lo = find_bin(accs, num_accs, k, (w > margin ? w - margin : 1) << 16, &before);
        uint32_t hi = find_bin(accs, num_accs, k, (w + margin) << 16, &before);
        if (est == BINS) est = BINS - 1;
        if (hi >= BINS) hi = BINS - 1;
        uint32_t a = est, b = est;
        while (b - a + 1 < WINDOW_BINS) {
            int grew = 0;
            if (a > lo) a--, grew = 1;
            if (b - a + 1 < WINDOW_BINS && b < hi) b++, grew = 1;
            if (!grew) break;
        }
        if (b - a + 1 < WINDOW_BINS && a > 0) a--;
        while (b - a + 1 < WINDOW_BINS && b < BINS - 1)
            b++;
        while (b - a + 1 < WINDOW_BINS)
            a--;
        s->win_lo[k] = a;
    }
}

/* After pass 1, with every cut inside its window: the majority sign from the pass's counts
 * (see `exact`). Returns 0 when they cannot give it (a cut outside its window, a full list,
 * or a window so crowded that a 32-bit counter could overflow). */
static int settle_majority(state *s, void *const *accs, int num_accs)
{
    const int n = s->n;
    int64_t total = 0;
    if (n > 65535 || !s->exact) return 0;
    for (int t = 0; t < num_accs; t++) {
        layout L = locate(s, accs[t]);
        if (L.ex->full) return 0;
        for (int k = 0; k < n; k++)
            if (s->radix[k] || L.hist[(size_t)k * STRIDE + 1] >= (1u << 30)) return 0;
        total += L.ex->signs;
    }
    for (int t = 0; t < num_accs; t++) {
        layout L = locate(s, accs[t]);
        for (int k = 0; k < n; k++) {
            if (!s->want[k]) continue;
            const int32_t *d = L.delta + (size_t)k * WINDOW_BINS * BINS;
            for (uint32_t i = s->cut[k] - (s->win_lo[k] << 16); i < WINDOW_BINS * BINS; i++)
                total += d[i];
        }
        for (size_t i = 0; i < GROUPS; i++) {
            const group *g = &L.groups[i];
            if (!g->model[0]) continue;
            int subset = 0;
            for (int u = 0; u < MAX_WAITING && g->model[u]; u++) {
                int k = g->model[u] - 1;
                subset |= (g->bin[u] >= s->cut[k] - (s->win_lo[k] << 16)) << u;
            }
            total += g->signs[subset];
        }
    }
    s->majority = total > 0 ? 1 : total < 0 ? -1 : 0;
    s->majority_known = 1;
    s->dual = 0;
    s->majority_pass = 0;
    return 1;
}

static fb_status prepare_finish(void *p, int pass, void *const *accs, int num_accs)
{
    state *s = p;
    if (pass == PASS_SAMPLE) {
        choose_windows(s, accs, num_accs);
        uint64_t cancels = 0, sampled = 0;
        for (int t = 0; t < num_accs; t++) {
            layout L = locate(s, accs[t]);
            cancels += L.ex->cancels;
            sampled += L.ex->sampled;
        }
        double expected = sampled ? (double)cancels * (double)s->total / (double)sampled : 0.0;
        s->exact = expected > FB_MERGE_FIXUPS / 2;
        return FB_OK;
    }
    if (pass == PASS_WINDOW || pass == PASS_MAJORITY) {
        uint64_t pos = 0, neg = 0, ties = 0;
        for (int t = 0; t < num_accs; t++) {
            pos += ((const uint64_t *)accs[t])[(size_t)s->n * STRIDE + 1];
            neg += ((const uint64_t *)accs[t])[(size_t)s->n * STRIDE + 2];
            ties += ((const uint64_t *)accs[t])[(size_t)s->n * STRIDE + 3];
        }
        if (pass == PASS_MAJORITY) {
            s->majority = pos > neg ? 1 : pos < neg ? -1 : 0;
            s->majority_known = 1;
            return FB_OK;
        }
        s->provisional = pos > neg ? 1 : -1;
        /* more entries will wait for the majority than fixups can hold: unless the sample
         * leaves no doubt about it (its difference over 6 standard deviations of a count),
         * two outputs when streaming (one read pass), else a pass that counts it first */
        double diff = (double)pos - (double)neg, sure = 6.0 * sqrt((double)(pos + neg));
        if (ties * SAMPLE_STRIDE > FB_MERGE_FIXUPS / 2 && fabs(diff) <= sure) {
            if (s->streamed && s->merge_func != MERGE_MAX) s->dual = 1;
            else s->majority_pass = 1;
        }
    }
    for (int k = 0; k < s->n; k++) {
        if (pass == PASS_WINDOW) {
            if (!s->want[k]) continue;
            uint64_t above = 0, inside = 0;
            int overflow = 0;
            for (int t = 0; t < num_accs; t++) {
                const uint64_t *h = (const uint64_t *)accs[t] + (size_t)k * STRIDE;
                above += h[0];
                inside += h[1];
                overflow |= h[1] > UINT32_MAX;
            }
            uint64_t below = s->total - above - inside, sum = below;
            s->radix[k] = overflow || s->want[k] <= below || s->want[k] > below + inside;
            if (s->radix[k]) continue;
            size_t i = 0;
            for (;; i++) {
                uint64_t count = 0;
                for (int t = 0; t < num_accs; t++)
                    count +=
                        ((const uint32_t *)((const uint64_t *)accs[t] + (size_t)k * STRIDE + 2))[i];
                if (sum + count >= s->want[k]) break;
                sum += count;
            }
            s->cut[k] = (s->win_lo[k] << 16) + (uint32_t)i;
            continue;
        }
        if (!s->radix[k]) continue;
        uint64_t before;
        uint32_t bin =
            find_bin(accs, num_accs, k, pass == PASS_HIGH ? s->want[k] : s->rank[k], &before);
        if (bin == BINS) return fb_set_error(FB_ERR_INTERNAL, "radix select lost the cut");
        if (pass == PASS_HIGH) {
            s->hi[k] = bin;
            s->rank[k] = s->want[k] - before;
        } else {
            s->cut[k] = (s->hi[k] << 16) | bin;
        }
    }
    if (pass == PASS_WINDOW) settle_majority(s, accs, num_accs);
    return FB_OK;
}

/* Merge accumulator: how many entries' summed trimmed vectors are positive, negative. */
static size_t merge_bytes(const void *p)
{
    (void)p;
    return 2 * sizeof(uint64_t);
}

/* The merged value of entry j for an elected sign g (+1, 0 or -1), in the same sequence of
 * f32 operations as merge's vector loops. */

/* Trimmed entry j of model k: stored in t (DARE's dropped vectors), or computed from the
 * inputs (t NULL). */
static inline __attribute__((always_inline)) float trimmed(const state *s, const fb_merge_chunk *c,
                                                           const float *t, int k, int64_t j)
{
    if (t) return t[(int64_t)k * c->count + j];
    return trim(c->models[k][j] - c->base[j], (int32_t)s->cut[k]);
}

/* The merged value of entry j for an elected sign g (+1, 0 or -1), in the same sequence of
 * f32 operations as merge's vector loops. */
static float merged_entry(const state *s, const fb_merge_chunk *c, const float *t, int64_t j,
                          float g)
{
    float e = g > 0.0f ? 1.0f : -1.0f, out = 0.0f;
    if (s->merge_func == MERGE_MAX) {
        for (int k = 0; k < s->n; k++) {
            float tk = trimmed(s, c, t, k, j);
            float sel = e * tk > 0.0f ? fabsf(tk) : 0.0f;
            out = sel > out ? sel : out;
        }
        out *= g;
    } else {
        float count = 0.0f;
        for (int k = 0; k < s->n; k++) {
            float tk = trimmed(s, c, t, k, j);
            float sel = e * tk > 0.0f ? tk : 0.0f;
            out = k ? out + sel : sel;
            count = k ? count + (sel != 0.0f ? 1.0f : 0.0f) : (sel != 0.0f ? 1.0f : 0.0f);
        }
        if (s->merge_func == MERGE_MEAN) out = out / (count > 1.0f ? count : 1.0f);
    }
    return c->base[j] + s->lambda * out;
}

/* Model-outer loops over the chunk (they vectorise); each entry sees the formula's sequence
 * of f32 operations, so the AVX2 build gives the same bytes. Trimmed vectors are computed
 * from the inputs where they are needed (stored = 0), or, after DARE's drops, stored in the
 * scratch (stored = 1: n vectors). Then scratch holds the elected signs and the counts. */
static inline __attribute__((always_inline)) void
merge_chunk(const state *s, const fb_merge_chunk *c, const int stored)
{
    const int n = s->n;
    const int64_t len = c->count;
    const float *restrict base = c->base;
    float *restrict t = stored ? c->scratch : NULL;
    float *restrict sign = c->scratch + (stored ? (int64_t)n * len : 0);
    float *restrict count = stored ? c->scratch : c->scratch + len; /* stored: over model 0 */
    float *restrict out = c->out;
    const int32_t *cut = (const int32_t *)s->cut;
    for (int k = 0; k < n && stored; k++) {
        float *restrict tk = t + (int64_t)k * len;
        task_vector(s, c, k, tk);
        for (int64_t j = 0; j < len; j++)
            tk[j] = trim(tk[j], cut[k]);
    }
    /* elect: the sign of the summed trimmed vectors, else the majority sign; `sign` holds
     * the OR of the trimmed entries' bits for a moment, to find entries that are all zero */
    uint32_t *restrict bits = (uint32_t *)sign;
#define TRIMMED(k, j) (stored ? t[(int64_t)(k)*len + (j)] : trim(c->models[k][j] - base[j], cut[k]))
    for (int64_t j = 0; j < len; j++) {
        float x = TRIMMED(0, j);
        uint32_t u;
        memcpy(&u, &x, 4);
        out[j] = x;
        bits[j] = u;
    }
    for (int k = 1; k < n; k++) {
        for (int64_t j = 0; j < len; j++) {
            float x = TRIMMED(k, j);
            uint32_t u;
            memcpy(&u, &x, 4);
            out[j] += x;
            bits[j] |= u;
        }
    }
    /* entries whose value the majority may change: a zero sum of entries not all zero, or
     * (max) a zero sum on a zero base, where the majority decides the sign of zero */
    const uint32_t max_zero = s->merge_func == MERGE_MAX;
    uint64_t pos = 0, neg = 0, open = 0;
    for (int64_t j = 0; j < len; j++) {
        pos += out[j] > 0.0f;
        neg += out[j] < 0.0f;
        open += (uint32_t)(out[j] == 0.0f) &
                ((uint32_t)(bits[j] != 0) | (max_zero & (uint32_t)(base[j] == 0.0f)));
    }
    ((uint64_t *)c->acc)[0] += pos;
    ((uint64_t *)c->acc)[1] += neg;
    /* before the majority is known, the values for the provisional one are written */
    float majority = (float)(s->majority_known ? s->majority : s->provisional);
    /* two outputs (sum and mean): the alternative is merged with the other selection sign
     * where the summed trimmed entries cancel, flagged here */
    float *restrict alt = c->out_alt;
    uint32_t *restrict flag = (uint32_t *)(c->scratch + (stored ? (int64_t)(n + 1) : 2) * len);
    float *restrict alt_count = c->scratch + (stored ? (int64_t)(n + 2) : 3) * len;
    if (alt)
        for (int64_t j = 0; j < len; j++) flag[j] = (uint32_t)(out[j] == 0.0f) & (uint32_t)(bits[j] != 0);
    if (!alt && !s->majority_known && open) {
        for (int64_t j = 0; j < len; j++) {
            if (out[j] != 0.0f) continue;
            if (!bits[j] && !(max_zero && base[j] == 0.0f)) continue;
            float v[FB_FIXUP_VALUES];
            for (int g = 0; g < FB_FIXUP_VALUES; g++)
                v[g] = merged_entry(s, c, t, j, (float)(g - 1));
            if ((memcmp(&v[0], &v[1], 4) || memcmp(&v[0], &v[2], 4)) && !fb_merge_fixup(c, j, v))
                break; /* the list is full: the merge will run again if it must */
        }
    }
    for (int64_t j = 0; j < len; j++)
        sign[j] = out[j] > 0.0f ? 1.0f : out[j] < 0.0f ? -1.0f : majority;
    const float lambda = s->lambda;
    /* the alternative first (DARE's stored vectors are overwritten by the counts below): the
     * same sequence of operations, the selection sign flipped where flagged */
    if (alt) {
        for (int k = 0; k < n; k++) {
            for (int64_t j = 0; j < len; j++) {
                float x = TRIMMED(k, j), e = sign[j] > 0.0f ? 1.0f : -1.0f;
                e = flag[j] ? -e : e;
                float sel = e * x > 0.0f ? x : 0.0f, one = sel != 0.0f ? 1.0f : 0.0f;
                alt[j] = k ? alt[j] + sel : sel;
                alt_count[j] = k ? alt_count[j] + one : one;
            }
        }
        if (s->merge_func == MERGE_MEAN)
            for (int64_t j = 0; j < len; j++)
                alt[j] = alt[j] / (alt_count[j] > 1.0f ? alt_count[j] : 1.0f);
        for (int64_t j = 0; j < len; j++)
            alt[j] = base[j] + lambda * alt[j];
    }
    /* disjoint aggregate of the entries that agree with the elected sign: with the selection
     * sign e = +1 for a positive elected sign and -1 otherwise (FusionBench picks the negative
     * entries when the sign is 0), an entry agrees when e * t > 0 (e * t is exact). */
    if (s->merge_func == MERGE_MAX) {
        for (int64_t j = 0; j < len; j++)
            out[j] = 0.0f;
        for (int k = 0; k < n; k++) {
            for (int64_t j = 0; j < len; j++) {
                float x = TRIMMED(k, j), e = sign[j] > 0.0f ? 1.0f : -1.0f;
                float sel = e * x > 0.0f ? fabsf(x) : 0.0f;
                out[j] = sel > out[j] ? sel : out[j];
            }
        }
        for (int64_t j = 0; j < len; j++)
            out[j] *= sign[j];
    } else {
        for (int64_t j = 0; j < len; j++) {
            float x = TRIMMED(0, j), e = sign[j] > 0.0f ? 1.0f : -1.0f;
            float sel = e * x > 0.0f ? x : 0.0f;
            out[j] = sel;
            count[j] = sel != 0.0f ? 1.0f : 0.0f;
        }
        for (int k = 1; k < n; k++) {
            for (int64_t j = 0; j < len; j++) {
                float x = TRIMMED(k, j), e = sign[j] > 0.0f ? 1.0f : -1.0f;
                float sel = e * x > 0.0f ? x : 0.0f;
                out[j] += sel;
                count[j] += sel != 0.0f ? 1.0f : 0.0f;
            }
        }
        if (s->merge_func == MERGE_MEAN)
            for (int64_t j = 0; j < len; j++)
                out[j] = out[j] / (count[j] > 1.0f ? count[j] : 1.0f);
    }
#undef TRIMMED
    for (int64_t j = 0; j < len; j++)
        out[j] = base[j] + lambda * out[j];
}

static inline __attribute__((always_inline)) void merge_any(const state *s, const fb_merge_chunk *c)
{
    if (fb_dare_applies(&s->dare, c->tensor))
        merge_chunk(s, c, 1);
    else
        merge_chunk(s, c, 0);
}

static void merge_plain(const state *s, const fb_merge_chunk *c)
{
    merge_any(s, c);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static void merge_avx2(const state *s, const fb_merge_chunk *c)
{
    merge_any(s, c);
}
#endif

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
#if defined(__x86_64__)
    if (fb_simd_active() >= FB_SIMD_AVX2) {
        merge_avx2(p, c);
        return FB_OK;
    }
#endif
    merge_plain(p, c);
    return FB_OK;
}

static int merge_alternative(const void *p)
{
    const state *s = p;
    return s->dual && !s->majority_known;
}

/* The majority: the sign of the sum of all elected signs; fixups carry -1, 0, +1. Nothing to
 * patch when it selects the same entries as the provisional one (sum and mean only look at
 * whether it is positive; max also multiplies by it). */
static fb_status merge_finish(void *p, void *const *accs, int num_accs, int *choice)
{
    state *s = p;
    uint64_t pos = 0, neg = 0;
    for (int t = 0; t < num_accs; t++) {
        pos += ((const uint64_t *)accs[t])[0];
        neg += ((const uint64_t *)accs[t])[1];
    }
    if (s->majority_known) return FB_OK;
    s->majority = pos > neg ? 1 : pos < neg ? -1 : 0;
    s->majority_known = 1;
    int same = s->merge_func == MERGE_MAX ? s->majority == s->provisional
                                          : (s->majority > 0) == (s->provisional > 0);
    *choice = same ? -1 : s->majority + 1;
    return FB_OK;
}

#define TIES_OPS                                                                                   \
    .needs_base = 1, .setup = setup, .scratch_per_element = scratch_per_element,                   \
    .merges_tensor = merges_tensor, .prepare_passes = PASSES, .prepare_bytes = prepare_bytes,      \
    .prepare = prepare, .prepare_finish = prepare_finish, .prepare_stride = prepare_stride,        \
    .merge_bytes = merge_bytes, .merge_finish = merge_finish,                                    \
    .merge_alternative = merge_alternative, .merge = merge, .destroy = destroy

const fb_method_ops fb_method_ties_merging = {
    .name = "ties_merging",
    .target_class = "TiesMergingAlgorithm",
    .summary = "trim task vectors to the top-k, elect signs, merge agreeing entries (TIES)",
    .params = ties_params,
    .create = create_ties,
    TIES_OPS,
};

const fb_method_ops fb_method_dare_ties_merging = {
    .name = "dare_ties_merging",
    .target_class = "DareTiesMerging",
    .summary = "TIES merging of DARE-dropped task vectors",
    .params = dare_ties_params,
    .create = create_dare_ties,
    TIES_OPS,
};
