/*
 * smile_upscaling.c: FusionBench's SMILE upscaling (SmileUpscalingAlgorithm; Tang et al.
 * 2024, "SMILE: Zero-Shot Sparse Mixture of Low-Rank Experts Construction From Pre-Trained
 * Foundation Models"). Training-free: every linear layer whose fine-tunes differ from the
 * pretrained one becomes FusionBench's SmileMoELinear,
 *
 *   y = W0 x + b0 + sum over the top_k experts i of  w_i (U_i (S_i V_i^T x) + b_i - b0)
 *
 * with U_i S_i V_i^T the rank-k truncated SVD of the task vector W_i - W0, and routing by the
 * norms ||V_i[:, :gate_k]^T x|| (routing_use_diff; else the SVD of W_i itself), softmaxed,
 * the top_k kept and renormalised. The output is a state dict under FusionBench's module
 * names (<layer>.pretrained_model.weight/bias, <layer>.gate.weights, <layer>.experts.<i>.u /
 * .svh / .bias) with the structure in its metadata; src/nn/clip_vit.c runs it (docs/methods.md).
 *
 * SVDs are in double (LAPACK's dgesdd, one layer and model at a time, in parallel over models
 * with single-threaded BLAS), each singular pair's sign fixed so that the largest entry of the
 * right vector is positive: the stored tensors do not depend on LAPACK's sign choices.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/model.h"
#include "core/status.h"
#include "linalg.h"
#include "method.h"
#include "nn/kernels.h"

typedef struct state {
    int64_t k, gate_k, top_k;
    int routing_use_diff, average_experts;
} state;

static const fb_param_spec params[] = {
    {"k", "128", "rank of each expert (the task vector's top-k singular triplets)"},
    {"gate_k", "1", "right singular vectors per expert the router projects onto"},
    {"top_k", "1", "experts each token is routed to"},
    {"routing_use_diff", "true", "route by the task vectors' singular vectors (else the weights')"},
    {"average_experts", "false",
     "layers that are not linear: the fine-tunes' mean (else the base)"},
    {"full_matrices", "true", "PyTorch's SVD option (the result is the same here; accepted)"},
    {"device", "null", "PyTorch device (accepted and ignored)"},
    {"upscaling_accelerator", "null", "PyTorch device for the SVD (accepted and ignored)"},
    {"model_path", "null", "FusionBench's torch.save path (use merged_model_save_path)"},
    {NULL, NULL, NULL},
};

static fb_status int_param(const fb_config *p, const char *key, int64_t lo, int64_t *out)
{
    fb_status st = fb_cfg_int(fb_cfg_map_get(p, key), key, out);
    if (!st && *out < lo)
        st = fb_set_error(FB_ERR_ARG, "%s: %s must be at least %lld (got %lld)", "smile_upscaling",
                          key, (long long)lo, (long long)*out);
    return st;
}

static fb_status create(const fb_config *p, void **out)
{
    state s = {0};
    fb_status st = int_param(p, "k", 1, &s.k);
    if (!st) st = int_param(p, "gate_k", 1, &s.gate_k);
    if (!st) st = int_param(p, "top_k", 1, &s.top_k);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "routing_use_diff"), "routing_use_diff",
                         &s.routing_use_diff);
    if (!st)
        st = fb_cfg_bool(fb_cfg_map_get(p, "average_experts"), "average_experts",
                         &s.average_experts);
    const fb_config *mp = fb_cfg_map_get(p, "model_path");
    if (!st && !fb_cfg_is_null(mp))
        st = fb_set_error(FB_ERR_ARG, "smile_upscaling: model_path is FusionBench's torch.save "
                                      "file; give merged_model_save_path instead");
    if (st) return st;
    state *h = fb_malloc(sizeof *h);
    if (!h) return FB_ERR_NOMEM;
    *h = s;
    *out = h;
    return FB_OK;
}

static void destroy(void *p)
{
    fb_free(p);
}

/* The rank-r truncated SVD of D (m x n, f32) in f32: U [m, r], S [r], Vt [r, n], signs fixed
 * (the largest |entry| of each right vector positive). D is not changed. */
