/*
 * test_smile.c: SMILE upscaling (src/method/smile_upscaling.c, the engine's SMILE layers)
 * against PyTorch (tests/reference/smile_ref.py, FusionBench's SmileMoELinear semantics) on a
 * tiny CLIP-layout tower: the saved model reloads and its image features match; and the
 * errors the issue names.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "nn/clip_vit.h"

static const char *sref(const char *rel)
{
    static char buf[2][4096];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%s/smile/%s", fb_test_ref_dir, rel);
    return buf[k];
}

/* the image features of a saved SMILE model, through the inference network */
static float *smile_features(const char *path, int64_t *count)
{
    fb_clip_config cfg;
    fb_model *m = NULL, *im = NULL;
    fb_clip *net = NULL;
    float *out = NULL;
    if (fb_clip_config_load(sref("config.json"), &cfg) || fb_model_load(path, &m) ||
        fb_model_load(sref("images.safetensors"), &im) || fb_clip_create_inference(&cfg, 5, &net) ||
        fb_clip_set_params(net, m) || fb_clip_set_smile(net, m)) {
        fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
    } else {
        float x[5 * 3 * 16 * 16];
        const float *f;
        if (fb_tensor_to_f32(fb_model_find(im, "images"), x) || fb_clip_forward(net, x, 5, &f)) {
            fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
        } else {
            out = malloc(5 * 8 * sizeof *out);
            memcpy(out, f, 5 * 8 * sizeof *out);
            *count = 5 * 8;
        }
    }
    fb_clip_free(net);
    fb_model_free(m);
    fb_model_free(im);
    return out;
}

