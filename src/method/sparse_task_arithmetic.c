/*
 * sparse_task_arithmetic.c: task arithmetic over sparsified task vectors, per tensor, as
 * mergekit's "generalized task arithmetic" defines breadcrumbs and DELLA.
 *
 * Sparsify each tau_i = theta_i - theta_0 (per tensor):
 *   breadcrumbs (Davari & Belilovsky, "Model Breadcrumbs", 2023): drop the gamma fraction of
 *     largest |tau| (outliers) and the smallest, keeping a `density` fraction: with entries in
 *     ascending |tau| order (ties by position), keep ranks [n_bot, n - n_top), n_top =
 *     floor(gamma n), n_bot = n - floor(density n) - n_top (n_top shrinks if n_bot < 0).
 *   della (Deep et al., "DELLA-Merging", 2024): in each row (the first dimension), keep entry
 *     j with probability p_j = density - epsilon + 2 epsilon r_j, r_j its magnitude rank in the
 *     row scaled to [0, 1]; with `rescale`, kept entries are divided by p_j (the paper's
 *     unbiased rescaling). Draws from the counter-based generator (seed, tensor, model).
 * Combine, with per-model weights w_i (default 1):
 *   d_i = w_i tau'_i
 *   no consensus (breadcrumbs, della_linear): m = sum_i d_i,  D = sum_i w_i
 *   sign consensus (breadcrumbs_ties, della): s = [sum_i d_i >= 0] ? +1 : -1,
 *       m = sum_i d_i [sign d_i == s],  D = sum_i w_i [sign d_i == s]
 *   normalize: m /= D (D near 0 taken as 1);  theta = theta_0 + lambda m
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "method.h"

enum { BREADCRUMBS, DELLA };

typedef struct state {
    int kind, consensus, normalize, rescale;
    double density, gamma, epsilon;
    float lambda;
    double *weights; /* per model, or NULL: all 1 */
    int num_weights;
    uint64_t seed;
    uint32_t *keys, *order, *tmp; /* radix sort work, per tensor */
    int64_t *count;               /* radix sort histogram, 65536 bins */
    float *deltas;
    int64_t work_len;
} state;

static const fb_param_spec breadcrumbs_params[] = {
    {"weights", "null", "one weight per model (default: all 1)"},
    {"density", "0.9", "fraction of each task vector's entries kept, per tensor"},
    {"gamma", "0.01", "fraction of the largest entries dropped as outliers"},
    {"lambda", "1.0", "scale of the merged task vector"},
    {"normalize", "false", "divide by the summed weights"},
    {NULL, NULL, NULL},
};

static const fb_param_spec breadcrumbs_ties_params[] = {
    {"weights", "null", "one weight per model (default: all 1)"},
    {"density", "0.9", "fraction of each task vector's entries kept, per tensor"},
    {"gamma", "0.01", "fraction of the largest entries dropped as outliers"},
    {"lambda", "1.0", "scale of the merged task vector"},
    {"normalize", "true", "divide by the summed weights of the agreeing models"},
    {NULL, NULL, NULL},
};

static const fb_param_spec della_params[] = {
    {"weights", "null", "one weight per model (default: all 1)"},
    {"density", "0.7", "mean fraction of entries kept"},
    {"epsilon", "0.15", "spread of the keep probabilities around density"},
    {"lambda", "1.0", "scale of the merged task vector"},
    {"normalize", "true", "divide by the summed weights of the agreeing models"},
    {"rescale", "true", "divide kept entries by their keep probability"},
    {"seed", "0", "seed of the counter-based generator"},
    {NULL, NULL, NULL},
};

static const fb_param_spec della_linear_params[] = {
    {"weights", "null", "one weight per model (default: all 1)"},
    {"density", "0.7", "mean fraction of entries kept"},
    {"epsilon", "0.15", "spread of the keep probabilities around density"},
    {"lambda", "1.0", "scale of the merged task vector"},
    {"normalize", "false", "divide by the summed weights"},
    {"rescale", "true", "divide kept entries by their keep probability"},
    {"seed", "0", "seed of the counter-based generator"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->weights);
    fb_free(s->keys);
    fb_free(s->order);
    fb_free(s->tmp);
    fb_free(s->deltas);
    fb_free(s->count);
    fb_free(s);
}

