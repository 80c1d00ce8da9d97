/*
 * test_cli.c: the fusion_bench command, run as a user runs it: merges against PyTorch's
 * results, the report, --help/--list-methods/--print-config, FusionBench's own config files,
 * and bad input (a one-line error, a non-zero exit, no output left behind).
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "harness.h"

/* Runs fusion_bench with up to 16 arguments; returns the exit status. */
static int cli(char **out, char **err, const char *const *args)
{
    const char *argv[20] = {fb_test_cli};
    int n = 1;
    for (; args[n - 1] && n < 19; n++) argv[n] = args[n - 1];
    argv[n] = NULL;
    return fb_test_run(argv, out, err);
}

static cJSON *load_cases(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/cases.json", fb_test_ref_dir);
    return fb_test_read_json(path);
}

TEST(cli_merges_match_pytorch)
{
    cJSON *cases = load_cases();
    REQUIRE(cases);
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        char method[128], pool[4200], save[4200];
        snprintf(method, sizeof method, "method=%s", cJSON_GetObjectItem(c, "method")->valuestring);
        snprintf(pool, sizeof pool, "modelpool=%s", cJSON_GetObjectItem(c, "pool")->valuestring);
        snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("out.safetensors"));
        const char *args[16] = {method, pool, save};
        int n = 3;
        const cJSON *o;
        cJSON_ArrayForEach(o, cJSON_GetObjectItem(c, "overrides")) args[n++] = o->valuestring;
        args[n] = NULL;
        char *out = NULL, *err = NULL;
        int rc = cli(&out, &err, args);
        if (rc != 0) fb_test_fail(__FILE__, __LINE__, "%s %s: exit %d: %s", method, pool, rc, err);
        fb_model *got, *want;
        if (rc == 0 && !fb_model_load(fb_test_path("out.safetensors"), &got)) {
            if (!fb_model_load(cJSON_GetObjectItem(c, "expected")->valuestring, &want)) {
                const cJSON *rtol = cJSON_GetObjectItem(c, "rtol");
                int same = cJSON_IsNumber(rtol) ? fb_test_models_close(got, want, rtol->valuedouble)
                                                : fb_test_models_match(got, want, 1);
                if (!same)
                    fb_test_fail(__FILE__, __LINE__, "CLI %s on %s differs from PyTorch", method,
                                 pool);
                fb_model_free(want);
            }
            fb_model_free(got);
        }
        const cJSON *xe = cJSON_GetObjectItem(c, "expected_extras");
        if (rc == 0 && cJSON_IsString(xe)) {
            fb_model *gx = NULL, *wx = NULL;
            if (fb_model_load(fb_test_path("out.masks.safetensors"), &gx) ||
                fb_model_load(xe->valuestring, &wx) || !fb_test_models_close(gx, wx, 1e-6))
                fb_test_fail(__FILE__, __LINE__, "CLI %s: extras missing or different", method);
            fb_model_free(gx);
            fb_model_free(wx);
        }
        free(out);
        free(err);
    }
    cJSON_Delete(cases);
}

static const char *pool_yaml(const char *dtype)
{
    static char p[4096];
    snprintf(p, sizeof p, "modelpool=%s/pool_%s/pool.yaml", fb_test_ref_dir, dtype);
    return p;
}

