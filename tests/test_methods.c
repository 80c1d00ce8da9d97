/*
 * test_methods.c: every merge against PyTorch's result on the same inputs (cases.json from
 * tests/reference/make_reference.py), through the API in memory and streamed to files; the
 * same bytes for any thread count; and the errors a pool or a parameter can cause.
 */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "config/config.h"
#include "harness.h"

static cJSON *load_cases(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/cases.json", fb_test_ref_dir);
    return fb_test_read_json(path);
}

static const char *str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Runs one case through the API: to memory when path is NULL, else to that file. */
static void run_case(const cJSON *c, const char *path)
{
    fb_modelpool *pool;
    fb_method *m;
    fb_model *got = NULL, *want;
    REQUIRE_OK(fb_modelpool_load_config(str(c, "pool"), &pool));
    REQUIRE_OK(fb_method_create(str(c, "method"), str(c, "params"), &m));
    fb_run_options ro = {0};
    if (str(c, "out_dtype")) {
        ro.out_dtype_set = 1;
        EXPECT_OK(fb_dtype_from_name(str(c, "out_dtype"), &ro.out_dtype));
    }
    fb_model *extras = NULL, *want_extras = NULL;
    if (path) {
        EXPECT_OK(fb_method_run_to_file(m, pool, &ro, path, NULL));
        EXPECT_OK(fb_model_load(path, &got));
        if (str(c, "expected_extras")) {
            char xp[4200];
            snprintf(xp, sizeof xp, "%.*s.masks.safetensors", (int)(strlen(path) - 12), path);
            EXPECT_OK(fb_model_load(xp, &extras));
        }
    } else {
        EXPECT_OK(fb_method_run_extras(m, pool, &ro, &got, &extras));
    }
    if (str(c, "expected_extras")) {
        REQUIRE_OK(fb_model_load(str(c, "expected_extras"), &want_extras));
        /* masks exactly; the rescalers (ratios of double sums) within 1e-6 */
        if (!extras || !fb_test_models_close(extras, want_extras, 1e-6))
            fb_test_fail(__FILE__, __LINE__, "extras of %s on %s differ", str(c, "method"),
                         str(c, "dtype"));
        fb_model_free(want_extras);
    } else if (extras) {
        fb_test_fail(__FILE__, __LINE__, "%s returned extras", str(c, "method"));
    }
    fb_model_free(extras);
    REQUIRE_OK(fb_model_load(str(c, "expected"), &want));
    const cJSON *rtol = cJSON_GetObjectItem(c, "rtol");
    int same = cJSON_IsNumber(rtol) ? fb_test_models_close(got, want, rtol->valuedouble)
                                    : fb_test_models_match(got, want, 1);
    if (got && !same)
        fb_test_fail(__FILE__, __LINE__, "case %s %s on %s (%s) differs from PyTorch",
                     str(c, "method"), str(c, "params") ? str(c, "params") : "",
                     str(c, "dtype"), path ? "file" : "memory");
    fb_model_free(got);
    fb_model_free(want);
    fb_method_free(m);
    fb_modelpool_free(pool);
}

TEST(merges_in_memory_match_pytorch)
{
    cJSON *cases = load_cases();
    REQUIRE(cases && cJSON_GetArraySize(cases) >= 15);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) run_case(c, NULL);
    cJSON_Delete(cases);
}

TEST(merges_streamed_to_files_match_pytorch)
{
    cJSON *cases = load_cases();
    REQUIRE(cases);
    const cJSON *c;
    int i = 0;
    cJSON_ArrayForEach(c, cases)
    {
        char name[64];
        snprintf(name, sizeof name, "case%d.safetensors", i++);
        run_case(c, fb_test_path(name));
    }
    cJSON_Delete(cases);
}

/* A pool in memory: _pretrained_ + n models whose tensors span many chunks. */
static fb_modelpool *random_pool(int n, fb_dtype dtype, uint64_t seed)
{
    fb_modelpool *pool;
    if (fb_modelpool_create(&pool)) return NULL;
    const int64_t shapes[3][2] = {{517, 389}, {389, 1}, {3, 7}};
    for (int k = 0; k <= n; k++) {
        fb_model *m;
        fb_model_create(&m);
        for (int t = 0; t < 3; t++) {
            int64_t numel = shapes[t][0] * shapes[t][1];
            float *v = malloc((size_t)numel * 4);
            uint8_t *raw = malloc((size_t)numel * 8);
            for (int64_t j = 0; j < numel; j++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                v[j] = (float)((seed >> 40) & 0xffffff) / 16777216.0f - 0.5f;
            }
            fb_convert_from_f32(dtype, v, raw, numel);
            char name[32];
            snprintf(name, sizeof name, "layer%d.weight", t);
            fb_model_add_tensor(m, name, dtype, 2, shapes[t], raw, NULL);
            free(v);
            free(raw);
        }
        char name[32];
        snprintf(name, sizeof name, k == 0 ? "_pretrained_" : "model_%d", k);
        fb_modelpool_add_model(pool, name, m);
    }
    return pool;
}

