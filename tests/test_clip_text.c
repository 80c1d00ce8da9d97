/*
 * test_clip_text.c: FusionBench's CLIP benchmark pieces against PyTorch
 * (tests/reference/clip_text_ref.py): CLIP's BPE token ids, the text tower's features (padded
 * batch with transformers' attention mask, and each text alone), zero-shot heads as
 * FusionBench's set_classification_task, and whole `fusion_bench` runs with FusionBench's
 * config names on a two-task image-folder pool in a test hub cache; and their errors.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "io/dataset.h"
#include "nn/clip_text.h"
#include "nn/clip_vit.h"
#include "pool/clip_tasks.h"
#include "text/clip_tokenizer.h"

static const char *SNAP = "clip/hub/models--openai--clip-vit-base-patch32/snapshots/"
                          "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";

static const char *ref(const char *rel)
{
    static char buf[4][4096];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fb_test_ref_dir, rel);
    return buf[k];
}

static const char *snap(const char *file)
{
    char rel[1024];
    snprintf(rel, sizeof rel, "%s/%s", SNAP, file);
    return ref(rel);
}

static cJSON *cases(void)
{
    return fb_test_read_json(ref("clip/cases.json"));
}

/* max |got - want| <= tol * max |want| over n floats from a JSON array */
static void close_rows(const char *what, const float *got, const cJSON *want_rows, int64_t F,
                       double tol)
{
    double scale = 0, worst = 0;
    int64_t i = 0;
    const cJSON *row, *v;
    cJSON_ArrayForEach(row, want_rows) cJSON_ArrayForEach(v, row) scale =
        fmax(scale, fabs(v->valuedouble));
    cJSON_ArrayForEach(row, want_rows)
    {
        int64_t j = 0;
        cJSON_ArrayForEach(v, row) worst = fmax(worst, fabs(got[i * F + j++] - v->valuedouble));
        EXPECT(j == F);
        i++;
    }
    if (worst > tol * scale)
        fb_test_fail(__FILE__, __LINE__, "%s: off by %g (max |value| %g)", what, worst, scale);
}

