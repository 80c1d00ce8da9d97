/*
 * test_pool_select.c: pools whose models do not all hold the same tensors: a full CLIP model
 * as _pretrained_ with vision-only fine-tunes (include), FusionBench's merge_backbone, tensors
 * only some models have (missing: keep), and vocabularies of different sizes (vocab: base or
 * union); each merged value checked against the formula written out here.
 */
#include <math.h>
#include <stdlib.h>

#include "harness.h"

/* A tensor whose entry j of row r is value + r + j / 100. */
static void add(fb_model *m, const char *name, int64_t rows, int64_t cols, float value)
{
    float *v = malloc((size_t)(rows * cols) * sizeof *v);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++)
            v[r * cols + j] = value + (float)r + (float)j / 100.0f;
    int64_t shape[2] = {rows, cols};
    fb_model_add_tensor(m, name, FB_F32, 2, shape, v, NULL);
    free(v);
}

static void save(fb_model *m, const char *file)
{
    fb_model_save(m, fb_test_path(file), NULL);
    fb_model_free(m);
}

static float at(const fb_model *m, const char *name, int64_t i)
{
    const fb_tensor *t = fb_model_find(m, name);
    if (!t) return NAN;
    float *v = malloc((size_t)fb_tensor_numel(t) * sizeof *v);
    float x = fb_tensor_to_f32(t, v) || i >= fb_tensor_numel(t) ? NAN : v[i];
    free(v);
    return x;
}

static int cli_merge(const char *pool_yaml, const char *method, const char *extra, char **err)
{
    fb_test_write_file(fb_test_path("pool.yaml"), pool_yaml, strlen(pool_yaml));
    char pool[4200], out[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(out, sizeof out, "merged_model_save_path=%s", fb_test_path("out.safetensors"));
    const char *argv[] = {fb_test_cli, method, pool, out, extra, NULL};
    return fb_test_run(argv, NULL, err);
}

TEST(full_clip_base_merges_with_vision_only_fine_tunes)
{
    fb_model *m;
    fb_model_create(&m); /* a full CLIPModel */
    add(m, "vision_model.encoder.layers.0.mlp.fc1.weight", 4, 3, 1.0f);
    add(m, "text_model.encoder.layers.0.mlp.fc1.weight", 4, 3, 5.0f);
    add(m, "text_projection.weight", 2, 3, 7.0f);
    save(m, "clip.safetensors");
    for (int k = 1; k <= 2; k++) { /* CLIPVisionModel fine-tunes */
        fb_model_create(&m);
        add(m, "vision_model.encoder.layers.0.mlp.fc1.weight", 4, 3, 1.0f + (float)k);
        save(m, k == 1 ? "v1.safetensors" : "v2.safetensors");
    }
    const char *base = "models:\n  _pretrained_: clip.safetensors\n  a: v1.safetensors\n"
                       "  b: v2.safetensors\n";
    char *err = NULL;
    EXPECT(cli_merge(base, "method=task_arithmetic", "method.scaling_factor=0.5", &err) == 1);
    EXPECT(err && strstr(err, "include, exclude, merge_backbone, missing: keep"));
    free(err);
    char yaml[512];
    snprintf(yaml, sizeof yaml, "%sinclude: ['^vision_model\\.']\n", base);
    err = NULL;
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "method.scaling_factor=0.5", &err) == 0);
    free(err);
    fb_model *out;
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    /* 1 + 0.5 ((2 - 1) + (3 - 1)) = 2.5 at entry 0; the text tower is the base's */
    EXPECT(at(out, "vision_model.encoder.layers.0.mlp.fc1.weight", 0) == 2.5f);
    EXPECT(at(out, "text_model.encoder.layers.0.mlp.fc1.weight", 4) == 6.01f);
    EXPECT(at(out, "text_projection.weight", 0) == 7.0f);
    EXPECT(fb_model_num_tensors(out) == 3);
    fb_model_free(out);
    /* simple_average does not read the base, but the base still gives the other tensors */
    REQUIRE(cli_merge(yaml, "method=simple_average", "print_config=false", NULL) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(at(out, "vision_model.encoder.layers.0.mlp.fc1.weight", 0) == 2.5f); /* (2 + 3) / 2 */
    EXPECT(at(out, "text_projection.weight", 0) == 7.0f);
    fb_model_free(out);
    /* or left out */
    snprintf(yaml, sizeof yaml, "%sinclude: ['^vision_model\\.']\nunmerged: drop\n", base);
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "print_config=false", NULL) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(fb_model_num_tensors(out) == 1 && !fb_model_find(out, "text_projection.weight"));
    fb_model_free(out);
}

