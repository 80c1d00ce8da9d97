/*
 * test_simd.c: FB_SIMD, and a merge's bytes under every SIMD level the CPU has.
 *
 * The hand-written AVX2 and AVX-512 kernels promise the same operations in the same order as
 * their plain C versions. Here every data-free method that does not call BLAS/LAPACK merges
 * one pool through the CLI under each level, and the files must be identical byte for byte.
 * The pool is made to be hard: bf16 task vectors on a coarse lattice, so magnitudes tie across
 * models and sums cancel exactly (TIES's exact majority count, MagMax's ties, EMR's signs),
 * tensors over many merge chunks (TIES's sampled window), an f32 tensor and an int buffer.
 */
#include <stdlib.h>

#include "harness.h"

/* Deterministic draws for the pool. */
static uint64_t next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* _pretrained_ and n models on disk, and pool.yaml naming them. Base entries are multiples of
 * 2^-9 in [0.25, 0.5) and task-vector entries multiples of 2^-7 in [-3, 3] * 2^-7, so every
 * bf16 model is exact and theta_i - theta_0 gives the lattice value back. */
static int write_pool(int n)
{
    static const struct {
        const char *name;
        int64_t shape[2];
        int ndim;
        fb_dtype dtype;
    } tensors[] = {
        {"model.layers.0.mlp.fc1.weight", {512, 384}, 2, FB_BF16},
        {"model.layers.0.mlp.fc1.bias", {512, 1}, 1, FB_BF16},
        {"model.layers.1.self_attn.q_proj.weight", {96, 97}, 2, FB_BF16},
        {"model.layers.1.self_attn.q_proj.bias", {96, 1}, 1, FB_F32},
        {"model.norm.weight", {7, 1}, 1, FB_F32},
    };
    const int num = sizeof tensors / sizeof tensors[0];
    uint64_t seed = 7;
    float *base[8] = {0};
    char yaml[4096] = "models:\n";
    int ok = 1;
    for (int k = 0; k <= n && ok; k++) {
        fb_model *m;
        if (fb_model_create(&m)) return 0;
        for (int t = 0; t < num && ok; t++) {
            int64_t numel = tensors[t].shape[0] * (tensors[t].ndim == 2 ? tensors[t].shape[1] : 1);
            if (k == 0) base[t] = malloc((size_t)numel * 4);
            float *v = malloc((size_t)numel * 4);
            uint8_t *raw = malloc((size_t)numel * 4);
            ok = base[t] && v && raw;
            for (int64_t j = 0; ok && j < numel; j++) {
                if (k == 0) base[t][j] = (float)(128 + (int)(next(&seed) % 128)) / 512.0f;
                int c = (int)(next(&seed) % 7) - 3;
                if (tensors[t].dtype == FB_F32 && k) c = c * 1000 + (int)(next(&seed) % 999);
                v[j] = k ? base[t][j] + (float)c / (tensors[t].dtype == FB_F32 ? 128000.0f : 128.0f)
                         : base[t][j];
            }
            ok = ok && !fb_convert_from_f32(tensors[t].dtype, v, raw, numel) &&
                 !fb_model_add_tensor(m, tensors[t].name, tensors[t].dtype, tensors[t].ndim,
                                      tensors[t].shape, raw, NULL);
            free(v);
            free(raw);
        }
        int64_t ids_shape = 4, ids[4] = {0, 1, 2, 3}; /* a buffer equal in every model */
        ok = ok && !fb_model_add_tensor(m, "model.position_ids", FB_I64, 1, &ids_shape, ids, NULL);
        char name[32], file[64], line[128];
        snprintf(name, sizeof name, k ? "model_%d" : "_pretrained_", k);
        snprintf(file, sizeof file, "%s.safetensors", name);
        ok = ok && !fb_model_save(m, fb_test_path(file), NULL);
        fb_model_free(m);
        snprintf(line, sizeof line, "  %s: %s\n", name, file);
        strcat(yaml, line);
    }
    for (int t = 0; t < num; t++)
        free(base[t]);
    /* and smaller pools for the methods of one or two models */
    const char *one = "models:\n  _pretrained_: _pretrained_.safetensors\n"
                      "  model_1: model_1.safetensors\n";
    const char *two = "models:\n  model_1: model_1.safetensors\n  model_2: model_2.safetensors\n";
    return ok && !fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml)) &&
           !fb_test_write_file(fb_test_path("pool1.yaml"), one, strlen(one)) &&
           !fb_test_write_file(fb_test_path("pool2.yaml"), two, strlen(two));
}

