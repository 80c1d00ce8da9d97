/*
 * mergekit_methods.c: mergekit's other per-tensor methods, registered as mergekit_<name>
 * (the files of mergekit/merge_methods/). slerp and karcher are the project's own `slerp` and
 * `karcher`, which already compute what mergekit's do.
 *
 *   linear       theta = sum_i w_i theta_i  (/ sum_i w_i when normalize)
 *   passthrough  theta = scale theta_1 (one model)
 *   nearswap     a = base, b = model: w = clamp(t / max(|a - b|, 1e-6), 0, 1), w b + (1 - w) a
 *   nuslerp      two models (+ base: on their task vectors): slerp by t = w_2 / (w_1 + w_2) of
 *                the whole tensor, of its rows (dim -1) or columns (nuslerp_row_wise)
 *   multislerp   barycentric interpolation on the sphere: tangent space at the normalised
 *                weighted mean of the unit vectors, exponential map back, times the weighted
 *                mean norm (task vectors when there is a base)
 *   model_stock  t = N c / (1 + (N - 1) c), c = mean pairwise cosine of the task vectors (per
 *                row with filter_wise), theta = t mean_i theta_i + (1 - t) theta_0
 *   sce          variance top-k mask over the task vectors (select_topk), sign election,
 *                weights mean(tau_i^2) normalised, sum over the agreeing models
 *   ram          task-vector entries above epsilon: kept where one model has one, averaged
 *                over the models that have one elsewhere; ramplus_tl scales the unique entries
 *                of model i by 1 + r clamp(shared_i / unique_i, 0, alpha)
 *   arcee_fusion importance |d| KL(softmax(theta_1) || softmax(theta_0)) per row; d kept where
 *                importance >= median + 1.5 IQR (exact quantiles; docs/methods.md)
 *
 * Element-wise arithmetic is f32 as PyTorch does it on f32 tensors; norms and dot products
 * are accumulated in double.
 */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"
#include "mergekit_common.h"

/* ----------------------------------------------------------------- linear, passthrough -- */

typedef struct linear {
    const char *name;
    fb_mk_list weight;
    int normalize;
    double t;
} linear;

static void linear_destroy(void *p)
{
    linear *s = p;
    if (!s) return;
    fb_mk_list_free(&s->weight);
    fb_free(s);
}

