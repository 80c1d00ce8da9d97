/*
 * test_hub.c: pool entries named by Hugging Face model ids, found in a hub cache the test
 * builds (refs/main and a tag naming two snapshots), offline; errors name every path tried.
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "pool/modelpool.h"

static const char *HASH_A = "0123456789abcdef0123456789abcdef01234567";
static const char *HASH_B = "89abcdef0123456789abcdef0123456789abcdef";

/* A one-tensor model whose entries are all `value`, saved at path. */
static void save_model(const char *path, float value)
{
    float v[6];
    for (int i = 0; i < 6; i++)
        v[i] = value;
    fb_model *m;
    fb_model_create(&m);
    int64_t shape[2] = {2, 3};
    fb_model_add_tensor(m, "w", FB_F32, 2, shape, v, NULL);
    fb_model_save(m, path, NULL);
    fb_model_free(m);
}

static void make_cache(void)
{
    char p[4400];
    const char *dirs[] = {"hub", "hub/models--org--clip", "hub/models--org--clip/refs",
                          "hub/models--org--clip/snapshots"};
    for (int i = 0; i < 4; i++)
        mkdir(fb_test_path(dirs[i]), 0755);
    snprintf(p, sizeof p, "hub/models--org--clip/snapshots/%s", HASH_A);
    mkdir(fb_test_path(p), 0755);
    snprintf(p, sizeof p, "hub/models--org--clip/snapshots/%s/model.safetensors", HASH_A);
    save_model(fb_test_path(p), 1.0f);
    snprintf(p, sizeof p, "hub/models--org--clip/snapshots/%s", HASH_B);
    mkdir(fb_test_path(p), 0755);
    snprintf(p, sizeof p, "hub/models--org--clip/snapshots/%s/model.safetensors", HASH_B);
    save_model(fb_test_path(p), 3.0f);
    char ref[64];
    snprintf(ref, sizeof ref, "%s", HASH_A); /* huggingface_hub writes no newline */
    fb_test_write_file(fb_test_path("hub/models--org--clip/refs/main"), ref, strlen(ref));
    snprintf(ref, sizeof ref, "%s\n", HASH_B);
    fb_test_write_file(fb_test_path("hub/models--org--clip/refs/v1.0"), ref, strlen(ref));
    setenv("HF_HUB_CACHE", fb_test_path("hub"), 1);
}

static float first_value(const fb_modelpool *pool, const char *name)
{
    float v[6] = {0};
    const fb_model *m = fb_modelpool_get(pool, name);
    if (!m || fb_tensor_to_f32(fb_model_find(m, "w"), v)) return -1;
    return v[0];
}

