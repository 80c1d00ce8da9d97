/*
 * test_mergekit.c: `fusion_bench mergekit` and fb_mergekit_run against PyTorch merges written
 * from mergekit's formulas (tests/reference/mergekit_ref.py: every method, gradients, filters,
 * slices, precedence, bf16 and f32, a mergekit-multi chain), byte-identical for 1 and 2
 * threads; the output folder as mergekit writes it; and bad configurations refused with one
 * line before any work.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "harness.h"

static cJSON *load_cases(void)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/mergekit/cases.json", fb_test_ref_dir);
    return fb_test_read_json(path);
}

static const char *pool_dir(const char *pool)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/mergekit/%s", fb_test_ref_dir, pool);
    return path;
}

/* Runs case `name` of pool `pool` from the pool's folder (its model paths are relative). */
static fb_status run_case(const char *pool, const char *name, uint64_t seed, const char *out)
{
    char cwd[4096], cfg[512];
    if (!getcwd(cwd, sizeof cwd) || chdir(pool_dir(pool)) != 0) return FB_ERR_IO;
    snprintf(cfg, sizeof cfg, "%s.yml", name);
    fb_mergekit_options o = {.random_seed = seed};
    fb_status st = fb_mergekit_run(cfg, out, &o);
    if (chdir(cwd) != 0) return FB_ERR_IO;
    return st;
}

TEST(mergekit_configs_match_pytorch_for_every_method)
{
    cJSON *cases = load_cases();
    REQUIRE(cases);
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases)
    {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const char *pool = cJSON_GetObjectItem(c, "pool")->valuestring;
        uint64_t seed = (uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble;
        const char *out = fb_test_path(name);
        fb_status st = run_case(pool, name, seed, out);
        if (st) {
            fb_test_fail(__FILE__, __LINE__, "case %s: %s", name, fb_last_error());
            continue;
        }
        char path[4400];
        snprintf(path, sizeof path, "%s/model.safetensors", out);
        fb_model *got = NULL, *want = NULL;
        EXPECT_OK(fb_model_load(path, &got));
        snprintf(path, sizeof path, "%s/%s.expected.safetensors", pool_dir(pool), name);
        EXPECT_OK(fb_model_load(path, &want));
        if (got && want && !fb_test_models_close(got, want, 1e-6))
            fb_test_fail(__FILE__, __LINE__, "case %s differs from PyTorch", name);
        const cJSON *layers = cJSON_GetObjectItem(c, "layers");
        if (layers) { /* a restructured stack: config.json counts the output's layers */
            snprintf(path, sizeof path, "%s/config.json", out);
            char *cfg = fb_test_read_file(path, NULL), want_text[64];
            snprintf(want_text, sizeof want_text, "\"num_hidden_layers\":\t%d", layers->valueint);
            EXPECT(cfg && strstr(cfg, want_text));
            free(cfg);
        }
        const cJSON *vocab = cJSON_GetObjectItem(c, "vocab_size");
        if (vocab) { /* tokenizer_source: config.json has the output vocabulary's size */
            snprintf(path, sizeof path, "%s/config.json", out);
            char *cfg = fb_test_read_file(path, NULL), want_text[64];
            snprintf(want_text, sizeof want_text, "\"vocab_size\":\t%d", vocab->valueint);
            EXPECT(cfg && strstr(cfg, want_text));
            free(cfg);
        }
        const cJSON *added = cJSON_GetObjectItem(c, "added"), *a;
        if (added) { /* union: the new tokens in the tokenizer, with their ids and kinds */
            snprintf(path, sizeof path, "%s/tokenizer.json", out);
            cJSON *tj = fb_test_read_json(path);
            cJSON_ArrayForEach(a, added)
            {
                const char *tok = cJSON_GetArrayItem(a, 0)->valuestring;
                int id = cJSON_GetArrayItem(a, 1)->valueint,
                    special = cJSON_IsTrue(cJSON_GetArrayItem(a, 2));
                int ok = 0;
                const cJSON *e;
                cJSON_ArrayForEach(e, cJSON_GetObjectItem(tj, "added_tokens")) ok |=
                    !strcmp(cJSON_GetObjectItem(e, "content")->valuestring, tok) &&
                    cJSON_GetObjectItem(e, "id")->valueint == id &&
                    cJSON_IsTrue(cJSON_GetObjectItem(e, "special")) == special;
                if (!ok)
                    fb_test_fail(__FILE__, __LINE__, "case %s: token '%s' not added at %d", name,
                                 tok, id);
            }
            cJSON_Delete(tj);
            /* and tokenizer_config.json's added_tokens_decoder, keyed by id */
            snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
            cJSON *tc = fb_test_read_json(path);
            const cJSON *dec = cJSON_GetObjectItem(tc, "added_tokens_decoder");
            cJSON_ArrayForEach(a, added)
            {
                char id[16];
                snprintf(id, sizeof id, "%d", cJSON_GetArrayItem(a, 1)->valueint);
                const cJSON *e = cJSON_GetObjectItem(dec, id);
                EXPECT(e && !strcmp(cJSON_GetObjectItem(e, "content")->valuestring,
                                    cJSON_GetArrayItem(a, 0)->valuestring));
            }
            cJSON_Delete(tc);
        }
        fb_model_free(got);
        fb_model_free(want);
        n++;
    }
    EXPECT(n >= 34);
    cJSON_Delete(cases);
}