TEST(clip_tokenizer_matches_the_reference_bpe)
{
    cJSON *c = cases();
    REQUIRE(c);
    fb_clip_tokenizer *tok;
    REQUIRE_OK(fb_clip_tokenizer_load(snap("vocab.json"), snap("merges.txt"), &tok));
    EXPECT(fb_clip_tokenizer_vocab_size(tok) == cJSON_GetObjectItem(c, "vocab_size")->valueint);
    const cJSON *tc;
    int n = 0;
    cJSON_ArrayForEach(tc, cJSON_GetObjectItem(c, "tokens"))
    {
        const char *text = cJSON_GetObjectItem(tc, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(tc, "ids");
        int32_t ids[77];
        int64_t count = 0;
        EXPECT_OK(fb_clip_tokenize(tok, text, ids, 77, &count));
        int same = count == cJSON_GetArraySize(want);
        for (int64_t i = 0; same && i < count; i++)
            same = ids[i] == cJSON_GetArrayItem(want, (int)i)->valueint;
        if (!same) fb_test_fail(__FILE__, __LINE__, "ids of '%s' differ from the reference", text);
        n++;
    }
    EXPECT(n >= 10);
    /* too long for the text model; not UTF-8 */
    int32_t ids[8];
    int64_t count;
    EXPECT_ERROR(fb_clip_tokenize(tok, "a photo of a very long sentence indeed", ids, 8, &count),
                 FB_ERR_ARG, "longer than 8 tokens");
    EXPECT_ERROR(fb_clip_tokenize(tok, "caf\xc3", ids, 8, &count), FB_ERR_ARG, "not valid UTF-8");
    fb_clip_tokenizer_free(tok);
    cJSON_Delete(c);
}

TEST(clip_tokenizer_rejects_malformed_files)
{
    const char *v = fb_test_path("vocab.json"), *m = fb_test_path("merges.txt");
    fb_clip_tokenizer *tok;
    fb_test_write_file(v, "[1, 2]", 6);
    fb_test_write_file(m, "#version: 0.2\na b\n", 18);
    EXPECT_ERROR(fb_clip_tokenizer_load(v, m, &tok), FB_ERR_FORMAT, "vocab.json");
    const char *no_special = "{\"a</w>\": 0, \"b\": 1}";
    fb_test_write_file(v, no_special, strlen(no_special));
    EXPECT_ERROR(fb_clip_tokenizer_load(v, m, &tok), FB_ERR_FORMAT, "<|startoftext|>");
    const char *ok = "{\"a</w>\": 0, \"<|startoftext|>\": 1, \"<|endoftext|>\": 2}";
    fb_test_write_file(v, ok, strlen(ok));
    fb_test_write_file(m, "#version: 0.2\na b c\n", 20);
    EXPECT_ERROR(fb_clip_tokenizer_load(v, m, &tok), FB_ERR_FORMAT, "merges.txt:2");
    fb_test_write_file(m, "#version: 0.2\n", 14);
    REQUIRE_OK(fb_clip_tokenizer_load(v, m, &tok));
    int32_t ids[8];
    int64_t count;
    /* no merges: every byte its own symbol; unknown symbols are <|endoftext|> */
    EXPECT_OK(fb_clip_tokenize(tok, "a b", ids, 8, &count));
    EXPECT(count == 4 && ids[0] == 1 && ids[1] == 0 && ids[2] == 2 && ids[3] == 2);
    fb_clip_tokenizer_free(tok);
}

static fb_clip_text *text_net(const char *config)
{
    fb_clip_text_config tc;
    fb_model *w = NULL;
    fb_clip_text *net = NULL;
    if (fb_clip_text_config_load(config, &tc) || fb_model_load(snap("model.safetensors"), &w) ||
        fb_clip_text_create(&tc, w, &net))
        fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    fb_model_free(w);
    return net;
}

static void check_features(const char *config, const char *key)
{
    cJSON *c = cases();
    REQUIRE(c);
    const cJSON *fc = cJSON_GetObjectItem(c, "features");
    fb_clip_text *net = text_net(config);
    REQUIRE(net);
    const int64_t F = 16;
    const cJSON *padded = cJSON_GetObjectItem(fc, "padded");
    const int64_t B = cJSON_GetArraySize(padded);
    const int64_t T = cJSON_GetArraySize(cJSON_GetArrayItem(padded, 0));
    int32_t *ids = malloc((size_t)(B * T) * sizeof *ids);
    float *got = malloc((size_t)(B * F) * sizeof *got);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            ids[b * T + t] =
                cJSON_GetArrayItem(cJSON_GetArrayItem(padded, (int)b), (int)t)->valueint;
    /* the padded batch as transformers runs it (its attention mask changes nothing at the
     * pooled position), and each text alone */
    EXPECT_OK(fb_clip_text_forward(net, ids, B, T, got));
    close_rows(key, got, cJSON_GetObjectItem(fc, key), F, 1e-5);
    const cJSON *seq;
    int64_t b = 0;
    cJSON_ArrayForEach(seq, cJSON_GetObjectItem(fc, "ids"))
    {
        int64_t n = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, seq) ids[n++] = v->valueint;
        EXPECT_OK(fb_clip_text_forward(net, ids, 1, n, got + b++ * F));
    }
    close_rows(key, got, cJSON_GetObjectItem(fc, key), F, 1e-5);
    /* ids outside the vocabulary, too many positions */
    ids[0] = 100000;
    EXPECT_ERROR(fb_clip_text_forward(net, ids, 1, 1, got), FB_ERR_ARG, "outside the vocabulary");
    EXPECT_ERROR(fb_clip_text_forward(net, ids, 1, 78, got), FB_ERR_ARG, "at most 77");
    free(ids);
    free(got);
    fb_clip_text_free(net);
    cJSON_Delete(c);
}

TEST(clip_text_features_match_pytorch)
{
    check_features(snap("config.json"), "features");
}

TEST(clip_text_pools_by_argmax_for_the_legacy_eos_id)
{
    check_features(ref("clip/config_legacy_eos.json"), "legacy");
}

