/*
 * test_nn.c: the nn kernels against PyTorch's autograd (tests/reference/nn_reference.py) on
 * the same inputs: outputs within 1e-5 and gradients within 1e-4 of the largest value; and
 * every backward against central finite differences of its forward.
 */
#include <math.h>
#include <stdlib.h>

#include "harness.h"
#include "nn/kernels.h"

static fb_model *load_nn(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/nn/%s.safetensors", fb_test_ref_dir, name);
    fb_model *m = NULL;
    if (fb_model_load(path, &m)) fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    return m;
}

static const float *get(const fb_model *m, const char *name, int64_t *n)
{
    const fb_tensor *t = fb_model_find(m, name);
    const void *p = NULL;
    if (!t || fb_tensor_data(t, &p)) {
        fb_test_fail(__FILE__, __LINE__, "reference tensor '%s' missing", name);
        return NULL;
    }
    if (n) *n = fb_tensor_numel(t);
    return p;
}

/* max |got - want| <= tol * max(max |want|, floor): floor keeps tensors whose true values are
 * ~0 (rounding noise on both sides) from being judged against their own noise */
static void close_to_floor(const char *what, const float *got, const float *want, int64_t n,
                           float tol, float floor)
{
    float scale = floor, worst = 0.0f;
    int64_t at = 0;
    for (int64_t i = 0; i < n; i++) scale = fabsf(want[i]) > scale ? fabsf(want[i]) : scale;
    for (int64_t i = 0; i < n; i++) {
        float e = fabsf(got[i] - want[i]);
        if (e > worst) {
            worst = e;
            at = i;
        }
    }
    if (worst > tol * (scale > 0 ? scale : 1.0f))
        fb_test_fail(__FILE__, __LINE__, "%s: element %lld off by %g (max |value| %g)", what,
                     (long long)at, worst, scale);
}

static void close_to(const char *what, const float *got, const float *want, int64_t n, float tol)
{
    close_to_floor(what, got, want, n, tol, 0.0f);
}

static float *zeros(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(float)); }

TEST(linear_matches_pytorch)
{
    fb_model *m = load_nn("linear");
    REQUIRE(m);
    const float *x = get(m, "x", NULL), *W = get(m, "W", NULL), *b = get(m, "b", NULL);
    const float *dout = get(m, "dout", NULL);
    REQUIRE(x && W && b && dout);
    float out[15], *dx = zeros(35), *dW = zeros(21), *db = zeros(3);
    fb_linear_forward(out, x, W, b, 5, 7, 3);
    close_to("linear out", out, get(m, "out", NULL), 15, 1e-5f);
    fb_linear_backward(dx, dW, db, dout, x, W, 5, 7, 3);
    close_to("linear dx", dx, get(m, "dx", NULL), 35, 1e-4f);
    close_to("linear dW", dW, get(m, "dW", NULL), 21, 1e-4f);
    close_to("linear db", db, get(m, "db", NULL), 3, 1e-4f);
    free(dx);
    free(dW);
    free(db);
    fb_model_free(m);
}

TEST(layernorm_matches_pytorch)
{
    fb_model *m = load_nn("layernorm");
    REQUIRE(m);
    const float *x = get(m, "x", NULL), *w = get(m, "w", NULL), *b = get(m, "b", NULL);
    const float *dout = get(m, "dout", NULL);
    REQUIRE(x && w && b && dout);
    float out[40], mean[4], rstd[4], *dx = zeros(40), *dw = zeros(10), *db = zeros(10);
    fb_layernorm_forward(out, mean, rstd, x, w, b, 4, 10, 1e-5f);
    close_to("layernorm out", out, get(m, "out", NULL), 40, 1e-5f);
    fb_layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, 4, 10);
    close_to("layernorm dx", dx, get(m, "dx", NULL), 40, 1e-4f);
    close_to("layernorm dw", dw, get(m, "dw", NULL), 10, 1e-4f);
    close_to("layernorm db", db, get(m, "db", NULL), 10, 1e-4f);
    free(dx);
    free(dw);
    free(db);
    fb_model_free(m);
}

typedef void (*act_fwd)(float *, const float *, int64_t);
typedef void (*act_bwd)(float *, const float *, const float *, int64_t);