TEST(same_bytes_for_one_and_two_threads)
{
    const char *methods[][2] = {{"simple_average", NULL},
                                {"weighted_average", "{weights: [1, 2, 3, 4, 5]}"},
                                {"task_arithmetic", "{scaling_factor: 0.45}"},
                                {"ties_merging", "{threshold: 30}"},
                                {"ties_merging", "{merge_func: mean, remove_keys: [layer2.weight]}"},
                                {"dare_task_arithmetic", "{seed: 5}"},
                                {"dare_ties_merging", "{seed: 9}"},
                                {"dare_simple_average", NULL},
                                {"magmax", NULL},
                                {"model_stock", NULL},
                                {"karcher", NULL},
                                {"task_singular_vector", NULL},
                                {"iso_c", NULL},
                                {"iso_cts", NULL},
                                {"consensus_task_arithmetic", NULL},
                                {"breadcrumbs_ties", NULL},
                                {"della", "{seed: 3}"},
                                {"wudi", "{iter_num: 5}"}};
    const int num_methods = sizeof methods / sizeof methods[0];
    fb_dtype dtypes[] = {FB_F32, FB_BF16};
    for (int d = 0; d < 2; d++) {
        fb_modelpool *pool = random_pool(5, dtypes[d], 42 + (uint64_t)d);
        REQUIRE(pool);
        for (int i = 0; i < num_methods; i++) {
            fb_method *m;
            REQUIRE_OK(fb_method_create(methods[i][0], methods[i][1], &m));
            char *bytes[2];
            size_t len[2];
            for (int t = 0; t < 2; t++) {
                fb_set_num_threads(t + 1);
                const char *p = fb_test_path(t ? "two.safetensors" : "one.safetensors");
                EXPECT_OK(fb_method_run_to_file(m, pool, NULL, p, NULL));
                bytes[t] = fb_test_read_file(p, &len[t]);
            }
            fb_set_num_threads(0);
            if (!(bytes[0] && bytes[1] && len[0] == len[1] && !memcmp(bytes[0], bytes[1], len[0])))
                fb_test_fail(__FILE__, __LINE__, "%s %s: 1 and 2 threads differ", methods[i][0],
                             methods[i][1] ? methods[i][1] : "");
            free(bytes[0]);
            free(bytes[1]);
            fb_method_free(m);
        }
        fb_modelpool_free(pool);
    }
}

/* Pools that are wrong in one way each. */
static fb_model *tiny(const char *name, fb_dtype dt, int64_t n, float value)
{
    fb_model *m;
    fb_model_create(&m);
    float v[16];
    uint8_t raw[128];
    for (int i = 0; i < 16; i++) v[i] = value + (float)i;
    if (fb_dtype_is_float(dt) && dt != FB_F8_E4M3 && dt != FB_F8_E5M2)
        fb_convert_from_f32(dt, v, raw, n);
    else
        memset(raw, (int)value, sizeof raw);
    fb_model_add_tensor(m, name, dt, 1, &n, raw, NULL);
    return m;
}

static fb_status merge_pool(const char *method, const char *params, fb_modelpool *pool)
{
    fb_method *m;
    fb_status st = fb_method_create(method, params, &m);
    if (st) return st;
    fb_model *out = NULL;
    st = fb_method_run(m, pool, NULL, &out);
    fb_model_free(out);
    fb_method_free(m);
    return st;
}

TEST(task_arithmetic_without_pretrained_is_an_error)
{
    fb_modelpool *pool;
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    EXPECT_ERROR(merge_pool("task_arithmetic", NULL, pool), FB_ERR_ARG, "_pretrained_");
    EXPECT_OK(merge_pool("simple_average", NULL, pool));
    fb_modelpool_free(pool);
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "_pretrained_", tiny("w", FB_F32, 4, 1));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_ARG, "no models to merge");
    fb_modelpool_free(pool);
}