TEST(clip_text_checkpoint_errors_name_the_tensor)
{
    fb_clip_text_config tc;
    REQUIRE_OK(fb_clip_text_config_load(snap("config.json"), &tc));
    fb_model *w;
    REQUIRE_OK(fb_model_create(&w));
    fb_clip_text *net;
    EXPECT_ERROR(fb_clip_text_create(&tc, w, &net), FB_ERR_NOT_FOUND,
                 "text_model.embeddings.token_embedding.weight");
    fb_model_free(w);
    /* a vision-only config.json */
    const char *vis = "clip/hub/models--tanganke--clip-vit-base-patch32_eurosat/snapshots/"
                      "0101010101010101010101010101010101010101/config.json";
    EXPECT_ERROR(fb_clip_text_config_load(ref(vis), &tc), FB_ERR_FORMAT, "text_config");
}

/* class names and templates of a task file, as the task pool reads them */
static void task_lists(const char *task, fb_config **def, const char ***names, int64_t *K,
                       const char ***tmpl, int64_t *NT)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/config/clip_tasks/%s.yaml", fb_test_src_dir, task);
    if (fb_config_load(path, def)) fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    const fb_config *c = fb_cfg_map_get(*def, "classnames"), *t = fb_cfg_map_get(*def, "templates");
    *K = c->count;
    *NT = t->count;
    *names = malloc((size_t)*K * sizeof **names);
    *tmpl = malloc((size_t)*NT * sizeof **tmpl);
    for (int i = 0; i < c->count; i++)
        (*names)[i] = c->items[i]->value;
    for (int i = 0; i < t->count; i++)
        (*tmpl)[i] = t->items[i]->value;
}

TEST(zeroshot_heads_match_fusionbench_set_classification_task)
{
    cJSON *c = cases();
    REQUIRE(c);
    fb_clip_text *net = text_net(snap("config.json"));
    fb_clip_tokenizer *tok;
    REQUIRE_OK(fb_clip_tokenizer_load(snap("vocab.json"), snap("merges.txt"), &tok));
    const char *tasks[] = {"eurosat", "mnist"};
    for (int i = 0; i < 2; i++) {
        fb_config *def;
        const char **names, **tmpl;
        int64_t K, NT;
        task_lists(tasks[i], &def, &names, &K, &tmpl, &NT);
        float *head = malloc((size_t)(K * 16) * sizeof *head);
        EXPECT_OK(fb_zeroshot_head(net, tok, names, K, tmpl, NT, head));
        close_rows(tasks[i], head, cJSON_GetObjectItem(cJSON_GetObjectItem(c, "heads"), tasks[i]),
                   16, 1e-5);
        free(head);
        free(names);
        free(tmpl);
        fb_config_free(def);
    }
    fb_clip_tokenizer_free(tok);
    fb_clip_text_free(net);
    cJSON_Delete(c);
}

/* ------------------------------------------------------------- whole runs -- */

static const char *two_task_pool(void)
{
    const char *p = fb_test_path("ta2.yaml");
    const char *yaml = "_target_: fusion_bench.modelpool.CLIPVisionModelPool\n"
                       "include: ['^vision_model\\.']\n"
                       "models:\n"
                       "  _pretrained_: openai/clip-vit-base-patch32\n"
                       "  eurosat: tanganke/clip-vit-base-patch32_eurosat\n"
                       "  mnist: tanganke/clip-vit-base-patch32_mnist\n";
    fb_test_write_file(p, yaml, strlen(yaml));
    return p;
}

static void set_env(void)
{
    setenv("HF_HUB_CACHE", ref("clip/hub"), 1);
    setenv("FUSION_BENCH_DATA", ref("clip/data"), 1);
    setenv("XDG_CACHE_HOME", fb_test_path("xdg"), 1);
}

static void unset_env(void)
{
    unsetenv("HF_HUB_CACHE");
    unsetenv("FUSION_BENCH_DATA");
    unsetenv("XDG_CACHE_HOME");
}

/* runs `fusion_bench method=M modelpool=POOL taskpool=TA8 (two datasets)` and compares the
 * report with the reference scores of `want` */