TEST(mergekit_merges_are_the_same_bytes_for_1_and_2_threads)
{
    const char *names[][2] = {{"f32", "dare_ties"},       {"f32", "della"},
                              {"bf16", "ties_bf16"},      {"f32", "sce"},
                              {"f32", "multislerp"},      {"f32", "arcee_fusion"},
                              {"bf16", "slerp_gradient"}, {"big", "ties_big"},
                              {"big", "dare_ties_big"},   {"big", "breadcrumbs_ties_big"},
                              {"vocab", "vocab_b"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char a[256], b[256];
        snprintf(a, sizeof a, "%s_1", names[i][1]);
        snprintf(b, sizeof b, "%s_2", names[i][1]);
        fb_set_num_threads(1);
        EXPECT_OK(run_case(names[i][0], names[i][1], 7, fb_test_path(a)));
        fb_set_num_threads(2);
        EXPECT_OK(run_case(names[i][0], names[i][1], 7, fb_test_path(b)));
        char pa[4400], pb[4400];
        snprintf(pa, sizeof pa, "%s/model.safetensors", fb_test_path(a));
        snprintf(pb, sizeof pb, "%s/model.safetensors", fb_test_path(b));
        size_t la = 0, lb = 0;
        char *da = fb_test_read_file(pa, &la), *db = fb_test_read_file(pb, &lb);
        if (!da || !db || la != lb || memcmp(da, db, la))
            fb_test_fail(__FILE__, __LINE__, "%s: 1 and 2 threads differ", names[i][1]);
        free(da);
        free(db);
    }
    /* and another seed draws other masks */
    EXPECT_OK(run_case("f32", "dare_ties", 8, fb_test_path("seed8")));
    size_t la = 0, lb = 0;
    char pa[4400], pb[4400];
    snprintf(pa, sizeof pa, "%s/model.safetensors", fb_test_path("dare_ties_1"));
    snprintf(pb, sizeof pb, "%s/model.safetensors", fb_test_path("seed8"));
    char *da = fb_test_read_file(pa, &la), *db = fb_test_read_file(pb, &lb);
    EXPECT(da && db && la == lb && memcmp(da, db, la) != 0);
    free(da);
    free(db);
}

static void write_config(const char *name, const char *fmt)
{
    /* %1$s in fmt stands for the f32 pool folder */
    char text[8192];
    snprintf(text, sizeof text, fmt, pool_dir("f32"));
    fb_test_write_file(fb_test_path(name), text, strlen(text));
}

TEST(mergekit_output_folder_holds_config_tokenizer_card_and_the_configuration)
{
    write_config("tok.yml",
                 "models:\n  - model: %1$s/a\n    parameters: {weight: 1.0}\n"
                 "  - model: %1$s/b\n    parameters: {weight: 0.5}\n"
                 "merge_method: linear\ntokenizer_source: %1$s/b\n"
                 "chat_template: \"{%% for m in messages %%}{{ m.content }}{%% endfor %%}\"\n");
    const char *out = fb_test_path("tok_out");
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "%s mergekit %s %s --out-shard-size 2K", fb_test_cli,
             fb_test_path("tok.yml"), out);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    char *err = NULL;
    int rc = fb_test_run(argv, NULL, &err);
    EXPECT(rc == 0);
    if (rc) fb_test_fail(__FILE__, __LINE__, "stderr: %s", err ? err : "");
    free(err);
    char p[4400];
    snprintf(p, sizeof p, "%s/mergekit_config.yml", out);
    char *saved = fb_test_read_file(p, NULL),
         *given = fb_test_read_file(fb_test_path("tok.yml"), NULL);
    EXPECT(saved && given && !strcmp(saved, given));
    snprintf(p, sizeof p, "%s/tokenizer.json", out);
    char *tok = fb_test_read_file(p, NULL);
    EXPECT(tok && strstr(tok, "\"source\": \"b\""));
    snprintf(p, sizeof p, "%s/tokenizer_config.json", out);
    char *tc = fb_test_read_file(p, NULL);
    EXPECT(tc && strstr(tc, "\"chat_template\":") && strstr(tc, "m.content") &&
           strstr(tc, "\"source\":\t\"b\""));
    snprintf(p, sizeof p, "%s/README.md", out);
    char *card = fb_test_read_file(p, NULL);
    EXPECT(card && strstr(card, "- mergekit\n") && strstr(card, "mergekit's `linear`") &&
           strstr(card, "```yaml\nmodels:"));
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", out); /* 2 KB shards */
    EXPECT(fb_test_exists(p));
    fb_model *m = NULL;
    EXPECT_OK(fb_model_load(out, &m));
    EXPECT(m && fb_model_num_tensors(m) == 2 + 4 * 9 + 1);
    fb_model_free(m);
    free(saved);
    free(given);
    free(tok);
    free(tc);
    free(card);
}