TEST(activations_match_pytorch)
{
    const char *names[] = {"gelu", "quick_gelu", "relu"};
    act_fwd fwd[] = {fb_gelu_forward, fb_quick_gelu_forward, fb_relu_forward};
    act_bwd bwd[] = {fb_gelu_backward, fb_quick_gelu_backward, fb_relu_backward};
    for (int i = 0; i < 3; i++) {
        fb_model *m = load_nn(names[i]);
        REQUIRE(m);
        int64_t n = 0;
        const float *x = get(m, "x", &n), *dout = get(m, "dout", NULL);
        float *out = zeros(n), *dx = zeros(n);
        fwd[i](out, x, n);
        close_to(names[i], out, get(m, "out", NULL), n, 1e-5f);
        bwd[i](dx, x, dout, n);
        close_to(names[i], dx, get(m, "dx", NULL), n, 1e-4f);
        free(out);
        free(dx);
        fb_model_free(m);
    }
}

/* Quick GELU's own exponential and layer norm's interleaved rows: the bytes of the scalar
 * loop at every SIMD level, across ACT_BLOCK and LN_ROWS edges and at the clamps */
TEST(quick_gelu_and_layernorm_give_the_same_bytes_at_every_simd_level)
{
    const int64_t n = 2 * 4096 + 13, C = 96, N = 13;
    float *x = zeros(n), *d = zeros(n);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float)((i * 7919) % 20011) / 100.0f - 100.0f; /* -100 .. 100: past both clamps */
        d[i] = (float)((i * 31) % 97) / 50.0f - 1.0f;
    }
    const float special[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 88.0f / -1.702f,
                             -87.0f / -1.702f, 1e30f, -1e30f, 1e-40f};
    memcpy(x + 4090, special, sizeof special);
    float *out[2], *dx[2];
    for (int l = 0; l < 2; l++) {
        REQUIRE_OK(fb_simd_set(l ? fb_simd_name(fb_simd_best()) : "scalar"));
        out[l] = zeros(n), dx[l] = zeros(n);
        fb_quick_gelu_forward(out[l], x, n);
        fb_quick_gelu_backward(dx[l], x, d, n);
    }
    EXPECT(!memcmp(out[0], out[1], (size_t)n * sizeof(float)));
    EXPECT(!memcmp(dx[0], dx[1], (size_t)n * sizeof(float)));
    EXPECT(out[0][4094] == 0.0f && signbit(out[0][4093]) && out[0][4091] == INFINITY);
    /* layer norm: each row as a plain loop over c computes it */
    float *y = zeros(N * C), mean[13], rstd[13], w[96], b[96];
    for (int64_t c = 0; c < C; c++)
        w[c] = 1.0f + (float)c / 97.0f, b[c] = (float)(c % 5) / 7.0f;
    fb_layernorm_forward(y, mean, rstd, d, w, b, N, C, 1e-5f);
    for (int64_t r = 0; r < N; r++) {
        const float *xr = d + r * C;
        float m = 0.0f, v = 0.0f;
        for (int64_t c = 0; c < C; c++)
            m += xr[c];
        m /= (float)C;
        for (int64_t c = 0; c < C; c++)
            v += (xr[c] - m) * (xr[c] - m);
        v /= (float)C;
        const float s = 1.0f / sqrtf(v + 1e-5f);
        int same = mean[r] == m && rstd[r] == s;
        for (int64_t c = 0; c < C; c++)
            same &= y[r * C + c] == (xr[c] - m) * s * w[c] + b[c];
        if (!same) fb_test_fail(__FILE__, __LINE__, "layer norm row %lld", (long long)r);
    }
    free(x), free(d), free(y);
    for (int l = 0; l < 2; l++)
        free(out[l]), free(dx[l]);
}

TEST(softmax_cross_entropy_and_entropy_match_pytorch)
{
    fb_model *m = load_nn("softmax");
    REQUIRE(m);
    const float *x = get(m, "x", NULL), *dout = get(m, "dout", NULL);
    float p[18], dx[18] = {0};
    fb_softmax_forward(p, x, 3, 6);
    close_to("softmax", p, get(m, "out", NULL), 18, 1e-5f);
    fb_softmax_backward(dx, p, dout, 3, 6);
    close_to("softmax dx", dx, get(m, "dx", NULL), 18, 1e-4f);
    fb_model_free(m);

    m = load_nn("cross_entropy");
    REQUIRE(m);
    x = get(m, "x", NULL);
    const int32_t *targets = (const int32_t *)get(m, "targets", NULL);
    float probs[20], dce[20] = {0};
    float loss = fb_cross_entropy_forward(probs, x, targets, 4, 5);
    close_to("cross entropy", &loss, get(m, "out", NULL), 1, 1e-5f);
    fb_cross_entropy_backward(dce, probs, targets, 4, 5, get(m, "dout", NULL)[0]);
    close_to("cross entropy dx", dce, get(m, "dx", NULL), 20, 1e-4f);
    fb_model_free(m);

    m = load_nn("entropy");
    REQUIRE(m);
    x = get(m, "x", NULL);
    float dh[20] = {0};
    float h = fb_entropy_forward(probs, x, 4, 5);
    close_to("entropy", &h, get(m, "out", NULL), 1, 1e-5f);
    fb_entropy_backward(dh, probs, 4, 5, get(m, "dout", NULL)[0]);
    close_to("entropy dx", dh, get(m, "dx", NULL), 20, 1e-4f);
    fb_model_free(m);
}

