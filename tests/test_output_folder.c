/*
 * test_output_folder.c: a merged model's folder is complete: the base's config.json (with the
 * output's dtype, and the layer count after a restructuring), generation config, tokenizer
 * files from the base or from tokenizer_source, and a README.md model card in the hub's
 * layout; the folder can be replaced by the next run.
 */
#include <stdlib.h>
#include <sys/stat.h>

#include "harness.h"

/* A Hugging Face folder: model.safetensors (two layers), config.json, tokenizer files whose
 * contents name the folder, and a generation config. */
static void hf_folder(const char *dir, float value)
{
    mkdir(fb_test_path(dir), 0755);
    char p[256], text[256];
    fb_model *m;
    fb_model_create(&m);
    float v[4] = {value, value, value, value};
    int64_t shape[2] = {2, 2};
    fb_model_add_tensor(m, "model.layers.0.w", FB_F32, 2, shape, v, NULL);
    fb_model_add_tensor(m, "model.layers.1.w", FB_F32, 2, shape, v, NULL);
    fb_model_add_tensor(m, "model.norm.weight", FB_F32, 2, shape, v, NULL);
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    fb_model_save(m, fb_test_path(p), NULL);
    fb_model_free(m);
    const char *files[][2] = {
        {"config.json", "{\"model_type\": \"llama\", \"num_hidden_layers\": 2, \"torch_dtype\": "
                        "\"float32\", \"hidden_size\": 2}"},
        {"tokenizer.json", "{\"from\": \"%s\"}"},
        {"special_tokens_map.json", "{\"bos_token\": \"<s>\", \"from\": \"%s\"}"},
        {"generation_config.json", "{\"max_length\": 7}"},
    };
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i][0]);
        snprintf(text, sizeof text, files[i][1], dir);
        fb_test_write_file(fb_test_path(p), text, strlen(text));
    }
}

static char *read(const char *rel)
{
    return fb_test_read_file(fb_test_path(rel), NULL);
}

TEST(folder_outputs_hold_config_tokenizer_and_a_model_card)
{
    hf_folder("base", 1.0f);
    hf_folder("a", 2.0f);
    hf_folder("b", 3.0f);
    const char *yaml = "models:\n  _pretrained_: base\n  a: a\n  b: b\n";
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
    char pool[4200], out[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(out, sizeof out, "merged_model_save_path=%s", fb_test_path("merged"));
    const char *argv[] = {fb_test_cli, "method=task_arithmetic", pool, out, "dtype=bf16", NULL};
    REQUIRE(fb_test_run(argv, NULL, NULL) == 0);
    char *config = read("merged/config.json"), *tok = read("merged/tokenizer.json");
    char *gen = read("merged/generation_config.json"), *card = read("merged/README.md");
    EXPECT(config && strstr(config, "\"torch_dtype\":\t\"bfloat16\"") &&
           strstr(config, "\"model_type\":\t\"llama\"") &&
           strstr(config, "\"num_hidden_layers\":\t2"));
    EXPECT(tok && strstr(tok, "\"from\": \"base\""));
    EXPECT(gen && !strcmp(gen, "{\"max_length\": 7}"));
    EXPECT(card && !strncmp(card, "---\nlibrary_name: transformers\n", 30) &&
           strstr(card, "tags:\n- merge\n") && strstr(card, "`task_arithmetic`") &&
           strstr(card, "scaling_factor: 0.3") && strstr(card, "| _pretrained_ |") &&
           strstr(card, "fusion_bench method=task_arithmetic") && strstr(card, "dtype=bf16"));
    free(config);
    free(tok);
    free(gen);
    free(card);
    /* the tokenizer of another model, and the folder replaced by the next run */
    const char *argv2[] = {fb_test_cli, "method=task_arithmetic", pool,
                           out,         "tokenizer_source=b",     NULL};
    REQUIRE(fb_test_run(argv2, NULL, NULL) == 0);
    tok = read("merged/tokenizer.json");
    char *special = read("merged/special_tokens_map.json");
    config = read("merged/config.json");
    EXPECT(tok && strstr(tok, "\"from\": \"b\"") && special && strstr(special, "\"from\": \"b\""));
    EXPECT(config && strstr(config, "\"torch_dtype\":\t\"float32\""));
    free(tok);
    free(special);
    free(config);
    char *err = NULL;
    const char *argv3[] = {fb_test_cli, "method=task_arithmetic", pool,
                           out,         "tokenizer_source=zz",    NULL};
    EXPECT(fb_test_run(argv3, NULL, &err) == 2 && err && strstr(err, "tokenizer_source 'zz'"));
    free(err);
}

TEST(restructured_folders_say_their_new_layer_count)
{
    hf_folder("base", 1.0f);
    const char *yaml = "models:\n  a: base\n";
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
    char pool[4200], out[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(out, sizeof out, "merged_model_save_path=%s", fb_test_path("deep"));
    const char *argv[] = {
        fb_test_cli, "method=depth_upscaling", "method.layer_indices=[0,1,1,0,1]", pool, out, NULL};
    char *err = NULL;
    int rc = fb_test_run(argv, NULL, &err);
    if (rc) fb_test_fail(__FILE__, __LINE__, "exit %d: %s", rc, err);
    free(err);
    char *config = read("deep/config.json");
    EXPECT(config && strstr(config, "\"num_hidden_layers\":\t5"));
    free(config);
    /* the C API writes the same companions, with no command in the card */
    fb_modelpool *p;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &p));
    REQUIRE_OK(fb_method_create("depth_upscaling", "{layer_indices: [0, 1, 0]}", &m));
    REQUIRE_OK(fb_method_run_to_file(m, p, NULL, fb_test_path("api"), NULL));
    config = read("api/config.json");
    char *card = read("api/README.md");
    EXPECT(config && strstr(config, "\"num_hidden_layers\":\t3"));
    EXPECT(card && strstr(card, "depth_upscaling") && !strstr(card, "## Command"));
    free(config);
    free(card);
    fb_method_free(m);
    fb_modelpool_free(p);
}