TEST(hub_ids_resolve_to_snapshots_by_branch_tag_and_hash)
{
    make_cache();
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "models:\n"
             "  main: org/clip\n"
             "  tagged: {pretrained_model_name_or_path: org/clip, revision: v1.0}\n"
             "  by_hash: {pretrained_model_name_or_path: org/clip, revision: %.10s}\n"
             "  full_hash: {pretrained_model_name_or_path: org/clip, revision: %s}\n",
             HASH_B, HASH_A);
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
    fb_modelpool *pool;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    EXPECT(first_value(pool, "main") == 1.0f);
    EXPECT(first_value(pool, "tagged") == 3.0f);
    EXPECT(first_value(pool, "by_hash") == 3.0f);
    EXPECT(first_value(pool, "full_hash") == 1.0f);
    const char *path = fb_modelpool_path(pool, "tagged");
    EXPECT(path && strstr(path, HASH_B) && strstr(path, "models--org--clip/snapshots/"));
    fb_modelpool_free(pool);
    /* the API takes ids too (the main revision), when no such path exists */
    REQUIRE_OK(fb_modelpool_create(&pool));
    REQUIRE_OK(fb_modelpool_add_path(pool, "api", "org/clip"));
    EXPECT(first_value(pool, "api") == 1.0f);
    EXPECT(fb_modelpool_add_path(pool, "gone", "org/none") == FB_ERR_NOT_FOUND &&
           strstr(fb_last_error(), "model 'gone'") && strstr(fb_last_error(), "org/none"));
    fb_modelpool_free(pool);
    /* the CLI merges them, and a local path of that name would win */
    char pool_arg[4200], save[4200];
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("avg.safetensors"));
    const char *argv[] = {fb_test_cli, "method=simple_average", pool_arg, save, NULL};
    EXPECT(fb_test_run(argv, NULL, NULL) == 0);
    fb_model *avg;
    REQUIRE_OK(fb_model_load(fb_test_path("avg.safetensors"), &avg));
    float v[6];
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(avg, "w"), v));
    EXPECT(v[0] == 2.0f);
    fb_model_free(avg);
    /* a folder output's model card names the ids and the snapshots merged */
    snprintf(save, sizeof save, "merged_model_save_path=%s", fb_test_path("avg"));
    EXPECT(fb_test_run(argv, NULL, NULL) == 0);
    char *card = fb_test_read_file(fb_test_path("avg/README.md"), NULL);
    EXPECT(card && strstr(card, "base_model:\n- org/clip\n- org/clip\n") && strstr(card, HASH_B) &&
           strstr(card, "| tagged | org/clip | "));
    free(card);
    mkdir(fb_test_path("org"), 0755);
    save_model(fb_test_path("org/clip"), 7.0f);
    const char *y = "models:\n  local: org/clip\n";
    fb_test_write_file(fb_test_path("pool2.yaml"), y, strlen(y));
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool2.yaml"), &pool));
    EXPECT(first_value(pool, "local") == 7.0f);
    fb_modelpool_free(pool);
}

TEST(missing_hub_models_and_revisions_name_every_path_and_the_download_command)
{
    make_cache();
    fb_modelpool *pool = NULL;
    const char *y1 = "models:\n  a: org/absent\n";
    fb_test_write_file(fb_test_path("p1.yaml"), y1, strlen(y1));
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p1.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "models--org--absent");
    EXPECT(strstr(fb_last_error(), "huggingface-cli download org/absent") &&
           strstr(fb_last_error(), "model 'a'"));
    const char *y2 = "models:\n  a: {pretrained_model_name_or_path: org/clip, revision: v9}\n";
    fb_test_write_file(fb_test_path("p2.yaml"), y2, strlen(y2));
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p2.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "refs/v9");
    EXPECT(strstr(fb_last_error(), "--revision v9"));
    /* a ref naming a snapshot that is not there */
    fb_test_write_file(fb_test_path("hub/models--org--clip/refs/gone"), "deadbeefdeadbeef", 16);
    const char *y3 = "models:\n  a: {pretrained_model_name_or_path: org/clip, revision: gone}\n";
    fb_test_write_file(fb_test_path("p3.yaml"), y3, strlen(y3));
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p3.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "snapshots/deadbeefdeadbeef");
    /* a revision on a local path, and a path that is neither a file nor an id */
    save_model(fb_test_path("local.safetensors"), 1.0f);
    const char *y4 = "models:\n  a: {path: local.safetensors, revision: main}\n";
    fb_test_write_file(fb_test_path("p4.yaml"), y4, strlen(y4));
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p4.yaml"), &pool), FB_ERR_CONFIG,
                 "a revision needs a hub id");
    const char *y5 = "models:\n  a: nowhere.safetensors\n";
    fb_test_write_file(fb_test_path("p5.yaml"), y5, strlen(y5));
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p5.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "nowhere.safetensors");
    /* the cache folder's precedence */
    unsetenv("HF_HUB_CACHE");
    setenv("HF_HOME", "/x/hf", 1);
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p1.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "/x/hf/hub/models--org--absent");
    unsetenv("HF_HOME");
    setenv("XDG_CACHE_HOME", "/x/xdg", 1);
    EXPECT_ERROR(fb_modelpool_load_config(fb_test_path("p1.yaml"), &pool), FB_ERR_NOT_FOUND,
                 "/x/xdg/huggingface/hub/models--org--absent");
}