TEST(attention_matches_pytorch_causal_or_not)
{
    for (int causal = 0; causal < 2; causal++) {
        fb_model *m = load_nn(causal ? "attention1" : "attention0");
        REQUIRE(m);
        const float *q = get(m, "q", NULL), *k = get(m, "k", NULL), *v = get(m, "v", NULL);
        const float *dout = get(m, "dout", NULL);
        float out[60], att[2 * 2 * 25], datt[2 * 2 * 25];
        float dq[60] = {0}, dk[60] = {0}, dv[60] = {0};
        fb_attention_forward(out, att, q, k, v, 2, 5, 2, 3, causal);
        close_to("attention out", out, get(m, "out", NULL), 60, 1e-5f);
        fb_attention_backward(dq, dk, dv, datt, dout, att, q, k, v, 2, 5, 2, 3);
        close_to("attention dq", dq, get(m, "dq", NULL), 60, 1e-4f);
        close_to("attention dk", dk, get(m, "dk", NULL), 60, 1e-4f);
        close_to("attention dv", dv, get(m, "dv", NULL), 60, 1e-4f);
        fb_model_free(m);
    }
}

TEST(attention_of_the_first_queries_gives_the_full_rows_bytes)
{
    /* B 3, T 11, H 2, D 40 (the vector path) and D 300 (past ATT_MAX_D: keys read in place) */
    for (int wide = 0; wide < 2; wide++) {
        const int64_t B = 3, T = 11, H = 2, D = wide ? 300 : 40, C = H * D;
        float *q = zeros(B * T * C), *k = zeros(B * T * C), *v = zeros(B * T * C);
        float *out = zeros(B * T * C), *att = zeros(B * H * T * T);
        float *q2 = zeros(B * 2 * C), *out2 = zeros(B * 2 * C), *att2 = zeros(B * H * 2 * T);
        for (int64_t i = 0; i < B * T * C; i++) {
            q[i] = (float)((i * 7919) % 1013) / 300.0f - 1.7f;
            k[i] = (float)((i * 104729) % 997) / 250.0f - 2.0f;
            v[i] = (float)((i * 31) % 89) / 40.0f - 1.1f;
        }
        fb_attention_forward(out, att, q, k, v, B, T, H, D, 0);
        for (int64_t Q = 1; Q <= 2; Q++) {
            for (int64_t b = 0; b < B; b++)
                memcpy(q2 + b * Q * C, q + b * T * C, (size_t)(Q * C) * sizeof(float));
            fb_attention_forward_first(out2, att2, q2, k, v, B, T, Q, H, D);
            for (int64_t b = 0; b < B; b++) {
                EXPECT(!memcmp(out2 + b * Q * C, out + b * T * C, (size_t)(Q * C) * sizeof(float)));
                for (int64_t h = 0; h < H; h++)
                    EXPECT(!memcmp(att2 + (b * H + h) * Q * T, att + (b * H + h) * T * T,
                                   (size_t)(Q * T) * sizeof(float)));
            }
        }
        free(q), free(k), free(v), free(out), free(att), free(q2), free(out2), free(att2);
    }
}

/* Finite differences: for L = sum(f(x) * r), dL/dx_i ~ (L(x + h e_i) - L(x - h e_i)) / 2h. */
static double loss_of(void (*f)(float *, const float *, int64_t), const float *x, const float *r,
                      int64_t n)
{
    float *y = zeros(n);
    f(y, x, n);
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)y[i] * r[i];
    free(y);
    return s;
}

TEST(activation_gradients_match_finite_differences)
{
    act_fwd fwd[] = {fb_gelu_forward, fb_quick_gelu_forward};
    act_bwd bwd[] = {fb_gelu_backward, fb_quick_gelu_backward};
    float x[9] = {-3, -1.5f, -0.3f, 0.1f, 0.7f, 1.2f, 2.0f, 3.1f, -0.05f};
    float r[9] = {1, -2, 0.5f, 1, 1, -1, 2, 0.3f, 1};
    for (int a = 0; a < 2; a++) {
        float g[9] = {0};
        bwd[a](g, x, r, 9);
        for (int i = 0; i < 9; i++) {
            float xp[9], xm[9];
            memcpy(xp, x, sizeof x);
            memcpy(xm, x, sizeof x);
            xp[i] += 1e-2f;
            xm[i] -= 1e-2f;
            double fd = (loss_of(fwd[a], xp, r, 9) - loss_of(fwd[a], xm, r, 9)) / 2e-2;
            if (fabs(fd - g[i]) > 1e-3 * (1 + fabs(fd)))
                fb_test_fail(__FILE__, __LINE__, "activation %d, x[%d]: %g vs finite difference %g",
                             a, i, g[i], fd);
        }
    }
}