static void run_and_compare(const char *method, const char *want, const char *extra)
{
    cJSON *c = cases();
    REQUIRE(c);
    char mp[4200], rp[4200];
    snprintf(mp, sizeof mp, "modelpool=%s", two_task_pool());
    snprintf(rp, sizeof rp, "report_save_path=%s", fb_test_path("report.json"));
    const char *argv[] = {fb_test_cli,
                          method,
                          mp,
                          "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8",
                          "taskpool.test_datasets=[eurosat,mnist]",
                          rp,
                          extra,
                          NULL};
    char *out = NULL, *err = NULL;
    int rc = fb_test_run(argv, &out, &err);
    if (rc != 0) fb_test_fail(__FILE__, __LINE__, "exit %d: %s", rc, err ? err : "");
    cJSON *r = rc ? NULL : fb_test_read_json(fb_test_path("report.json"));
    const cJSON *tp = r ? cJSON_GetObjectItem(r, "taskpool") : NULL;
    const cJSON *w = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "eval"), want);
    if (rc == 0) REQUIRE(tp && w);
    for (int i = 0; tp && i < 2; i++) {
        const char *t = i ? "mnist" : "eurosat";
        const cJSON *g = cJSON_GetObjectItem(tp, t), *e = cJSON_GetObjectItem(w, t);
        REQUIRE(g && e);
        const double ga = cJSON_GetObjectItem(g, "accuracy")->valuedouble;
        const double gl = cJSON_GetObjectItem(g, "loss")->valuedouble;
        const double ea = cJSON_GetObjectItem(e, "accuracy")->valuedouble;
        const double el = cJSON_GetObjectItem(e, "loss")->valuedouble;
        if (fabs(ga - ea) > 1e-9 || fabs(gl - el) > 1e-5 * fabs(el))
            fb_test_fail(__FILE__, __LINE__, "%s %s: accuracy %g loss %g, PyTorch %g %g", method, t,
                         ga, gl, ea, el);
    }
    cJSON_Delete(r);
    cJSON_Delete(c);
    free(out);
    free(err);
}

TEST(fusionbench_clip_taskpool_scores_as_pytorch)
{
    set_env();
    run_and_compare("method=dummy", "pretrained", "method.model_name=_pretrained_");
    /* the heads were cached; a second run reads them */
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/fusionbench-c/zeroshot_heads", fb_test_path("xdg"));
    struct stat sb;
    EXPECT(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode));
    run_and_compare("method=task_arithmetic", "task_arithmetic", "method.scaling_factor=0.3");
    unset_env();
}

static void expect_cli_error(const char *const *argv, const char *substr)
{
    char *err = NULL;
    int rc = fb_test_run(argv, NULL, &err);
    if (rc == 0 || !err || !strstr(err, substr))
        fb_test_fail(__FILE__, __LINE__, "exit %d, stderr '%s' lacks '%s'", rc, err ? err : "",
                     substr);
    else if (strchr(err, '\n') != err + strlen(err) - 1)
        fb_test_fail(__FILE__, __LINE__, "not one line: '%s'", err);
    free(err);
}