static fb_status truncated_svd(const float *D, int64_t m, int64_t n, int64_t r, float *U, float *S,
                               float *Vt, const char *what)
{
    const int64_t q = m < n ? m : n;
    double *A = fb_malloc((size_t)(m * n) * sizeof *A), *u = fb_malloc((size_t)(m * q) * sizeof *u);
    double *s = fb_malloc((size_t)q * sizeof *s), *vt = fb_malloc((size_t)(q * n) * sizeof *vt);
    fb_status st = A && u && s && vt ? FB_OK : FB_ERR_NOMEM;
    if (!st) {
        for (int64_t i = 0; i < m * n; i++)
            A[i] = D[i];
        st = fb_svd(A, m, n, u, s, vt, what);
    }
    for (int64_t j = 0; j < r && !st; j++) {
        int64_t at = 0;
        for (int64_t c = 1; c < n; c++)
            if (fabs(vt[j * n + c]) > fabs(vt[j * n + at])) at = c;
        const double sign = vt[j * n + at] < 0 ? -1.0 : 1.0;
        for (int64_t c = 0; c < n; c++)
            Vt[j * n + c] = (float)(sign * vt[j * n + c]);
        for (int64_t i = 0; i < m; i++)
            U[i * r + j] = (float)(sign * u[i * q + j]);
        S[j] = (float)s[j];
    }
    fb_free(A);
    fb_free(u);
    fb_free(s);
    fb_free(vt);
    return st;
}

static fb_status add_f32(fb_model *m, const char *name, int ndim, const int64_t *shape,
                         const float *data)
{
    return fb_model_add_tensor(m, name, FB_F32, ndim, shape, data, NULL);
}

