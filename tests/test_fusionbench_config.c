/*
 * test_fusionbench_config.c: FusionBench's configuration, as its users write it: OmegaConf
 * interpolation (absolute, relative, oc.env with defaults, now), Hydra's +key, ++key and ~key
 * overrides, its program's root keys (dry_run, fast_dev_run, {log_dir}), and its model pool
 * files' keys; each bad form one line naming the key and where it was written.
 */
#include <stdlib.h>

#include "harness.h"

/* --print-config with these arguments: exit status, stdout and stderr. */
static int print_config(char **out, char **err, const char *const *args)
{
    const char *argv[16] = {fb_test_cli, "--print-config"};
    int n = 2;
    for (; args[n - 2] && n < 15; n++)
        argv[n] = args[n - 2];
    argv[n] = NULL;
    return fb_test_run(argv, out, err);
}

static int one_line(const char *s)
{
    return s && strchr(s, '\n') && !strchr(strchr(s, '\n') + 1, '\n');
}

/* m0, m1, m2.safetensors: one tensor "w" = [k, 2, 3, 4] for model k. */
static void write_models(void)
{
    float v[4] = {1, 2, 3, 4};
    int64_t shape = 4;
    for (int k = 0; k < 3; k++) {
        fb_model *m;
        fb_model_create(&m);
        v[0] = (float)k;
        fb_model_add_tensor(m, "w", FB_F32, 1, &shape, v, NULL);
        char name[32];
        snprintf(name, sizeof name, "m%d.safetensors", k);
        fb_model_save(m, fb_test_path(name), NULL);
        fb_model_free(m);
    }
}

TEST(omegaconf_interpolation_resolves_as_fusionbench_files_use_it)
{
    const char *method = "_target_: fusion_bench.method.TaskArithmeticAlgorithm\n"
                         "scaling_factor: ${.defaults_.scale}\n"
                         "defaults_: {scale: 0.25}\n";
    const char *method_env = "_target_: fusion_bench.method.TaskArithmeticAlgorithm\n"
                             "scaling_factor: ${oc.env:FB_TEST_SCALE,${..report_scale}}\n";
    fb_test_write_file(fb_test_path("m.yaml"), method, strlen(method));
    fb_test_write_file(fb_test_path("env.yaml"), method_env, strlen(method_env));
    char m[4200], env[4200], *out = NULL, *err = NULL;
    snprintf(m, sizeof m, "method=%s", fb_test_path("m.yaml"));
    snprintf(env, sizeof env, "method=%s", fb_test_path("env.yaml"));
    /* relative inside a method file: refused as an unknown parameter afterwards, but resolved */
    EXPECT(print_config(&out, &err, (const char *[]){m, NULL}) == 0);
    EXPECT(out && strstr(out, "scaling_factor: 0.25"));
    free(out);
    free(err);
    /* oc.env with a default that interpolates, and absolute references on the command line */
    unsetenv("FB_TEST_SCALE");
    EXPECT(print_config(&out, &err, (const char *[]){env, "+report_scale=0.125", NULL}) == 2);
    EXPECT(err &&
           strstr(err, "unknown config key 'report_scale'")); /* resolved first, then checked */
    free(out);
    free(err);
    setenv("FB_TEST_SCALE", "0.75", 1);
    EXPECT(print_config(&out, &err, (const char *[]){env, NULL}) == 0);
    EXPECT(out && strstr(out, "scaling_factor: 0.75"));
    free(out);
    free(err);
    EXPECT(print_config(&out, &err,
                        (const char *[]){"merged_model_save_path=out/x",
                                         "report_save_path=${merged_model_save_path}.json",
                                         "dtype=${oc.env:FB_TEST_NO_SUCH_VAR,bf16}", NULL}) == 0);
    EXPECT(out && strstr(out, "report_save_path: out/x.json") && strstr(out, "dtype: bf16"));
    free(out);
    free(err);
    /* FusionBench's path group: ${path.log_dir} in its method files */
    EXPECT(print_config(
               &out, &err,
               (const char *[]){"+method.model_save_path=${path.log_dir}/checkpoint", NULL}) == 0);
    EXPECT(out && strstr(out, "outputs/fusion_bench/"));
    free(out);
    free(err);
    /* bad ones: a missing key, a cycle, an unknown resolver, an unclosed reference */
    const char *bad[][2] = {
        {"report_save_path=${nope.x}", "refers to ${nope.x}, which is not in the configuration"},
        {"report_save_path=${dtype}", "cycle"},
        {"report_save_path=${oc.decode:x}", "unknown resolver"},
        {"report_save_path=${dtype", "without its closing"},
        {"report_save_path=${oc.env:FB_TEST_NO_SUCH_VAR}", "needs the environment variable"}};
    for (int i = 0; i < 5; i++) {
        err = NULL;
        const char *second = i == 1 ? "dtype=${report_save_path}" : "print_config=false";
        int rc = print_config(NULL, &err, (const char *[]){bad[i][0], second, NULL});
        if (rc != 2 || !err || !strstr(err, bad[i][1]) || !strstr(err, "command line") ||
            !one_line(err))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", bad[i][0], rc, err ? err : "");
        free(err);
    }
    /* a bad reference in a file names the file and line */
    const char *badfile =
        "_target_: fusion_bench.method.TaskArithmeticAlgorithm\nscaling_factor: ${.nope}\n";
    fb_test_write_file(fb_test_path("bad.yaml"), badfile, strlen(badfile));
    snprintf(m, sizeof m, "method=%s", fb_test_path("bad.yaml"));
    err = NULL;
    EXPECT(print_config(NULL, &err, (const char *[]){m, NULL}) == 2);
    EXPECT(err && strstr(err, "bad.yaml:2") && strstr(err, "'method.scaling_factor'"));
    free(err);
}

