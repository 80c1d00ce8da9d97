/*
 * test_wemoe.c: Weight-Ensembling MoE (src/method/we_moe.c, the engine's WE-MoE layers)
 * against PyTorch (tests/reference/wemoe_ref.py, FusionBench's WeightEnsemblingMoE
 * semantics) on a tiny CLIP-layout tower: the forward pass with routing per image and over
 * the batch, the routers' gradients of the entropy loss, one Adam step; the model the method
 * constructs; the errors the issue names.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"
#include "nn/optim.h"

static const char *wref(const char *rel)
{
    static char buf[2][4096];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%s/wemoe/%s", fb_test_ref_dir, rel);
    return buf[k];
}

/* the largest |got - want| over a JSON list, against the list's largest |want| */
static void expect_close(const char *what, const float *got, int64_t n, const cJSON *want,
                         double rel)
{
    double worst = 0, scale = 1e-30;
    int64_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, want)
    {
        scale = fmax(scale, fabs(v->valuedouble));
        if (i < n) worst = fmax(worst, fabs(got[i] - v->valuedouble));
        i++;
    }
    if (i != n)
        fb_test_fail(__FILE__, __LINE__, "%s: %lld values, want %lld", what, (long long)n,
                     (long long)i);
    else if (worst > rel * scale)
        fb_test_fail(__FILE__, __LINE__, "%s: off by %g (largest %g)", what, worst, scale);
}

