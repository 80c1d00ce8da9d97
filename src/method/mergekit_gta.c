/*
 * mergekit_gta.c: mergekit's generalized task arithmetic, the family behind its
 * task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, della and
 * della_linear (mergekit/merge_methods/generalized_task_arithmetic.py; Ilharco et al. 2023,
 * Yadav et al. 2023, Yu et al. 2024, Davari and Belilovsky 2024, Deep et al. 2024).
 * Registered as mergekit_<name>; FusionBench's methods of the same names stay as they are.
 *
 * Per tensor, for each model i with weight w_i, density d_i:
 *     tau_i = sparsify(theta_i - theta_0, d_i)              (per tensor, not over the model)
 *     v_i   = w_i tau_i
 *     sign election (ties, dare_ties, breadcrumbs_ties, della):
 *         s = sign(sum_i v_i) (0 counts as +),  m_i = [sign(v_i) == s]
 *         mixed = sum_i m_i v_i,  divisor = sum_i m_i w_i  (0 -> 1)
 *     otherwise: mixed = sum_i v_i,  divisor = sum_i w_i   (|divisor| < 1e-8 -> 1)
 *     theta = theta_0 + lambda (normalize ? mixed / divisor : mixed)
 * The sparsifications are mergekit_common.c's; rescale matches the L1 norm of tau_i. Element
 * sums run over the models in pool order in f32, as PyTorch sums a stacked f32 tensor.
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "mergekit_common.h"

typedef struct kind {
    int sparsify;  /* FB_MK_* */
    int consensus; /* sign election */
} kind;

/* One model's per-tensor selection, found by the tensor passes. */
typedef struct sel {
    int select;         /* kept by rank (magnitude, outliers) in this tensor */
    int none;           /* nothing kept */
    int nt;             /* target ranks: 1 (magnitude: n - k), 2 (outliers: lo, hi - 1) */
    int64_t rank[2];    /* the ascending ranks whose values are the thresholds */
    uint32_t bucket[2]; /* their top 16 bits (pass 0) */
    int64_t below[2];   /* entries in lower buckets */
    uint32_t v[2];      /* the threshold keys (pass 1) */
    int64_t less[2];    /* entries below each threshold */
    int64_t ties;       /* magnitude: entries equal to v[0] that are kept (lowest index first) */
    int64_t lo, hi;     /* outliers: the kept ascending ranks */
    float scale;        /* L1 rescale (1: none) */
} sel;

typedef struct state {
    const char *name;
    kind k;
    fb_mk_list weight, density, gamma, epsilon;
    int normalize, rescale;
    double lambda;
    uint64_t seed;
    int num_models;
    sel *sel; /* per model, for the tensor being merged */
} state;

/* A chunk's slot: per model the L1 norms before and after sparsifying, and the entries equal
 * to each threshold (pass 2; then, after tensor_finish, those in earlier chunks). */
typedef struct slot_head {
    double l1[2];
    int64_t eq[2];
} slot_head;

#define COMMON_PARAMS(norm, resc)                                                                  \
    {"weight", "null", "each model's weight: a number or one per model (required)"},               \
        {"density", "1.0",                                                                         \
         "fraction of each task vector kept, per tensor: a number or one per model"},              \
        {"normalize", norm, "divide the merged task vector by the (agreeing) weights' sum"},       \
        {"rescale", resc, "rescale each sparsified task vector to the L1 norm it had"},            \
        {"lambda", "1.0", "scale of the merged task vector"},                                      \
        {"int8_mask", "false", "mergekit's memory option; no effect on the numbers"},              \
    {                                                                                              \
        "seed", "0", "random masks: counter-based, keyed by (seed, tensor, model)"                 \
    }