TEST(mergekit_models_by_hub_id_and_revision)
{
    char p[4400], src[4400];
    const char *dirs[] = {
        "hub",
        "hub/models--org--tiny",
        "hub/models--org--tiny/refs",
        "hub/models--org--tiny/snapshots",
        "hub/models--org--tiny/snapshots/1111111111111111111111111111111111111111",
        "hub/models--org--tiny/snapshots/2222222222222222222222222222222222222222"};
    for (int i = 0; i < 6; i++)
        mkdir(fb_test_path(dirs[i]), 0755);
    const char *which[2] = {"a", "b"};
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/model.safetensors", fb_test_path(dirs[4 + i]));
        snprintf(src, sizeof src, "%s/%s/model.safetensors", pool_dir("f32"), which[i]);
        REQUIRE(symlink(src, p) == 0);
    }
    fb_test_write_file(fb_test_path("hub/models--org--tiny/refs/main"),
                       "1111111111111111111111111111111111111111", 40);
    fb_test_write_file(fb_test_path("hub/models--org--tiny/refs/v1"),
                       "2222222222222222222222222222222222222222", 40);
    setenv("HF_HUB_CACHE", fb_test_path("hub"), 1);
    write_config("hub.yml", "models:\n  - model: org/tiny@v1\n    parameters: {weight: 1.0}\n"
                            "merge_method: linear\n");
    REQUIRE_OK(fb_mergekit_run(fb_test_path("hub.yml"), fb_test_path("hub_out"), NULL));
    fb_model *got = NULL, *want = NULL;
    snprintf(src, sizeof src, "%s/b/model.safetensors", pool_dir("f32"));
    EXPECT_OK(fb_model_load(fb_test_path("hub_out"), &got));
    EXPECT_OK(fb_model_load(src, &want));
    EXPECT(got && want && fb_test_models_match(got, want, 0));
    fb_model_free(got);
    fb_model_free(want);
    write_config("hub2.yml", "models:\n  - model: org/tiny@v2\n    parameters: {weight: 1.0}\n"
                             "merge_method: linear\n");
    EXPECT_ERROR(fb_mergekit_run(fb_test_path("hub2.yml"), fb_test_path("hub2_out"), NULL),
                 FB_ERR_NOT_FOUND, "org/tiny@v2");
    EXPECT(!fb_test_exists(fb_test_path("hub2_out")));
}