TEST(wemoe_forward_router_gradients_and_adam_step_match_pytorch)
{
    cJSON *ref = fb_test_read_json(wref("cases.json"));
    REQUIRE(ref);
    const float lr = (float)cJSON_GetObjectItem(ref, "lr")->valuedouble;
    const float scale = (float)cJSON_GetObjectItem(ref, "logit_scale")->valuedouble;
    fb_clip_config cfg;
    fb_model *in;
    REQUIRE_OK(fb_clip_config_load(wref("config.json"), &cfg));
    REQUIRE_OK(fb_model_load(wref("inputs.safetensors"), &in));
    enum { B = 4, F = 8, K = 5 };
    float x[B * 3 * 16 * 16], head[K * F];
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(in, "images"), x));
    REQUIRE_OK(fb_tensor_to_f32(fb_model_find(in, "head"), head));
    int cases = 0;
    static const char *const keys[] = {"0", "1", "2", "shared"};
    for (int kc = 0; kc < 4; kc++) {
        /* depth 0, 1, 2; a router shared by the layers, with position codes (sparse WEMoE) */
        const int depth = kc < 3 ? kc : 2;
        const char *key = keys[kc];
        char name[64];
        snprintf(name, sizeof name, "model%s.safetensors", key);
        const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(ref, "cases"), key);
        fb_model *m;
        fb_clip *net, *inf;
        REQUIRE(c);
        REQUIRE_OK(fb_model_load(wref(name), &m));
        REQUIRE_OK(fb_clip_create(&cfg, B, &net));
        REQUIRE_OK(fb_clip_create_inference(&cfg, B, &inf));
        REQUIRE_OK(fb_clip_set_params(net, m));
        REQUIRE_OK(fb_clip_set_wemoe(net, m));
        REQUIRE_OK(fb_clip_set_params(inf, m));
        REQUIRE_OK(fb_clip_set_wemoe(inf, m));
        int64_t nr;
        float *router = fb_clip_wemoe_router(net, &nr);
        const float *grad = fb_clip_wemoe_router_grad(net, NULL);
        REQUIRE(router && grad && nr > 0);
        for (int br = 0; br <= 1; br++) {
            const char *kind = br ? "batch" : "image";
            char what[128], k2[64];
            fb_clip_wemoe_batch_reduce(net, br);
            fb_clip_zero_grad(net);
            const float *feat;
            REQUIRE_OK(fb_clip_forward(net, x, B, &feat));
            snprintf(k2, sizeof k2, "features_%s", kind);
            snprintf(what, sizeof what, "router %s, routing per %s: features", key, kind);
            expect_close(what, feat, B * F, cJSON_GetObjectItem(c, k2), 1e-4);
            int64_t groups;
            REQUIRE(fb_clip_wemoe_routing(net, 1, &groups));
            EXPECT(groups == (br || depth == 0 ? 1 : B));
            if (!br) { /* the inference network routes per image too, to the same bytes */
                const float *fi;
                float keep[B * F];
                memcpy(keep, feat, sizeof keep);
                REQUIRE_OK(fb_clip_forward(inf, x, B, &fi));
                EXPECT(!memcmp(keep, fi, sizeof keep));
                REQUIRE_OK(fb_clip_forward(net, x, B, &feat));
            }
            float logits[B * K], probs[B * K], dlogits[B * K] = {0}, normed[B * F], norms[B];
            float dfeat[B * F] = {0}, scratch[F];
            fb_head_forward(logits, normed, norms, feat, head, scale, B, F, K);
            const float loss = fb_entropy_forward(probs, logits, B, K);
            snprintf(k2, sizeof k2, "loss_%s", kind);
            EXPECT(fabs(loss - cJSON_GetObjectItem(c, k2)->valuedouble) < 1e-5);
            fb_entropy_backward(dlogits, probs, B, K, 1.0f);
            fb_head_backward(dfeat, scratch, dlogits, normed, norms, head, scale, B, F, K);
            REQUIRE_OK(fb_clip_backward(net, dfeat));
            snprintf(k2, sizeof k2, "grads_%s", kind);
            const cJSON *gw = cJSON_GetObjectItem(c, k2);
            for (int64_t t = 0; t < fb_clip_wemoe_num_tensors(net); t++) {
                int64_t off, n;
                const char *tn = fb_clip_wemoe_tensor_name(net, t, &off, &n);
                snprintf(what, sizeof what, "router %s, %s: d %s", key, kind, tn);
                const cJSON *w = cJSON_GetObjectItem(gw, tn);
                if (!w)
                    fb_test_fail(__FILE__, __LINE__, "no reference for %s", tn);
                else
                    expect_close(what, grad + off, n, w, 2e-4);
            }
        }
        /* one Adam step on the batch-reduced loss's gradient */
        fb_adamw adam;
        REQUIRE_OK(fb_adamw_init(&adam, nr, lr, 0.0f));
        fb_adamw_step(&adam, router, grad);
        fb_adamw_free(&adam);
        const cJSON *after = cJSON_GetObjectItem(c, "after_step");
        for (int64_t t = 0; t < fb_clip_wemoe_num_tensors(net); t++) {
            int64_t off, n;
            char what[160];
            const char *tn = fb_clip_wemoe_tensor_name(net, t, &off, &n);
            snprintf(what, sizeof what, "router %s: %s after one Adam step", key, tn);
            expect_close(what, router + off, n, cJSON_GetObjectItem(after, tn), 1e-5);
        }
        /* task vectors stored as f64 (converted, not borrowed) give the same bytes */
        {
            fb_model *m64;
            fb_clip *n64;
            REQUIRE_OK(fb_model_create(&m64));
            for (int64_t i = 0; i < fb_model_num_tensors(m); i++) {
                const fb_tensor *t = fb_model_tensor(m, i);
                const int64_t n = fb_tensor_numel(t);
                const int tv = strstr(fb_tensor_name(t), ".task_vectors.") != NULL;
                float *f = malloc((size_t)n * sizeof *f);
                double *d = malloc((size_t)n * sizeof *d);
                REQUIRE(f && d);
                REQUIRE_OK(fb_tensor_to_f32(t, f));
                for (int64_t j = 0; j < n; j++)
                    d[j] = f[j];
                REQUIRE_OK(fb_model_add_tensor(m64, fb_tensor_name(t), tv ? FB_F64 : FB_F32,
                                               fb_tensor_ndim(t), fb_tensor_shape(t),
                                               tv ? (const void *)d : (const void *)f, NULL));
                free(f);
                free(d);
            }
            for (int64_t i = 0; i < fb_model_num_metadata(m); i++) {
                const char *k, *v;
                fb_model_metadata_at(m, i, &k, &v);
                REQUIRE_OK(fb_model_set_metadata(m64, k, v));
            }
            REQUIRE_OK(fb_clip_create_inference(&cfg, B, &n64));
            REQUIRE_OK(fb_clip_set_params(n64, m64));
            REQUIRE_OK(fb_clip_set_wemoe(n64, m64));
            const float *f1, *f2;
            float keep[B * F];
            REQUIRE_OK(fb_clip_forward(inf, x, B, &f1));
            memcpy(keep, f1, sizeof keep);
            REQUIRE_OK(fb_clip_forward(n64, x, B, &f2));
            EXPECT(!memcmp(keep, f2, sizeof keep));
            fb_clip_free(n64);
            fb_model_free(m64);
        }
        /* a model without the structure clears the layers */
        fb_model *plain;
        REQUIRE_OK(fb_model_load(wref("_pretrained_.safetensors"), &plain));
        REQUIRE_OK(fb_clip_set_wemoe(net, plain));
        EXPECT(!fb_clip_wemoe_router(net, NULL));
        fb_model_free(plain);
        fb_clip_free(net);
        fb_clip_free(inf);
        fb_model_free(m);
        cases++;
    }
    EXPECT(cases == 4);
    fb_model_free(in);
    cJSON_Delete(ref);
}

