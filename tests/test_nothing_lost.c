/*
 * test_nothing_lost.c: a run never replaces what it reads, never returns garbage with exit 0,
 * and says what is wrong with the status docs/cli.md promises. One test per way a user was
 * hurt (outputs over inputs, non-finite values, debris, late failures, FIFOs), then the
 * command line's rough edges (exit codes, options, --print-config, patterns, dtypes, sizes).
 * Interrupted runs are in test_faults.c.
 */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

/* base.safetensors and m1..m<n>.safetensors (f32 "layer.weight" [8, 4] and "layer.bias" [8],
 * or `dtype` for model 2), and pool.yaml; `poison` (if finite... or not) goes into m1's weight
 * entry 5 when poison_it is set. */
static void write_pool(int n, fb_dtype dtype2, int poison_it, float poison)
{
    char yaml[1024] = "models:\n  _pretrained_: base.safetensors\n";
    for (int k = 0; k <= n; k++) {
        float w[32], b[8];
        for (int j = 0; j < 32; j++)
            w[j] = (float)((j * 5 + k * 3) % 17) / 17.0f - 0.5f;
        for (int j = 0; j < 8; j++)
            b[j] = (float)(j + k) / 8.0f;
        if (k == 1 && poison_it) w[5] = poison;
        fb_dtype dt = k == 2 ? dtype2 : FB_F32;
        uint8_t wr[256], br[64];
        fb_convert_from_f32(dt, w, wr, 32);
        fb_convert_from_f32(dt, b, br, 8);
        fb_model *m;
        fb_model_create(&m);
        int64_t ws[2] = {8, 4}, bs = 8;
        fb_model_add_tensor(m, "layer.weight", dt, 2, ws, wr, NULL);
        fb_model_add_tensor(m, "layer.bias", dt, 1, &bs, br, NULL);
        char name[64];
        snprintf(name, sizeof name, k ? "m%d.safetensors" : "base.safetensors", k);
        fb_model_save(m, fb_test_path(name), NULL);
        fb_model_free(m);
        if (k) {
            char line[96];
            snprintf(line, sizeof line, "  m%d: %s\n", k, name);
            strcat(yaml, line);
        }
    }
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
}