/* The config fails with exit status `code`, one line naming `what`, and nothing written. */
static void refused(const char *text, int code, const char *what)
{
    write_config("bad.yml", text);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "%s mergekit %s %s", fb_test_cli, fb_test_path("bad.yml"),
             fb_test_path("bad_out"));
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    char *err = NULL;
    int rc = fb_test_run(argv, NULL, &err);
    if (rc != code || !err || !strstr(err, what) || strchr(err, '\n') != err + strlen(err) - 1)
        fb_test_fail(__FILE__, __LINE__, "'%s': exit %d, stderr '%s' (wanted %d and '%s')", text,
                     rc, err ? err : "", code, what);
    EXPECT(!fb_test_exists(fb_test_path("bad_out")));
    EXPECT(!fb_test_exists(fb_test_path("bad_out.intermediates")));
    free(err);
}

TEST(mergekit_bad_configurations_fail_with_one_line_before_any_work)
{
    refused("models:\n  - model: %1$s/a\nmerge_method: frankenstein\n", 2,
            "unknown merge_method 'frankenstein'");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1, densty: 0.5}\n"
            "merge_method: ties\nbase_model: %1$s/base\n",
            2, "no parameter 'densty'");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1, normalize: true}\n"
            "merge_method: ties\nbase_model: %1$s/base\n",
            2, "'normalize' of ties is not per model");
    refused("slices:\n  - sources:\n      - model: %1$s/a\n        layer_range: [0, 9]\n"
            "merge_method: passthrough\n",
            2, "outside its 4 layers");
    refused("slices:\n  - sources:\n      - model: %1$s/a\n        layer_range: [0, 2]\n"
            "      - model: %1$s/b\n        layer_range: [0, 3]\n"
            "merge_method: slerp\nbase_model: %1$s/a\nparameters: {t: 0.5}\n",
            2, "the same number of layers");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: []}\nmerge_method: linear\n", 2,
            "empty list");
    refused("models:\n  - model: %1$s/a\n  - model: %1$s/b\n    parameters: {weight: 1}\n"
            "merge_method: linear\n",
            2, "has no 'weight'");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1}\nmerge_method: ties\n", 2,
            "needs base_model");
    refused("models:\n  - model: %1$s/a\n    parameters:\n      weight: {filter: mlp, value: 1}\n"
            "merge_method: linear\n",
            2, "must stand in a list");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1}\nmerge_method: linear\n"
            "---\nmodels:\n  - model: %1$s/b\n    parameters: {weight: 1}\n"
            "merge_method: linear\n",
            2, "without a name");
    refused("models:\n  - model: %1$s/nowhere\n    parameters: {weight: 1}\n"
            "merge_method: linear\n",
            1, "nowhere");
    /* a later document's missing model stops the run before the first merge */
    refused("name: first\nmodels:\n  - model: %1$s/a\n    parameters: {weight: 1}\n"
            "merge_method: linear\n---\nmodels:\n  - model: first\n    parameters: {weight: 1}\n"
            "  - model: %1$s/nowhere\n    parameters: {weight: 1}\nmerge_method: linear\n",
            1, "nowhere");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1}\nmerge_method: linear\n"
            "tokenizer:\n  source: union\n  tokens:\n    x: {source: zero}\n",
            2, "tokenizer.tokens");
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1}\nmerge_method: linear\n"
            "dtype: float8\n",
            2, "dtype 'float8'");
    /* a first document that fails while merging leaves no intermediate folder behind */
    refused("name: first\nmodels:\n  - model: %1$s/a\n    parameters: {weight: 1, density: 0.01}\n"
            "merge_method: ties\nbase_model: %1$s/base\n---\nmodels:\n  - model: first\n"
            "    parameters: {weight: 1}\nmerge_method: linear\n",
            2, "keeps none");
    /* the density TIES keeps of a 16-entry norm: none at 0.01 (mergekit refuses it too) */
    refused("models:\n  - model: %1$s/a\n    parameters: {weight: 1, density: 0.01}\n"
            "merge_method: ties\nbase_model: %1$s/base\n",
            2, "keeps none");
}