static fb_status linear_create(const fb_config *p, void **out)
{
    linear *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = "mergekit_linear";
    fb_status st = fb_mk_list_read(p, "weight", 1, 0.0, &s->weight);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "normalize"), "normalize", &s->normalize);
    if (st) {
        linear_destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status list_setup(void *p, const fb_merge_setup *m)
{
    linear *s = p;
    return fb_mk_list_check(&s->weight, s->name, m->num_models);
}

static fb_status linear_merge(const void *p, const fb_merge_chunk *c)
{
    const linear *s = p;
    float w[256], wsum = 0.0f;
    if (c->num_models > 256) return fb_set_error(FB_ERR_ARG, "%s: more than 256 models", s->name);
    for (int i = 0; i < c->num_models; i++)
        wsum += (w[i] = (float)fb_mk_at(&s->weight, i));
    for (int64_t j = 0; j < c->count; j++) {
        float acc = 0.0f;
        for (int i = 0; i < c->num_models; i++)
            acc += w[i] * c->models[i][j];
        c->out[j] = s->normalize ? acc / wsum : acc;
    }
    return FB_OK;
}

static const fb_param_spec linear_params[] = {
    {"weight", "null", "each model's weight: a number or one per model (required)"},
    {"normalize", "true", "divide by the sum of the weights"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_linear = {
    .name = "mergekit_linear",
    .summary = "mergekit's linear: weighted sum of the models, normalised by the weights' sum",
    .params = linear_params,
    .create = linear_create,
    .setup = list_setup,
    .merge = linear_merge,
    .destroy = linear_destroy,
};

static fb_status passthrough_create(const fb_config *p, void **out)
{
    linear *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = "mergekit_passthrough";
    fb_status st = fb_mk_list_read(p, "scale", 0, 1.0, &s->weight);
    if (st) {
        linear_destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status passthrough_merge(const void *p, const fb_merge_chunk *c)
{
    const linear *s = p;
    if (!s->weight.v) {
        memcpy(c->out, c->models[0], (size_t)c->count * sizeof *c->out);
        return FB_OK;
    }
    const float k = (float)fb_mk_at(&s->weight, 0);
    for (int64_t j = 0; j < c->count; j++)
        c->out[j] = c->models[0][j] * k;
    return FB_OK;
}

static const fb_param_spec passthrough_params[] = {
    {"scale", "null", "multiply the tensor by this (null: copied as is)"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_passthrough = {
    .name = "mergekit_passthrough",
    .summary = "mergekit's passthrough: one model's tensor, optionally scaled",
    .params = passthrough_params,
    .min_models = 1,
    .max_models = 1,
    .create = passthrough_create,
    .setup = list_setup,
    .merge = passthrough_merge,
    .destroy = linear_destroy,
};

/* ----------------------------------------------------------------------------- nearswap -- */

static fb_status nearswap_create(const fb_config *p, void **out)
{
    linear *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = "mergekit_nearswap";
    const fb_config *t = fb_cfg_map_get(p, "t");
    fb_status st = !t || fb_cfg_is_null(t)
                       ? fb_set_error(FB_ERR_CONFIG, "method mergekit_nearswap: parameter 't' is "
                                                     "required")
                       : fb_param_double(p, "t", NAN, NAN, &s->t);
    if (st) {
        linear_destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status nearswap_merge(const void *p, const fb_merge_chunk *c)
{
    const linear *s = p;
    const float t = (float)s->t;
    for (int64_t j = 0; j < c->count; j++) {
        float a = c->base[j], b = c->models[0][j];
        float d = fabsf(a - b);
        float w = t / (d < 1e-6f ? 1e-6f : d);
        w = w < 0.0f ? 0.0f : w > 1.0f ? 1.0f : w;
        c->out[j] = w * b + (1.0f - w) * a;
    }
    return FB_OK;
}

static const fb_param_spec nearswap_params[] = {
    {"t", "null", "entries closer than t take the model's value (required)"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_nearswap = {
    .name = "mergekit_nearswap",
    .summary = "mergekit's nearswap: take the model's entries that are near the base's",
    .params = nearswap_params,
    .needs_base = 1,
    .min_models = 1,
    .max_models = 1,
    .create = nearswap_create,
    .merge = nearswap_merge,
    .destroy = linear_destroy,
};

/* ------------------------------------------------------------------ nuslerp, multislerp -- */

typedef struct sphere {
    const char *name;
    fb_mk_list weight;
    int row_wise, flatten, normalize_weights;
    double eps;
    int num_models;
} sphere;

static void sphere_destroy(void *p)
{
    sphere *s = p;
    if (!s) return;
    fb_mk_list_free(&s->weight);
    fb_free(s);
}

static fb_status nuslerp_create(const fb_config *p, void **out)
{
    sphere *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = "mergekit_nuslerp";
    fb_status st = fb_mk_list_read(p, "weight", 1, 0.0, &s->weight);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "nuslerp_row_wise"), "nuslerp_row_wise", &s->row_wise);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "nuslerp_flatten"), "nuslerp_flatten", &s->flatten);
    if (st) {
        sphere_destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status sphere_setup(void *p, const fb_merge_setup *m)
{
    sphere *s = p;
    s->num_models = m->num_models;
    return fb_mk_list_check(&s->weight, s->name, m->num_models);
}

/* Slerps vectors v0, v1 (len entries `step` apart) into out, as mergekit's nuslerp. */
static void nuslerp_vec(double t, const float *v0, const float *v1, float *out, int64_t len,
                        int64_t step, const float *base)
{
    double n0 = 0.0, n1 = 0.0, d = 0.0;
    for (int64_t r = 0; r < len; r++) {
        double a = v0[r * step], b = v1[r * step];
        if (base) a -= base[r * step], b -= base[r * step];
        n0 += a * a, n1 += b * b, d += a * b;
    }
    n0 = sqrt(n0), n1 = sqrt(n1);
    double cosv = d / ((n0 > 1e-7 ? n0 : 1e-7) * (n1 > 1e-7 ? n1 : 1e-7));
    cosv = cosv < -1.0 ? -1.0 : cosv > 1.0 ? 1.0 : cosv;
    double theta = acos(cosv), sn = sin(theta);
    float c0, c1;
    if (fabs(sn) < 1e-8)
        c0 = (float)(1.0 - t), c1 = (float)t;
    else
        c0 = (float)(sin((1.0 - t) * theta) / sn), c1 = (float)(sin(t * theta) / sn);
    for (int64_t r = 0; r < len; r++) {
        int64_t j = r * step;
        float a = v0[j], b = v1[j];
        if (base) a -= base[j], b -= base[j];
        float v = c0 * a + c1 * b;
        out[j] = base ? base[j] + v : v;
    }
}

static fb_status nuslerp_merge(const void *p, const fb_merge_chunk *c)
{
    const sphere *s = p;
    if (c->num_models != 2)
        return fb_set_error(FB_ERR_ARG,
                            "mergekit_nuslerp merges exactly two models (and an "
                            "optional base); the pool has %d",
                            c->num_models);
    double w0 = fb_mk_at(&s->weight, 0), w1 = fb_mk_at(&s->weight, 1);
    double t = fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const fb_tensor *T = c->tensor;
    const int64_t n = c->count;
    if (s->flatten || T->ndim <= 1) {
        nuslerp_vec(t, c->models[0], c->models[1], c->out, n, 1, c->base);
    } else if (!s->row_wise) { /* vectors along the last dim */
        const int64_t len = T->shape[T->ndim - 1];
        for (int64_t o = 0; len && o < n / len; o++)
            nuslerp_vec(t, c->models[0] + o * len, c->models[1] + o * len, c->out + o * len, len, 1,
                        c->base ? c->base + o * len : NULL);
    } else { /* vectors along dim 0 */
        const int64_t len = T->shape[0], stride = len ? n / len : 0;
        for (int64_t o = 0; o < stride; o++)
            nuslerp_vec(t, c->models[0] + o, c->models[1] + o, c->out + o, len, stride,
                        c->base ? c->base + o : NULL);
    }
    return FB_OK;
}

static const fb_param_spec nuslerp_params[] = {
    {"weight", "null", "each of the two models' weight; t = w_2 / (w_1 + w_2) (required)"},
    {"nuslerp_row_wise", "false", "slerp columns (vectors along dim 0) instead of rows"},
    {"nuslerp_flatten", "true", "slerp the whole tensor as one vector"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_nuslerp = {
    .name = "mergekit_nuslerp",
    .summary = "mergekit's nuslerp: slerp of two models (or their task vectors) by weights",
    .params = nuslerp_params,
    .optional_base = 1,
    .min_models = 2,
    .max_models = 2,
    .whole_tensor = 1,
    .create = nuslerp_create,
    .setup = sphere_setup,
    .merge = nuslerp_merge,
    .destroy = sphere_destroy,
};

static fb_status multislerp_create(const fb_config *p, void **out)
{
    sphere *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->name = "mergekit_multislerp";
    fb_status st = fb_mk_list_read(p, "weight", 1, 0.0, &s->weight);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "normalize_weights"), "normalize_weights",
                         &s->normalize_weights);
    if (!st) st = fb_param_double(p, "eps", 0.0, NAN, &s->eps);
    if (st) {
        sphere_destroy(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static int multislerp_scratch(const void *p)
{
    const sphere *s = p;
    return s->num_models;
}

static fb_status multislerp_merge(const void *p, const fb_merge_chunk *c)
{
    const sphere *s = p;
    const int M = c->num_models;
    const int64_t n = c->count;
    if (M == 1) {
        memcpy(c->out, c->models[0], (size_t)n * sizeof *c->out);
        return FB_OK;
    }
    if (M > 256) return fb_set_error(FB_ERR_ARG, "%s: more than 256 models", s->name);
    double w[256], wsum = 0.0, norms[256];
    for (int i = 0; i < M; i++)
        wsum += (w[i] = (float)fb_mk_at(&s->weight, i));
    if (s->normalize_weights)
        for (int i = 0; i < M; i++)
            w[i] = (float)(w[i] / wsum);
    float *u = c->scratch; /* unit vectors, M x n */
    for (int i = 0; i < M; i++) {
        float *ui = u + (size_t)i * (size_t)n;
        for (int64_t j = 0; j < n; j++)
            ui[j] = c->base ? c->models[i][j] - c->base[j] : c->models[i][j];
        norms[i] = sqrt(fb_dot(ui, ui, n));
        const float inv = (float)(norms[i] + s->eps);
        for (int64_t j = 0; j < n; j++)
            ui[j] /= inv;
    }
    float *mean = c->out;
    for (int64_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (int i = 0; i < M; i++)
            acc += u[(size_t)i * (size_t)n + (size_t)j] * (float)w[i];
        mean[j] = acc;
    }
    double mn = sqrt(fb_dot(mean, mean, n));
    if (mn < s->eps) {
        if (M != 2)
            return fb_set_error(FB_ERR_ARG,
                                "tensor '%s': the weighted sum of the unit task "
                                "vectors is zero (antipodal models with balancing "
                                "weights); use other weights",
                                c->tensor->name);
        for (int64_t j = 0; j < n; j++) {
            float a = c->base ? c->models[0][j] - c->base[j] : c->models[0][j];
            float b = c->base ? c->models[1][j] - c->base[j] : c->models[1][j];
            float v = a * (float)w[0] + b * (float)w[1];
            c->out[j] = c->base ? v + c->base[j] : v;
        }
        return FB_OK;
    }
    for (int64_t j = 0; j < n; j++)
        mean[j] /= (float)mn;
    /* tangent vectors, accumulated into u's first row after its dot is taken */
    double dots[256];
    for (int i = 0; i < M; i++)
        dots[i] = fb_dot(u + (size_t)i * (size_t)n, mean, n);
    float *tan = u; /* tangent result overwrites unit vector 0 element by element */
    for (int64_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (int i = 0; i < M; i++)
            acc += (u[(size_t)i * (size_t)n + (size_t)j] - (float)dots[i] * mean[j]) * (float)w[i];
        tan[j] = acc;
    }
    double tn = sqrt(fb_dot(tan, tan, n)) + s->eps;
    double avg = 0.0;
    for (int i = 0; i < M; i++)
        avg += norms[i] * w[i];
    const float cm = (float)cos(tn), ct = (float)(sin(tn) / tn), a = (float)avg;
    for (int64_t j = 0; j < n; j++) {
        float v = (mean[j] * cm + tan[j] * ct) * a;
        c->out[j] = c->base ? v + c->base[j] : v;
    }
    return FB_OK;
}

static const fb_param_spec multislerp_params[] = {
    {"weight", "null", "each model's weight: a number or one per model (required)"},
    {"normalize_weights", "true", "divide the weights by their sum"},
    {"eps", "1e-8", "added to norms before dividing"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_multislerp = {
    .name = "mergekit_multislerp",
    .summary = "mergekit's multislerp: weighted spherical interpolation of any number of models",
    .params = multislerp_params,
    .optional_base = 1,
    .whole_tensor = 1,
    .scratch_per_element = multislerp_scratch,
    .create = multislerp_create,
    .setup = sphere_setup,
    .merge = multislerp_merge,
    .destroy = sphere_destroy,
};

/* -------------------------------------------------------------------------- model_stock -- */

typedef struct stock {
    int filter_wise;
    int num_models;
} stock;

static fb_status stock_create(const fb_config *p, void **out)
{
    stock *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    fb_status st = fb_cfg_bool(fb_cfg_map_get(p, "filter_wise"), "filter_wise", &s->filter_wise);
    if (st) {
        fb_free(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status stock_setup(void *p, const fb_merge_setup *m)
{
    stock *s = p;
    s->num_models = m->num_models;
    if (m->num_models > 256)
        return fb_set_error(FB_ERR_ARG, "mergekit_model_stock merges at most 256 models");
    return FB_OK;
}

static fb_status stock_merge(const void *p, const fb_merge_chunk *c)
{
    const stock *s = p;
    const int N = c->num_models;
    const int64_t n = c->count;
    const fb_tensor *T = c->tensor;
    const int64_t len = s->filter_wise && T->ndim >= 1 ? T->shape[T->ndim - 1] : n;
    for (int64_t o = 0; len && o < n / len; o++) {
        const int64_t b = o * len;
        double sq[256], cos_sum = 0.0;
        int pairs = 0;
        for (int i = 0; i < N; i++) {
            double a = 0.0;
            for (int64_t j = 0; j < len; j++) {
                double d = (double)(c->models[i][b + j] - c->base[b + j]);
                a += d * d;
            }
            sq[i] = sqrt(a);
        }
        for (int i = 0; i < N; i++)
            for (int k = i + 1; k < N; k++) {
                double dot = 0.0;
                for (int64_t j = 0; j < len; j++)
                    dot += (double)(c->models[i][b + j] - c->base[b + j]) *
                           (double)(c->models[k][b + j] - c->base[b + j]);
                double np = sq[i] * sq[k];
                double cv = dot / (np > 1e-6 ? np : 1e-6);
                cos_sum += cv < -1.0 ? -1.0 : cv > 1.0 ? 1.0 : cv;
                pairs++;
            }
        const double cv = cos_sum / pairs;
        const float t = (float)(N * cv / (1.0 + (N - 1) * cv)), u = 1.0f - t;
        for (int64_t j = 0; j < len; j++) {
            float avg = 0.0f;
            for (int i = 0; i < N; i++)
                avg += c->models[i][b + j];
            avg /= (float)N;
            c->out[b + j] = t * avg + u * c->base[b + j];
        }
    }
    return FB_OK;
}

static const fb_param_spec stock_params[] = {
    {"filter_wise", "false", "one interpolation ratio per row (last dim) instead of per tensor"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_model_stock = {
    .name = "mergekit_model_stock",
    .summary = "mergekit's model_stock: ratio from the mean pairwise cosine of task vectors",
    .params = stock_params,
    .needs_base = 1,
    .min_models = 2,
    .whole_tensor = 1,
    .create = stock_create,
    .setup = stock_setup,
    .merge = stock_merge,
    .destroy = fb_free,
};

/* ---------------------------------------------------------------------------------- sce -- */

typedef struct sce {
    double topk, r, alpha, epsilon;
    int plus;
    int num_models;
} sce;

static fb_status sce_create(const fb_config *p, void **out)
{
    sce *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    int int8 = 0;
    fb_status st = fb_param_double(p, "select_topk", NAN, NAN, &s->topk);
    if (!st) st = fb_cfg_bool(fb_cfg_map_get(p, "int8_mask"), "int8_mask", &int8);
    if (st) {
        fb_free(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status sce_setup(void *p, const fb_merge_setup *m)
{
    sce *s = p;
    s->num_models = m->num_models;
    if (m->num_models > 256)
        return fb_set_error(FB_ERR_ARG, "mergekit's methods merge at most 256 models");
    return FB_OK;
}

static int sce_scratch(const void *p)
{
    const sce *s = p;
    return s->num_models + 1;
}

static fb_status sce_merge(const void *p, const fb_merge_chunk *c)
{
    const sce *s = p;
    const int M = c->num_models;
    const int64_t n = c->count;
    float *tv = c->scratch;
    float *var = c->scratch + (size_t)M * (size_t)n;
    for (int i = 0; i < M; i++)
        for (int64_t j = 0; j < n; j++)
            tv[(size_t)i * (size_t)n + (size_t)j] = c->models[i][j] - c->base[j];
    if (s->topk < 1.0) {
        int64_t nonzero = 0;
        for (int64_t j = 0; j < n; j++) {
            float mean = 0.0f, v = 0.0f;
            for (int i = 0; i < M; i++)
                mean += tv[(size_t)i * (size_t)n + (size_t)j];
            mean /= (float)M;
            for (int i = 0; i < M; i++) {
                float d = tv[(size_t)i * (size_t)n + (size_t)j] - mean;
                v += d * d;
            }
            var[j] = v / (float)M;
            nonzero += var[j] != 0.0f;
        }
        int64_t k = s->topk <= 0.0 ? 0 : (int64_t)((double)nonzero * s->topk);
        /* the k entries of largest variance (k <= the nonzero count) keep a nonzero var */
        fb_status st = fb_mk_keep_topk(var, n, k, (uint32_t *)(void *)c->out);
        if (st) return st;
        for (int i = 0; i < M; i++)
            for (int64_t j = 0; j < n; j++)
                if (var[j] == 0.0f) tv[(size_t)i * (size_t)n + (size_t)j] = 0.0f;
    }
    double w[256], wsum = 0.0;
    for (int i = 0; i < M; i++) {
        w[i] = fb_dot(tv + (size_t)i * (size_t)n, tv + (size_t)i * (size_t)n, n) / (double)n;
        wsum += w[i];
    }
    for (int i = 0; i < M; i++)
        w[i] = fabs(wsum) < 1e-6 ? 1.0 / M : w[i] / wsum;
    for (int64_t j = 0; j < n; j++) {
        float sum = 0.0f;
        for (int i = 0; i < M; i++)
            sum += tv[(size_t)i * (size_t)n + (size_t)j];
        const int major = sum >= 0.0f ? 1 : -1;
        float mixed = 0.0f, div = 0.0f;
        for (int i = 0; i < M; i++) {
            float v = tv[(size_t)i * (size_t)n + (size_t)j];
            if (((v > 0.0f) - (v < 0.0f)) != major) continue;
            mixed += v * (float)w[i];
            div += (float)w[i];
        }
        c->out[j] = c->base[j] + mixed / (div > 1e-6f ? div : 1e-6f);
    }
    return FB_OK;
}

static const fb_param_spec sce_params[] = {
    {"select_topk", "1.0", "fraction of the entries of highest variance across models kept"},
    {"int8_mask", "false", "mergekit's memory option; no effect on the numbers"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_sce = {
    .name = "mergekit_sce",
    .summary = "mergekit's sce: select by variance, calculate weights, erase minority signs",
    .params = sce_params,
    .needs_base = 1,
    .whole_tensor = 1,
    .scratch_per_element = sce_scratch,
    .create = sce_create,
    .setup = sce_setup,
    .merge = sce_merge,
    .destroy = fb_free,
};

/* ---------------------------------------------------------------------------------- ram -- */

static fb_status ram_create_kind(const fb_config *p, void **out, int plus)
{
    sce *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->plus = plus;
    fb_status st = fb_param_double(p, "epsilon", 0.0, NAN, &s->epsilon);
    if (!st && plus) st = fb_param_double(p, "r", NAN, NAN, &s->r);
    if (!st && plus) st = fb_param_double(p, "alpha", NAN, NAN, &s->alpha);
    if (st) {
        fb_free(s);
        return st;
    }
    *out = s;
    return FB_OK;
}

static fb_status ram_create(const fb_config *p, void **out)
{
    return ram_create_kind(p, out, 0);
}
static fb_status ramplus_create(const fb_config *p, void **out)
{
    return ram_create_kind(p, out, 1);
}

static fb_status ram_merge(const void *p, const fb_merge_chunk *c)
{
    const sce *s = p;
    const int M = c->num_models;
    const int64_t n = c->count;
    const float eps = (float)s->epsilon;
    float lambda[256];
    for (int i = 0; i < M; i++)
        lambda[i] = 1.0f;
    if (s->plus) {
        int64_t shared[256] = {0}, unique[256] = {0};
        for (int64_t j = 0; j < n; j++) {
            int count = 0;
            for (int i = 0; i < M; i++)
                count += fabsf(c->models[i][j] - c->base[j]) > eps;
            for (int i = 0; i < M; i++) {
                if (!(fabsf(c->models[i][j] - c->base[j]) > eps)) continue;
                if (count > 1)
                    shared[i]++;
                else
                    unique[i]++;
            }
        }
        for (int i = 0; i < M; i++) {
            float u = (float)unique[i];
            float rho = (float)shared[i] / (u > eps ? u : eps);
            rho = rho < 0.0f ? 0.0f : rho > (float)s->alpha ? (float)s->alpha : rho;
            lambda[i] = 1.0f + (float)s->r * rho;
        }
    }
    for (int64_t j = 0; j < n; j++) {
        int count = 0;
        for (int i = 0; i < M; i++)
            count += fabsf(c->models[i][j] - c->base[j]) > eps;
        float acc = 0.0f;
        for (int i = 0; i < M; i++) {
            float t = c->models[i][j] - c->base[j];
            if (!(fabsf(t) > eps)) t = 0.0f;
            float unique = count == 1 ? t * lambda[i] : 0.0f * t;
            float overlap = count > 1 ? t / (float)count : 0.0f * t;
            acc += unique + overlap;
        }
        c->out[j] = c->base[j] + acc;
    }
    return FB_OK;
}

static const fb_param_spec ram_params[] = {
    {"epsilon", "1e-5", "task-vector entries of at most this magnitude count as zero"},
    {NULL, NULL, NULL},
};

static const fb_param_spec ramplus_params[] = {
    {"r", "0.1", "how much unique entries are scaled up by the model's overlap ratio"},
    {"alpha", "0.2", "the overlap ratio's cap"},
    {"epsilon", "1e-5", "task-vector entries of at most this magnitude count as zero"},
    {NULL, NULL, NULL},
};

const fb_method_ops fb_method_mergekit_ram = {
    .name = "mergekit_ram",
    .summary = "mergekit's ram: unique task-vector entries kept, shared ones averaged",
    .params = ram_params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = ram_create,
    .setup = sce_setup,
    .merge = ram_merge,
    .destroy = fb_free,
};

const fb_method_ops fb_method_mergekit_ramplus_tl = {
    .name = "mergekit_ramplus_tl",
    .summary = "mergekit's ramplus_tl: ram with unique entries scaled by the overlap ratio",
    .params = ramplus_params,
    .needs_base = 1,
    .whole_tensor = 1,
    .create = ramplus_create,
    .setup = sce_setup,
    .merge = ram_merge,
    .destroy = fb_free,
};

/* ------------------------------------------------------------------------- arcee_fusion -- */

static fb_status fusion_create(const fb_config *p, void **out)
{
    (void)p;
    *out = fb_calloc(1, sizeof(int));
    return *out ? FB_OK : FB_ERR_NOMEM;
}

static int fusion_scratch(const void *p)
{
    (void)p;
    return 2;
}

/* p = softmax(x) + 1e-8, q = softmax(y) + 1e-8 over len entries: sum p log(p / q). */
static float row_kl(const float *x, const float *y, int64_t len)
{
    float mx = -INFINITY, my = -INFINITY;
    for (int64_t j = 0; j < len; j++) {
        if (x[j] > mx) mx = x[j];
        if (y[j] > my) my = y[j];
    }
    double sx = 0.0, sy = 0.0;
    for (int64_t j = 0; j < len; j++)
        sx += exp((double)(x[j] - mx)), sy += exp((double)(y[j] - my));
    double kl = 0.0;
    for (int64_t j = 0; j < len; j++) {
        float p = (float)(exp((double)(x[j] - mx)) / sx) + 1e-8f;
        float q = (float)(exp((double)(y[j] - my)) / sy) + 1e-8f;
        kl += (double)(p * logf(p / q));
    }
    return (float)kl;
}

static fb_status fusion_merge(const void *p, const fb_merge_chunk *c)
{
    (void)p;
    const int64_t n = c->count;
    const fb_tensor *T = c->tensor;
    const int64_t len = T->ndim >= 1 ? T->shape[T->ndim - 1] : 1;
    const float *x = c->models[0], *b = c->base;
    float *imp = c->scratch;
    uint32_t *keys = (uint32_t *)(void *)(c->scratch + n);
    for (int64_t o = 0; len && o < n / len; o++) {
        float kl = row_kl(x + o * len, b + o * len, len);
        for (int64_t j = o * len; j < (o + 1) * len; j++)
            imp[j] = fabsf(x[j] - b[j]) * kl;
    }
    for (int64_t j = 0; j < n; j++)
        keys[j] = fb_mk_float_key(imp[j]);
    const float last = (float)(n - 1);
    float q[3];
    const float at[3] = {0.5f, 0.25f, 0.75f};
    for (int k = 0; k < 3; k++) {
        uint32_t v;
        fb_status st = fb_mk_select(keys, n, (int64_t)(at[k] * last), &v);
        if (st) return st;
        uint32_t bits = (v & 0x80000000u) ? (v & 0x7FFFFFFFu) : ~v;
        memcpy(&q[k], &bits, sizeof q[k]);
    }
    const float threshold = q[0] + 1.5f * (q[2] - q[1]);
    for (int64_t j = 0; j < n; j++)
        c->out[j] = imp[j] >= threshold ? b[j] + (x[j] - b[j]) : b[j] + 0.0f * (x[j] - b[j]);
    return FB_OK;
}

static const fb_param_spec fusion_params[] = {{NULL, NULL, NULL}};

const fb_method_ops fb_method_mergekit_arcee_fusion = {
    .name = "mergekit_arcee_fusion",
    .summary =
        "mergekit's arcee_fusion: keep the changes whose KL-weighted importance is an outlier",
    .params = fusion_params,
    .needs_base = 1,
    .min_models = 1,
    .max_models = 1,
    .whole_tensor = 1,
    .scratch_per_element = fusion_scratch,
    .create = fusion_create,
    .merge = fusion_merge,
    .destroy = fb_free,
};