/* Runs `method` with the routers of checkpoint ck (no adaptation) and extra arguments, and
 * compares the saved model with the construction `want` (the reference's) and ck's routers:
 * routers exactly, the rest within 1e-6 of the largest value. The loaded output in *outp;
 * *zeros / *total: the task vectors' zero entries and size. */
static void run_and_compare(const char *method, const char *ck, const char *want_file,
                            const char *const *extra, fb_model **outp, int64_t *zeros,
                            int64_t *total)
{
    char m[256], pool[4200], ckarg[4200], out[4200];
    snprintf(m, sizeof m, "method=%s", method);
    snprintf(pool, sizeof pool, "modelpool=%s", wref("pool.yaml"));
    snprintf(ckarg, sizeof ckarg, "method.checkpoint=%s", wref(ck));
    snprintf(out, sizeof out, "merged_model_save_path=%s/%s.safetensors", fb_test_tmp(), method);
    const char *args[16] = {m, pool, ckarg, out};
    int na = 4;
    for (; extra && *extra && na < 15; extra++)
        args[na++] = *extra;
    args[na] = NULL;
    char *err = NULL;
    int rc = fb_test_cli_run(args, &err);
    if (rc) fb_test_fail(__FILE__, __LINE__, "%s: exit %d: %s", method, rc, err ? err : "");
    free(err);
    *outp = NULL;
    *zeros = *total = 0;
    fb_model *got, *want, *ckm;
    if (rc || fb_model_load(out + strlen("merged_model_save_path="), &got)) return;
    if (fb_model_load(wref(want_file), &want) || fb_model_load(wref(ck), &ckm)) {
        fb_test_fail(__FILE__, __LINE__, "%s", fb_last_error());
        return;
    }
    int64_t gates = 0;
    for (int64_t i = 0; i < fb_model_num_tensors(got); i++) {
        const fb_tensor *t = fb_model_tensor(got, i);
        const char *name = fb_tensor_name(t);
        const int gate = strstr(name, ".mlp.gate.") != NULL;
        const fb_tensor *w = fb_model_find(gate ? ckm : want, name);
        const int64_t n = fb_tensor_numel(t);
        if (!w || fb_tensor_numel(w) != n) {
            fb_test_fail(__FILE__, __LINE__, "%s: unexpected tensor %s", method, name);
            continue;
        }
        float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
        if (!a || !b || fb_tensor_to_f32(t, a) || fb_tensor_to_f32(w, b)) abort();
        double worst = 0, big = 1e-30;
        for (int64_t j = 0; j < n; j++) {
            worst = fmax(worst, fabs(a[j] - b[j]));
            big = fmax(big, fabs(b[j]));
            if (strstr(name, ".task_vectors.")) *zeros += a[j] == 0, ++*total;
        }
        if (worst > (gate ? 0 : 1e-6 * big))
            fb_test_fail(__FILE__, __LINE__, "%s: %s off by %g", method, name, worst);
        free(a);
        free(b);
        gates += gate;
    }
    /* every tensor of the construction, and a router per layer */
    EXPECT(fb_model_num_tensors(got) - gates == fb_model_num_tensors(want) && gates > 0);
    fb_model_free(want);
    fb_model_free(ckm);
    *outp = got;
}