TEST(smile_upscaling_matches_fusionbench_smile_moe_linear)
{
    cJSON *cases = fb_test_read_json(sref("cases.json"));
    REQUIRE(cases);
    const cJSON *c;
    int done = 0;
    cJSON_ArrayForEach(c, cases)
    {
        const cJSON *p = cJSON_GetObjectItem(c, "params");
        char k[64], gk[64], tk[64], rd[64], ae[64], pool[4200], out[4200];
        snprintf(k, sizeof k, "method.k=%d", cJSON_GetObjectItem(p, "k")->valueint);
        snprintf(gk, sizeof gk, "method.gate_k=%d", cJSON_GetObjectItem(p, "gate_k")->valueint);
        snprintf(tk, sizeof tk, "method.top_k=%d", cJSON_GetObjectItem(p, "top_k")->valueint);
        snprintf(rd, sizeof rd, "method.routing_use_diff=%s",
                 cJSON_IsTrue(cJSON_GetObjectItem(p, "routing_use_diff")) ? "true" : "false");
        snprintf(ae, sizeof ae, "method.average_experts=%s",
                 cJSON_IsTrue(cJSON_GetObjectItem(p, "average_experts")) ? "true" : "false");
        snprintf(pool, sizeof pool, "modelpool=%s", sref("pool.yaml"));
        snprintf(out, sizeof out, "merged_model_save_path=%s/%s.safetensors", fb_test_tmp(),
                 c->string);
        char *err = NULL;
        int rc = fb_test_cli_run(
            (const char *[]){"method=smile_upscaling", k, gk, tk, rd, ae, pool, out, NULL}, &err);
        if (rc) fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", c->string, rc, err ? err : "");
        free(err);
        if (rc) continue;
        int64_t n = 0;
        float *got = smile_features(out + strlen("merged_model_save_path="), &n);
        const cJSON *want = cJSON_GetObjectItem(c, "features"), *row, *v;
        double worst = 0, scale = 0;
        int64_t i = 0;
        cJSON_ArrayForEach(row, want) cJSON_ArrayForEach(v, row)
        {
            scale = fmax(scale, fabs(v->valuedouble));
            if (got && i < n) worst = fmax(worst, fabs(got[i] - v->valuedouble));
            i++;
        }
        EXPECT(got && i == n);
        if (worst > 1e-4 * scale)
            fb_test_fail(__FILE__, __LINE__, "%s: features off by %g (max %g)", c->string, worst,
                         scale);
        free(got);
        done++;
    }
    EXPECT(done == 3);
    /* the same bytes for 1 and 2 threads */
    char pool[4200], o1[4200], o2[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", sref("pool.yaml"));
    snprintf(o1, sizeof o1, "merged_model_save_path=%s/t1.safetensors", fb_test_tmp());
    snprintf(o2, sizeof o2, "merged_model_save_path=%s/t2.safetensors", fb_test_tmp());
    REQUIRE(fb_test_cli_run((const char *[]){"--threads", "1", "method=smile_upscaling",
                                             "method.k=4", pool, o1, NULL},
                            NULL) == 0);
    REQUIRE(fb_test_cli_run((const char *[]){"--threads", "2", "method=smile_upscaling",
                                             "method.k=4", pool, o2, NULL},
                            NULL) == 0);
    size_t na, nb;
    char *a = fb_test_read_file(o1 + 23, &na), *b = fb_test_read_file(o2 + 23, &nb);
    EXPECT(a && b && na == nb && !memcmp(a, b, na));
    free(a);
    free(b);
    cJSON_Delete(cases);
}
TEST(smile_upscaling_errors_name_the_cause)
{
    char pool[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", sref("pool.yaml"));
    /* k larger than a layer's rank; top_k larger than the number of experts */
    EXPECT_CLI_ERROR((const char *[]){"method=smile_upscaling", "method.k=40", pool, NULL},
                     "rank at most 32");
    EXPECT_CLI_ERROR((const char *[]){"method=smile_upscaling", "method.top_k=4", pool, NULL},
                     "top_k 4 exceeds the 3 experts");
    /* a pool without _pretrained_ */
    char nob[4200];
    snprintf(nob, sizeof nob, "models:\n  a: %s\n  b: %s\n", sref("a.safetensors"),
             sref("b.safetensors"));
    fb_test_write_file(fb_test_path("nobase.yaml"), nob, strlen(nob));
    char p2[4200];
    snprintf(p2, sizeof p2, "modelpool=%s", fb_test_path("nobase.yaml"));
    EXPECT_CLI_ERROR((const char *[]){"method=smile_upscaling", p2, NULL}, "_pretrained_");
    /* a saved SMILE model with a router tensor missing */
    char out[4200];
    snprintf(out, sizeof out, "merged_model_save_path=%s", fb_test_path("s.safetensors"));
    REQUIRE(
        fb_test_cli_run((const char *[]){"method=smile_upscaling", "method.k=4", pool, out, NULL},
                        NULL) == 0);
    fb_model *orig, *cut, *m;
    REQUIRE_OK(fb_model_load(fb_test_path("s.safetensors"), &orig));
    /* without a layer's router (its experts are orphans), and without one expert tensor */
    REQUIRE_OK(
        fb_test_model_copy(orig, "vision_model.encoder.layers.0.mlp.fc1.gate.weights", &cut));
    REQUIRE_OK(fb_test_model_copy(
        orig, "vision_model.encoder.layers.1.self_attn.q_proj.experts.2.svh", &m));
    fb_clip_config cfg;
    fb_clip *net;
    REQUIRE_OK(fb_clip_config_load(sref("config.json"), &cfg));
    REQUIRE_OK(fb_clip_create_inference(&cfg, 2, &net));
    EXPECT_ERROR(fb_clip_set_smile(net, cut), FB_ERR_FORMAT,
                 "lacks router tensor 'vision_model.encoder.layers.0.mlp.fc1.gate.weights'");
    EXPECT_ERROR(fb_clip_set_smile(net, m), FB_ERR_NOT_FOUND,
                 "vision_model.encoder.layers.1.self_attn.q_proj.experts.2.svh");
    EXPECT_OK(fb_clip_set_smile(net, orig));
    fb_model_free(orig);
    fb_clip_free(net);
    fb_model_free(m);
    fb_model_free(cut);
}