TEST(mismatched_models_name_the_model_and_tensor)
{
    fb_modelpool *pool;
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    fb_modelpool_add_model(pool, "b", tiny("v", FB_F32, 4, 1));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_MISMATCH,
                 "model 'b' (in memory) does not have the same tensors as model 'a'");
    EXPECT(strstr(fb_last_error(), "lacks 1: 'w'") && strstr(fb_last_error(), "extra: 'v'"));
    fb_modelpool_free(pool);

    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    fb_modelpool_add_model(pool, "b", tiny("w", FB_F32, 5, 1));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_MISMATCH,
                 "tensor 'w' has shape [5] in model 'b'");
    fb_modelpool_free(pool);

    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    fb_modelpool_add_model(pool, "b", tiny("w", FB_BF16, 4, 1));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_MISMATCH,
                 "tensor 'w' is BF16 in model 'b'");
    fb_modelpool_free(pool);

    /* integer buffers are copied, so they must agree */
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("ids", FB_I64, 4, 1));
    fb_modelpool_add_model(pool, "b", tiny("ids", FB_I64, 4, 2));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_MISMATCH,
                 "copied rather than merged");
    fb_modelpool_free(pool);

    /* F8 inputs need an output dtype that can be written */
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F8_E4M3, 4, 1));
    EXPECT_ERROR(merge_pool("simple_average", NULL, pool), FB_ERR_UNSUPPORTED, "F8_E4M3");
    fb_modelpool_free(pool);
}

TEST(bad_method_names_and_parameters_are_errors)
{
    fb_method *m = NULL;
    EXPECT_ERROR(fb_method_create("ties_mergin", NULL, &m), FB_ERR_NOT_FOUND,
                 "unknown method 'ties_mergin'");
    EXPECT_ERROR(fb_method_create("task_arithmetic", "{scaling_factr: 0.3}", &m), FB_ERR_CONFIG,
                 "no parameter 'scaling_factr' (known: scaling_factor)");
    EXPECT_ERROR(fb_method_create("task_arithmetic", "{scaling_factor: abc}", &m),
                 FB_ERR_CONFIG, "'scaling_factor' must be a number");
    EXPECT_ERROR(fb_method_create("weighted_average", NULL, &m), FB_ERR_CONFIG,
                 "'weights' is required");
    EXPECT_ERROR(fb_method_create("weighted_average", "{weights: [1, -1]}", &m), FB_ERR_ARG,
                 "sum to 0");
    EXPECT_ERROR(fb_method_create("weighted_average", "{weights: [1, x]}", &m), FB_ERR_CONFIG,
                 "weights[1]");
    EXPECT_ERROR(fb_method_create("simple_average", "[1, 2]", &m), FB_ERR_CONFIG,
                 "must be a mapping");
    EXPECT_ERROR(fb_method_create("ties_merging", "{threshold: 0}", &m), FB_ERR_ARG,
                 "'threshold' is 0");
    EXPECT_ERROR(fb_method_create("ties_merging", "{threshold: 120}", &m), FB_ERR_ARG,
                 "'threshold' is 120; it must be in [0, 100]");
    EXPECT_ERROR(fb_method_create("ties_merging", "{merge_func: median}", &m), FB_ERR_ARG,
                 "'merge_func' is 'median'");
    EXPECT_ERROR(fb_method_create("dare_task_arithmetic", "{sparsity_ratio: -0.1}", &m),
                 FB_ERR_ARG, "'sparsity_ratio' is -0.1");
    EXPECT_ERROR(fb_method_create("linear_interpolation", "{t: 1.5}", &m), FB_ERR_ARG,
                 "'t' is 1.5; it must be in [0, 1]");
    EXPECT_ERROR(fb_method_create("ties_merging", "{remove_keys: ['(']}", &m), FB_ERR_CONFIG,
                 "not a valid pattern");
    EXPECT_ERROR(fb_method_create("ties_merging", "{threshold: [{filter: mlp, value: 10}, {value: 20}]}",
                                  &m),
                 FB_ERR_UNSUPPORTED, "per-tensor values of 'threshold' are not supported");
    EXPECT_ERROR(fb_method_create("task_arithmetic",
                                  "{scaling_factor: [{filter: mlp, value: 0.5}, {value: x}]}", &m),
                 FB_ERR_CONFIG, "scaling_factor[1]");
    EXPECT_ERROR(fb_method_create("task_arithmetic",
                                  "{scaling_factor: [{filter: '(', value: 0.5}]}", &m),
                 FB_ERR_CONFIG, "not a valid pattern");
    EXPECT(m == NULL);

    fb_modelpool *pool;
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    fb_modelpool_add_model(pool, "b", tiny("w", FB_F32, 4, 2));
    fb_modelpool_add_model(pool, "c", tiny("w", FB_F32, 4, 3));
    EXPECT_ERROR(merge_pool("weighted_average", "{weights: [0.5, 0.5]}", pool), FB_ERR_ARG,
                 "got 2 weights for 3 models");
    EXPECT_ERROR(merge_pool("linear_interpolation", NULL, pool), FB_ERR_ARG,
                 "needs exactly two models");
    fb_modelpool_add_model(pool, "_pretrained_", tiny("w", FB_F32, 4, 0));
    EXPECT_ERROR(merge_pool("expo", NULL, pool), FB_ERR_ARG,
                 "method expo merges exactly 1 model; the pool has 3");
    fb_modelpool_free(pool);
}