TEST(merge_backbone_and_vocabularies_of_different_sizes)
{
    for (int k = 0; k < 3; k++) { /* Llama layout; model a extends the vocabulary by 2 rows */
        fb_model *m;
        fb_model_create(&m);
        int64_t vocab = k == 1 ? 6 : 4;
        add(m, "model.embed_tokens.weight", vocab, 3, 10.0f * (float)k);
        add(m, "model.layers.0.mlp.up_proj.weight", 2, 3, (float)k);
        add(m, "lm_head.weight", vocab, 3, 20.0f + 10.0f * (float)k);
        save(m, k == 0 ? "base.safetensors" : k == 1 ? "a.safetensors" : "b.safetensors");
    }
    const char *pool = "models:\n  _pretrained_: base.safetensors\n  a: a.safetensors\n"
                       "  b: b.safetensors\n";
    char yaml[512], *err = NULL;
    EXPECT(cli_merge(pool, "method=task_arithmetic", "method.scaling_factor=0.5", &err) == 1);
    EXPECT(err && strstr(err, "has shape [6, 3] in model 'a'"));
    free(err);
    /* merge_backbone: the decoder layers merged, embeddings and head the base's */
    snprintf(yaml, sizeof yaml, "%smerge_backbone: true\n", pool);
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "method.scaling_factor=0.5", NULL) == 0);
    fb_model *out;
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(at(out, "model.layers.0.mlp.up_proj.weight", 0) == 1.5f); /* 0 + 0.5 (1 + 2) */
    EXPECT(at(out, "model.embed_tokens.weight", 0) == 0.0f);
    EXPECT(fb_tensor_shape(fb_model_find(out, "lm_head.weight"))[0] == 4);
    fb_model_free(out);
    /* vocab: base: the base's 4 rows, merged over every model */
    snprintf(yaml, sizeof yaml, "%svocab: base\n", pool);
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "method.scaling_factor=0.5", NULL) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(fb_tensor_shape(fb_model_find(out, "model.embed_tokens.weight"))[0] == 4);
    EXPECT(at(out, "model.embed_tokens.weight", 3) == 16.0f); /* row 1: 1 + 0.5 (10 + 20) */
    fb_model_free(out);
    /* vocab: union: 6 rows; rows 4 and 5 only model a has: they are a's */
    snprintf(yaml, sizeof yaml, "%svocab: union\n", pool);
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "method.scaling_factor=0.5", NULL) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(fb_tensor_shape(fb_model_find(out, "lm_head.weight"))[0] == 6);
    EXPECT(at(out, "model.embed_tokens.weight", 3) == 16.0f);
    EXPECT(fabsf(at(out, "model.embed_tokens.weight", 5 * 3 + 1) - 15.01f) <
           1e-5f); /* a: 10 + 5 + .01 */
    EXPECT(fabsf(at(out, "lm_head.weight", 4 * 3) - 34.0f) < 1e-5f);
    fb_model_free(out);
    /* and averaging: rows model b lacks take no task vector from it */
    REQUIRE(cli_merge(yaml, "method=simple_average", "print_config=false", NULL) == 0);
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(at(out, "model.embed_tokens.weight", 0) == 15.0f);                   /* (10 + 20) / 2 */
    EXPECT(fabsf(at(out, "model.embed_tokens.weight", 4 * 3) - 14.0f) < 1e-5f); /* a's row 4 */
    fb_model_free(out);
    /* methods with global statistics and whole-tensor methods take the wider tensors too */
    const char *others[] = {"method=ties_merging", "method=task_singular_vector", "method=magmax"};
    for (int i = 0; i < 3; i++) {
        err = NULL;
        if (cli_merge(yaml, others[i], "print_config=false", &err) != 0)
            fb_test_fail(__FILE__, __LINE__, "%s: %s", others[i], err ? err : "");
        free(err);
        REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
        EXPECT(fb_tensor_shape(fb_model_find(out, "lm_head.weight"))[0] == 6);
        fb_model_free(out);
    }
}

TEST(tensors_only_some_models_have_are_an_error_or_kept_from_the_base)
{
    for (int k = 0; k < 3; k++) {
        fb_model *m;
        fb_model_create(&m);
        add(m, "w", 2, 2, (float)k);
        if (k != 2) add(m, "extra", 2, 2, 100.0f + (float)k); /* model b lacks it */
        save(m, k == 0 ? "base.safetensors" : k == 1 ? "a.safetensors" : "b.safetensors");
    }
    const char *pool = "models:\n  _pretrained_: base.safetensors\n  a: a.safetensors\n"
                       "  b: b.safetensors\n";
    char yaml[512], *err = NULL;
    EXPECT(cli_merge(pool, "method=task_arithmetic", "print_config=false", &err) == 1);
    EXPECT(err && strstr(err, "it lacks 1: 'extra'"));
    free(err);
    snprintf(yaml, sizeof yaml, "%smissing: keep\n", pool);
    REQUIRE(cli_merge(yaml, "method=task_arithmetic", "method.scaling_factor=1", NULL) == 0);
    fb_model *out;
    REQUIRE_OK(fb_model_load(fb_test_path("out.safetensors"), &out));
    EXPECT(at(out, "w", 0) == 3.0f);       /* 0 + 1 + 2 */
    EXPECT(at(out, "extra", 0) == 100.0f); /* the base's */
    fb_model_free(out);
    snprintf(yaml, sizeof yaml, "%svocab: some\n", pool);
    err = NULL;
    EXPECT(cli_merge(yaml, "method=task_arithmetic", "print_config=false", &err) == 2);
    EXPECT(err && strstr(err, "modelpool 'vocab' is 'some'; it must be error or base"));
    free(err);
}