TEST(layernorm_and_attention_gradients_match_finite_differences)
{
    /* layer norm: one row of 6, loss = sum(out * r) */
    float x[6] = {0.3f, -1.2f, 2.0f, 0.5f, -0.7f, 1.1f}, w[6] = {1, 0.5f, -1, 2, 1, 0.3f};
    float b[6] = {0.1f, 0, -0.2f, 0, 0.3f, 0}, r[6] = {1, -1, 0.5f, 2, -0.3f, 1};
    float out[6], mean, rstd, dx[6] = {0}, dw[6] = {0}, db[6] = {0};
    fb_layernorm_forward(out, &mean, &rstd, x, w, b, 1, 6, 1e-5f);
    fb_layernorm_backward(dx, dw, db, r, x, w, &mean, &rstd, 1, 6);
    for (int i = 0; i < 6; i++) {
        double l[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float xx[6];
            memcpy(xx, x, sizeof x);
            xx[i] += sgn ? -1e-2f : 1e-2f;
            float o[6], mm, rr;
            fb_layernorm_forward(o, &mm, &rr, xx, w, b, 1, 6, 1e-5f);
            l[sgn] = 0;
            for (int c = 0; c < 6; c++) l[sgn] += (double)o[c] * r[c];
        }
        double fd = (l[0] - l[1]) / 2e-2;
        if (fabs(fd - dx[i]) > 2e-3 * (1 + fabs(fd)))
            fb_test_fail(__FILE__, __LINE__, "layernorm dx[%d]: %g vs %g", i, dx[i], fd);
    }
    /* attention: B=1, T=3, H=1, D=2; perturb q */
    float q[6] = {0.2f, -0.5f, 1.0f, 0.3f, -0.8f, 0.4f}, k[6] = {0.5f, 0.1f, -0.3f, 0.9f, 0.7f, -0.2f};
    float v[6] = {1, 2, -1, 0.5f, 0.3f, -0.7f}, ro[6] = {1, -1, 0.5f, 2, -0.3f, 1};
    float o[6], att[9], datt[9], dq[6] = {0}, dk[6] = {0}, dv[6] = {0};
    fb_attention_forward(o, att, q, k, v, 1, 3, 1, 2, 0);
    fb_attention_backward(dq, dk, dv, datt, ro, att, q, k, v, 1, 3, 1, 2);
    for (int i = 0; i < 6; i++) {
        double l[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            float qq[6], oo[6], aa[9];
            memcpy(qq, q, sizeof q);
            qq[i] += sgn ? -1e-2f : 1e-2f;
            fb_attention_forward(oo, aa, qq, k, v, 1, 3, 1, 2, 0);
            l[sgn] = 0;
            for (int c = 0; c < 6; c++) l[sgn] += (double)oo[c] * ro[c];
        }
        double fd = (l[0] - l[1]) / 2e-2;
        if (fabs(fd - dq[i]) > 2e-3 * (1 + fabs(fd)))
            fb_test_fail(__FILE__, __LINE__, "attention dq[%d]: %g vs %g", i, dq[i], fd);
    }
}

#include "nn/clip_vit.h"

/* The CLIP vision tower and a cosine head against PyTorch: features, logits, loss and the
 * gradient of every parameter, for an RGB quick-GELU model with a projection and a grayscale
 * GELU model without one. */