TEST(restructuring_errors_name_the_layer_or_model)
{
    char pool_path[4096];
    snprintf(pool_path, sizeof pool_path, "%s/pool_llama/pool.yaml", fb_test_ref_dir);
    fb_modelpool *pool;
    REQUIRE_OK(fb_modelpool_load_config(pool_path, &pool));
    EXPECT_ERROR(merge_pool("passthrough", "{slices: [{model: c, layer_range: [0, 1]}]}", pool),
                 FB_ERR_NOT_FOUND, "base_model 'c' is not in the pool");
    EXPECT_ERROR(merge_pool("passthrough", "{slices: [{model: a, layer_range: [2, 6]}]}", pool),
                 FB_ERR_ARG, "model 'a' has no layer 4 under 'model.layers'");
    EXPECT_ERROR(merge_pool("depth_upscaling", "{layer_indices: [0]}", pool), FB_ERR_ARG,
                 "merges exactly 1 model");
    EXPECT_ERROR(merge_pool("depth_upscaling", "{layer_indices: ['rang(3)']}", pool), FB_ERR_CONFIG,
                 "neither an integer nor range");
    EXPECT_ERROR(merge_pool("passthrough", "{slices: [{model: a, layer_range: [3, 1]}]}", pool),
                 FB_ERR_CONFIG, "0 <= begin <= end");
    fb_modelpool_free(pool);
    /* a model without numbered layers */
    fb_modelpool_create(&pool);
    fb_modelpool_add_model(pool, "a", tiny("w", FB_F32, 4, 1));
    EXPECT_ERROR(merge_pool("depth_upscaling", "{layer_indices: [0]}", pool), FB_ERR_ARG,
                 "no numbered layers");
    fb_modelpool_free(pool);
}

TEST(methods_come_from_fusionbench_config_nodes)
{
    fb_config *node;
    REQUIRE_OK(fb_config_parse("_target_: fusion_bench.method.TaskArithmeticAlgorithm\n"
                               "scaling_factor: 0.5\n",
                               &node));
    fb_method *m;
    REQUIRE_OK(fb_method_create_from_config(node, &m));
    EXPECT(!strcmp(fb_method_name(m), "task_arithmetic"));
    fb_method_free(m);
    fb_config_free(node);
    REQUIRE_OK(fb_config_parse("name: weighted_average\nweights: [1, 2]\n", &node));
    REQUIRE_OK(fb_method_create_from_config(node, &m));
    EXPECT(!strcmp(fb_method_name(m), "weighted_average"));
    fb_method_free(m);
    fb_config_free(node);
    REQUIRE_OK(fb_config_parse("_target_: fusion_bench.method.NoSuchAlgorithm\n", &node));
    EXPECT_ERROR(fb_method_create_from_config(node, &m), FB_ERR_NOT_FOUND, "NoSuchAlgorithm");
    fb_config_free(node);
    EXPECT(fb_method_registry_count() >= 3);
}

TEST(output_may_not_replace_an_input)
{
    fb_model *a = tiny("w", FB_F32, 4, 1), *b = tiny("w", FB_F32, 4, 2);
    const char *pa = fb_test_path("a.safetensors"), *pb = fb_test_path("b.safetensors");
    REQUIRE_OK(fb_model_save(a, pa, NULL));
    REQUIRE_OK(fb_model_save(b, pb, NULL));
    fb_model_free(a);
    fb_model_free(b);
    size_t len_before;
    char *before = fb_test_read_file(pa, &len_before);
    fb_modelpool *pool;
    fb_modelpool_create(&pool);
    REQUIRE_OK(fb_modelpool_add_path(pool, "a", pa));
    REQUIRE_OK(fb_modelpool_add_path(pool, "b", pb));
    fb_method *m;
    REQUIRE_OK(fb_method_create("simple_average", NULL, &m));
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, pa, NULL), FB_ERR_ARG,
                 "is the input file of model 'a'");
    /* the folder holding the inputs is not an output folder either */
    mkdir(fb_test_path("d"), 0755);
    fb_model *c = tiny("w", FB_F32, 4, 3);
    REQUIRE_OK(fb_model_save(c, fb_test_path("d/model.safetensors"), NULL));
    fb_model_free(c);
    REQUIRE_OK(fb_modelpool_add_path(pool, "c", fb_test_path("d")));
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("d"), NULL), FB_ERR_ARG,
                 "holds the input files of model 'c'");
    char *after = fb_test_read_file(pa, NULL);
    EXPECT(before && after && !memcmp(before, after, len_before));
    free(before);
    free(after);
    fb_method_free(m);
    fb_modelpool_free(pool);
}