/* Runs the CLI under FB_SIMD=level; returns the exit status. */
static int merge_at(const char *level, const char *method, const char *pool_file,
                    const char *const *overrides, const char *out, char **err)
{
    char m[128], pool[4200], save[4200];
    snprintf(m, sizeof m, "method=%s", method);
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path(pool_file ? pool_file : "pool.yaml"));
    snprintf(save, sizeof save, "merged_model_save_path=%s", out);
    const char *argv[16] = {fb_test_cli, m, pool, save};
    int n = 4;
    for (; overrides[n - 4] && n < 15; n++)
        argv[n] = overrides[n - 4];
    argv[n] = NULL;
    setenv("FB_SIMD", level, 1);
    return fb_test_run(argv, NULL, err);
}

/* 1 if the two files have the same bytes (both absent counts as the same). */
static int same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = fb_test_read_file(a, &la), *y = fb_test_read_file(b, &lb);
    int same = (!x && !y) || (x && y && la == lb && !memcmp(x, y, la));
    free(x);
    free(y);
    return same;
}

TEST(every_simd_level_gives_the_same_bytes_for_every_method_without_blas)
{
    /* Every data-free method the registry has, but those that call BLAS/LAPACK
     * (task_singular_vector, iso_c, iso_cts, wudi: SVDs and matrix products, see
     * docs/reliability.md), the data-driven ones (their BLAS-based nn engine) and the layer
     * restructurings (depth_upscaling, passthrough: copies). */
    static const struct {
        const char *method;
        const char *overrides[4];
        const char *pool; /* NULL: _pretrained_ and four models */
    } cases[] = {
        {"simple_average", {NULL}, NULL},
        {"weighted_average", {"method.weights=[0.1,0.2,0.3,0.4]", NULL}, NULL},
        {"task_arithmetic", {"method.scaling_factor=0.3", NULL}, NULL},
        {"ties_merging", {NULL}, NULL},
        {"ties_merging", {"method.merge_func=mean", "method.threshold=60", NULL}, NULL},
        {"ties_merging", {"method.merge_func=max", "dtype=f32", NULL}, NULL},
        {"dare_task_arithmetic", {"method.seed=3", NULL}, NULL},
        {"dare_ties_merging", {"method.seed=4", NULL}, NULL},
        {"dare_simple_average", {NULL}, NULL},
        {"magmax", {NULL}, NULL},
        {"karcher", {NULL}, NULL},
        {"model_stock", {NULL}, NULL},
        {"consensus_task_arithmetic", {NULL}, NULL},
        {"breadcrumbs", {NULL}, NULL},
        {"breadcrumbs_ties", {NULL}, NULL},
        {"della", {"method.seed=5", NULL}, NULL},
        {"della_linear", {"method.seed=6", NULL}, NULL},
        {"tall_mask", {NULL}, NULL},
        {"emr_merging", {NULL}, NULL},
        {"magnitude_diff_pruning", {NULL}, "pool1.yaml"},
        {"expo", {NULL}, "pool1.yaml"},
        {"linear_interpolation", {"method.t=0.3", NULL}, "pool2.yaml"},
        {"slerp", {"method.t=0.3", NULL}, "pool2.yaml"},
        {"dummy", {NULL}, NULL},
    };
    REQUIRE(write_pool(4));
    const char *levels[3] = {"scalar", "avx2", "avx512"};
    const int num_levels = (int)fb_simd_best() + 1;
    if (num_levels == 1)
        fprintf(stderr, "    (this CPU has only the scalar level: nothing to compare)\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char first[4200], first_masks[4200];
        for (int l = 0; l < num_levels; l++) {
            char out[4200], masks[4200], name[64];
            snprintf(name, sizeof name, "%s.safetensors", levels[l]);
            snprintf(out, sizeof out, "%s", fb_test_path(name));
            snprintf(name, sizeof name, "%s.masks.safetensors", levels[l]);
            snprintf(masks, sizeof masks, "%s", fb_test_path(name));
            char *err = NULL;
            int rc =
                merge_at(levels[l], cases[i].method, cases[i].pool, cases[i].overrides, out, &err);
            if (rc != 0) {
                fb_test_fail(__FILE__, __LINE__, "%s under FB_SIMD=%s: exit %d: %s",
                             cases[i].method, levels[l], rc, err ? err : "");
                free(err);
                break;
            }
            free(err);
            if (l == 0) {
                snprintf(first, sizeof first, "%s", out);
                snprintf(first_masks, sizeof first_masks, "%s", masks);
            } else if (!same_file(first, out) || !same_file(first_masks, masks)) {
                fb_test_fail(__FILE__, __LINE__,
                             "%s %s: FB_SIMD=%s and scalar give different bytes", cases[i].method,
                             cases[i].overrides[0] ? cases[i].overrides[0] : "", levels[l]);
            }
        }
    }
    unsetenv("FB_SIMD");
}