TEST(hydra_override_forms_add_set_and_delete)
{
    char *out = NULL, *err = NULL;
    EXPECT(print_config(&out, &err,
                        (const char *[]){"method=task_arithmetic", "++method.scaling_factor=0.6",
                                         "~print_config", NULL}) == 0);
    EXPECT(out && strstr(out, "scaling_factor: 0.6") && !strstr(out, "print_config"));
    free(out);
    free(err);
    const char *bad[][2] = {{"+method.scaling_factor=0.1", "is already in the config"},
                            {"~no_such_key", "there is no such key to delete"},
                            {"~dtype=bf16", "the key's value is not bf16"},
                            {"+", "is not an override"}};
    for (int i = 0; i < 4; i++) {
        err = NULL;
        int rc =
            print_config(NULL, &err, (const char *[]){"method=task_arithmetic", bad[i][0], NULL});
        if (rc != 2 || !err || !strstr(err, bad[i][1]) || !one_line(err))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", bad[i][0], rc, err ? err : "");
        free(err);
    }
    /* +group=name selects a group as Hydra does */
    out = NULL;
    EXPECT(print_config(&out, NULL, (const char *[]){"+method=magmax", NULL}) == 0);
    EXPECT(out && strstr(out, "name: magmax"));
    free(out);
}

TEST(fusionbench_program_and_pool_keys)
{
    /* a model pool as FusionBench writes it (its data sets and processor are the task pool's
     * business here), merged for a dry run: everything checked, nothing written */
    write_models();
    const char *pool =
        "defaults:\n  - /dataset/image_classification/train@train_datasets: [sun397]\n"
        "  - _self_\n_target_: fusion_bench.modelpool.CLIPVisionModelPool\n"
        "_recursive_: False\nprocessor: openai/clip-vit-base-patch32\n"
        "models:\n  _pretrained_: m0.safetensors\n  a: m1.safetensors\n  b: m2.safetensors\n"
        "platform: hf\n";
    fb_test_write_file(fb_test_path("pool.yaml"), pool, strlen(pool));
    char pool_arg[4200], save[4200], report[4200], *out = NULL, *err = NULL;
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("out.safetensors"));
    const char *dry[] = {
        fb_test_cli, "method=task_arithmetic", pool_arg, save, "dry_run=true", "seed=42", NULL};
    EXPECT(fb_test_run(dry, &out, &err) == 0);
    EXPECT(out && strstr(out, "dry run") && !fb_test_exists(fb_test_path("out.safetensors")));
    free(out);
    free(err);
    /* FusionBench's report path with {log_dir} (its str.format), path.log_dir set here */
    snprintf(report, sizeof report, "report_save_path='{log_dir}/program_report.json'");
    char logdir[4300];
    snprintf(logdir, sizeof logdir, "path.log_dir=%s", fb_test_tmp());
    const char *run[] = {fb_test_cli, "method=task_arithmetic", pool_arg, report, logdir, NULL};
    EXPECT(fb_test_run(run, NULL, NULL) == 0);
    EXPECT(fb_test_exists(fb_test_path("program_report.json")));
    /* what would change the result and is not done here */
    const char *bad[][2] = {{"fast_dev_run=true", "fast_dev_run: true"},
                            {"merged_model_save_kwargs={a: 1}", "merged_model_save_kwargs"},
                            {"++modelpool.platform=modelscope", "only hf"}};
    for (int i = 0; i < 3; i++) {
        const char *argv[] = {fb_test_cli, "method=task_arithmetic", pool_arg, bad[i][0], NULL};
        err = NULL;
        int rc = fb_test_run(argv, NULL, &err);
        if (rc != 2 || !err || !strstr(err, bad[i][1]))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", bad[i][0], rc, err ? err : "");
        free(err);
    }
}