/* fusion_bench with the pool and up to 8 more arguments; exit status, stderr in *err. */
static int cli(char **err, const char *const *args)
{
    char pool[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    const char *argv[16] = {fb_test_cli, pool};
    int n = 2;
    for (; args[n - 2] && n < 15; n++)
        argv[n] = args[n - 2];
    argv[n] = NULL;
    char *out = NULL;
    int rc = fb_test_run(argv, &out, err);
    free(out);
    return rc;
}

/* The run fails with `code` and one line on stderr containing `want`. */
#define EXPECT_CLI_FAILS(code, want, ...)                                                          \
    do {                                                                                           \
        char *e_ = NULL;                                                                           \
        int rc_ = cli(&e_, (const char *[]){__VA_ARGS__, NULL});                                   \
        if (rc_ != (code) || !e_ || !strstr(e_, (want)) || strchr(e_, '\n') != strrchr(e_, '\n'))  \
            fb_test_fail(__FILE__, __LINE__, "exit %d (want %d), stderr: %s (want '%s')", rc_,     \
                         (code), e_ ? e_ : "", (want));                                            \
        free(e_);                                                                                  \
    } while (0)

static char *snapshot(size_t *len)
{
    size_t total = 0;
    char *all = NULL;
    const char *names[] = {"base.safetensors", "m1.safetensors", "m2.safetensors", "pool.yaml"};
    for (int i = 0; i < 4; i++) {
        size_t l = 0;
        char *b = fb_test_read_file(fb_test_path(names[i]), &l);
        if (!b) continue;
        all = realloc(all, total + l + 1);
        memcpy(all + total, b, l);
        total += l;
        free(b);
    }
    *len = total;
    return all;
}

#define INPUTS_UNCHANGED(before, before_len)                                                       \
    do {                                                                                           \
        size_t l_;                                                                                 \
        char *now_ = snapshot(&l_);                                                                \
        EXPECT(now_ &&l_ == (before_len) && !memcmp(now_, (before), l_));                          \
        free(now_);                                                                                \
    } while (0)

static const char *arg(const char *key, const char *file)
{
    static char ring[6][4400];
    static int next;
    char *p = ring[next++ % 6];
    snprintf(p, 4400, "%s=%s", key, fb_test_path(file));
    return p;
}

TEST(report_path_may_not_be_an_input_or_another_output)
{
    write_pool(2, FB_F32, 0, 0);
    size_t len;
    char *before = snapshot(&len);
    EXPECT_CLI_FAILS(2, "report_save_path", "method=task_arithmetic",
                     arg("report_save_path", "m1.safetensors"));
    EXPECT_CLI_FAILS(2, "is the input file of config", "method=task_arithmetic",
                     arg("report_save_path", "pool.yaml"));
    EXPECT_CLI_FAILS(2, "are the same path", "method=task_arithmetic",
                     arg("merged_model_save_path", "x.safetensors"),
                     arg("report_save_path", "x.safetensors"));
    EXPECT_CLI_FAILS(2, "are the same path", "method=emr_merging",
                     arg("merged_model_save_path", "x.safetensors"),
                     arg("report_save_path", "x.masks.safetensors"));
    /* a hard link and a symlink to an input are the input */
    EXPECT(link(fb_test_path("m2.safetensors"), fb_test_path("hard.json")) == 0);
    EXPECT(symlink(fb_test_path("m1.safetensors"), fb_test_path("soft.json")) == 0);
    EXPECT_CLI_FAILS(2, "is the input file of model 'm2'", "method=task_arithmetic",
                     arg("report_save_path", "hard.json"));
    EXPECT_CLI_FAILS(2, "is the input file of model 'm1'", "method=task_arithmetic",
                     arg("merged_model_save_path", "soft.json"));
    EXPECT(!fb_test_exists(fb_test_path("x.safetensors")));
    INPUTS_UNCHANGED(before, len);
    free(before);
}

TEST(merged_model_may_not_replace_a_pretrained_model_the_method_does_not_read)
{
    write_pool(2, FB_F32, 0, 0);
    size_t len;
    char *before = snapshot(&len);
    EXPECT_CLI_FAILS(2, "is the input file of model '_pretrained_'", "method=simple_average",
                     arg("merged_model_save_path", "base.safetensors"));
    EXPECT_CLI_FAILS(2, "is the input file of model '_pretrained_'", "method=weighted_average",
                     "method.weights=[0.5,0.5]", arg("merged_model_save_path", "base.safetensors"));
    /* the folder form: the folder holding the base */
    char folder[4200];
    snprintf(folder, sizeof folder, "merged_model_save_path=%s", fb_test_tmp());
    EXPECT_CLI_FAILS(2, "holds the input files of model '_pretrained_'", "method=simple_average",
                     folder);
    /* the C API */
    fb_modelpool *pool;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("simple_average", NULL, &m));
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("base.safetensors"), NULL),
                 FB_ERR_ARG, "is the input file of model '_pretrained_'");
    fb_method_free(m);
    fb_modelpool_free(pool);
    INPUTS_UNCHANGED(before, len);
    free(before);
    /* and the summary and the report say the base was not read */
    char *out = NULL;
    char pool_arg[4200];
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    const char *argv[] = {fb_test_cli, pool_arg, "method=simple_average",
                          arg("report_save_path", "r.json"), NULL};
    EXPECT(fb_test_run(argv, &out, NULL) == 0);
    EXPECT(out && strstr(out, "merged 2 models:") && !strstr(out, "(+ _pretrained_)"));
    free(out);
    char *report = fb_test_read_file(fb_test_path("r.json"), NULL);
    EXPECT(report && strstr(report, "\"name\":\t\"_pretrained_\"") &&
           strstr(report, "\"read\":\tfalse"));
    free(report);
}

