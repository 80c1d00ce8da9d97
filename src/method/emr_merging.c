/*
 * emr_merging.c: EMR-Merging (Huang et al., "EMR-Merging: Tuning-Free High-Performance Model
 * Merging", NeurIPS 2024), as FusionBench's EMR merging.
 *
 *   Elect:   gamma = sign(sum_t tau_t) (0 counts as -1);
 *            tau_uni = gamma * max_t |tau_t| over the t whose sign agrees with gamma
 *   Mask:    M_t = [tau_t * gamma > 0]
 *   Rescale: lambda_t = sum_p mean|tau_t[p]| / sum_p mean|M_t * tau_uni[p]|   (over tensors p)
 *   task t's model: theta_0 + lambda_t M_t * tau_uni
 *
 * The output is the unified model theta_0 + tau_uni; the masks and rescalers are the extras
 * ("<task>/<tensor>", "<task>/__rescaler__"). Tensors are processed whole and in order, so the
 * sums behind lambda_t (in double) are the same for any thread count.
 */
#include <math.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    double *scales, *new_scales; /* per model */
    int n;
} state;

static const fb_param_spec params[] = {{NULL, NULL, NULL}};
static const char *const scalar_names[] = {"__rescaler__"};

static void destroy(void *p)
{
    state *s = p;
    if (!s) return;
    fb_free(s->scales);
    fb_free(s->new_scales);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    (void)p;
    *out = fb_calloc(1, sizeof(state));
    return *out ? FB_OK : FB_ERR_NOMEM;
}

static fb_status setup(void *p, const fb_merge_setup *m)
{
    state *s = p;
    fb_free(s->scales);
    fb_free(s->new_scales);
    s->n = m->num_models;
    s->scales = fb_calloc((size_t)s->n, sizeof *s->scales);
    s->new_scales = fb_calloc((size_t)s->n, sizeof *s->new_scales);
    return s->scales && s->new_scales ? FB_OK : FB_ERR_NOMEM;
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the rescaler sums grow tensor by tensor */
    const int64_t n = c->count;
    const float *base = c->base;
    float *out = c->out; /* first the summed task vectors, then tau_uni, then theta */
    for (int64_t j = 0; j < n; j++) out[j] = c->models[0][j] - base[j];
    for (int i = 1; i < c->num_models; i++)
        for (int64_t j = 0; j < n; j++) out[j] += c->models[i][j] - base[j];
    for (int64_t j = 0; j < n; j++) out[j] = out[j] > 0.0f ? 1.0f : -1.0f; /* gamma */
    float *mx = c->scratch;
    for (int64_t j = 0; j < n; j++) mx[j] = 0.0f;
    for (int i = 0; i < c->num_models; i++) {
        uint8_t *mask = c->masks + (int64_t)i * n;
        double abs_sum = 0.0;
        for (int64_t j = 0; j < n; j++) {
            float tau = c->models[i][j] - base[j];
            mask[j] = tau * out[j] > 0.0f;
            float a = mask[j] ? fabsf(tau) : 0.0f;
            mx[j] = a > mx[j] ? a : mx[j];
            abs_sum += fabs((double)tau);
        }
        if (n) s->scales[i] += abs_sum / (double)n;
    }
    for (int64_t j = 0; j < n; j++) out[j] = mx[j] * out[j]; /* tau_uni */
    for (int i = 0; i < c->num_models; i++) {
        const uint8_t *mask = c->masks + (int64_t)i * n;
        double abs_sum = 0.0;
        for (int64_t j = 0; j < n; j++) abs_sum += mask[j] ? fabs((double)out[j]) : 0.0;
        if (n) s->new_scales[i] += abs_sum / (double)n;
    }
    for (int64_t j = 0; j < n; j++) out[j] = base[j] + out[j];
    return FB_OK;
}

static int scratch_per_element(const void *p)
{
    (void)p;
    return 1;
}

/* lambda_t; a task whose mask keeps nothing gets 1 (its model is theta_0 either way). */
static fb_status scalar(void *p, int model, int index, float *value)
{
    const state *s = p;
    (void)index;
    double den = s->new_scales[model];
    *value = den > 0.0 ? (float)(s->scales[model] / den) : 1.0f;
    return FB_OK;
}

const fb_method_ops fb_method_emr_merging = {
    .name = "emr_merging",
    .target_class = "EMRMerging",
    .summary = "a unified task vector plus per-task masks and rescalers (EMR-Merging)",
    .params = params,
    .needs_base = 1,
    .whole_tensor = 1,
    .scratch_per_element = scratch_per_element,
    .model_masks = 1,
    .model_scalars = 1,
    .scalar_names = scalar_names,
    .scalar = scalar,
    .create = create,
    .setup = setup,
    .merge = merge,
    .destroy = destroy,
};
