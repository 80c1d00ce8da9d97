/*
 * dare.c: DARE (Drop And REscale; Yu et al., "Language Models are Super Mario: Absorbing
 * Abilities from Homologous Models as a Free Lunch", ICML 2024), before task arithmetic or
 * simple averaging.
 *
 *     tau_i = theta_i - theta_0
 *     m_i ~ Bernoulli(1 - p) per entry,  tau'_i = m_i * tau_i / (1 - p)   (rescale)
 *     dare_task_arithmetic:  theta = theta_0 + lambda * sum_i tau'_i
 *     dare_simple_average:   theta = theta_0 + (1/N) * sum_i tau'_i
 *
 * An entry is kept when its uniform draw u > p (as FusionBench's rand_like(x) > p). Draws
 * come from the counter-based generator keyed by (seed, tensor name, model index) at the
 * entry's index, so the result is the same for any thread count. With p = 1 every entry is
 * dropped and nothing is rescaled (1 - p = 0 would divide by zero).
 */
#include "dare.h"

#include <math.h>

#include "core/alloc.h"
#include "core/simd.h"
#include "core/status.h"

fb_status fb_dare_parse(const fb_config *p, fb_dare *d)
{
    double ratio;
    int64_t seed;
    fb_status st = fb_param_double(p, "sparsity_ratio", 0.0, 1.0, &ratio);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "rescale"), "rescale", &d->rescale);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "only_on_linear_weights"), "only_on_linear_weights",
                         &d->only_linear);
    if (!st) st = fb_cfg_int(fb_cfg_map_get(p, "seed"), "seed", &seed);
    if (st) return st;
    d->enabled = 1;
    d->sparsity = (float)ratio;
    d->divisor = (float)(1.0 - ratio);
    if (ratio >= 1.0) d->rescale = 0;
    d->seed = (uint64_t)seed;
    return FB_OK;
}

typedef struct state {
    fb_dare dare;
    float lambda;
    int simple_average; /* lambda = 1/N, known at setup */
} state;

static const fb_param_spec ta_params[] = {
    {"scaling_factor", "0.3", "lambda, the scale of the summed task vectors"},
    FB_DARE_PARAMS,
    {NULL, NULL, NULL},
};

static const fb_param_spec avg_params[] = {
    FB_DARE_PARAMS,
    {NULL, NULL, NULL},
};

static fb_status create(const fb_config *p, state **out)
{
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_status st = fb_dare_parse(p, &s->dare);
    if (st) {
        fb_free(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status create_ta(const fb_config *p, void **out)
{
    double lambda;
    fb_status st = fb_cfg_double(fb_cfg_map_get(p, "scaling_factor"), "scaling_factor", &lambda);
    state *s = NULL;
    if (!st) st = create(p, &s);
    if (st) return st;
    s->lambda = (float)lambda;
    *out = s;
    return FB_OK;
}

static fb_status create_avg(const fb_config *p, void **out)
{
    state *s = NULL;
    fb_status st = create(p, &s);
    if (st) return st;
    s->simple_average = 1;
    *out = s;
    return FB_OK;
}

/* The draws are 64-bit integer mixing, which vectorises only with AVX-512's 64-bit multiply:
 * the loop is built for it and for plain x86-64, and the FB_SIMD level picks (core/simd.c;
 * target_clones would pick by CPU alone, and clang 14 misnames its dispatcher). Integer arithmetic, an exact 24-bit
 * conversion and one IEEE division (x / 1 == x without rescaling): the same bytes either way. */
static inline __attribute__((always_inline)) void drop(float p, float div, uint64_t key,
                                                       int64_t begin, float *restrict tau,
                                                       int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        tau[j] = fb_rng_uniform(key, (uint64_t)(begin + j)) > p ? tau[j] / div : 0.0f;
}

static void drop_plain(float p, float div, uint64_t key, int64_t begin, float *tau, int64_t n)
{
    drop(p, div, key, begin, tau, n);
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512dq")))
static void drop_avx512(float p, float div, uint64_t key, int64_t begin, float *tau, int64_t n)
{
    drop(p, div, key, begin, tau, n);
}
#endif

void fb_dare_drop(const fb_dare *d, uint64_t key, int64_t begin, float *tau, int64_t n)
{
    const float div = d->rescale ? d->divisor : 1.0f;
#if defined(__x86_64__)
    if (fb_simd_active() >= FB_SIMD_AVX512) {
        drop_avx512(d->sparsity, div, key, begin, tau, n);
        return;
    }
#endif
    drop_plain(d->sparsity, div, key, begin, tau, n);
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    if (s->simple_average) s->lambda = (float)(1.0 / m->num_models);
    return FB_OK;
}

/* one task vector at a time */
static int scratch_per_element(const void *p)
{
    (void)p;
    return 1;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    const state *s = p;
    const float *base = c->base;
    float *out = c->out;
    int drop = fb_dare_applies(&s->dare, c->tensor);
    float *tau = c->scratch;
    for (int i = 0; i < c->num_models; i++) {
        const float *m = c->models[i];
        for (int64_t j = 0; j < c->count; j++) tau[j] = m[j] - base[j];
        if (drop)
            fb_dare_drop(&s->dare, fb_rng_key(s->dare.seed, c->tensor->name, (uint64_t)i),
                         c->begin, tau, c->count);
        for (int64_t j = 0; j < c->count; j++) out[j] = i ? out[j] + tau[j] : tau[j];
    }
    for (int64_t j = 0; j < c->count; j++) out[j] = base[j] + s->lambda * out[j];
    return FB_OK;
}

const fb_method_ops fb_method_dare_task_arithmetic = {
    .name = "dare_task_arithmetic",
    .target_class = "DareTaskArithmetic",
    .summary = "task arithmetic on task vectors with random drops and rescaling (DARE)",
    .params = ta_params,
    .needs_base = 1,
    .create = create_ta,
    .setup = setup,
    .scratch_per_element = scratch_per_element,
    .merge = merge,
};

const fb_method_ops fb_method_dare_simple_average = {
    .name = "dare_simple_average",
    .target_class = "DareSimpleAverage",
    .summary = "pretrained + mean of DARE-dropped task vectors",
    .params = avg_params,
    .needs_base = 1,
    .create = create_avg,
    .setup = setup,
    .scratch_per_element = scratch_per_element,
    .merge = merge,
};
