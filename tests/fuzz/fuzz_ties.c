/*
 * fuzz_ties.c: differential libFuzzer target for ties_merging. The input picks a pool (2-4
 * models and a base, a few tensors of up to 3 x 16384 + 100 entries, values from a small set
 * so that task vectors tie and cancel often, or from a wide range), the parameters (threshold,
 * merge_func, scaling) and whether the merge goes to memory or to a file; the result must be,
 * to the bit, what a plain implementation gives: each model's cut by sorting its |tau|, the
 * majority counted first, then the merge in FusionBench's order. That exercises the sampled
 * bracket and its radix fallback, fixups, the second output and the majority pass.
 */
#include <fusionbench.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { MAX_MODELS = 4, MAX_TENSORS = 3 };

typedef struct input {
    const uint8_t *data;
    size_t size, at;
} input;

static uint32_t take(input *in, uint32_t limit)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = v << 8 | (in->at < in->size ? in->data[in->at++] : 0);
    return limit ? v % limit : v;
}

static uint32_t bits_of(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u & 0x7fffffffu;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The plain TIES, f32, as docs/methods.md states it. */
static void oracle(int n, int T, const int64_t *len, float *const *base, float *const (*m)[MAX_TENSORS],
                   double threshold, int mf, float lambda, float *const *out)
{
    int64_t d = 0;
    for (int t = 0; t < T; t++) d += len[t];
    uint32_t cut[MAX_MODELS] = {0};
    uint32_t *all = malloc((size_t)(d ? d : 1) * 4);
    double K = threshold > 1 ? threshold / 100 : threshold;
    for (int k = 0; k < n; k++) {
        int64_t i = 0;
        for (int t = 0; t < T; t++)
            for (int64_t j = 0; j < len[t]; j++) all[i++] = bits_of(m[k][t][j] - base[t][j]);
        qsort(all, (size_t)d, 4, cmp_u32);
        int64_t want = d - (int64_t)((double)d * K);
        cut[k] = want > 0 ? all[want - 1] : 0;
    }
    free(all);
#define TRIM(k, t, j) (bits_of(m[k][t][j] - base[t][j]) >= cut[k] ? m[k][t][j] - base[t][j] : 0.0f)
    int64_t pos = 0, neg = 0;
    for (int t = 0; t < T; t++)
        for (int64_t j = 0; j < len[t]; j++) {
            float s = TRIM(0, t, j);
            for (int k = 1; k < n; k++) s += TRIM(k, t, j);
            pos += s > 0;
            neg += s < 0;
        }
    float majority = pos > neg ? 1.0f : pos < neg ? -1.0f : 0.0f;
    for (int t = 0; t < T; t++)
        for (int64_t j = 0; j < len[t]; j++) {
            float s = TRIM(0, t, j);
            for (int k = 1; k < n; k++) s += TRIM(k, t, j);
            float g = s > 0 ? 1.0f : s < 0 ? -1.0f : majority, e = g > 0 ? 1.0f : -1.0f, a = 0, c = 0;
            for (int k = 0; k < n; k++) {
                float x = TRIM(k, t, j);
                if (mf == 2) {
                    float sel = e * x > 0 ? fabsf(x) : 0.0f;
                    a = sel > a ? sel : a;
                } else {
                    float sel = e * x > 0 ? x : 0.0f;
                    a = k ? a + sel : sel;
                    c = k ? c + (sel != 0 ? 1.0f : 0.0f) : (sel != 0 ? 1.0f : 0.0f);
                }
            }
            if (mf == 2) a *= g;
            if (mf == 1) a = a / (c > 1 ? c : 1);
            out[t][j] = base[t][j] + lambda * a;
        }
#undef TRIM
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size, 0};
    int n = 2 + (int)take(&in, 3), T = 1 + (int)take(&in, MAX_TENSORS);
    int mf = (int)take(&in, 3), to_file = (int)take(&in, 2), narrow = (int)take(&in, 2);
    double threshold = 1 + take(&in, 100);
    float lambda = 0.1f * (float)(1 + take(&in, 10));
    int64_t len[MAX_TENSORS];
    static float *base[MAX_TENSORS], *m[MAX_MODELS][MAX_TENSORS], *out[MAX_TENSORS];
    uint64_t seed = take(&in, 0) | (uint64_t)take(&in, 0) << 32;
    for (int t = 0; t < T; t++) {
        len[t] = 1 + take(&in, 3 * 16384 + 100);
        base[t] = realloc(base[t], (size_t)len[t] * 4);
        out[t] = realloc(out[t], (size_t)len[t] * 4);
        for (int k = 0; k < n; k++) m[k][t] = realloc(m[k][t], (size_t)len[t] * 4);
        for (int64_t j = 0; j < len[t]; j++) {
            for (int k = -1; k < n; k++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                int32_t r = (int32_t)(seed >> 40) - (1 << 23);
                /* narrow: a handful of values, so task vectors tie and cancel; else wide */
                float v = narrow ? (float)(r % 4) * 0.25f : (float)r * 1e-7f;
                if (k < 0) base[t][j] = narrow ? 0.5f : v;
                else m[k][t][j] = (narrow ? 0.5f : base[t][j]) + v;
            }
        }
    }
    fb_modelpool *pool;
    if (fb_modelpool_create(&pool)) return 0;
    char name[64];
    for (int k = -1; k < n; k++) {
        fb_model *mdl;
        fb_model_create(&mdl);
        for (int t = 0; t < T; t++) {
            snprintf(name, sizeof name, "w%d", t);
            fb_model_add_tensor(mdl, name, FB_F32, 1, &len[t], k < 0 ? base[t] : m[k][t], NULL);
        }
        snprintf(name, sizeof name, k < 0 ? "_pretrained_" : "m%d", k);
        fb_modelpool_add_model(pool, name, mdl);
    }
    char params[160];
    const char *mfs[] = {"sum", "mean", "max"};
    snprintf(params, sizeof params, "{threshold: %g, merge_func: %s, scaling_factor: %.9g}",
             threshold, mfs[mf], (double)lambda);
    fb_method *method;
    if (fb_method_create("ties_merging", params, &method)) abort();
    fb_model *got = NULL;
    char path[64];
    snprintf(path, sizeof path, "/tmp/fuzz_ties_%d.safetensors", (int)getpid());
    if (to_file) {
        if (fb_method_run_to_file(method, pool, NULL, path, NULL) || fb_model_load(path, &got))
            abort();
    } else if (fb_method_run(method, pool, NULL, &got)) {
        abort();
    }
    oracle(n, T, len, base, (float *const(*)[MAX_TENSORS])m, threshold, mf, lambda, out);
    for (int t = 0; t < T; t++) {
        const float *p;
        snprintf(name, sizeof name, "w%d", t);
        const fb_tensor *g = fb_model_find(got, name);
        if (!g || fb_tensor_data(g, (const void **)&p) || memcmp(p, out[t], (size_t)len[t] * 4)) {
            fprintf(stderr, "fuzz_ties: tensor %s differs from the plain TIES (n %d, threshold %g, %s, "
                    "file %d, narrow %d)\n", name, n, threshold, mfs[mf], to_file, narrow);
            abort();
        }
    }
    fb_model_free(got);
    if (to_file) unlink(path);
    fb_method_free(method);
    fb_modelpool_free(pool);
    return 0;
}
