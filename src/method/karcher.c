/*
 * karcher.c: the Karcher (Riemannian) mean of the models on the unit sphere, per tensor, as
 * mergekit's "karcher" method (Karcher 1977; Grove and Karcher 1973).
 *
 *     r_i = ||theta_i||,  u_i = theta_i / r_i            (models with r_i <= tol are left out)
 *     mu  = normalize(sum_i a_i u_i)                     (a_i = 1/N renormalised over the kept)
 *     repeat max_iter times:
 *         v = sum_i a_i (w_i / sin w_i) (u_i - cos w_i mu),  w_i = acos(<mu, u_i>)  (w_i >= tol)
 *         stop if ||v|| < tol;  mu = normalize(cos ||v|| mu + sin ||v|| v / ||v||)
 *     theta = (sum_i (1/N) r_i) mu
 *
 * Vectors are f32; norms, dot products and angles are computed in double. No base model.
 */
#include <math.h>

#include "core/alloc.h"
#include "core/status.h"
#include "method.h"

typedef struct state {
    int64_t max_iter;
    double tol;
    float *work; /* units of every model, the tangent; sized per merge */
    int64_t work_len;
} state;

static const fb_param_spec params[] = {
    {"max_iter", "10", "iterations of the Riemannian gradient step"},
    {"tol", "1e-5", "stop when the tangent step is shorter; smaller norms and angles are skipped"},
    {NULL, NULL, NULL},
};

static void destroy(void *p)
{
    state *s = p;
    if (s) fb_free(s->work);
    fb_free(s);
}

static fb_status create(const fb_config *p, void **out)
{
    int64_t it;
    double tol;
    fb_status st = fb_cfg_int(fb_cfg_map_get(p, "max_iter"), "max_iter", &it);
    if (!st && it < 0) st = fb_set_error(FB_ERR_ARG, "'max_iter' is %lld; it must be >= 0", (long long)it);
    if (!st) st = fb_param_double(p, "tol", 0.0, NAN, &tol);
    if (st) return st;
    state *s = fb_calloc(1, sizeof *s);
    if (!s) return FB_ERR_NOMEM;
    s->max_iter = it;
    s->tol = tol;
    *out = s;
    return FB_OK;
}

static void scale_to_unit(float *v, int64_t n)
{
    double r = sqrt(fb_dot(v, v, n));
    if (r > 0) {
        float inv = (float)r;
        for (int64_t j = 0; j < n; j++) v[j] /= inv;
    }
}

static fb_status merge(const void *p, const fb_merge_chunk *c)
{
    state *s = (state *)p; /* the work buffer is reused from tensor to tensor */
    const int N = c->num_models;
    const int64_t n = c->count;
    if (n == 0) return FB_OK;
    if (N == 1) {
        for (int64_t j = 0; j < n; j++) c->out[j] = c->models[0][j];
        return FB_OK;
    }
    int64_t need = (int64_t)(N + 1) * n;
    if (fb_reserve(&s->work, &s->work_len, need, sizeof *s->work)) return FB_ERR_NOMEM;
    float *units = s->work, *tangent = s->work + (int64_t)N * n, *mu = c->out;
    double scale = 0.0, alpha_sum = 0.0;
    int kept = 0;
    for (int i = 0; i < N; i++) {
        double r = sqrt(fb_dot(c->models[i], c->models[i], n));
        scale += (1.0 / N) * r;
        if (!(r > s->tol)) continue;
        float rf = (float)r;
        for (int64_t j = 0; j < n; j++) units[(int64_t)kept * n + j] = c->models[i][j] / rf;
        kept++;
        alpha_sum += 1.0 / N;
    }
    if (kept == 0) {
        for (int64_t j = 0; j < n; j++) c->out[j] = 0.0f;
        return FB_OK;
    }
    float a = (float)((1.0 / N) / alpha_sum);
    for (int64_t j = 0; j < n; j++) mu[j] = 0.0f;
    for (int k = 0; k < kept; k++)
        for (int64_t j = 0; j < n; j++) mu[j] += a * units[(int64_t)k * n + j];
    double mnorm = sqrt(fb_dot(mu, mu, n));
    if (mnorm < s->tol) {
        for (int64_t j = 0; j < n; j++) mu[j] = units[j];
    } else {
        scale_to_unit(mu, n);
    }
    for (int64_t it = 0; it < s->max_iter; it++) {
        for (int64_t j = 0; j < n; j++) tangent[j] = 0.0f;
        for (int k = 0; k < kept; k++) {
            const float *u = units + (int64_t)k * n;
            double d = fb_dot(mu, u, n);
            d = d < -1.0 ? -1.0 : d > 1.0 ? 1.0 : d;
            double w = acos(d);
            if (w < s->tol) continue;
            float coef = (float)((double)a * (w / sin(w))), df = (float)d;
            for (int64_t j = 0; j < n; j++) tangent[j] += coef * (u[j] - df * mu[j]);
        }
        double tn = sqrt(fb_dot(tangent, tangent, n));
        if (tn < s->tol) break;
        float cs = (float)cos(tn), sn = (float)(sin(tn) / tn);
        for (int64_t j = 0; j < n; j++) mu[j] = cs * mu[j] + sn * tangent[j];
        if (sqrt(fb_dot(mu, mu, n)) > s->tol) scale_to_unit(mu, n);
    }
    float sc = (float)scale;
    for (int64_t j = 0; j < n; j++) c->out[j] = sc * mu[j];
    return FB_OK;
}

const fb_method_ops fb_method_karcher = {
    .name = "karcher",
    .target_class = NULL,
    .summary = "Karcher mean of the models on the unit sphere, per tensor (mergekit)",
    .params = params,
    .whole_tensor = 1,
    .create = create,
    .merge = merge,
    .destroy = destroy,
};