TEST(fusionbench_clip_taskpool_errors_name_what_is_missing)
{
    /* an empty cache: the first missing model and where it looked */
    setenv("HF_HUB_CACHE", fb_test_path("empty_hub"), 1);
    setenv("FUSION_BENCH_DATA", ref("clip/data"), 1);
    setenv("XDG_CACHE_HOME", fb_test_path("xdg"), 1);
    const char *ta8[] = {fb_test_cli, "method=task_arithmetic",
                         "modelpool=CLIPVisionModelPool/clip-vit-base-patch32_TA8",
                         "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8", NULL};
    expect_cli_error(ta8, "openai/clip-vit-base-patch32");
    /* a dataset folder missing: the folder and the export command */
    set_env();
    char mp[4200];
    snprintf(mp, sizeof mp, "modelpool=%s", two_task_pool());
    const char *missing[] = {fb_test_cli, "method=dummy", mp,
                             "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8", NULL};
    expect_cli_error(missing, "tools/export_dataset.py tanganke/sun397 test");
    /* no data root */
    unsetenv("FUSION_BENCH_DATA");
    const char *noroot[] = {fb_test_cli,
                            "method=dummy",
                            mp,
                            "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8",
                            "taskpool.test_datasets=[eurosat]",
                            NULL};
    expect_cli_error(noroot, "FUSION_BENCH_DATA");
    /* class folders that are not the labels */
    const char *bad = fb_test_path("baddata/eurosat/test/cat");
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", bad);
    REQUIRE(system(cmd) == 0);
    setenv("FUSION_BENCH_DATA", fb_test_path("baddata"), 1);
    expect_cli_error(noroot, "class folder 'cat'");
    /* a dataset the project has no names and templates for */
    setenv("FUSION_BENCH_DATA", ref("clip/data"), 1);
    const char *unknown[] = {fb_test_cli,
                             "method=dummy",
                             mp,
                             "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8",
                             "taskpool.test_datasets=[imagenet_r]",
                             NULL};
    expect_cli_error(unknown, "dataset 'imagenet_r'");
    unset_env();
}

TEST(clip_processor_resize_is_pillows_bicubic_to_the_byte)
{
    fb_model *m;
    REQUIRE_OK(fb_model_load(ref("clip/resize.safetensors"), &m));
    int cases = 0, stb_worst = 0;
    for (int i = 0;; i++) {
        char name[64];
        snprintf(name, sizeof name, "in_%d", i);
        const fb_tensor *in = fb_model_find(m, name);
        if (!in) break;
        const int64_t *sh = fb_tensor_shape(in);
        const void *src;
        REQUIRE_OK(fb_tensor_data(in, &src));
        for (int s = 0; s < 2; s++) {
            const int64_t size = s ? 32 : 224;
            snprintf(name, sizeof name, "out_%d_%lld", i, (long long)size);
            const fb_tensor *want = fb_model_find(m, name);
            REQUIRE(want);
            const void *w;
            REQUIRE_OK(fb_tensor_data(want, &w));
            const size_t n = (size_t)(size * size * sh[2]);
            uint8_t *got = malloc(n), *stb = malloc(n);
            EXPECT_OK(fb_image_resize_crop_clip(src, sh[0], sh[1], sh[2], size, got));
            size_t diff = 0;
            for (size_t j = 0; j < n; j++)
                diff += got[j] != ((const uint8_t *)w)[j];
            if (diff)
                fb_test_fail(__FILE__, __LINE__,
                             "%lld x %lld x %lld -> %lld: %zu bytes differ "
                             "from Pillow",
                             (long long)sh[0], (long long)sh[1], (long long)sh[2], (long long)size,
                             diff);
            /* the zoo's stb_image_resize path, for the record (docs/benchmark.md) */
            if (!fb_image_resize_crop(src, sh[0], sh[1], sh[2], size, stb))
                for (size_t j = 0; j < n; j++) {
                    int d = abs((int)stb[j] - (int)((const uint8_t *)w)[j]);
                    stb_worst = d > stb_worst ? d : stb_worst;
                }
            free(got);
            free(stb);
            cases++;
        }
    }
    EXPECT(cases == 18);
    EXPECT(stb_worst > 0); /* the two resamplers do differ: the reason this one exists */
    fb_model_free(m);
}

TEST(fusionbench_clip_taskpool_image_cache_is_checked_and_rebuilt)
{
    set_env();
    run_and_compare("method=dummy", "pretrained", "method.model_name=_pretrained_");
    /* every cached image file truncated: ignored, decoded again, the same scores */
    char cmd[4400];
    snprintf(cmd, sizeof cmd,
             "for f in %s/fusionbench-c/images/*.fbimg; do "
             "test -f \"$f\" && truncate -s 100 \"$f\" || exit 1; done",
             fb_test_path("xdg"));
    EXPECT(system(cmd) == 0);
    run_and_compare("method=dummy", "pretrained", "method.model_name=_pretrained_");
    snprintf(cmd, sizeof cmd,
             "for f in %s/fusionbench-c/images/*.fbimg; do "
             "test $(stat -c %%s \"$f\") -gt 100 || exit 1; done",
             fb_test_path("xdg"));
    EXPECT(system(cmd) == 0);
    unset_env();
}

