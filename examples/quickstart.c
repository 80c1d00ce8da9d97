/*
 * quickstart.c: FusionBench's Python tutorial, in C.
 *
 * Makes three MLPs 768 -> 3072 -> 768 in memory (the layout of PyTorch's
 * nn.Sequential(nn.Linear(768, 3072), nn.ReLU(), nn.Linear(3072, 768)): tensors 0.weight,
 * 0.bias, 2.weight, 2.bias), puts them in a model pool, and merges them three ways:
 * simple average, weighted average (0.5, 0.3, 0.2, normalized) and task arithmetic (0.3, with
 * a fourth model as _pretrained_). Each result is checked against the formula computed here.
 *
 * Build and run: make && ./build/quickstart [OUTPUT.safetensors]
 * or, installed:  cc quickstart.c $(pkg-config --cflags --libs fusionbench) -o quickstart
 * The last merge is saved to OUTPUT (default: quickstart_merged.safetensors here).
 */
#include <fusionbench.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                         \
    do {                                                                                    \
        if ((call) != FB_OK) {                                                              \
            fprintf(stderr, "quickstart: %s failed: %s\n", #call, fb_last_error());         \
            exit(1);                                                                        \
        }                                                                                   \
    } while (0)

static const char *names[] = {"0.weight", "0.bias", "2.weight", "2.bias"};
static const int64_t shapes[4][2] = {{3072, 768}, {3072, 0}, {768, 3072}, {768, 0}};

/* A small deterministic generator, so the example prints the same numbers every run. */
static float uniform(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* An MLP with random weights; the model owns copies of the bytes. */
static fb_model *make_mlp(uint64_t seed)
{
    fb_model *m;
    CHECK(fb_model_create(&m));
    for (int i = 0; i < 4; i++) {
        int ndim = shapes[i][1] ? 2 : 1;
        int64_t n = shapes[i][0] * (ndim == 2 ? shapes[i][1] : 1);
        float *w = malloc((size_t)n * sizeof *w);
        for (int64_t j = 0; j < n; j++) w[j] = 0.05f * uniform(&seed);
        CHECK(fb_model_add_tensor(m, names[i], FB_F32, ndim, shapes[i], w, NULL));
        free(w);
    }
    return m;
}

/* The largest |merged - expected| over every tensor; expected(i, j) computes one element. */
typedef float (*formula)(const fb_model *const *models, const fb_model *base, int64_t t,
                         int64_t j);

static const float *f32(const fb_model *m, int64_t t)
{
    const void *p;
    CHECK(fb_tensor_data(fb_model_tensor(m, t), &p));
    return p;
}

static float mean3(const fb_model *const *m, const fb_model *b, int64_t t, int64_t j)
{
    (void)b;
    return (f32(m[0], t)[j] + f32(m[1], t)[j] + f32(m[2], t)[j]) / 3.0f;
}

static float weighted(const fb_model *const *m, const fb_model *b, int64_t t, int64_t j)
{
    (void)b;
    return 0.5f * f32(m[0], t)[j] + 0.3f * f32(m[1], t)[j] + 0.2f * f32(m[2], t)[j];
}

static float task_arith(const fb_model *const *m, const fb_model *b, int64_t t, int64_t j)
{
    float base = f32(b, t)[j], tau = 0;
    for (int i = 0; i < 3; i++) tau += f32(m[i], t)[j] - base;
    return base + 0.3f * tau;
}

static double max_error(const fb_model *merged, const fb_model *const *models,
                        const fb_model *base, formula f)
{
    double worst = 0;
    for (int64_t t = 0; t < fb_model_num_tensors(merged); t++) {
        const float *got = f32(merged, t);
        for (int64_t j = 0; j < fb_tensor_numel(fb_model_tensor(merged, t)); j++) {
            double e = fabs((double)got[j] - (double)f(models, base, t, j));
            if (e > worst) worst = e;
        }
    }
    return worst;
}

static int report(const char *what, const fb_model *merged, double err)
{
    printf("%-18s %lld tensors, %lld parameters, max |error| vs formula = %.3g\n", what,
           (long long)fb_model_num_tensors(merged), (long long)fb_model_num_params(merged), err);
    return err <= 1e-6;
}

int main(int argc, char **argv)
{
    const char *out_path = argc > 1 ? argv[1] : "quickstart_merged.safetensors";
    /* The pool takes ownership of the models; keep borrowed pointers for checking. */
    fb_modelpool *pool;
    CHECK(fb_modelpool_create(&pool));
    const char *model_names[] = {"model_a", "model_b", "model_c"};
    const fb_model *models[3];
    for (int i = 0; i < 3; i++) {
        CHECK(fb_modelpool_add_model(pool, model_names[i], make_mlp(100 + (uint64_t)i)));
        models[i] = fb_modelpool_get(pool, model_names[i]);
    }

    int ok = 1;
    fb_method *method;
    fb_model *merged;

    /* 1. simple average */
    CHECK(fb_method_create("simple_average", NULL, &method));
    CHECK(fb_method_run(method, pool, NULL, &merged));
    ok &= report("simple_average", merged, max_error(merged, models, NULL, mean3));
    fb_model_free(merged);
    fb_method_free(method);

    /* 2. weighted average: weights in pool order, normalized to sum to 1 */
    CHECK(fb_method_create("weighted_average", "{weights: [0.5, 0.3, 0.2], normalize: true}",
                           &method));
    CHECK(fb_method_run(method, pool, NULL, &merged));
    ok &= report("weighted_average", merged, max_error(merged, models, NULL, weighted));
    fb_model_free(merged);
    fb_method_free(method);

    /* 3. task arithmetic: a fourth model is the pretrained base */
    CHECK(fb_modelpool_add_model(pool, "_pretrained_", make_mlp(7)));
    CHECK(fb_method_create("task_arithmetic", "{scaling_factor: 0.3}", &method));
    CHECK(fb_method_run(method, pool, NULL, &merged));
    ok &= report("task_arithmetic", merged,
                 max_error(merged, models, fb_modelpool_get(pool, "_pretrained_"), task_arith));

    /* Save the last merge; any safetensors reader can open it. */
    CHECK(fb_model_save(merged, out_path, NULL));
    printf("saved %s\n", out_path);
    fb_model_free(merged);
    fb_method_free(method);
    fb_modelpool_free(pool);
    printf(ok ? "quickstart: all merges match their formulas\n"
              : "quickstart: MISMATCH against the formulas\n");
    return ok ? 0 : 1;
}