static int one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl && nl[1] == '\0';
}

TEST(simd_level_is_chosen_reported_and_checked)
{
    fb_simd best = fb_simd_best(), got;
    EXPECT(!strcmp(fb_simd_name(FB_SIMD_SCALAR), "scalar"));
    EXPECT(!strcmp(fb_simd_name(FB_SIMD_AVX512), "avx512"));
    EXPECT(!strcmp(fb_simd_name((fb_simd)7), "unknown"));
    /* in the library: set by name, never above the CPU, a bad name an error */
    EXPECT_OK(fb_simd_set("scalar"));
    EXPECT_OK(fb_simd_get(&got));
    EXPECT(got == FB_SIMD_SCALAR);
    EXPECT_ERROR(fb_simd_set("sse4"), FB_ERR_ARG, "'sse4' is not a SIMD level");
    if (best < FB_SIMD_AVX512)
        EXPECT_ERROR(fb_simd_set("avx512"), FB_ERR_UNSUPPORTED, "this CPU lacks avx512");
    EXPECT_OK(fb_simd_get(&got));
    EXPECT(got == FB_SIMD_SCALAR); /* a refused level changes nothing */
    EXPECT_OK(fb_simd_set(NULL));
    EXPECT_OK(fb_simd_get(&got));
    EXPECT(got == best);

    /* the CLI: --version names the level; a level the CPU lacks stops it before any work */
    REQUIRE(write_pool(2));
    char *out = NULL, *err = NULL;
    setenv("FB_SIMD", "scalar", 1);
    EXPECT(fb_test_run((const char *[]){fb_test_cli, "--version", NULL}, &out, NULL) == 0);
    EXPECT(out && strstr(out, "simd: scalar") && strstr(out, "blas: OpenBLAS"));
    free(out);
    char rep[4200];
    snprintf(rep, sizeof rep, "report_save_path=%s", fb_test_path("report.json"));
    EXPECT(merge_at("scalar", "simple_average", NULL, (const char *[]){rep, NULL},
                    fb_test_path("m.safetensors"), NULL) == 0);
    char *report = fb_test_read_file(fb_test_path("report.json"), NULL);
    EXPECT(report && strstr(report, "\"simd\":\t\"scalar\""));
    free(report);
    remove(fb_test_path("m.safetensors"));
    EXPECT(merge_at("mmx", "simple_average", NULL, (const char *[]){NULL},
                    fb_test_path("m.safetensors"), &err) == 2);
    EXPECT(err && strstr(err, "FB_SIMD='mmx' is not a SIMD level") && one_line(err));
    EXPECT(!fb_test_exists(fb_test_path("m.safetensors")));
    free(err);
    err = NULL;
    if (best < FB_SIMD_AVX512) {
        EXPECT(merge_at("avx512", "simple_average", NULL, (const char *[]){NULL},
                        fb_test_path("m.safetensors"), &err) == 2);
        EXPECT(err && strstr(err, "FB_SIMD=avx512: this CPU lacks avx512"));
        EXPECT(!fb_test_exists(fb_test_path("m.safetensors")));
        free(err);
    }
    unsetenv("FB_SIMD");
}