static const fb_param_spec params_ta[] = {COMMON_PARAMS("false", "false"), {NULL, NULL, NULL}};
static const fb_param_spec params_ties[] = {COMMON_PARAMS("true", "false"), {NULL, NULL, NULL}};
static const fb_param_spec params_dare[] = {COMMON_PARAMS("false", "true"), {NULL, NULL, NULL}};
static const fb_param_spec params_bc[] = {
    COMMON_PARAMS("false", "false"),
    {"gamma", "0.01",
     "fraction of the largest entries dropped as outliers: a number or one per model"},
    {NULL, NULL, NULL},
};
static const fb_param_spec params_della[] = {
    COMMON_PARAMS("true", "true"),
    {"epsilon", "0.15",
     "keep probabilities span density +/- epsilon by rank: a number or one per model"},
    {NULL, NULL, NULL},
};
static const fb_param_spec params_della_linear[] = {
    COMMON_PARAMS("false", "true"),
    {"epsilon", "0.15",
     "keep probabilities span density +/- epsilon by rank: a number or one per model"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_mk_list_free(&s->weight);
    fb_mk_list_free(&s->density);
    fb_mk_list_free(&s->gamma);
    fb_mk_list_free(&s->epsilon);
    fb_free(s->sel);
    fb_free(s);
}

static fb_status create_kind(const fb_config *p, void **out, const char *name, kind k)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = name;
    s->k = k;
    int64_t seed = 0;
    int int8 = 0;
    fb_status st = fb_mk_list_read(p, "weight", 1, 0.0, &s->weight);
    if (!st) st = fb_mk_list_read(p, "density", 0, 1.0, &s->density);
    if (!st && fb_cfg_map_get(p, "gamma")) st = fb_mk_list_read(p, "gamma", 0, 0.01, &s->gamma);
    if (!st && fb_cfg_map_get(p, "epsilon"))
        st = fb_mk_list_read(p, "epsilon", 0, 0.15, &s->epsilon);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &s->normalize);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "rescale"), "rescale", &s->rescale);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "int8_mask"), "int8_mask", &int8);
    if (!st) st = fb_param_double(p, "lambda", NAN, NAN, &s->lambda);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    if (st) {
        destroy(s);
        return st;
    }
    s->seed = (uint64_t)seed;
    *out = s;
    return FB_OK;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    s->num_models = m->num_models;
    if (m->num_models > 256)
        return fb_set_error(FB_ERR_ARG, "method %s merges at most 256 models", s->name);
    fb_free(s->sel);
    if (!(s->sel = fb_calloc((size_t)(m->num_models ? m->num_models : 1), sizeof *s->sel)))
        return FB_ERR_NOMEM;
    fb_status st = fb_mk_list_check(&s->weight, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->density, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->gamma, s->name, m->num_models);
    if (!st) st = fb_mk_list_check(&s->epsilon, s->name, m->num_models);
    for (int i = 0; !st && i < m->num_models; i++)
        if (!(fb_mk_at(&s->density, i) >= 0.0))
            st = fb_set_error(FB_ERR_CONFIG, "method %s: density %g of model '%s' is negative",
                              s->name, fb_mk_at(&s->density, i), m->model_names[i]);
    return st;
}

static int scratch(const void *p)
{
    const state *s = p;
    return s->num_models + 2; /* the task vectors, then combine's sums */
}

/* The element-wise end of the merge: v_i = w_i tau_i in tv (M x n, model-major, then two
 * rows of scratch), combined. Loops run over entries inside models, so they vectorise; each
 * entry still sums the models in pool order. */
static void combine(const state *s, const float *tv, const float *w, const fb_merge_chunk *c)
{
    const int64_t n = c->count;
    const int M = c->num_models;
    float *sum = (float *)tv + (size_t)M * (size_t)n, *div = sum + n, *mixed = c->out;
    float wsum = 0.0f;
    for (int i = 0; i < M; i++)
        wsum += w[i];
    if (fabsf(wsum) < 1e-8f) wsum = 1.0f;
    for (int64_t j = 0; j < n; j++)
        mixed[j] = 0.0f;
    if (s->k.consensus) {
        for (int64_t j = 0; j < n; j++)
            sum[j] = 0.0f, div[j] = 0.0f;
        for (int i = 0; i < M; i++) {
            const float *v = tv + (size_t)i * (size_t)n;
            for (int64_t j = 0; j < n; j++)
                sum[j] += v[j];
        }
        for (int i = 0; i < M; i++) {
            const float *v = tv + (size_t)i * (size_t)n;
            const float wi = w[i];
            for (int64_t j = 0; j < n; j++) {
                /* sign(v) == the majority sign (+1 when the sum is >= 0): zeros never agree */
                const int agree = sum[j] >= 0.0f ? v[j] > 0.0f : v[j] < 0.0f;
                mixed[j] += agree ? v[j] : 0.0f;
                div[j] += agree ? wi : 0.0f;
            }
        }
        for (int64_t j = 0; j < n; j++)
            div[j] = div[j] == 0.0f ? 1.0f : div[j];
    } else {
        for (int i = 0; i < M; i++) {
            const float *v = tv + (size_t)i * (size_t)n;
            for (int64_t j = 0; j < n; j++)
                mixed[j] += v[j];
        }
    }
    const float lambda = (float)s->lambda;
    for (int64_t j = 0; j < n; j++) {
        float m = mixed[j];
        if (s->normalize) m /= s->k.consensus ? div[j] : wsum;
        if (lambda != 1.0f) m *= lambda;
        c->out[j] = c->base[j] + m;
    }
}