static void check_clip(const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/nn/%s.config.json", fb_test_ref_dir, name);
    fb_clip_config cfg;
    REQUIRE_OK(fb_clip_config_load(path, &cfg));
    fb_model *ref = load_nn(name);
    REQUIRE(ref);
    fb_clip *net;
    REQUIRE_OK(fb_clip_create(&cfg, 4, &net));
    REQUIRE_OK(fb_clip_set_params(net, ref));
    const float *images = get(ref, "input.images", NULL), *W = get(ref, "input.head", NULL);
    const int32_t *targets = (const int32_t *)get(ref, "input.targets", NULL);
    int64_t nf = 0, nl = 0;
    const float *want_f = get(ref, "out.features", &nf), *want_l = get(ref, "out.logits", &nl);
    REQUIRE(images && W && targets && want_f && want_l);
    const int64_t B = 3, F = nf / B, K = nl / B;
    const float *features;
    REQUIRE_OK(fb_clip_forward(net, images, B, &features));
    close_to("features", features, want_f, nf, 1e-5f);
    float logits[64], normed[256], norms[4], probs[64], dlogits[64] = {0}, dfeat[256] = {0}, scratch[256];
    fb_head_forward(logits, normed, norms, features, W, 10.0f, B, F, K);
    close_to("logits", logits, want_l, nl, 1e-5f);
    float loss = fb_cross_entropy_forward(probs, logits, targets, B, K);
    close_to("loss", &loss, get(ref, "out.loss", NULL), 1, 1e-5f);
    fb_cross_entropy_backward(dlogits, probs, targets, B, K, 1.0f);
    fb_head_backward(dfeat, scratch, dlogits, normed, norms, W, 10.0f, B, F, K);
    fb_clip_zero_grad(net);
    REQUIRE_OK(fb_clip_backward(net, dfeat));
    float gmax = 0.0f; /* the scale of the gradients overall */
    for (int64_t i = 0; i < fb_clip_num_tensors(net); i++) {
        int64_t n;
        char gname[300];
        snprintf(gname, sizeof gname, "grad.%s", fb_clip_tensor_name(net, i, &n));
        const float *want = get(ref, gname, NULL);
        for (int64_t j = 0; want && j < n; j++) gmax = fabsf(want[j]) > gmax ? fabsf(want[j]) : gmax;
    }
    for (int64_t i = 0; i < fb_clip_num_tensors(net); i++) {
        int64_t n;
        const char *pname = fb_clip_tensor_name(net, i, &n);
        char gname[300];
        snprintf(gname, sizeof gname, "grad.%s", pname);
        const float *want = get(ref, gname, NULL);
        if (want) close_to_floor(pname, fb_clip_grad(net, pname, NULL), want, n, 1e-4f, 1e-2f * gmax);
    }
    fb_clip_free(net);
    fb_model_free(ref);
}

TEST(clip_vit_forward_and_gradients_match_pytorch) { check_clip("clip_rgb"); }
TEST(clip_vit_grayscale_gelu_without_projection_matches_pytorch) { check_clip("clip_gray"); }

TEST(clip_vit_bad_config_and_checkpoint_name_the_field_or_tensor)
{
    const char *p = fb_test_path("config.json");
    const char *bad = "{\"hidden_size\": 10, \"intermediate_size\": 8, \"num_attention_heads\": 3,"
                      " \"num_hidden_layers\": 1, \"image_size\": 8, \"patch_size\": 4}";
    fb_test_write_file(p, bad, strlen(bad));
    fb_clip_config cfg;
    EXPECT_ERROR(fb_clip_config_load(p, &cfg), FB_ERR_FORMAT, "not a multiple of num_attention_heads");
    const char *missing = "{\"hidden_size\": 12, \"num_attention_heads\": 3}";
    fb_test_write_file(p, missing, strlen(missing));
    EXPECT_ERROR(fb_clip_config_load(p, &cfg), FB_ERR_FORMAT, "missing field 'intermediate_size'");
    const char *huge = "{\"hidden_size\": 1000000, \"intermediate_size\": 8,"
                       " \"num_attention_heads\": 1, \"num_hidden_layers\": 1, \"image_size\": 8,"
                       " \"patch_size\": 4}";
    fb_test_write_file(p, huge, strlen(huge));
    EXPECT_ERROR(fb_clip_config_load(p, &cfg), FB_ERR_FORMAT, "exceeds 65536");
    const char *inf = "{\"hidden_size\": 1e300}";
    fb_test_write_file(p, inf, strlen(inf));
    EXPECT_ERROR(fb_clip_config_load(p, &cfg), FB_ERR_FORMAT, "'hidden_size' must be a non-negative integer");
    const char *grid = "{\"hidden_size\": 8, \"intermediate_size\": 8, \"num_attention_heads\": 1,"
                       " \"num_hidden_layers\": 1, \"image_size\": 16384, \"patch_size\": 1}";
    fb_test_write_file(p, grid, strlen(grid));
    EXPECT_ERROR(fb_clip_config_load(p, &cfg), FB_ERR_FORMAT, "at most 1024 patches a side");
    /* a checkpoint missing a parameter */
    char path[4200];
    snprintf(path, sizeof path, "%s/nn/clip_gray.config.json", fb_test_ref_dir);
    REQUIRE_OK(fb_clip_config_load(path, &cfg));
    fb_clip *net;
    REQUIRE_OK(fb_clip_create(&cfg, 2, &net));
    fb_model *empty;
    fb_model_create(&empty);
    EXPECT_ERROR(fb_clip_set_params(net, empty), FB_ERR_NOT_FOUND,
                 "lacks parameter 'vision_model.embeddings.class_embedding'");
    fb_model_free(empty);
    fb_clip_free(net);
}