/* One linear layer `prefix` (weight [out, in], bias or NULL) upscaled into out. */
static fb_status upscale_linear(const state *s, const char *prefix, const fb_tensor *w0t,
                                const fb_tensor *b0t, const fb_tensor *const *wt,
                                const fb_tensor *const *bt, int E, fb_model *out, int *upscaled)
{
    const int64_t O = fb_tensor_shape(w0t)[0], I = fb_tensor_shape(w0t)[1], q = O < I ? O : I;
    *upscaled = 0;
    if (s->k > q || s->gate_k > q)
        return fb_set_error(FB_ERR_ARG,
                            "smile_upscaling: %s is [%lld, %lld], rank at most %lld: k %lld and "
                            "gate_k %lld must not exceed it",
                            fb_tensor_name(w0t), (long long)O, (long long)I, (long long)q,
                            (long long)s->k, (long long)s->gate_k);
    float *w0 = NULL, *b0 = NULL;
    float **D = fb_calloc((size_t)E, sizeof *D);
    fb_status st = D ? fb_tensor_to_f32_copy(w0t, &w0) : FB_ERR_NOMEM;
    if (!st && b0t) st = fb_tensor_to_f32_copy(b0t, &b0);
    int all_zero = 1;
    for (int i = 0; i < E && !st; i++) {
        if ((st = fb_tensor_to_f32_copy(wt[i], &D[i]))) break;
        for (int64_t j = 0; j < O * I; j++) {
            D[i][j] -= w0[j];
            all_zero &= D[i][j] == 0.0f;
        }
    }
    /* FusionBench leaves a layer no fine-tune changed as it is */
    char name[1024];
    if (!st && all_zero) {
        st = add_f32(out, fb_tensor_name(w0t), 2, fb_tensor_shape(w0t), w0);
        if (!st && b0t) st = add_f32(out, fb_tensor_name(b0t), 1, fb_tensor_shape(b0t), b0);
        goto done;
    }
    const int64_t k = s->k, gk = s->gate_k, r = k > gk ? k : gk;
    float *U = st ? NULL : fb_malloc((size_t)E * (size_t)(O * r) * sizeof *U);
    float *S = st ? NULL : fb_malloc((size_t)E * (size_t)r * sizeof *S);
    float *Vt = st ? NULL : fb_malloc((size_t)E * (size_t)(r * I) * sizeof *Vt);
    fb_status *each = st ? NULL : fb_calloc((size_t)E, sizeof *each);
    if (!st && (!U || !S || !Vt || !each)) st = FB_ERR_NOMEM;
    if (!st) {
        fb_nn_blas_single(1);
#pragma omp parallel for schedule(dynamic)
        for (int i = 0; i < E; i++)
            each[i] = truncated_svd(D[i], O, I, r, U + (size_t)i * (size_t)(O * r),
                                    S + (size_t)i * (size_t)r, Vt + (size_t)i * (size_t)(r * I),
                                    fb_tensor_name(w0t));
        fb_nn_blas_single(0);
        for (int i = 0; i < E && !st; i++)
            st = each[i];
    }
    /* the gate: each expert's top gate_k right singular vectors, stacked [E * gate_k, I] */
    float *gate = st ? NULL : fb_malloc((size_t)E * (size_t)(gk * I) * sizeof *gate);
    if (!st && !gate) st = FB_ERR_NOMEM;
    for (int i = 0; i < E && !st; i++) {
        if (s->routing_use_diff) {
            memcpy(gate + (size_t)i * (size_t)(gk * I), Vt + (size_t)i * (size_t)(r * I),
                   (size_t)(gk * I) * sizeof *gate);
        } else { /* the fine-tuned weight's own singular vectors */
            float *Wi = NULL, *u1 = NULL, *s1 = NULL;
            st = fb_tensor_to_f32_copy(wt[i], &Wi);
            if (!st && (!(u1 = fb_malloc((size_t)(O * gk) * sizeof *u1)) ||
                        !(s1 = fb_malloc((size_t)gk * sizeof *s1))))
                st = FB_ERR_NOMEM;
            if (!st)
                st = truncated_svd(Wi, O, I, gk, u1, s1, gate + (size_t)i * (size_t)(gk * I),
                                   fb_tensor_name(w0t));
            fb_free(Wi);
            fb_free(u1);
            fb_free(s1);
        }
    }
    /* FusionBench's module names: the shared part, the gate, each expert (u [O, k],
     * svh = diag(S) V^T [k, I], bias = b_i - b0) */
    if (!st) {
        snprintf(name, sizeof name, "%s.pretrained_model.weight", prefix);
        st = add_f32(out, name, 2, fb_tensor_shape(w0t), w0);
    }
    if (!st && b0t) {
        snprintf(name, sizeof name, "%s.pretrained_model.bias", prefix);
        st = add_f32(out, name, 1, fb_tensor_shape(b0t), b0);
    }
    if (!st) {
        snprintf(name, sizeof name, "%s.gate.weights", prefix);
        const int64_t shape[2] = {E * gk, I};
        st = add_f32(out, name, 2, shape, gate);
    }
    float *u = st ? NULL : fb_malloc((size_t)(O * k) * sizeof *u);
    float *svh = st ? NULL : fb_malloc((size_t)(k * I) * sizeof *svh);
    float *bi = st || !b0t ? NULL : fb_malloc((size_t)O * sizeof *bi);
    if (!st && (!u || !svh || (b0t && !bi))) st = FB_ERR_NOMEM;
    for (int i = 0; i < E && !st; i++) {
        const float *Ui = U + (size_t)i * (size_t)(O * r), *Vi = Vt + (size_t)i * (size_t)(r * I);
        for (int64_t o = 0; o < O; o++)
            for (int64_t j = 0; j < k; j++)
                u[o * k + j] = Ui[o * r + j];
        for (int64_t j = 0; j < k; j++)
            for (int64_t c = 0; c < I; c++)
                svh[j * I + c] = S[(size_t)i * (size_t)r + j] * Vi[j * I + c];
        const int64_t su[2] = {O, k}, ss[2] = {k, I};
        snprintf(name, sizeof name, "%s.experts.%d.u", prefix, i);
        st = add_f32(out, name, 2, su, u);
        snprintf(name, sizeof name, "%s.experts.%d.svh", prefix, i);
        if (!st) st = add_f32(out, name, 2, ss, svh);
        if (!st && b0t) {
            float *b = NULL;
            if (!(st = fb_tensor_to_f32_copy(bt[i], &b))) {
                for (int64_t o = 0; o < O; o++)
                    bi[o] = b[o] - b0[o];
                snprintf(name, sizeof name, "%s.experts.%d.bias", prefix, i);
                st = add_f32(out, name, 1, fb_tensor_shape(b0t), bi);
            }
            fb_free(b);
        }
    }
    if (!st) *upscaled = 1;
    fb_free(U);
    fb_free(S);
    fb_free(Vt);
    fb_free(each);
    fb_free(gate);
    fb_free(u);
    fb_free(svh);
    fb_free(bi);
done:
    for (int i = 0; D && i < E; i++)
        fb_free(D[i]);
    fb_free(D);
    fb_free(w0);
    fb_free(b0);
    return st;
}