TEST(wemoe_method_builds_fusionbench_model_and_reads_its_checkpoint)
{
    /* with method.checkpoint the routers come from a saved model (no adaptation, no task
     * pool); everything else is the construction FusionBench's clip_we_moe makes */
    fb_model *got;
    int64_t zeros, total;
    run_and_compare("weight_ensembling_moe", "model2.safetensors", "constructed.safetensors", NULL,
                    &got, &zeros, &total);
    REQUIRE(got);
    EXPECT(fb_model_find(got, "vision_model.encoder.layers.1.mlp.gate.fc2.bias"));
    EXPECT(!strcmp(fb_model_get_metadata(got, "fusionbench_c.structure"), "weight_ensembling_moe"));
    EXPECT(!strcmp(fb_model_get_metadata(got, "wemoe.batch_reduce"), "false"));
    EXPECT(zeros < total / 100);
    fb_model_free(got);
}

TEST(sparse_wemoe_prunes_task_vectors_and_shares_one_router)
{
    /* tv_prune_ratio 0.9: each MLP task-vector tensor keeps the entries above its 0.9
     * magnitude quantile (torch.quantile); one router shared by the layers, with position
     * codes, read from a checkpoint */
    fb_model *got;
    int64_t zeros, total;
    run_and_compare(
        "sparse_weight_ensembling_moe", "modelshared.safetensors", "constructed_sparse.safetensors",
        (const char *[]){"method.position_encoding=true", "method.position_encoding_dim=4", NULL},
        &got, &zeros, &total);
    REQUIRE(got);
    EXPECT(total > 0 && zeros >= total * 89 / 100 && zeros <= total * 91 / 100);
    EXPECT(!strcmp(fb_model_get_metadata(got, "wemoe.shared_gate"), "true"));
    EXPECT(!strcmp(fb_model_get_metadata(got, "wemoe.position_encoding_dim"), "4"));
    fb_model_free(got);
    char pool[4200], ck[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", wref("pool.yaml"));
    snprintf(ck, sizeof ck, "method.checkpoint=%s", wref("modelshared.safetensors"));
    /* a shared router whose copies disagree */
    fb_model *m, *bad;
    REQUIRE_OK(fb_model_load(wref("modelshared.safetensors"), &m));
    REQUIRE_OK(fb_test_model_copy(m, NULL, &bad));
    ((float *)fb_tensor_mutable_data((fb_tensor *)fb_model_find(
        bad, "vision_model.encoder.layers.1.mlp.gate.fc2.bias")))[0] += 1.0f;
    fb_clip_config cfg;
    fb_clip *net;
    REQUIRE_OK(fb_clip_config_load(wref("config.json"), &cfg));
    REQUIRE_OK(fb_clip_create_inference(&cfg, 2, &net));
    EXPECT_ERROR(fb_clip_set_wemoe(net, bad), FB_ERR_FORMAT,
                 "'vision_model.encoder.layers.1.mlp.gate.fc2.bias' differs from layer 0's");
    fb_clip_free(net);
    fb_model_free(bad);
    fb_model_free(m);
    /* position codes need a shared router, as in FusionBench */
    EXPECT_CLI_ERROR((const char *[]){"method=sparse_weight_ensembling_moe",
                                      "method.position_encoding=true", "method.shared_gate=false",
                                      pool, ck, NULL},
                     "position_encoding is for a shared router");
}
TEST(wemoe_errors_name_the_cause)
{
    char pool[4200], ck[4200];
    snprintf(pool, sizeof pool, "modelpool=%s", wref("pool.yaml"));
    snprintf(ck, sizeof ck, "method.checkpoint=%s", wref("model2.safetensors"));
    /* no task pool to adapt on */
    EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe", pool, NULL}, "taskpool");
    /* a router depth FusionBench does not have; a checkpoint of another depth */
    EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe",
                                      "method.router_hidden_layers=3", pool, ck, NULL},
                     "router_hidden_layers must be 0, 1 or 2");
    EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe",
                                      "method.router_hidden_layers=1", pool, ck, NULL},
                     "lacks router tensor 'vision_model.encoder.layers.0.mlp.gate.fc.weight'");
    /* save_checkpoint onto the checkpoint it reads or onto a pool model: refused before any
     * work, the input untouched */
    {
        size_t n0, n1;
        char *before = fb_test_read_file(wref("model2.safetensors"), &n0);
        char sc[4200];
        snprintf(sc, sizeof sc, "method.save_checkpoint=%s", wref("model2.safetensors"));
        EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe", pool, ck, sc, NULL},
                         "method.save_checkpoint");
        snprintf(sc, sizeof sc, "method.save_checkpoint=%s", wref("a.safetensors"));
        EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe", pool, ck, sc, NULL},
                         "is the input file of model 'a'");
        char *after = fb_test_read_file(wref("model2.safetensors"), &n1);
        EXPECT(before && after && n0 == n1 && !memcmp(before, after, n0));
        free(before);
        free(after);
    }
    /* a pool without _pretrained_ */
    char nob[4200], p2[4200];
    snprintf(nob, sizeof nob, "models:\n  a: %s\n  b: %s\n", wref("a.safetensors"),
             wref("b.safetensors"));
    fb_test_write_file(fb_test_path("nobase.yaml"), nob, strlen(nob));
    snprintf(p2, sizeof p2, "modelpool=%s", fb_test_path("nobase.yaml"));
    EXPECT_CLI_ERROR((const char *[]){"method=weight_ensembling_moe", p2, ck, NULL},
                     "_pretrained_");
    /* saved models missing a router tensor or a task vector; bad metadata */
    fb_model *orig, *cut, *cut2;
    REQUIRE_OK(fb_model_load(wref("model2.safetensors"), &orig));
    REQUIRE_OK(fb_test_model_copy(orig, "vision_model.encoder.layers.1.mlp.gate.fc2.bias", &cut));
    REQUIRE_OK(fb_test_model_copy(orig, "vision_model.encoder.layers.0.mlp.task_vectors.2.fc1.bias",
                                  &cut2));
    fb_clip_config cfg;
    fb_clip *net;
    REQUIRE_OK(fb_clip_config_load(wref("config.json"), &cfg));
    REQUIRE_OK(fb_clip_create_inference(&cfg, 2, &net));
    EXPECT_ERROR(fb_clip_set_wemoe(net, cut), FB_ERR_NOT_FOUND,
                 "lacks 'vision_model.encoder.layers.1.mlp.gate.fc2.bias'");
    EXPECT_ERROR(fb_clip_set_wemoe(net, cut2), FB_ERR_NOT_FOUND,
                 "lacks 'vision_model.encoder.layers.0.mlp.task_vectors.2.fc1.bias'");
    EXPECT(!fb_clip_wemoe_router(net, NULL));
    REQUIRE_OK(fb_model_set_metadata(cut, "wemoe.router_hidden_layers", "5"));
    EXPECT_ERROR(fb_clip_set_wemoe(net, cut), FB_ERR_FORMAT, "wemoe.router_hidden_layers is '5'");
    EXPECT_OK(fb_clip_set_wemoe(net, orig));
    fb_model_free(orig);
    fb_model_free(cut);
    fb_model_free(cut2);
    fb_clip_free(net);
}