/* DELLA: ranks along rows, so the whole tensor at once. */
static fb_status merge_whole(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t n = c->count;
    const int M = c->num_models;
    float *tv = c->scratch;
    float w[256];
    if (M > 256) return fb_set_error(FB_ERR_ARG, "method %s: more than 256 models", s->name);
    for (int i = 0; i < M; i++) {
        float *t = tv + (size_t)i * (size_t)n;
        const float *x = c->models[i];
        for (int64_t j = 0; j < n; j++)
            t[j] = x[j] - c->base[j];
        fb_status st = fb_mk_della(t, c->tensor, fb_mk_at(&s->density, i), fb_mk_at(&s->epsilon, i),
                                   s->rescale, fb_rng_key(s->seed, c->tensor->name, (uint64_t)i));
        if (st) return st;
        w[i] = (float)fb_mk_at(&s->weight, i);
        for (int64_t j = 0; j < n; j++)
            t[j] *= w[i];
    }
    combine(s, tv, w, c);
    return FB_OK;
}

/* ------------------------------------------------------ chunked: the tensor passes -- */

enum { PASS_NORMS, PASS_BUCKETS, PASS_TIES, PASS_AFTER, NUM_PASSES };
enum { BINS = 1 << 16 };

static slot_head *slot_of(void *slot, int model)
{
    return (slot_head *)slot + model;
}

static size_t tensor_slot_bytes(const void *p)
{
    const state *s = p;
    return (size_t)(s->num_models ? s->num_models : 1) * sizeof(slot_head);
}

static size_t tensor_acc_bytes(const void *p)
{
    const state *s = p;
    return (size_t)(s->num_models ? s->num_models : 1) * 2 * BINS * sizeof(int64_t);
}

static int any_select(const state *s)
{
    for (int i = 0; i < s->num_models; i++)
        if (s->sel[i].select) return 1;
    return 0;
}

/* The passes a tensor needs: DARE's L1 norms when it rescales; the selections' histograms,
 * tie counts and (rescaling) norms when a model keeps entries by rank. */
static int tensor_pass_needed(const void *p, int pass)
{
    const state *s = p;
    if (s->k.sparsify == FB_MK_RANDOM) {
        int dropping = 0;
        for (int i = 0; i < s->num_models; i++)
            dropping |= fb_mk_at(&s->density, i) < 1.0;
        return pass == PASS_NORMS && s->rescale && dropping; /* the L1 norms of the drop */
    }
    if (!any_select(s)) return 0;
    return pass != PASS_AFTER || s->rescale;
}

#define abs_key fb_mk_abs_key

/* Whether entry j of model i's task vector (tau) is kept, for the rank selections; t0/t1
 * count the ties at each threshold seen so far. */
static inline int kept_by_rank(const sel *q, int magnitude, float tau, int64_t *t0, int64_t *t1)
{
    if (q->none) return 0;
    const uint32_t k = abs_key(tau);
    if (magnitude) {
        if (k != q->v[0]) return k > q->v[0];
        return (*t0)++ < q->ties;
    }
    if (k > q->v[0] && k < q->v[1]) return 1;
    int64_t rank;
    if (k == q->v[0])
        rank = q->less[0] + (*t0)++;
    else if (k == q->v[1])
        rank = q->less[1] + (*t1)++;
    else
        return 0;
    return rank >= q->lo && rank < q->hi;
}

/* Zeroes the entries of model i's task vector t (chunk c) that its sparsification drops, and
 * applies the rescale. */