TEST(cli_writes_report_with_config_models_timings_and_memory)
{
    char save[4200], report[4200];
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("m.safetensors"));
    snprintf(report, sizeof report, "report_save_path=%s", fb_test_path("r.json"));
    const char *args[] = {"method=task_arithmetic", pool_yaml("f32"), "method.scaling_factor=0.5",
                          save, report, NULL};
    char *out = NULL;
    REQUIRE(cli(&out, NULL, args) == 0);
    EXPECT(out && strstr(out, "task_arithmetic merged 3 models (+ _pretrained_)"));
    free(out);
    char *text = fb_test_read_file(fb_test_path("r.json"), NULL);
    cJSON *r = text ? cJSON_Parse(text) : NULL;
    REQUIRE(r);
    EXPECT(!strcmp(cJSON_GetObjectItem(r, "method")->valuestring, "task_arithmetic"));
    cJSON *cfg = cJSON_GetObjectItem(r, "config");
    cJSON *mcfg = cJSON_GetObjectItem(cfg, "method");
    EXPECT(mcfg && cJSON_GetObjectItem(mcfg, "scaling_factor")->valuedouble == 0.5);
    EXPECT(cJSON_GetArraySize(cJSON_GetObjectItem(r, "models")) == 4);
    EXPECT(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "timings_s"), "merge") != NULL);
    EXPECT(cJSON_GetObjectItem(r, "peak_rss_bytes")->valuedouble > 0);
    EXPECT(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "merged_model"), "num_parameters")
               ->valuedouble > 40000);
    cJSON_Delete(r);
    free(text);
}

TEST(cli_help_list_and_print_config)
{
    char *out = NULL;
    const char *help[] = {"--help", NULL};
    EXPECT(cli(&out, NULL, help) == 0 && out && strstr(out, "usage: fusion_bench"));
    free(out);
    const char *list[] = {"--list-methods", NULL};
    EXPECT(cli(&out, NULL, list) == 0 && out && strstr(out, "simple_average") &&
           strstr(out, "weighted_average") && strstr(out, "task_arithmetic"));
    free(out);
    const char *pc[] = {"--print-config", "method=task_arithmetic", "method.scaling_factor=0.5",
                        NULL};
    EXPECT(cli(&out, NULL, pc) == 0 && out && strstr(out, "name: task_arithmetic") &&
           strstr(out, "scaling_factor: 0.5") && strstr(out, "merged_model_save_path: null"));
    free(out);
    /* defaults are filled in */
    const char *pw[] = {"--print-config", "method=weighted_average", "method.weights=[1,2]", NULL};
    EXPECT(cli(&out, NULL, pw) == 0 && out && strstr(out, "normalize: true"));
    free(out);
}

TEST(cli_accepts_fusionbench_method_files)
{
    const char *yaml = "_target_: fusion_bench.method.TaskArithmeticAlgorithm\nscaling_factor: 0.7\n";
    fb_test_write_file(fb_test_path("ta.yaml"), yaml, strlen(yaml));
    char method[4200], save[4200], expected[4200];
    snprintf(method, sizeof method, "method=%s", fb_test_path("ta.yaml"));
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("m.safetensors"));
    const char *args[] = {method, pool_yaml("f16"), save, NULL};
    char *err = NULL;
    EXPECT(cli(NULL, &err, args) == 0);
    free(err);
    snprintf(expected, sizeof expected, "%s/pool_f16/expected_4_task_arithmetic.safetensors",
             fb_test_ref_dir);
    fb_model *got, *want;
    REQUIRE_OK(fb_model_load(fb_test_path("m.safetensors"), &got));
    REQUIRE_OK(fb_model_load(expected, &want));
    EXPECT(fb_test_models_match(got, want, 1));
    fb_model_free(got);
    fb_model_free(want);
    /* FusionBench's other class names, keys that only steer PyTorch (accepted, listed once),
     * and its group sub-folders */
    const char *files[][2] = {
        {"iso.yaml", "_target_: fusion_bench.method.ISO_C_Merge\nscaling_factor: 1.0\nexclude_keys: null\n"},
        {"ens.yaml", "_target_: fusion_bench.method.SimpleEnsembleAlgorithm\ndevice_map: null\n"},
        {"lm.yaml", "_target_: fusion_bench.method.TaskArithmeticForCausalLM\nscaling_factor: 0.7\n"
                    "merge_backbone: false\nmodel_save_path: ${path.log_dir}/checkpoint\n"},
        {"rm.yaml", "_target_: fusion_bench.method.RegMeanAlgorithmForCLIP\nnum_regmean_examples: 8\n"
                    "dataloader_kwargs:\n  batch_size: 4\n  num_workers: 0\n"},
        {"push.yaml", "_target_: fusion_bench.method.TaskArithmeticForCausalLM\npush_to_hub: true\n"},
    };
    for (int i = 0; i < 5; i++) {
        fb_test_write_file(fb_test_path(files[i][0]), files[i][1], strlen(files[i][1]));
        snprintf(method, sizeof method, "method=%s", fb_test_path(files[i][0]));
        const char *pc[] = {"--print-config", method, NULL};
        char *out = NULL;
        err = NULL;
        int rc = cli(&out, &err, pc);
        switch (i) {
        case 0: EXPECT(rc == 0 && out && strstr(out, "name: iso_c")); break;
        case 1: EXPECT(rc == 0 && err && strstr(err, "ignored, as they only steer PyTorch: device_map")); break;
        case 2: EXPECT(rc == 0 && out && strstr(out, "name: task_arithmetic") && strstr(out, "scaling_factor: 0.7") &&
                       err && strstr(err, "merge_backbone, model_save_path")); break;
        case 3: EXPECT(rc == 0 && out && strstr(out, "batch_size: 4") &&
                       err && strstr(err, "dataloader_kwargs.num_workers")); break;
        case 4: EXPECT(rc == 0 && err && strstr(err, "would not run") && strstr(err, "push_to_hub: true")); break;
        }
        free(out);
        free(err);
    }
    const char *sub[] = {"--print-config", "method=dare/ties_merging", NULL};
    char *out = NULL;
    EXPECT(cli(&out, NULL, sub) == 0 && out && strstr(out, "name: dare_ties_merging"));
    free(out);
}