TEST(fusionbench_clip_taskpool_feeds_the_data_driven_methods)
{
    /* AdaMerging learns on the test images (unlabelled), RegMean on the train split, as in
     * FusionBench; both run on byte-stored, CLIP-preprocessed images */
    set_env();
    char mp[4200];
    snprintf(mp, sizeof mp, "modelpool=%s", two_task_pool());
    const char *methods[][3] = {
        {"method=adamerging", "method.max_steps=2", "method.batch_size=4"},
        {"method=regmean", "method.num_regmean_examples=8", "method.batch_size=4"},
        {"method=weight_ensembling_moe", "method.max_steps=2", "method.batch_size=4"},
    };
    for (int i = 0; i < 3; i++) {
        const char *argv[] = {fb_test_cli,
                              methods[i][0],
                              mp,
                              "taskpool=CLIPVisionModelTaskPool/clip-vit-classification_TA8",
                              "taskpool.test_datasets=[eurosat,mnist]",
                              methods[i][1],
                              methods[i][2],
                              NULL};
        char *out = NULL, *err = NULL;
        int rc = fb_test_run(argv, &out, &err);
        if (rc != 0 || !out || !strstr(out, "average"))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", methods[i][0], rc, err ? err : "");
        free(out);
        free(err);
    }
    unset_env();
}

/* The inference network computes the last layer for the class tokens only: the same
 * operations on each row, but OpenBLAS's sgemm may sum a row in another order when it sits
 * elsewhere in a block (its kernels treat a block's edge rows apart), so the features agree
 * to float rounding, not to the byte. Each network's own bytes do not depend on the threads. */