static void sparsify_chunk(const state *s, int i, const fb_merge_chunk *c, float *t)
{
    const sel *q = &s->sel[i];
    const int64_t n = c->count;
    const double d = fb_mk_at(&s->density, i);
    if (s->k.sparsify == FB_MK_RANDOM) {
        if (d >= 1.0) return;
        const uint64_t key = fb_rng_key(s->seed, c->tensor->name, (uint64_t)i);
        const float p = (float)d;
        for (int64_t j = 0; j < n; j++)
            t[j] = fb_rng_uniform(key, (uint64_t)(c->begin + j)) < p ? t[j] : 0.0f;
    } else if (q->select) {
        const slot_head *h = slot_of(c->slot, i);
        int64_t t0 = h->eq[0], t1 = h->eq[1]; /* ties in earlier chunks */
        const int magnitude = s->k.sparsify == FB_MK_MAGNITUDE;
        const uint32_t a = q->v[0], b = magnitude ? 0xFFFFFFFFu : q->v[1];
        if (q->none) {
            for (int64_t j = 0; j < n; j++)
                t[j] = 0.0f;
        } else {
            /* entries strictly between the thresholds are kept (a loop that vectorises); the
             * entries equal to one, rare, are then decided in order by the tie rule */
            int64_t eq = 0;
            for (int64_t j = 0; j < n; j++) {
                const uint32_t k = abs_key(t[j]);
                const int in = (k > a) & (magnitude | (k < b));
                eq += (k == a) | (!magnitude & (k == b));
                t[j] = in ? t[j] : 0.0f;
            }
            for (int64_t j = 0; eq && j < n; j++) {
                const float tau = c->models[i][j] - c->base[j];
                const uint32_t k = abs_key(tau);
                if (k != a && (magnitude || k != b)) continue;
                t[j] = kept_by_rank(q, magnitude, tau, &t0, &t1) ? tau : 0.0f;
                eq--;
            }
        }
    } else {
        return;
    }
    if (s->rescale && q->scale != 1.0f)
        for (int64_t j = 0; j < n; j++)
            t[j] *= q->scale;
}

static fb_status tensor_prepare(const void *p, int pass, const fb_merge_chunk *c, void *accp)
{
    const state *s = p;
    int64_t *acc = accp;
    const int64_t n = c->count;
    float *t = c->scratch; /* one task vector at a time */
    for (int i = 0; i < c->num_models; i++) {
        const sel *q = &s->sel[i];
        const float *x = c->models[i];
        slot_head *h = slot_of(c->slot, i);
        int64_t *hist = acc + (size_t)i * 2 * BINS;
        for (int64_t j = 0; j < n; j++)
            t[j] = x[j] - c->base[j];
        if (pass == PASS_NORMS) {
            double before = 0.0;
            for (int64_t j = 0; s->rescale && j < n; j++)
                before += fabs((double)t[j]);
            h->l1[0] = before;
            if (q->select)
                for (int64_t j = 0; j < n; j++)
                    hist[abs_key(t[j]) >> 16]++;
            if (s->k.sparsify == FB_MK_RANDOM && s->rescale) {
                sparsify_chunk(s, i, c, t); /* the drop only: scale is still 1 */
                double after = 0.0;
                for (int64_t j = 0; j < n; j++)
                    after += fabs((double)t[j]);
                h->l1[1] = after;
            }
        } else if (pass == PASS_BUCKETS && q->select && !q->none) {
            for (int tt = 0; tt < q->nt; tt++) {
                int64_t *hl = hist + (size_t)tt * BINS;
                const uint32_t b = q->bucket[tt];
                for (int64_t j = 0; j < n; j++) {
                    const uint32_t k = abs_key(t[j]);
                    if ((k >> 16) == b) hl[k & 0xFFFF]++;
                }
            }
        } else if (pass == PASS_TIES && q->select && !q->none) {
            int64_t e0 = 0, e1 = 0;
            for (int64_t j = 0; j < n; j++) {
                const uint32_t k = abs_key(t[j]);
                e0 += k == q->v[0];
                e1 += k == q->v[1];
            }
            h->eq[0] = e0;
            h->eq[1] = q->nt > 1 ? e1 : 0;
        } else if (pass == PASS_AFTER && q->select) {
            sparsify_chunk(s, i, c, t); /* scale is still 1 here */
            double after = 0.0;
            for (int64_t j = 0; j < n; j++)
                after += fabs((double)t[j]);
            h->l1[1] = after;
        }
    }
    return FB_OK;
}