TEST(cli_sharded_bf16_output_and_threads_give_the_same_bytes)
{
    char save[4200], save2[4200], expected[4200];
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("sh"));
    const char *args[] = {"--threads", "2", "method=task_arithmetic", pool_yaml("f32"),
                          "dtype=bf16", save, "merged_model_max_shard_size=40KB", NULL};
    char *err = NULL;
    EXPECT(cli(NULL, &err, args) == 0);
    free(err);
    EXPECT(fb_test_exists(fb_test_path("sh/model.safetensors.index.json")));
    snprintf(expected, sizeof expected, "%s/pool_f32/expected_ta_as_bf16.safetensors",
             fb_test_ref_dir);
    fb_model *got, *want;
    REQUIRE_OK(fb_model_load(fb_test_path("sh"), &got));
    REQUIRE_OK(fb_model_load(expected, &want));
    EXPECT(fb_test_models_match(got, want, 0));
    fb_model_free(got);
    fb_model_free(want);
    /* one thread and two threads: identical files */
    const char *t[2] = {"1", "2"};
    char *bytes[2];
    size_t len[2];
    for (int i = 0; i < 2; i++) {
        snprintf(save2, sizeof save2, "merged_model_save_path=%s", fb_test_path("t.safetensors"));
        const char *a[] = {"--threads", t[i], "method=weighted_average", pool_yaml("bf16"),
                           "method.weights=[0.1,0.7,0.2]", save2, NULL};
        EXPECT(cli(NULL, NULL, a) == 0);
        bytes[i] = fb_test_read_file(fb_test_path("t.safetensors"), &len[i]);
    }
    EXPECT(bytes[0] && bytes[1] && len[0] == len[1] && !memcmp(bytes[0], bytes[1], len[0]));
    free(bytes[0]);
    free(bytes[1]);
}

/* TIES (global statistics, fixups) over inputs sharded differently: the same tensors, to the
 * bit, for 1 and 2 threads, for a single file or a sharded output folder, and with the page
 * cache dropped as the merge goes (what merges larger than memory do). */