TEST(mergekit_outputs_that_are_inputs_are_refused_before_any_work)
{
    const char *cmds[][2] = {
        {"mergekit linear.yml a", "output folder a holds the input files of model 'a'"},
        {"mergekit linear.yml %s --report a/model.safetensors",
         "report a/model.safetensors is the input file"},
        {"mergekit-extract-lora --model a --base-model base --out-path base",
         "adapter folder base holds"},
    };
    char before[4400];
    snprintf(before, sizeof before, "%s/a/model.safetensors", pool_dir("f32"));
    size_t len0 = 0;
    char *bytes0 = fb_test_read_file(before, &len0);
    for (int i = 0; i < 3; i++) {
        char cmd[9000], args[4400];
        snprintf(args, sizeof args, cmds[i][0], fb_test_path("out"));
        snprintf(cmd, sizeof cmd, "cd %s && %s %s", pool_dir("f32"), fb_test_cli, args);
        const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
        char *err = NULL;
        int rc = fb_test_run(argv, NULL, &err);
        if (rc != 2 || !err || !strstr(err, cmds[i][1]))
            fb_test_fail(__FILE__, __LINE__, "%s: exit %d, '%s'", args, rc, err ? err : "");
        free(err);
        EXPECT(!fb_test_exists(fb_test_path("out")));
    }
    size_t len1 = 0;
    char *bytes1 = fb_test_read_file(before, &len1);
    EXPECT(bytes0 && bytes1 && len0 == len1 && !memcmp(bytes0, bytes1, len0));
    free(bytes0);
    free(bytes1);
}

TEST(mergekit_dry_run_resolves_everything_and_writes_nothing)
{
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "cd %s && %s mergekit slices_precedence.yml %s --dry-run",
             pool_dir("f32"), fb_test_cli, fb_test_path("dry"));
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    char *out = NULL;
    EXPECT(fb_test_run(argv, &out, NULL) == 0);
    EXPECT(out && strstr(out, "valid; nothing written"));
    EXPECT(!fb_test_exists(fb_test_path("dry")));
    free(out);
}

/* ||D - B A||_F for a module of adapter `ad`, D = a - base (as f32). */
static double residual(const fb_model *ad, const char *weight, int64_t *rank)
{
    char mod[512], name[600], p[4400];
    snprintf(mod, sizeof mod, "%.*s", (int)(strlen(weight) - 7), weight);
    snprintf(name, sizeof name, "base_model.model.%s.lora_A.weight", mod);
    const fb_tensor *A = fb_model_find(ad, name);
    snprintf(name, sizeof name, "base_model.model.%s.lora_B.weight", mod);
    const fb_tensor *B = fb_model_find(ad, name);
    if (!A || !B) return -1.0;
    fb_model *a = NULL, *base = NULL;
    snprintf(p, sizeof p, "%s/a", pool_dir("f32"));
    fb_model_load(p, &a);
    snprintf(p, sizeof p, "%s/base", pool_dir("f32"));
    fb_model_load(p, &base);
    const fb_tensor *ta = fb_model_find(a, weight), *tb = fb_model_find(base, weight);
    int64_t m = fb_tensor_shape(ta)[0], n = fb_tensor_shape(ta)[1], r = fb_tensor_shape(A)[0];
    float *x = malloc((size_t)(m * n) * 4), *y = malloc((size_t)(m * n) * 4);
    float *fa = malloc((size_t)(r * n) * 4), *fb = malloc((size_t)(m * r) * 4);
    fb_tensor_to_f32(ta, x);
    fb_tensor_to_f32(tb, y);
    fb_tensor_to_f32(A, fa);
    fb_tensor_to_f32(B, fb);
    double err = 0.0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double ba = 0.0;
            for (int64_t k = 0; k < r; k++)
                ba += (double)fb[i * r + k] * fa[k * n + j];
            double d = (double)x[i * n + j] - y[i * n + j] - ba;
            err += d * d;
        }
    free(x), free(y), free(fa), free(fb);
    fb_model_free(a);
    fb_model_free(base);
    *rank = r;
    return sqrt(err);
}