TEST(non_finite_parameters_and_inputs_are_errors_unless_propagated)
{
    write_pool(2, FB_F32, 0, 0);
    EXPECT_CLI_FAILS(2, "'weights[0]' is .nan; it must be a finite number",
                     "method=weighted_average", "method.weights=[.nan,1]");
    EXPECT_CLI_FAILS(2, "'scaling_factor' is .inf", "method=task_arithmetic",
                     "method.scaling_factor=.inf");
    EXPECT_CLI_FAILS(2, "past float32's range", "method=task_arithmetic",
                     "method.scaling_factor=1e39");
    /* finite inputs, a scale that overflows float32 in the merge */
    EXPECT_CLI_FAILS(2, "merged tensor 'layer.weight' is infinite at element",
                     "method=task_arithmetic", "method.scaling_factor=3e38",
                     arg("merged_model_save_path", "o.safetensors"));
    EXPECT(!fb_test_exists(fb_test_path("o.safetensors")));
    /* an f16 output past 65504 */
    EXPECT_CLI_FAILS(2, "past F16's largest value", "method=task_arithmetic",
                     "method.scaling_factor=1e6", "dtype=f16");
    /* NaN and Inf inside an input: every method refuses them the same way */
    const float poisons[2] = {NAN, INFINITY};
    for (int p = 0; p < 2; p++) {
        write_pool(2, FB_F32, 1, poisons[p]);
        const char *methods[] = {"method=simple_average", "method=task_arithmetic",
                                 "method=ties_merging", "method=magmax"};
        for (int i = 0; i < 4; i++)
            EXPECT_CLI_FAILS(
                1,
                p ? "tensor 'layer.weight' of model 'm1' holds an infinity at element 5"
                  : "tensor 'layer.weight' of model 'm1' holds NaN at element 5",
                methods[i]);
        /* propagate: merged as the formula has it (the mean carries NaN/Inf) */
        EXPECT(cli(NULL, (const char *[]){"method=simple_average", "nonfinite=propagate",
                                          arg("merged_model_save_path", "p.safetensors"), NULL}) ==
               0);
        fb_model *got;
        REQUIRE_OK(fb_model_load(fb_test_path("p.safetensors"), &got));
        float w[32];
        REQUIRE_OK(fb_tensor_to_f32(fb_model_find(got, "layer.weight"), w));
        EXPECT(p ? isinf(w[5]) : isnan(w[5]));
        EXPECT(isfinite(w[4]));
        fb_model_free(got);
    }
    /* the C API: the same error, and the option */
    fb_modelpool *pool;
    fb_method *m;
    fb_model *out = NULL;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("simple_average", NULL, &m));
    EXPECT_ERROR(fb_method_run(m, pool, NULL, &out), FB_ERR_FORMAT,
                 "holds an infinity at element 5");
    fb_run_options ro = {.nonfinite = FB_NONFINITE_PROPAGATE};
    EXPECT_OK(fb_method_run(m, pool, &ro, &out));
    fb_model_free(out);
    fb_method_free(m);
    fb_modelpool_free(pool);
}

TEST(every_output_path_is_checked_before_any_work)
{
    write_pool(2, FB_F32, 0, 0);
    /* the report's folder is missing: refused before the merge writes anything */
    EXPECT_CLI_FAILS(2, "its folder", "method=task_arithmetic",
                     arg("merged_model_save_path", "o.safetensors"),
                     arg("report_save_path", "nodir/r.json"));
    EXPECT(!fb_test_exists(fb_test_path("o.safetensors")));
    /* a report inside the folder the merged model replaces */
    EXPECT(mkdir(fb_test_path("out"), 0755) == 0);
    EXPECT_CLI_FAILS(2, "lies inside merged_model_save_path", "method=task_arithmetic",
                     arg("merged_model_save_path", "out"), arg("report_save_path", "out/r.json"));
}

TEST(a_fifo_as_an_input_is_refused_not_waited_on)
{
    write_pool(2, FB_F32, 0, 0);
    REQUIRE(mkfifo(fb_test_path("fifo.safetensors"), 0644) == 0);
    char yaml[512];
    snprintf(yaml, sizeof yaml, "models:\n  a: m1.safetensors\n  b: fifo.safetensors\n");
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
    alarm(20); /* a hang fails the test instead of the whole run */
    EXPECT_CLI_FAILS(1, "not a regular file (a FIFO)", "method=simple_average");
    fb_model *m = NULL;
    EXPECT_ERROR(fb_model_load(fb_test_path("fifo.safetensors"), &m), FB_ERR_IO, "a FIFO");
    alarm(0);
}