static fb_status create(const fb_config *p, int kind, int consensus, void **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->kind = kind;
    s->consensus = consensus;
    double lambda;
    const fb_config *w = fb_cfg_map_get(p, "weights");
    fb_status st = FB_OK;
    if (!fb_cfg_is_null(w)) st = fb_cfg_double_list(w, "weights", &s->weights, &s->num_weights);
    if (!st) st = fb_param_double(p, "density", 0.0, 1.0, &s->density);
    if (!st) st = fb_cfg_double(fb_cfg_map_get(p, "lambda"), "lambda", &lambda);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &s->normalize);
    if (!st && kind == BREADCRUMBS) st = fb_param_double(p, "gamma", 0.0, 1.0, &s->gamma);
    if (!st && kind == DELLA) {
        int64_t seed = 0;
        st = fb_param_double(p, "epsilon", 0.0, 1.0, &s->epsilon);
        if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "rescale"), "rescale", &s->rescale);
        if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
        if (!st && s->density < 1.0 && s->density > 0.0 &&
            (s->density - s->epsilon <= 0.0 || s->density + s->epsilon >= 1.0))
            st = fb_set_error(FB_ERR_ARG, "density +/- epsilon must lie in (0, 1) (density %g, "
                                          "epsilon %g)", s->density, s->epsilon);
        s->seed = (uint64_t)seed;
    }
    if (st) {
        destroy(s);
        return st;
    }
    s->lambda = (float)lambda;
    *out = s;
    return FB_OK;
}

static fb_status create_breadcrumbs(const fb_config *p, void **o) { return create(p, BREADCRUMBS, 0, o); }
static fb_status create_breadcrumbs_ties(const fb_config *p, void **o) { return create(p, BREADCRUMBS, 1, o); }
static fb_status create_della(const fb_config *p, void **o) { return create(p, DELLA, 1, o); }
static fb_status create_della_linear(const fb_config *p, void **o) { return create(p, DELLA, 0, o); }

static fb_status setup(void *p, const fb_merge_setup *m)
{
    const state *s = p;
    if (s->weights && s->num_weights != m->num_models)
        return fb_set_error(FB_ERR_ARG, "got %d weights for %d models (one per model, in pool order)",
                            s->num_weights, m->num_models);
    return FB_OK;
}

/* order[0..n) = positions of x in ascending |x|, ties by position: a stable LSD radix sort
 * on the 31 magnitude bits, two passes of 16 bits. */
static void sort_by_magnitude(const float *x, int64_t n, uint32_t *keys, uint32_t *order,
                              uint32_t *tmp, int64_t *count)
{
    static const int BITS = 16;
    for (int64_t j = 0; j < n; j++) {
        uint32_t u;
        memcpy(&u, &x[j], 4);
        keys[j] = u & 0x7fffffffu;
        tmp[j] = (uint32_t)j;
    }
    uint32_t *src = tmp, *dst = order;
    for (int pass = 0; pass < 2; pass++) {
        int shift = pass * BITS;
        memset(count, 0, (1 << 16) * sizeof *count);
        for (int64_t j = 0; j < n; j++) count[(keys[src[j]] >> shift) & 0xffff]++;
        int64_t sum = 0;
        for (int b = 0; b < (1 << 16); b++) {
            int64_t c = count[b];
            count[b] = sum;
            sum += c;
        }
        for (int64_t j = 0; j < n; j++) dst[count[(keys[src[j]] >> shift) & 0xffff]++] = src[j];
        uint32_t *t = src;
        src = dst;
        dst = t;
    }
    /* after two passes the result is in `tmp` (src); move it to order */
    memcpy(order, src, (size_t)n * sizeof *order);
}