TEST(lora_extraction_reconstructs_within_the_truncation_error)
{
    char model[4200], base[4200], svd_path[4200];
    snprintf(model, sizeof model, "%s/a", pool_dir("f32"));
    snprintf(base, sizeof base, "%s/base", pool_dir("f32"));
    snprintf(svd_path, sizeof svd_path, "%s/mergekit/svd_a.json", fb_test_ref_dir);
    cJSON *svd = fb_test_read_json(svd_path);
    REQUIRE(svd);
    const double eps = 0.03;
    for (int pass = 0; pass < 2; pass++) { /* rank 5; then singular values above eps */
        fb_lora_extract_options o = {.max_rank = pass ? 64 : 5, .sv_epsilon = pass ? eps : 0};
        const char *out = fb_test_path(pass ? "lora_eps" : "lora5");
        REQUIRE_OK(fb_lora_extract(model, base, out, &o));
        char p[4400];
        snprintf(p, sizeof p, "%s/adapter_model.safetensors", out);
        fb_model *ad = NULL;
        REQUIRE_OK(fb_model_load(p, &ad));
        snprintf(p, sizeof p, "%s/adapter_config.json", out);
        cJSON *cfg = fb_test_read_json(p);
        REQUIRE(cfg);
        int64_t max_rank = (int64_t)cJSON_GetObjectItem(cfg, "r")->valuedouble;
        const cJSON *e;
        int modules = 0;
        cJSON_ArrayForEach(e, svd)
        {
            int64_t k = cJSON_GetArraySize(e), want_rank = pass ? 0 : 5, rank = 0;
            if (pass) {
                for (int64_t i = 0; i < k; i++)
                    want_rank += cJSON_GetArrayItem(e, (int)i)->valuedouble > eps;
                if (want_rank < 1) want_rank = 1;
            }
            double dropped = 0.0, total = 0.0;
            for (int64_t i = 0; i < k; i++) {
                double s = cJSON_GetArrayItem(e, (int)i)->valuedouble;
                total += s * s;
                if (i >= want_rank) dropped += s * s;
            }
            double err = residual(ad, e->string, &rank);
            if (rank != want_rank || fabs(err - sqrt(dropped)) > 1e-5 * sqrt(total) + 1e-7)
                fb_test_fail(__FILE__, __LINE__,
                             "%s: rank %lld (want %lld), error %.9g, "
                             "predicted %.9g",
                             e->string, (long long)rank, (long long)want_rank, err, sqrt(dropped));
            /* modules of another rank than r are in rank_pattern and alpha_pattern */
            char mod[512];
            snprintf(mod, sizeof mod, "%.*s", (int)(strlen(e->string) - 7), e->string);
            const cJSON *rp = cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "rank_pattern"), mod);
            const cJSON *ap = cJSON_GetObjectItem(cJSON_GetObjectItem(cfg, "alpha_pattern"), mod);
            if (rank != max_rank)
                EXPECT(rp && ap && rp->valuedouble == rank && ap->valuedouble == rank);
            else
                EXPECT(!rp && !ap);
            modules++;
        }
        EXPECT(modules == 4 * 7);
        /* embeddings, norms and lm_head are saved whole */
        EXPECT(fb_model_find(ad, "base_model.model.model.embed_tokens.weight") &&
               fb_model_find(ad, "base_model.model.lm_head.weight") &&
               fb_model_find(ad, "base_model.model.model.layers.0.input_layernorm.weight"));
        cJSON_Delete(cfg);
        fb_model_free(ad);
    }
    cJSON_Delete(svd);
}