TEST(exit_status_is_2_for_configuration_mistakes_and_1_for_failed_inputs)
{
    write_pool(2, FB_F32, 0, 0);
    char yaml[512];
    snprintf(yaml, sizeof yaml, "models:\n  a: m1.safetensors\nbogus: 1\n");
    fb_test_write_file(fb_test_path("bad1.yaml"), yaml, strlen(yaml));
    fb_test_write_file(fb_test_path("bad2.yaml"), "models: {}\n", 11);
    EXPECT_CLI_FAILS(2, "unknown modelpool key 'bogus'", "method=simple_average",
                     arg("modelpool", "bad1.yaml"));
    EXPECT_CLI_FAILS(2, "modelpool needs 'models'", "method=simple_average",
                     arg("modelpool", "bad2.yaml"));
    EXPECT_CLI_FAILS(2, "'dtype' must be a float dtype", "method=simple_average", "dtype=i8");
    EXPECT_CLI_FAILS(2, "got 3 weights for 2 models", "method=weighted_average",
                     "method.weights=[1,2,3]");
    /* failures of the inputs themselves */
    fb_test_write_file(fb_test_path("m2.safetensors"), "garbage!", 8);
    EXPECT_CLI_FAILS(1, "m2.safetensors", "method=simple_average");
}

TEST(options_stand_anywhere_with_or_without_equals)
{
    write_pool(2, FB_F32, 0, 0);
    EXPECT(cli(NULL, (const char *[]){"method=simple_average", "--threads", "2", NULL}) == 0);
    EXPECT(cli(NULL, (const char *[]){"--threads=1", "method=simple_average", NULL}) == 0);
    EXPECT_CLI_FAILS(2, "--threads needs a value", "method=simple_average", "--threads");
    EXPECT_CLI_FAILS(2, "--threads needs a positive integer", "--threads=x");
    EXPECT_CLI_FAILS(2, "--print-config takes no value", "--print-config=1");
}

TEST(print_config_shows_an_incomplete_config_and_every_root_key)
{
    write_pool(2, FB_F32, 0, 0);
    char pool[4200], *out = NULL, *err = NULL;
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    const char *argv[] = {fb_test_cli, "--print-config", "method=weighted_average", pool, NULL};
    EXPECT(fb_test_run(argv, &out, &err) == 0);
    EXPECT(out && strstr(out, "WeightedAverageAlgorithm") && strstr(out, "page_cache: auto") &&
           strstr(out, "nonfinite: error"));
    EXPECT(err && strstr(err, "would not run") && strstr(err, "method.weights=[0.5,0.3,0.2]"));
    free(out);
    free(err);
    EXPECT_CLI_FAILS(2, "page_cache, nonfinite, input_dtype", "method=simple_average", "bogus=1");
    /* in the C API there is no command line to blame */
    fb_method *m;
    EXPECT_ERROR(fb_method_create("task_arithmetic", "{scaling_factor: abc}", &m), FB_ERR_CONFIG,
                 "parameters: 'scaling_factor'");
    EXPECT(!strstr(fb_last_error(), "command line"));
}