/* Sparsifies tau (one model's task vector of this tensor) in place. */
static void sparsify(state *s, const fb_tensor *t, int k, float *tau, int64_t n)
{
    if (s->density >= 1.0) return;
    if (s->kind == BREADCRUMBS) {
        int64_t target = (int64_t)(s->density * (double)n), top = (int64_t)(s->gamma * (double)n);
        int64_t bot = n - target - top;
        if (bot < 0) {
            top += bot;
            bot = 0;
        }
        sort_by_magnitude(tau, n, s->keys, s->order, s->tmp, s->count);
        for (int64_t r = 0; r < bot; r++) tau[s->order[r]] = 0.0f;
        for (int64_t r = n - top; r < n; r++) tau[s->order[r]] = 0.0f;
        return;
    }
    /* DELLA: per row, keep probability from the magnitude rank */
    int64_t rows = t->ndim >= 2 ? t->shape[0] : 1, len = rows ? n / rows : 0;
    uint64_t key = fb_rng_key(s->seed, t->name, (uint64_t)k);
    for (int64_t row = 0; row < rows; row++) {
        float *x = tau + row * len;
        if (s->density <= 0.0) {
            memset(x, 0, (size_t)len * sizeof *x);
            continue;
        }
        sort_by_magnitude(x, len, s->keys, s->order, s->tmp, s->count);
        for (int64_t r = 0; r < len; r++) {
            uint32_t j = s->order[r];
            double rank = len > 1 ? (double)r / (double)(len - 1) : 0.0;
            float prob = (float)(s->density - s->epsilon + 2.0 * s->epsilon * rank);
            float u = fb_rng_uniform(key, (uint64_t)(row * len + j));
            if (!(u < prob)) x[j] = 0.0f;
            else if (s->rescale) x[j] = x[j] / prob;
        }
    }
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* work buffers are reused from tensor to tensor */
    const int N = c->num_models;
    const int64_t n = c->count;
    if (!s->count && !(s->count = fb_malloc((1 << 16) * sizeof *s->count))) return FB_ERR_NOMEM;
    if (N * n > s->work_len || n > s->work_len) {
        int64_t need = N * n > n ? N * n : n;
        fb_free(s->keys);
        fb_free(s->order);
        fb_free(s->tmp);
        fb_free(s->deltas);
        s->keys = fb_malloc((size_t)(need ? need : 1) * 4);
        s->order = fb_malloc((size_t)(need ? need : 1) * 4);
        s->tmp = fb_malloc((size_t)(need ? need : 1) * 4);
        s->deltas = fb_malloc((size_t)(need ? need : 1) * 4);
        s->work_len = (s->keys && s->order && s->tmp && s->deltas) ? need : 0;
        if (!s->work_len) return FB_ERR_NOMEM;
    }
    /* d_i = w_i * sparsified tau_i */
    for (int i = 0; i < N; i++) {
        float *d = s->deltas + (int64_t)i * n;
        for (int64_t j = 0; j < n; j++) d[j] = c->models[i][j] - c->base[j];
        sparsify(s, c->tensor, i, d, n);
        float w = s->weights ? (float)s->weights[i] : 1.0f;
        for (int64_t j = 0; j < n; j++) d[j] = d[j] * w;
    }
    float *out = c->out;
    for (int64_t j = 0; j < n; j++) {
        float mixed = 0.0f, divisor = 0.0f, total = 0.0f;
        for (int i = 0; i < N; i++) total += s->deltas[(int64_t)i * n + j];
        float major = total >= 0.0f ? 1.0f : -1.0f;
        for (int i = 0; i < N; i++) {
            float d = s->deltas[(int64_t)i * n + j];
            float w = s->weights ? (float)s->weights[i] : 1.0f;
            if (s->consensus) {
                float sg = d > 0.0f ? 1.0f : d < 0.0f ? -1.0f : 0.0f;
                if (sg != major) continue;
            }
            mixed += d;
            divisor += w;
        }
        if (s->normalize) {
            if (s->consensus ? divisor == 0.0f : fabsf(divisor) < 1e-8f) divisor = 1.0f;
            mixed /= divisor;
        }
        out[j] = c->base[j] + s->lambda * mixed;
    }
    return FB_OK;
}

#define SPARSE_OPS(NAME, SUMMARY, PARAMS, CREATE)                                           \
    const fb_method_ops fb_method_##NAME = {                                                \
        .name = #NAME,                                                                      \
        .summary = SUMMARY,                                                                 \
        .params = PARAMS,                                                                   \
        .needs_base = 1,                                                                    \
        .whole_tensor = 1,                                                                  \
        .create = CREATE,                                                                   \
        .setup = setup,                                                                     \
        .merge = merge,                                                                     \
        .destroy = destroy,                                                                 \
    }

SPARSE_OPS(breadcrumbs, "task arithmetic without each task's largest and smallest entries",
           breadcrumbs_params, create_breadcrumbs);
SPARSE_OPS(breadcrumbs_ties, "breadcrumbs with TIES's sign consensus", breadcrumbs_ties_params,
           create_breadcrumbs_ties);
SPARSE_OPS(della, "DELLA: magnitude-ranked random drops, rescaled, with sign consensus",
           della_params, create_della);
SPARSE_OPS(della_linear, "DELLA's drops with a plain weighted sum", della_linear_params,
           create_della_linear);