#include "nn/optim.h"

/* The tutorial MLP, 5 steps of SGD (momentum, weight decay) and of AdamW on a fixed batch,
 * against torch.optim: first-step gradients, per-step losses, final weights. */
TEST(mlp_training_with_sgd_and_adamw_follows_torch_optim)
{
    fb_model *ref = load_nn("mlp_train");
    REQUIRE(ref);
    const float *x = get(ref, "x", NULL);
    const int32_t *y = (const int32_t *)get(ref, "y", NULL);
    REQUIRE(x && y);
    const int64_t N = 8, I = 4, H = 6, O = 3, NP = H * I + H + O * H + O;
    const char *names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
    const int64_t sizes[4] = {H * I, H, O * H, O};
    for (int which = 0; which < 2; which++) {
        float p[64], gr[64], out[24], h[48], a[48], probs[24], dout[24], da[48], dh[48];
        int64_t off = 0;
        for (int t = 0; t < 4; t++) {
            char k[64];
            snprintf(k, sizeof k, "init.%s", names[t]);
            memcpy(p + off, get(ref, k, NULL), (size_t)sizes[t] * 4);
            off += sizes[t];
        }
        REQUIRE(off == NP);
        float *w0 = p, *b0 = p + H * I, *w2 = b0 + H, *b2 = w2 + O * H;
        fb_sgd sgd;
        fb_adamw adam;
        fb_sgd_init(&sgd, NP, 0.1f, 0.9f, 1e-3f);
        REQUIRE_OK(fb_adamw_init(&adam, NP, 0.01f, 1e-2f));
        float losses[5];
        for (int step = 0; step < 5; step++) {
            memset(gr, 0, sizeof gr);
            memset(dout, 0, sizeof dout);
            fb_mlp_forward(out, h, a, x, w0, b0, w2, b2, N, I, H, O);
            losses[step] = fb_cross_entropy_forward(probs, out, y, N, O);
            fb_cross_entropy_backward(dout, probs, y, N, O, 1.0f);
            fb_mlp_backward(NULL, gr, gr + H * I, gr + H * I + H, gr + H * I + H + O * H, da, dh,
                            dout, x, h, a, w0, w2, N, I, H, O);
            if (step == 0) {
                int64_t o2 = 0;
                for (int t = 0; t < 4; t++) {
                    char k[64];
                    snprintf(k, sizeof k, "grad0.%s", names[t]);
                    close_to(k, gr + o2, get(ref, k, NULL), sizes[t], 1e-5f);
                    o2 += sizes[t];
                }
            }
            if (which == 0) fb_sgd_step(&sgd, p, gr);
            else fb_adamw_step(&adam, p, gr);
        }
        const char *opt = which ? "adamw" : "sgd";
        char k[64];
        snprintf(k, sizeof k, "%s.losses", opt);
        close_to(k, losses, get(ref, k, NULL), 5, 1e-5f);
        int64_t o2 = 0;
        for (int t = 0; t < 4; t++) {
            snprintf(k, sizeof k, "%s.%s", opt, names[t]);
            close_to(k, p + o2, get(ref, k, NULL), sizes[t], 1e-5f);
            o2 += sizes[t];
        }
        fb_sgd_free(&sgd);
        fb_adamw_free(&adam);
    }
    fb_model_free(ref);
}

#include "nn/train.h"

/* A synthetic task the small CLIP can learn: the class is which quadrant of the image is
 * bright. Training must lower the loss, reach high accuracy, and give the same weights for
 * the same seed, for 1 and 2 threads. */
static void quadrant_data(float *images, int32_t *labels, int64_t n, int64_t S)
{
    uint64_t s = 3;
    for (int64_t i = 0; i < n; i++) {
        int32_t q = (int32_t)(i % 4);
        labels[i] = q;
        for (int64_t y = 0; y < S; y++)
            for (int64_t x = 0; x < S; x++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                float noise = (float)((s >> 40) & 0xffff) / 65536.0f - 0.5f;
                int inside = (y < S / 2) == (q < 2) && (x < S / 2) == (q % 2 == 0);
                images[(i * S + y) * S + x] = (inside ? 1.0f : -1.0f) + 0.3f * noise;
            }
    }
}