/* Which models keep entries by rank in this tensor, and which ranks decide. */
static fb_status tensor_begin(void *p, const fb_tensor *T)
{
    state *s = p;
    const int64_t n = T->numel;
    for (int i = 0; i < s->num_models; i++) {
        sel *q = &s->sel[i];
        const double d = fb_mk_at(&s->density, i);
        *q = (sel){.scale = 1.0f};
        if (s->k.sparsify == FB_MK_NONE || s->k.sparsify == FB_MK_RANDOM || d >= 1.0) continue;
        q->select = 1;
        if (s->k.sparsify == FB_MK_MAGNITUDE) {
            int64_t k = (int64_t)(d * (double)n);
            if (k <= 0)
                return fb_set_error(FB_ERR_ARG,
                                    "density %g keeps none of its %lld entries "
                                    "(mergekit refuses this too)",
                                    d, (long long)n);
            if (k >= n) {
                q->select = 0;
                continue;
            }
            q->nt = 1;
            q->rank[0] = n - k;
            q->ties = k; /* minus the entries above the threshold, after pass 1 */
        } else {
            int64_t target = (int64_t)(d * (double)n);
            int64_t top = (int64_t)(fb_mk_at(&s->gamma, i) * (double)n);
            int64_t bot = n - target - top;
            if (bot < 0) top += bot, bot = 0;
            q->lo = bot;
            q->hi = n - top;
            if (q->lo >= q->hi) {
                q->none = 1;
                continue;
            }
            q->nt = 2;
            q->rank[0] = q->lo;
            q->rank[1] = q->hi - 1;
        }
    }
    return FB_OK;
}

static fb_status tensor_finish(void *p, int pass, const fb_tensor *T, void *const *accs,
                               int num_accs, void *slots, int64_t num_chunks)
{
    state *s = p;
    const int M = s->num_models;
    const size_t stride = tensor_slot_bytes(s);
    const int64_t n = T->numel;
    for (int i = 0; i < M; i++) {
        sel *q = &s->sel[i];
        if (pass == PASS_NORMS) {
            /* the L1 norms in chunk order, and the selections this tensor needs */
            double before = 0.0, after = 0.0;
            for (int64_t c = 0; c < num_chunks; c++) {
                const slot_head *h = slot_of((uint8_t *)slots + (size_t)c * stride, i);
                before += h->l1[0];
                after += h->l1[1];
            }
            if (s->k.sparsify == FB_MK_RANDOM) {
                if (s->rescale && fb_mk_at(&s->density, i) < 1.0 && before >= 1e-7 && after >= 1e-7)
                    q->scale = (float)(before / after);
                continue;
            }
            if (!q->select || q->none) continue;
            /* the buckets of the target ranks, from the top-16-bit histogram */
            for (int t = 0; t < q->nt; t++) {
                int64_t r = q->rank[t], below = 0;
                uint32_t b = 0;
                for (;; b++) {
                    if (b == BINS)
                        return fb_set_error(FB_ERR_INTERNAL,
                                            "rank %lld past the "
                                            "histogram",
                                            (long long)q->rank[t]);
                    int64_t cnt = 0;
                    for (int a = 0; a < num_accs; a++)
                        cnt += ((const int64_t *)accs[a])[(size_t)i * 2 * BINS + b];
                    if (r < cnt) break;
                    r -= cnt;
                    below += cnt;
                }
                q->bucket[t] = b;
                q->below[t] = below;
                q->rank[t] = r; /* now the rank within the bucket */
            }
        } else if (pass == PASS_BUCKETS && q->select && !q->none) {
            for (int t = 0; t < q->nt; t++) {
                int64_t r = q->rank[t], less = q->below[t], eq = 0;
                uint32_t lo = 0;
                for (;; lo++) {
                    if (lo == BINS)
                        return fb_set_error(FB_ERR_INTERNAL,
                                            "rank %lld past the "
                                            "histogram",
                                            (long long)q->rank[t]);
                    int64_t cnt = 0;
                    for (int a = 0; a < num_accs; a++)
                        cnt += ((
                            const int64_t *)accs[a])[(size_t)i * 2 * BINS + (size_t)t * BINS + lo];
                    if (r < cnt) {
                        eq = cnt;
                        break;
                    }
                    r -= cnt;
                    less += cnt;
                }
                q->v[t] = q->bucket[t] << 16 | lo;
                q->less[t] = less;
                if (t == 0 && s->k.sparsify == FB_MK_MAGNITUDE)
                    q->ties = q->ties - (n - less - eq); /* k minus the entries above v */
            }
        } else if (pass == PASS_TIES && q->select && !q->none) {
            int64_t run[2] = {0, 0}; /* exclusive prefix sums: ties before each chunk */
            for (int64_t c = 0; c < num_chunks; c++) {
                slot_head *h = slot_of((uint8_t *)slots + (size_t)c * stride, i);
                for (int t = 0; t < 2; t++) {
                    int64_t here = h->eq[t];
                    h->eq[t] = run[t];
                    run[t] += here;
                }
            }
        } else if (pass == PASS_AFTER && q->select) {
            double before = 0.0, after = 0.0;
            for (int64_t c = 0; c < num_chunks; c++) {
                const slot_head *h = slot_of((uint8_t *)slots + (size_t)c * stride, i);
                before += h->l1[0];
                after += h->l1[1];
            }
            if (before >= 1e-7 && after >= 1e-7) q->scale = (float)(before / after);
        }
    }
    return FB_OK;
}