TEST(wemoe_fusionbench_method_config_loads_unchanged)
{
    /* FusionBench's config/method/wemoe/weight_ensembling_moe.yaml: its keys and values, with
     * the name it leaves open given on the command line */
    static const char yaml[] = "name: ???\n"
                               "checkpoint: False\n"
                               "save_checkpoint: False\n"
                               "router_hidden_layers: 2\n"
                               "init_lambda: 0.3\n"
                               "batch_reduce: true\n"
                               "lr: 1e-4\n"
                               "optimizer: adam\n"
                               "devices: 1\n"
                               "batch_size: 16\n"
                               "num_workers: 16\n"
                               "max_steps: 1000\n"
                               "use_grad_accumulate: true\n"
                               "cache_dir: outputs\n"
                               "fast_dev_run: ${fast_dev_run}\n";
    fb_test_write_file(fb_test_path("wemoe.yaml"), yaml, strlen(yaml));
    char method[4200], pool[4200], ck[4200], out[4200];
    snprintf(method, sizeof method, "method=%s", fb_test_path("wemoe.yaml"));
    snprintf(pool, sizeof pool, "modelpool=%s", wref("pool.yaml"));
    snprintf(ck, sizeof ck, "method.checkpoint=%s", wref("model2.safetensors"));
    snprintf(out, sizeof out, "merged_model_save_path=%s", fb_test_path("fb.safetensors"));
    char *err = NULL;
    int rc = fb_test_cli_run(
        (const char *[]){method, "method.name=clip_weight_ensembling_moe", pool, ck, out, NULL},
        &err);
    if (rc) fb_test_fail(__FILE__, __LINE__, "exit %d: %s", rc, err ? err : "");
    free(err);
    EXPECT_CLI_ERROR((const char *[]){method, pool, ck, NULL}, "give method.name=NAME");
}