TEST(sweeps_run_every_combination_go_past_failures_and_summarise)
{
    write_models();
    const char *pool =
        "models:\n  _pretrained_: m0.safetensors\n  a: m1.safetensors\n  b: m2.safetensors\n";
    fb_test_write_file(fb_test_path("pool.yaml"), pool, strlen(pool));
    char pool_arg[4200], dir[4200], *out = NULL, *err = NULL;
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(dir, sizeof dir, "--sweep-dir=%s", fb_test_path("sweep"));
    /* 3 x 2 = 6 runs; the scale 1e39 fails (past float32), the others go on */
    const char *argv[] = {fb_test_cli,
                          "-m",
                          "method=task_arithmetic",
                          pool_arg,
                          dir,
                          "method.scaling_factor=0.5,1e39,1",
                          "dtype=f32,bf16",
                          "merged_model_save_path=merged.safetensors",
                          NULL};
    EXPECT(fb_test_run(argv, &out, &err) == 1);
    EXPECT(out && strstr(out, "6 runs, 2 failed"));
    for (int i = 0; i < 6; i++) {
        char p[128];
        snprintf(p, sizeof p, "sweep/%d/merged.safetensors", i);
        EXPECT(fb_test_exists(fb_test_path(p)) == (i != 2 && i != 3));
        snprintf(p, sizeof p, "sweep/%d/report.json", i);
        EXPECT(fb_test_exists(fb_test_path(p)) == (i != 2 && i != 3));
    }
    char *md = fb_test_read_file(fb_test_path("sweep/summary.md"), NULL);
    EXPECT(md && strstr(md, "| 0 | 0.5 | f32 | ok |") &&
           strstr(md, "| 3 | 1e39 | bf16 | failed |") && strstr(md, "| 5 | 1 | bf16 | ok |"));
    EXPECT(fb_test_exists(fb_test_path("sweep/summary.json")));
    free(md);
    free(out);
    free(err);
    /* run 4 merged with scale 1, f32: theta_0 + 1 * (1 + 2) = 3 in entry 0 */
    fb_model *m;
    REQUIRE_OK(fb_model_load(fb_test_path("sweep/4/merged.safetensors"), &m));
    float got[4];
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(m, "w"), got));
    EXPECT(got[0] == 3.0f);
    fb_model_free(m);
    /* bad sweeps: an empty value, a range with none */
    const char *bad[][2] = {{"method.scaling_factor=0.1,,0.3", "an empty value in the sweep"},
                            {"method.scaling_factor=range(1,1)", "gives no value"},
                            {"method.scaling_factor=range(0,1,0)", "a step that is not 0"}};
    for (int i = 0; i < 3; i++) {
        const char *a[] = {fb_test_cli, "-m", "method=task_arithmetic", pool_arg, dir,
                           bad[i][0],   NULL};
        err = NULL;
        int rc = fb_test_run(a, NULL, &err);
        if (rc != 2 || !err || !strstr(err, bad[i][1]) || !strstr(err, "method.scaling_factor"))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", bad[i][0], rc, err ? err : "");
        free(err);
    }
}

/* Every method file the project ships, in its own layout and in FusionBench's (group
 * sub-folders, FusionBench's class names), composes; the ones that need a value from the user
 * say which. The files are found by listing config/method. */
TEST(every_shipped_method_file_and_fusionbench_path_composes)
{
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "cd '%s/config/method' && find . -name '*.yaml' | sort > '%s'",
             fb_test_src_dir, fb_test_path("files.txt"));
    REQUIRE(system(cmd) == 0);
    char *list = fb_test_read_file(fb_test_path("files.txt"), NULL);
    REQUIRE(list);
    int files = 0, fusionbench_paths = 0;
    for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
        char method[512];
        snprintf(method, sizeof method, "method=%.*s", (int)(strlen(line) - 7), line + 2);
        char *out = NULL, *err = NULL;
        int rc = print_config(&out, &err, (const char *[]){method, NULL});
        int needs_value =
            err && strstr(err, "would not run") &&
            (strstr(err, "weights") || strstr(err, "layer_indices") || strstr(err, "slices"));
        if (rc != 0 || !out || (err && strstr(err, "would not run") && !needs_value))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", method, rc, err ? err : "");
        files++;
        fusionbench_paths += strchr(line + 2, '/') != NULL;
        free(out);
        free(err);
    }
    EXPECT(files >= 60 && fusionbench_paths >= 28);
    free(list);
}