TEST(ties_over_sharded_inputs_gives_the_same_bytes_for_threads_and_shard_sizes)
{
    const char *names[] = {"pretrained", "task_a", "task_b", "task_c"};
    const size_t shard_bytes[] = {20000, 0, 7000, 50000}; /* 0: one file */
    char path[4200], yaml[8192];
    int len = snprintf(yaml, sizeof yaml, "models:\n");
    for (int i = 0; i < 4; i++) {
        fb_model *m;
        snprintf(path, sizeof path, "%s/pool_bf16/%s.safetensors", fb_test_ref_dir, names[i]);
        REQUIRE_OK(fb_model_load(path, &m));
        fb_save_options so = {.max_shard_bytes = shard_bytes[i]};
        snprintf(path, sizeof path, "%s", fb_test_path(names[i]));
        EXPECT_OK(fb_model_save(m, path, &so));
        fb_model_free(m);
        len += snprintf(yaml + len, sizeof yaml - (size_t)len, "  %s: %s\n",
                        i ? names[i] : "_pretrained_", path);
    }
    fb_test_write_file(fb_test_path("sharded_pool.yaml"), yaml, (size_t)len);
    char pool[4300], save[4300];
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("sharded_pool.yaml"));
    fb_model *first = NULL;
    const char *threads[] = {"1", "2", "2", "2"}, *out_shard[] = {"null", "null", "30KB", "30KB"};
    const char *outs[] = {"ties1.safetensors", "ties2.safetensors", "ties_sharded", "ties_dropped"};
    for (int r = 0; r < 4; r++) {
        snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path(outs[r]));
        char shard[64];
        snprintf(shard, sizeof shard, "merged_model_max_shard_size=%s", out_shard[r]);
        const char *a[] = {"--threads", threads[r], "method=dare_ties_merging", "method.threshold=30",
                           "method.seed=4", pool, save, shard,
                           r == 3 ? "page_cache=drop" : "page_cache=auto", NULL};
        EXPECT(cli(NULL, NULL, a) == 0);
        fb_model *got;
        REQUIRE_OK(fb_model_load(save + strlen("merged_model_save_path="), &got));
        if (!first) first = got;
        else {
            EXPECT(fb_test_models_match(got, first, 0));
            fb_model_free(got);
        }
    }
    fb_model_free(first);
}