/* Whether the module a parameter belongs to ("a.b" of "a.b.c") has no sub-modules in the
 * state dict (no tensor named "a.b.<child>.<name>"). */
static int is_leaf_param(const fb_model *m, const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return 1;
    const size_t n = (size_t)(dot - name);
    for (int64_t t = 0; t < fb_model_num_tensors(m); t++) {
        const char *o = fb_tensor_name(fb_model_tensor(m, t));
        if (!strncmp(o, name, n) && o[n] == '.' && strchr(o + n + 1, '.')) return 0;
    }
    return 1;
}

/* the bias beside a linear weight "<prefix>.weight": "<prefix>.bias" in m, or NULL */
static const fb_tensor *bias_of(const fb_model *m, const char *prefix)
{
    char name[1024];
    snprintf(name, sizeof name, "%s.bias", prefix);
    return fb_model_find(m, name);
}

static fb_status build(void *p, fb_modelpool *pool, const fb_run_options *opts, fb_model **outp)
{
    (void)opts;
    const state *s = p;
    const fb_model *base = fb_modelpool_get(pool, FB_PRETRAINED);
    const int E = fb_modelpool_num_models(pool);
    if (!base)
        return fb_set_error(FB_ERR_ARG, "smile_upscaling needs the pretrained model: the pool "
                                        "has no '_pretrained_'");
    if (s->top_k > E)
        return fb_set_error(FB_ERR_ARG,
                            "smile_upscaling: top_k %lld exceeds the %d experts "
                            "(fine-tuned models)",
                            (long long)s->top_k, E);
    const fb_model **models = fb_calloc((size_t)E, sizeof *models);
    const fb_tensor **wt = fb_calloc((size_t)E, sizeof *wt),
                    **bt = fb_calloc((size_t)E, sizeof *bt);
    fb_model *out = NULL;
    fb_name_filter *inc = NULL, *exc = NULL;
    fb_status st = models && wt && bt ? fb_model_create(&out) : FB_ERR_NOMEM;
    if (!st && fb_modelpool_selects(pool)) {
        st = fb_name_filter_create(pool->select.include, "modelpool.include", &inc);
        if (!st) st = fb_name_filter_create(pool->select.exclude, "modelpool.exclude", &exc);
    }
    for (int i = 0; i < E && !st; i++)
        models[i] = fb_modelpool_get(pool, fb_modelpool_model_name(pool, i));
    int64_t upscaled = 0;
    float *mean = NULL;
    for (int64_t t = 0; t < fb_model_num_tensors(base) && !st; t++) {
        const fb_tensor *w0 = fb_model_tensor(base, t);
        const char *name = fb_tensor_name(w0);
        const int selected =
            (!inc || fb_name_filter_empty(inc) || fb_name_filter_matches(inc, name)) &&
            !(exc && fb_name_filter_matches(exc, name));
        const size_t n = strlen(name);
        char prefix[1024];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(n > 7 ? n - 7 : 0), name);
        const int linear =
            selected && fb_is_linear_weight(w0) && fb_dtype_is_float(fb_tensor_dtype(w0));
        int done = 0;
        if (linear) {
            const fb_tensor *b0 = bias_of(base, prefix);
            for (int i = 0; i < E && !st; i++) {
                wt[i] = fb_model_find(models[i], name);
                bt[i] = b0 ? bias_of(models[i], prefix) : NULL;
                if (!wt[i] || fb_tensor_numel(wt[i]) != fb_tensor_numel(w0) || (b0 && !bt[i]))
                    st = fb_set_error(FB_ERR_MISMATCH,
                                      "smile_upscaling: model '%s' lacks '%s'%s "
                                      "of the pretrained model's shape",
                                      fb_modelpool_model_name(pool, i), name,
                                      b0 ? " (or its bias)" : "");
            }
            int up = 0;
            if (!st) st = upscale_linear(s, prefix, w0, b0, wt, bt, E, out, &up);
            upscaled += up;
            done = 1;
        } else if (n > 5 && !strcmp(name + n - 5, ".bias")) {
            char wname[1024];
            snprintf(wname, sizeof wname, "%.*s.weight", (int)(n - 5), name);
            const fb_tensor *w = fb_model_find(base, wname);
            const int wsel =
                (!inc || fb_name_filter_empty(inc) || fb_name_filter_matches(inc, wname)) &&
                !(exc && fb_name_filter_matches(exc, wname));
            done = w && wsel && fb_is_linear_weight(w) && fb_dtype_is_float(fb_tensor_dtype(w));
        }
        if (done || st) continue;
        /* the rest: the base's, or (average_experts) the fine-tunes' mean for the parameters of
         * leaf modules, as FusionBench averages modules without sub-modules */
        const int avg = s->average_experts && selected && fb_dtype_is_float(fb_tensor_dtype(w0)) &&
                        is_leaf_param(base, name);
        const int64_t numel = fb_tensor_numel(w0);
        if (!avg) { /* copied as it is, in its dtype */
            const void *data;
            if (!(st = fb_tensor_data(w0, &data)))
                st = fb_model_add_tensor(out, name, fb_tensor_dtype(w0), fb_tensor_ndim(w0),
                                         fb_tensor_shape(w0), data, NULL);
            continue;
        }
        fb_free(mean);
        if (!(mean = fb_calloc((size_t)(numel ? numel : 1), sizeof *mean))) {
            st = FB_ERR_NOMEM;
            break;
        }
        for (int i = 0; i < E && !st; i++) {
            const fb_tensor *ti = fb_model_find(models[i], name);
            float *v = NULL;
            if (!ti || fb_tensor_numel(ti) != numel) {
                st = fb_set_error(FB_ERR_MISMATCH, "smile_upscaling: model '%s' lacks '%s'",
                                  fb_modelpool_model_name(pool, i), name);
                break;
            }
            if ((st = fb_tensor_to_f32_copy(ti, &v))) break;
            for (int64_t j = 0; j < numel; j++)
                mean[j] += v[j];
            fb_free(v);
        }
        for (int64_t j = 0; j < numel && !st; j++)
            mean[j] /= (float)E;
        if (!st) st = add_f32(out, name, fb_tensor_ndim(w0), fb_tensor_shape(w0), mean);
    }
    char v[32];
    if (!st) st = fb_model_set_metadata(out, "fusionbench_c.structure", "smile_upscaling");
    snprintf(v, sizeof v, "%d", E);
    if (!st) st = fb_model_set_metadata(out, "smile.num_experts", v);
    snprintf(v, sizeof v, "%lld", (long long)s->top_k);
    if (!st) st = fb_model_set_metadata(out, "smile.top_k", v);
    snprintf(v, sizeof v, "%lld", (long long)s->k);
    if (!st) st = fb_model_set_metadata(out, "smile.k", v);
    snprintf(v, sizeof v, "%lld", (long long)s->gate_k);
    if (!st) st = fb_model_set_metadata(out, "smile.gate_k", v);
    if (!st && !upscaled)
        st = fb_set_error(FB_ERR_ARG, "smile_upscaling: no linear layer differs between the "
                                      "fine-tuned models and the pretrained one");
    fb_free(mean);
    fb_free(models);
    fb_free(wt);
    fb_free(bt);
    fb_name_filter_free(inc);
    fb_name_filter_free(exc);
    if (st) {
        fb_model_free(out);
        return st;
    }
    *outp = out;
    return FB_OK;
}

const fb_method_ops fb_method_smile_upscaling = {
    .name = "smile_upscaling",
    .target_class = "SmileUpscalingAlgorithm",
    .summary = "SMILE: every linear layer a sparse mixture of low-rank experts (task vectors' "
               "SVDs) routed per token, training-free",
    .params = params,
    .needs_base = 1,
    .min_models = 1,
    .create = create,
    .build = build,
    .destroy = destroy,
};