static int chunk_scratch(const void *p)
{
    const state *s = p;
    return s->num_models + 2; /* the weighted task vectors, then combine's sums */
}

static fb_status merge_chunk(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const int64_t n = c->count;
    const int M = c->num_models;
    float *tv = c->scratch, w[256];
    for (int i = 0; i < M; i++) {
        float *t = tv + (size_t)i * (size_t)n;
        const float *x = c->models[i];
        w[i] = (float)fb_mk_at(&s->weight, i);
        for (int64_t j = 0; j < n; j++)
            t[j] = x[j] - c->base[j];
        if (s->k.sparsify != FB_MK_NONE) sparsify_chunk(s, i, c, t);
        for (int64_t j = 0; j < n; j++)
            t[j] *= w[i];
    }
    combine(s, tv, w, c);
    return FB_OK;
}

#define GTA_OPS(ident, mkname, prm, text, sp, cons)                                                \
    static fb_status create_##ident(const fb_config *p, void **out)                                \
    {                                                                                              \
        return create_kind(p, out, "mergekit_" mkname, (kind){sp, cons});                          \
    }                                                                                              \
    const fb_method_ops fb_method_mergekit_##ident = {                                             \
        .name = "mergekit_" mkname,                                                                \
        .target_class = NULL,                                                                      \
        .summary = text,                                                                           \
        .params = prm,                                                                             \
        .needs_base = 1,                                                                           \
        .scratch_per_element = (sp) == FB_MK_DELLA ? scratch : chunk_scratch,                      \
        .whole_tensor = (sp) == FB_MK_DELLA,                                                       \
        .tensor_passes = (sp) == FB_MK_DELLA ? 0 : NUM_PASSES,                                     \
        .tensor_begin = tensor_begin,                                                              \
        .tensor_pass_needed = tensor_pass_needed,                                                  \
        .tensor_acc_bytes = tensor_acc_bytes,                                                      \
        .tensor_slot_bytes = tensor_slot_bytes,                                                    \
        .tensor_prepare = tensor_prepare,                                                          \
        .tensor_finish = tensor_finish,                                                            \
        .create = create_##ident,                                                                  \
        .setup = setup,                                                                            \
        .merge = (sp) == FB_MK_DELLA ? merge_whole : merge_chunk,                                  \
        .destroy = destroy,                                                                        \
    };
#define GTA(ident, mkname, sp, cons, prm, text) GTA_OPS(ident, mkname, prm, text, sp, cons)

GTA(task_arithmetic, "task_arithmetic", FB_MK_NONE, 0, params_ta,
    "mergekit's task_arithmetic: base + sum of weighted task vectors")
GTA(ties, "ties", FB_MK_MAGNITUDE, 1, params_ties,
    "mergekit's ties: per-tensor top-k, weighted sign election, normalised by agreeing weights")
GTA(dare_ties, "dare_ties", FB_MK_RANDOM, 1, params_dare,
    "mergekit's dare_ties: random drop rescaled to the L1 norm, weighted sign election")
GTA(dare_linear, "dare_linear", FB_MK_RANDOM, 0, params_dare,
    "mergekit's dare_linear: random drop rescaled to the L1 norm, weighted sum")
GTA(breadcrumbs, "breadcrumbs", FB_MK_OUTLIERS, 0, params_bc,
    "mergekit's breadcrumbs: drop the largest gamma and the smallest entries per tensor")
GTA(breadcrumbs_ties, "breadcrumbs_ties", FB_MK_OUTLIERS, 1, params_bc,
    "mergekit's breadcrumbs_ties: breadcrumbs with the weighted sign election")
GTA(della, "della", FB_MK_DELLA, 1, params_della,
    "mergekit's della: rank-dependent random drop (magprune), sign election")
GTA(della_linear, "della_linear", FB_MK_DELLA, 0, params_della_linear,
    "mergekit's della_linear: rank-dependent random drop (magprune), weighted sum")