/* Each bad command: exit status 1 or 2, one line on stderr naming the problem, no output. */
TEST(cli_bad_input_gives_one_line_error_and_no_output)
{
    char f32pool[4200], input[4200], save[4200], bad_out[4200], bad_model[4200], nopre[4200];
    snprintf(f32pool, sizeof f32pool, "%s", pool_yaml("f32"));
    snprintf(input, sizeof input, "merged_model_save_path=%s/pool_f32/task_a.safetensors",
             fb_test_ref_dir);
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("out.safetensors"));
    fb_test_write_file(fb_test_path("file"), "x", 1);
    snprintf(bad_out, sizeof bad_out, "merged_model_save_path=%s/out.safetensors",
             fb_test_path("file"));
    /* a pool whose task_b is a truncated file */
    char yaml[8192];
    snprintf(yaml, sizeof yaml, "models:\n  a: %s/pool_f32/task_a.safetensors\n"
                                "  b: %s/tests/data/bad/truncated.safetensors\n",
             fb_test_ref_dir, fb_test_src_dir);
    fb_test_write_file(fb_test_path("badpool.yaml"), yaml, strlen(yaml));
    snprintf(bad_model, sizeof bad_model, "modelpool=%s", fb_test_path("badpool.yaml"));
    snprintf(yaml, sizeof yaml, "models:\n  a: %s/pool_f32/task_a.safetensors\n"
                                "  b: %s/pool_f32/task_b.safetensors\n",
             fb_test_ref_dir, fb_test_ref_dir);
    fb_test_write_file(fb_test_path("nopre.yaml"), yaml, strlen(yaml));
    snprintf(nopre, sizeof nopre, "modelpool=%s", fb_test_path("nopre.yaml"));

    struct {
        const char *args[8];
        const char *expect;
    } cases[] = {
        {{"method=ties_mergin", f32pool, save}, "unknown method 'ties_mergin'"},
        {{"method=ties_merging", f32pool, "page_cache=sometimes", save}, "'page_cache' is 'sometimes'"},
        {{"method=no/such.yaml", f32pool, save}, "no such config"},
        {{"method=simple_average", f32pool, "unknown_key=1", save}, "unknown config key 'unknown_key'"},
        {{"method=task_arithmetic", f32pool, "method.k=20", save}, "no parameter 'k'"},
        {{"method=task_arithmetic", f32pool, "method.scaling_factor=abc", save}, "must be a number"},
        {{"method=task_arithmetic", nopre, save}, "_pretrained_"},
        {{"method=simple_average", f32pool, input}, "is the input file of model"},
        {{"method=simple_average", f32pool, bad_out}, "file/out.safetensors"},
        {{"method=weighted_average", f32pool, "method.weights=[1,2]", save}, "got 2 weights for 3 models"},
        {{"method=simple_average", f32pool, "method.weights", save}, "not an override"},
        {{"method=simple_average", "modelpool=/no/such/pool.yaml", save}, "/no/such/pool.yaml"},
        {{"method=simple_average", bad_model, save}, "truncated.safetensors"},
        {{"method=simple_average", save}, "no model pool selected"},
        {{"method=simple_average", f32pool, "dtype=float7", save}, "unknown dtype 'float7'"},
        {{"--threads", "zero", "method=simple_average"}, "--threads needs a positive integer"},
        {{"--bogus"}, "unknown option '--bogus'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = NULL, *err = NULL;
        int rc = cli(&out, &err, cases[i].args);
        const char *e = err ? err : "";
        if (rc != 1 && rc != 2)
            fb_test_fail(__FILE__, __LINE__, "case %zu (%s): exit %d", i, cases[i].expect, rc);
        if (strncmp(e, "fusion_bench: error: ", 21) || !strstr(e, cases[i].expect))
            fb_test_fail(__FILE__, __LINE__, "case %zu: stderr '%s' lacks '%s'", i, e,
                         cases[i].expect);
        const char *nl = strchr(e, '\n');
        if (nl && nl[1]) fb_test_fail(__FILE__, __LINE__, "case %zu: more than one line", i);
        if (fb_test_exists(fb_test_path("out.safetensors")))
            fb_test_fail(__FILE__, __LINE__, "case %zu left an output", i);
        free(out);
        free(err);
    }
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | grep -q tmp-", fb_test_tmp());
    EXPECT(system(cmd) != 0);
}

TEST(cli_without_method_uses_the_default_method)
{
    /* the default comes from fusion_bench.yaml's defaults list (simple_average) */
    const char *args[] = {pool_yaml("f32"), NULL};
    char *out = NULL, *err = NULL;
    EXPECT(cli(&out, &err, args) == 0);
    EXPECT(out && strstr(out, "simple_average merged 3 models"));
    free(out);
    free(err);
}

TEST(every_registered_method_is_documented)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/methods.md", fb_test_src_dir);
    char *doc = fb_test_read_file(path, NULL);
    REQUIRE(doc);
    for (int i = 0; i < fb_method_registry_count(); i++) {
        /* a "## " heading naming the method, alone or in a list */
        const char *name = fb_method_registry_name(i);
        int found = 0;
        for (const char *h = strstr(doc, "\n## "); h && !found; h = strstr(h + 1, "\n## ")) {
            const char *end = strchr(h + 1, '\n');
            for (const char *p = strstr(h, name); p && p < end && !found; p = strstr(p + 1, name)) {
                char before = p[-1], after = p[strlen(name)];
                found = (before == ' ' || before == ',') &&
                        (after == ',' || after == ' ' || after == '\n' || after == ':');
            }
        }
        if (!found) fb_test_fail(__FILE__, __LINE__, "method %s has no section in docs/methods.md", name);
    }
    free(doc);
}