static void train_once(int threads, float *params_out, int64_t *np, double *acc, float *first, float *last)
{
    fb_set_num_threads(threads);
    fb_clip_config cfg = {16, 32, 2, 1, 8, 4, 1, 8, 1, 1e-5f};
    fb_clip *net;
    if (fb_clip_create(&cfg, 16, &net)) return;
    float *p = fb_clip_params(net);
    uint64_t s = 9;
    for (int64_t i = 0; i < fb_clip_num_params(net); i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = ((float)((s >> 40) & 0xffffff) / 16777216.0f - 0.5f) * 0.4f;
    }
    for (int64_t t = 0; t < fb_clip_num_tensors(net); t++) { /* layer norms start as identity */
        int64_t ln;
        const char *name = fb_clip_tensor_name(net, t, &ln);
        if (!strstr(name, "norm")) continue;
        float *w = fb_clip_param(net, name, NULL);
        for (int64_t i = 0; i < ln; i++) w[i] = strstr(name, ".weight") ? 1.0f : 0.0f;
    }
    float head[4 * 8];
    for (int i = 0; i < 32; i++) head[i] = (float)((i * 37) % 11) / 11.0f - 0.5f;
    float images[128 * 64];
    int32_t labels[128];
    quadrant_data(images, labels, 128, 8);
    fb_train_options o = {.steps = 1, .batch = 16, .adamw = 1, .lr = 3e-3f, .weight_decay = 0.0f,
                          .head_scale = 10.0f, .train_backbone = 1, .train_head = 1, .seed = 5};
    fb_clip_train(net, head, 4, images, labels, 128, &o, first);
    o.steps = 300;
    o.seed = 6;
    fb_clip_train(net, head, 4, images, labels, 128, &o, last);
    fb_clip_accuracy(net, head, 4, 10.0f, images, labels, 128, acc);
    *np = fb_clip_num_params(net);
    memcpy(params_out, p, (size_t)*np * sizeof(float));
    fb_clip_free(net);
    fb_set_num_threads(0);
}

TEST(training_learns_and_is_reproducible_for_any_thread_count)
{
    static float a[200000], b[200000];
    int64_t na = 0, nb = 0;
    double acc_a = 0, acc_b = 0;
    float first = 0, last = 0, first_b = 0, last_b = 0;
    train_once(1, a, &na, &acc_a, &first, &last);
    train_once(2, b, &nb, &acc_b, &first_b, &last_b);
    REQUIRE(na > 0 && na == nb);
    EXPECT(last < 0.5f * first);
    EXPECT(acc_a >= 0.9);
    if (memcmp(a, b, (size_t)na * sizeof(float)) != 0)
        fb_test_fail(__FILE__, __LINE__, "1 and 2 threads trained different weights");
    if (!(last < 0.5f * first) || acc_a < 0.9)
        fb_test_fail(__FILE__, __LINE__, "loss %g -> %g, accuracy %.3f", first, last, acc_a);
}

/* Generic finite differences: f maps x[n] to y[m] (forward), g accumulates dL/dx for
 * L = sum(y * r) (backward). Checks every input element. */
typedef void (*fd_forward)(const float *x, float *y, void *ctx);
typedef void (*fd_backward)(const float *x, const float *r, float *dx, void *ctx);

static void fd_check(const char *what, fd_forward f, fd_backward g, float *x, int64_t n, int64_t m,
                     void *ctx, float h, float tol)
{
    float *r = zeros(m), *dx = zeros(n), *y = zeros(m);
    for (int64_t i = 0; i < m; i++) r[i] = (float)((i * 37) % 13) / 13.0f - 0.4f;
    g(x, r, dx, ctx);
    for (int64_t i = 0; i < n; i++) {
        double l[2];
        float keep = x[i];
        for (int s = 0; s < 2; s++) {
            x[i] = keep + (s ? -h : h);
            f(x, y, ctx);
            l[s] = 0;
            for (int64_t j = 0; j < m; j++) l[s] += (double)y[j] * r[j];
        }
        x[i] = keep;
        double fd = (l[0] - l[1]) / (2.0 * h);
        if (fabs(fd - dx[i]) > tol * (1.0 + fabs(fd))) {
            fb_test_fail(__FILE__, __LINE__, "%s: d/dx[%lld] = %g, finite difference %g", what,
                         (long long)i, dx[i], fd);
            break;
        }
    }
    free(r);
    free(dx);
    free(y);
}