/* tmp/name: a configuration merging base with the adapter in folder adapter applied. */
static void adapter_config(const char *name, const char *base, const char *adapter)
{
    char text[9000];
    snprintf(text, sizeof text,
             "models:\n  - model: %s+%s\n    parameters: {weight: 1.0}\n"
             "merge_method: linear\n",
             base, adapter);
    fb_test_write_file(fb_test_path(name), text, strlen(text));
}

TEST(lora_adapters_round_trip_as_merge_inputs)
{
    char model[4200], base[4200];
    snprintf(model, sizeof model, "%s/a", pool_dir("f32"));
    snprintf(base, sizeof base, "%s/base", pool_dir("f32"));
    /* full rank: base + adapter is model a again (up to float32 rounding) */
    fb_lora_extract_options o = {.max_rank = 64};
    REQUIRE_OK(fb_lora_extract(model, base, fb_test_path("full"), &o));
    adapter_config("rt.yml", base, fb_test_path("full"));
    REQUIRE_OK(fb_mergekit_run(fb_test_path("rt.yml"), fb_test_path("rt_out"), NULL));
    fb_model *got = NULL, *want = NULL;
    EXPECT_OK(fb_model_load(fb_test_path("rt_out"), &got));
    EXPECT_OK(fb_model_load(model, &want));
    EXPECT(got && want && fb_test_models_close(got, want, 2e-6));
    fb_model_free(got);
    fb_model_free(want);
    /* include/exclude and skip_undecomposable choose what the adapter holds */
    const char *inc[] = {"mlp", NULL}, *exc[] = {"layers\\.3\\.", NULL};
    fb_lora_extract_options o2 = {
        .max_rank = 2, .include_regexes = inc, .exclude_regexes = exc, .skip_undecomposable = 1};
    REQUIRE_OK(fb_lora_extract(model, base, fb_test_path("some"), &o2));
    char p[4400];
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", fb_test_path("some"));
    fb_model *ad = NULL;
    REQUIRE_OK(fb_model_load(p, &ad));
    EXPECT(fb_model_num_tensors(ad) == 3 * 3 * 2);
    EXPECT(fb_model_find(ad, "base_model.model.model.layers.2.mlp.up_proj.lora_A.weight"));
    EXPECT(!fb_model_find(ad, "base_model.model.model.layers.3.mlp.up_proj.lora_A.weight"));
    fb_model_free(ad);
    /* the CLI, and an adapter that does not fit its model */
    char cmd[9000];
    snprintf(cmd, sizeof cmd,
             "%s mergekit-extract-lora --model %s --base-model %s --out-path %s "
             "--max-rank 3 --embed-lora -e 'layers\\.[12]\\.'",
             fb_test_cli, model, base, fb_test_path("cli"));
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    EXPECT(fb_test_run(argv, NULL, NULL) == 0);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", fb_test_path("cli"));
    REQUIRE_OK(fb_model_load(p, &ad));
    EXPECT(fb_model_find(ad, "base_model.model.model.embed_tokens.lora_embedding_A"));
    EXPECT(fb_model_find(ad, "base_model.model.lm_head.lora_A.weight"));
    EXPECT(!fb_model_find(ad, "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"));
    fb_model_free(ad);
    /* the embed-lora adapter applies (embedding factors transposed as PEFT stores them) */
    adapter_config("emb.yml", base, fb_test_path("cli"));
    EXPECT_OK(fb_mergekit_run(fb_test_path("emb.yml"), fb_test_path("emb_out"), NULL));
    /* a module the model lacks */
    snprintf(p, sizeof p, "%s/adapter_config.json", fb_test_path("some"));
    char *cfg = fb_test_read_file(p, NULL);
    mkdir(fb_test_path("bad_adapter"), 0755);
    snprintf(p, sizeof p, "%s/adapter_config.json", fb_test_path("bad_adapter"));
    fb_test_write_file(p, cfg, strlen(cfg));
    free(cfg);
    fb_model *bad;
    fb_model_create(&bad);
    float v[2 * 16] = {0};
    int64_t sa[2] = {2, 16}, sb[2] = {16, 2};
    fb_model_add_tensor(bad, "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight", FB_F32, 2,
                        sa, v, NULL);
    fb_model_add_tensor(bad, "base_model.model.model.layers.9.mlp.up_proj.lora_B.weight", FB_F32, 2,
                        sb, v, NULL);
    snprintf(p, sizeof p, "%s/adapter_model.safetensors", fb_test_path("bad_adapter"));
    fb_model_save(bad, p, NULL);
    fb_model_free(bad);
    adapter_config("bad.yml", base, fb_test_path("bad_adapter"));
    EXPECT_ERROR(fb_mergekit_run(fb_test_path("bad.yml"), fb_test_path("bad_out"), NULL),
                 FB_ERR_MISMATCH, "layers.9.mlp.up_proj.lora_A.weight' matches no tensor");
    EXPECT(!fb_test_exists(fb_test_path("bad_out")));
}