TEST(remove_keys_and_filters_match_anywhere_and_unmatched_patterns_warn)
{
    write_pool(2, FB_F32, 0, 0);
    char pool[4200], *out = NULL, *err = NULL;
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    const char *argv[] = {fb_test_cli,
                          pool,
                          "method=task_arithmetic",
                          "method.remove_keys=[bias,nothing]",
                          "method.scaling_factor=[{filter: weight, value: 0.5}, {value: 0.1}]",
                          arg("merged_model_save_path", "o.safetensors"),
                          arg("report_save_path", "r.json"),
                          NULL};
    EXPECT(fb_test_run(argv, &out, &err) == 0);
    EXPECT(err && strstr(err, "warning: method.remove_keys[1] 'nothing' matches no tensor"));
    EXPECT(err && !strstr(err, "'bias' matches no tensor"));
    char *report = fb_test_read_file(fb_test_path("r.json"), NULL);
    EXPECT(report && strstr(report, "\"pattern\":\t\"bias\"") && strstr(report, "\"layer.bias\""));
    free(report);
    /* bias removed (the base's), weight scaled by 0.5 */
    fb_model *got, *base, *m1, *m2;
    REQUIRE_OK(fb_model_load(fb_test_path("o.safetensors"), &got));
    REQUIRE_OK(fb_model_load(fb_test_path("base.safetensors"), &base));
    REQUIRE_OK(fb_model_load(fb_test_path("m1.safetensors"), &m1));
    REQUIRE_OK(fb_model_load(fb_test_path("m2.safetensors"), &m2));
    float g[32], b[32], x[32], y[32];
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(got, "layer.bias"), g));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(base, "layer.bias"), b));
    EXPECT(!memcmp(g, b, 8 * sizeof(float)));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(got, "layer.weight"), g));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(base, "layer.weight"), b));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(m1, "layer.weight"), x));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(m2, "layer.weight"), y));
    for (int j = 0; j < 32; j++)
        EXPECT(fabsf(g[j] - (b[j] + 0.5f * ((x[j] - b[j]) + (y[j] - b[j])))) < 1e-6f);
    fb_model_free(got);
    fb_model_free(base);
    fb_model_free(m1);
    fb_model_free(m2);
    free(out);
    free(err);
}

TEST(a_list_where_a_number_is_wanted_explains_the_per_tensor_form)
{
    write_pool(2, FB_F32, 0, 0);
    EXPECT_CLI_FAILS(2, "[{filter: REGEX, value: V}, ..., {value: DEFAULT}]",
                     "method=task_arithmetic", "method.scaling_factor=[0.3,0.5]");
}

TEST(models_in_different_float_dtypes_merge_as_float32_when_asked)
{
    write_pool(2, FB_BF16, 0, 0); /* m2 is bf16, the rest f32 */
    EXPECT_CLI_FAILS(1, "input_dtype=f32 reads every float tensor as float32",
                     "method=task_arithmetic");
    EXPECT(cli(NULL, (const char *[]){"method=task_arithmetic", "input_dtype=f32",
                                      arg("merged_model_save_path", "o.safetensors"), NULL}) == 0);
    fb_model *got;
    REQUIRE_OK(fb_model_load(fb_test_path("o.safetensors"), &got));
    EXPECT(fb_tensor_dtype(fb_model_find(got, "layer.weight")) == FB_F32);
    fb_model_free(got);
    EXPECT(cli(NULL, (const char *[]){"method=task_arithmetic", "input_dtype=f32", "dtype=bf16",
                                      arg("merged_model_save_path", "o.safetensors"), NULL}) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("o.safetensors"), &got));
    EXPECT(fb_tensor_dtype(fb_model_find(got, "layer.weight")) == FB_BF16);
    fb_model_free(got);
    EXPECT_CLI_FAILS(2, "'input_dtype' can only be f32", "method=task_arithmetic",
                     "input_dtype=f16");
}

TEST(shard_sizes_read_as_transformers_reads_them)
{
    write_pool(2, FB_F32, 0, 0);
    /* 160 bytes of tensors (128 + 32): 200 bytes a shard gives one, 100 bytes two; units in
     * any case, and a lower-case b after a decimal unit counts bits */
    const struct {
        const char *size;
        int shards;
    } cases[] = {{"200", 1}, {"0.2KB", 1}, {"0.2kB", 1}, {"1.6kb", 1}, {"1.6Kb", 1},
                 {"100", 2}, {"0.1KB", 2}, {"0.8kb", 2}, {"100b", 2}};
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        char dir[64], size[96], shard[128];
        snprintf(dir, sizeof dir, "out%d", i);
        snprintf(size, sizeof size, "merged_model_max_shard_size=%s", cases[i].size);
        EXPECT(cli(NULL, (const char *[]){"method=simple_average", size,
                                          arg("merged_model_save_path", dir), NULL}) == 0);
        snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", dir);
        if (fb_test_exists(fb_test_path(shard)) != (cases[i].shards == 2))
            fb_test_fail(__FILE__, __LINE__, "%s did not give %d shard(s)", cases[i].size,
                         cases[i].shards);
    }
}