/* linear: x = [inp (2x3) | W (4x3) | b (4)], y = out (2x4) */
static void lin_f(const float *x, float *y, void *c)
{
    (void)c;
    fb_linear_forward(y, x, x + 6, x + 18, 2, 3, 4);
}
static void lin_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    fb_linear_backward(dx, dx + 6, dx + 18, r, x, x + 6, 2, 3, 4);
}
static void relu_f(const float *x, float *y, void *c)
{
    (void)c;
    fb_relu_forward(y, x, 7);
}
static void relu_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    fb_relu_backward(dx, x, r, 7);
}
static void sm_f(const float *x, float *y, void *c)
{
    (void)c;
    fb_softmax_forward(y, x, 2, 4);
}
static void sm_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    float p[8];
    fb_softmax_forward(p, x, 2, 4);
    fb_softmax_backward(dx, p, r, 2, 4);
}
static const int32_t fd_targets[3] = {2, 0, 3};
static void ce_f(const float *x, float *y, void *c)
{
    (void)c;
    float p[12];
    y[0] = fb_cross_entropy_forward(p, x, fd_targets, 3, 4);
}
static void ce_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    float p[12];
    fb_cross_entropy_forward(p, x, fd_targets, 3, 4);
    fb_cross_entropy_backward(dx, p, fd_targets, 3, 4, r[0]);
}
static void ent_f(const float *x, float *y, void *c)
{
    (void)c;
    float p[12];
    y[0] = fb_entropy_forward(p, x, 3, 4);
}
static void ent_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    float p[12];
    fb_entropy_forward(p, x, 3, 4);
    fb_entropy_backward(dx, p, 3, 4, r[0]);
}
/* patch embedding: x = W (3 x 2*2*2), images (1x2x4x4, data: no gradient) in ctx;
 * y = out (1 x 4 patches x 3) */
static void pe_f(const float *x, float *y, void *c)
{
    float cols[4 * 8];
    fb_patch_embed_forward(y, cols, c, x, 1, 2, 4, 2, 3);
}
static void pe_g(const float *x, const float *r, float *dx, void *c)
{
    float cols[4 * 8], y[12];
    fb_patch_embed_forward(y, cols, c, x, 1, 2, 4, 2, 3);
    fb_patch_embed_backward(dx, r, cols, 1, 2, 4, 2, 3);
}
/* cosine head: x = features (2x3), W fixed (4x3) */
static const float fd_W[12] = {0.5f, -0.2f, 0.8f, 0.1f, 0.9f, -0.4f, -0.6f, 0.3f, 0.2f, 0.7f, 0.7f, 0.1f};
static void head_f(const float *x, float *y, void *c)
{
    (void)c;
    float nd[6], nr[2];
    fb_head_forward(y, nd, nr, x, fd_W, 3.0f, 2, 3, 4);
}
static void head_g(const float *x, const float *r, float *dx, void *c)
{
    (void)c;
    float y[8], nd[6], nr[2], s[3];
    fb_head_forward(y, nd, nr, x, fd_W, 3.0f, 2, 3, 4);
    fb_head_backward(dx, s, r, nd, nr, fd_W, 3.0f, 2, 3, 4);
}

TEST(every_kernel_gradient_matches_finite_differences)
{
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)((i * 53) % 29) / 14.5f - 1.0f + 0.013f * (float)i;
    fd_check("linear", lin_f, lin_g, x, 22, 8, NULL, 1e-2f, 2e-3f);
    fd_check("relu", relu_f, relu_g, x, 7, 7, NULL, 1e-3f, 2e-3f);
    fd_check("softmax", sm_f, sm_g, x, 8, 8, NULL, 1e-2f, 2e-3f);
    fd_check("cross entropy", ce_f, ce_g, x, 12, 1, NULL, 1e-2f, 2e-3f);
    fd_check("entropy", ent_f, ent_g, x, 12, 1, NULL, 1e-2f, 2e-3f);
    float images[32], pw[24];
    memcpy(images, x, sizeof images);
    memcpy(pw, x + 32, sizeof pw);
    fd_check("patch embedding", pe_f, pe_g, pw, 24, 12, images, 1e-2f, 2e-3f);
    fd_check("cosine head", head_f, head_g, x, 6, 8, NULL, 1e-3f, 3e-3f);
}

TEST(clip_checkpoint_with_a_wrong_shape_names_the_tensor)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/nn/clip_gray.config.json", fb_test_ref_dir);
    fb_clip_config cfg;
    REQUIRE_OK(fb_clip_config_load(path, &cfg));
    cfg.intermediate = 30; /* the checkpoint has 24 */
    fb_clip *net;
    REQUIRE_OK(fb_clip_create(&cfg, 2, &net));
    fb_model *ref = load_nn("clip_gray");
    REQUIRE(ref);
    EXPECT_ERROR(fb_clip_set_params(net, ref), FB_ERR_MISMATCH,
                 "parameter 'vision_model.encoder.layers.0.mlp.fc1.weight' has 288 F32 elements, the config needs 360");
    fb_model_free(ref);
    fb_clip_free(net);
}