TEST(clip_inference_network_gives_the_training_networks_features)
{
    for (int gelu = 0; gelu < 2; gelu++) {
        const fb_clip_config c = {64, 128, 4, 3, 32, 8, 3, 16, !gelu, 1e-5f};
        fb_clip *a, *b;
        REQUIRE_OK(fb_clip_create(&c, 7, &a));
        REQUIRE_OK(fb_clip_create_inference(&c, 7, &b));
        float *pa = fb_clip_params(a), *pb = fb_clip_params(b);
        uint64_t seed = 3;
        for (int64_t i = 0; i < fb_clip_num_params(a); i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            pa[i] = pb[i] = ((float)((seed >> 40) & 0xffffff) / 16777216.0f - 0.5f) * 0.2f;
        }
        static float x[7 * 3 * 32 * 32];
        for (int i = 0; i < 7 * 3 * 32 * 32; i++)
            x[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
        for (int64_t B = 1; B <= 7; B += 3) {
            const float *fa, *fb;
            float one[7 * 16];
            REQUIRE_OK(fb_clip_forward(a, x, B, &fa));
            REQUIRE_OK(fb_clip_forward(b, x, B, &fb));
            memcpy(one, fb, (size_t)(B * 16) * sizeof(float));
            double worst = 0, scale = 0;
            for (int64_t i = 0; i < B * 16; i++) {
                const double e = fabs((double)fa[i] - fb[i]);
                worst = e > worst ? e : worst;
                scale = fabs(fa[i]) > scale ? fabs(fa[i]) : scale;
            }
            EXPECT(scale > 0.01 && worst <= 1e-5 * scale);
            fb_set_num_threads(1);
            REQUIRE_OK(fb_clip_forward(b, x, B, &fb));
            fb_set_num_threads(0);
            EXPECT(!memcmp(one, fb, (size_t)(B * 16) * sizeof(float)));
        }
        fb_clip_free(a);
        fb_clip_free(b);
    }
    const fb_clip_config c = {64, 128, 4, 3, 32, 8, 3, 16, 1, 1e-5f};
    fb_clip *b;
    REQUIRE_OK(fb_clip_create_inference(&c, 5, &b));
    static float x[5 * 3 * 32 * 32];
    const float *f;
    REQUIRE_OK(fb_clip_forward(b, x, 5, &f));
    float d[5 * 16] = {0};
    EXPECT_ERROR(fb_clip_backward(b, d), FB_ERR_ARG, "inference");
    int64_t rows, cols;
    EXPECT(!fb_clip_linear_input(b, "vision_model.encoder.layers.0.mlp.fc1.weight", &rows, &cols));
    EXPECT(fb_clip_linear_input(b, "visual_projection.weight", &rows, &cols) && rows == 5);
    fb_clip_free(b);
}

TEST(fusionbench_own_taskpool_file_loads_unchanged)
{
    /* FusionBench's clip-vit-classification_TA8_B16.yaml, with B/32 as base_model: its
     * datasets from the defaults list (test_datasets: ???), its interpolations and PyTorch keys */
    const char *yaml = "defaults:\n"
                       "  - _self_\n"
                       "  - /dataset/image_classification/test@test_datasets:\n"
                       "      - sun397\n      - eurosat\n      - mnist\n"
                       "_target_: fusion_bench.taskpool.CLIPVisionModelTaskPool\n"
                       "_recursive_: false\n"
                       "test_datasets: ???\n"
                       "base_model: openai/clip-vit-base-patch32\n"
                       "clip_model:\n"
                       "  _target_: transformers.CLIPModel.from_pretrained\n"
                       "  pretrained_model_name_or_path: ${..base_model}\n"
                       "processor:\n"
                       "  _target_: transformers.CLIPProcessor.from_pretrained\n"
                       "  pretrained_model_name_or_path: ${..base_model}\n"
                       "data_processor: ${.processor}\n"
                       "dataloader_kwargs:\n"
                       "  batch_size: 7\n  num_workers: 8\n  pin_memory: True\n  drop_last: False\n"
                       "  shuffle: False\n"
                       "layer_wise_feature_save_path: null\n";
    fb_test_write_file(fb_test_path("fb_ta8.yaml"), yaml, strlen(yaml));
    set_env();
    cJSON *c = cases();
    REQUIRE(c);
    char mp[4200], tp[4200], rp[4200];
    snprintf(mp, sizeof mp, "modelpool=%s", two_task_pool());
    snprintf(tp, sizeof tp, "taskpool=%s", fb_test_path("fb_ta8.yaml"));
    snprintf(rp, sizeof rp, "report_save_path=%s", fb_test_path("report_fb.json"));
    /* sun397 has no data here: evaluate narrows the datasets to those it names */
    const char *argv[] = {
        fb_test_cli, "method=dummy", mp, tp, "taskpool.evaluate=[mnist,eurosat]", rp, NULL};
    char *err = NULL;
    int rc = fb_test_run(argv, NULL, &err);
    if (rc != 0) fb_test_fail(__FILE__, __LINE__, "exit %d: %s", rc, err ? err : "");
    cJSON *r = rc ? NULL : fb_test_read_json(fb_test_path("report_fb.json"));
    const cJSON *tpr = r ? cJSON_GetObjectItem(r, "taskpool") : NULL;
    const cJSON *w = cJSON_GetObjectItem(cJSON_GetObjectItem(c, "eval"), "pretrained");
    for (int i = 0; tpr && i < 2; i++) {
        const char *t = i ? "mnist" : "eurosat";
        const double gl = cJSON_GetObjectItem(cJSON_GetObjectItem(tpr, t), "loss")->valuedouble;
        const double el = cJSON_GetObjectItem(cJSON_GetObjectItem(w, t), "loss")->valuedouble;
        if (fabs(gl - el) > 1e-5 * fabs(el))
            fb_test_fail(__FILE__, __LINE__, "%s: loss %g, PyTorch %g", t, gl, el);
    }
    EXPECT(tpr && !cJSON_GetObjectItem(tpr, "sun397"));
    /* a name evaluate gives that the pool lacks */
    const char *bad[] = {fb_test_cli, "method=dummy", mp, tp, "taskpool.evaluate=[dtd]", NULL};
    expect_cli_error(bad, "'dtd' is not one of the task pool's datasets");
    cJSON_Delete(r);
    cJSON_Delete(c);
    free(err);
    unset_env();
}