/* The temporaries a failed run might leave beside out (there must be none). */
static int debris(const char *dir)
{
    char cmd[4400], *out = NULL;
    snprintf(cmd, sizeof cmd, "ls -A %s | grep -c tmp", dir);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    fb_test_run(argv, &out, NULL);
    int n = out ? atoi(out) : -1;
    free(out);
    return n;
}

TEST(mergekit_and_lora_allocation_failures_are_errors_and_leave_nothing)
{
    /* ties with an adapter applied to one input: the translator, the adapter and the chunked
     * per-tensor passes, with the n-th allocation failing */
    char text[9000], model[4200], base[4200];
    snprintf(text, sizeof text,
             "models:\n  - model: %1$s/a\n    parameters: {weight: 1, density: 0.5}\n"
             "  - model: %1$s/base+%1$s/adapter_x\n    parameters: {weight: 0.5, density: 0.7}\n"
             "merge_method: ties\nbase_model: %1$s/base\n",
             pool_dir("f32"));
    fb_test_write_file(fb_test_path("f.yml"), text, strlen(text));
    snprintf(model, sizeof model, "%s/a", pool_dir("f32"));
    snprintf(base, sizeof base, "%s/base", pool_dir("f32"));
    /* and a union vocabulary, with embeddings rebuilt as they are read */
    char vocab_cfg[4400];
    snprintf(vocab_cfg, sizeof vocab_cfg, "%s/mergekit/vocab/vocab_union.yml", fb_test_ref_dir);
    char cwd[4096];
    REQUIRE(getcwd(cwd, sizeof cwd) != NULL);
    int failures = 0;
    for (int which = 0; which < 3; which++) { /* the merge, the extraction, the union */
        fb_status st = FB_ERR_NOMEM;
        long n = 0;
        /* every early allocation, then a sample, until the run needs no more */
        for (; st != FB_OK && n < 1000000; n += n < 120 ? 1 : n / 6) {
            fb_alloc_fail_after(n);
            fb_lora_extract_options o = {.max_rank = 4};
            if (which == 2 && chdir(fb_test_ref_dir) == 0 && chdir("mergekit/vocab") == 0)
                st = fb_mergekit_run(vocab_cfg, fb_test_path("u_out"), NULL);
            else
                st = which ? fb_lora_extract(model, base, fb_test_path("l_out"), &o)
                           : fb_mergekit_run(fb_test_path("f.yml"), fb_test_path("f_out"), NULL);
            if (which == 2 && chdir(cwd) != 0) st = FB_ERR_IO;
            fb_alloc_fail_after(-1);
            if (st == FB_ERR_NOMEM)
                failures++;
            else if (st != FB_OK)
                fb_test_fail(__FILE__, __LINE__, "%s, allocation %ld: %s (%s)",
                             which == 2 ? "union"
                             : which    ? "extract"
                                        : "merge",
                             n, fb_status_str(st), fb_last_error());
            if (st)
                EXPECT(!fb_test_exists(fb_test_path(which == 2 ? "u_out"
                                                    : which    ? "l_out"
                                                               : "f_out")));
        }
        EXPECT(st == FB_OK);
    }
    EXPECT(debris(fb_test_tmp()) == 0);
    EXPECT(failures > 200);
}
