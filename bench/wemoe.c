/*
 * bench/wemoe.c: one Weight-Ensembling MoE adaptation step on a CLIP-ViT-B/32-sized tower (8
 * experts, FusionBench's Depth_2 routers, batch_reduce; random weights): a batch's forward
 * pass, the entropy of its cosine-head predictions, backward to the routers, one Adam step.
 * Seconds per step and peak memory, beside PyTorch computing FusionBench's WeightEnsemblingMoE
 * (bench/wemoe_torch.py) with the same threads, in the same run. Medians of --reps. A
 * FusionBench step is one such batch per task (8 for TA8).
 *
 *     bench_wemoe [--reps 3] [--batch 16] [--torch bench/wemoe_torch.py]
 */
#include <fusionbench.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"
#include "nn/optim.h"

static void die(const char *what)
{
    fprintf(stderr, "bench_wemoe: %s: %s\n", what, fb_last_error());
    exit(1);
}

static uint64_t seed = 1;
static float rnd(float scale)
{
    return bench_rnd(&seed, scale);
}

static void add(fb_model *m, const char *name, int ndim, int64_t d0, int64_t d1, float s, float c)
{
    const int64_t shape[2] = {d0, d1};
    fb_tensor *t;
    if (fb_model_add_tensor(m, name, FB_F32, ndim, shape, NULL, &t)) die("add");
    float *p = fb_tensor_mutable_data(t);
    for (int64_t i = 0; i < d0 * (ndim == 2 ? d1 : 1); i++)
        p[i] = c + rnd(s);
}

int main(int argc, char **argv)
{
    int reps = 3;
    int64_t B = 16;
    const char *torch_script = "bench/wemoe_torch.py";
    bench_args(argc, argv, &reps, &B, &torch_script);
    const int threads = fb_get_num_threads(), E = 8, K = 10;
    const int64_t D = 768, I = 3072, F = 512;
    const fb_clip_config cfg = {D, I, 12, 12, 224, 32, 3, F, 1, 1e-5f};
    fb_clip *net;
    if (fb_clip_create(&cfg, B, &net)) die("create");
    float *p = fb_clip_params(net);
    for (int64_t i = 0; i < fb_clip_num_params(net); i++)
        p[i] = rnd(0.05f);
    /* the task vectors and routers of every layer, under FusionBench's names */
    fb_model *m;
    if (fb_model_create(&m)) die("model");
    char name[256];
    for (int l = 0; l < 12; l++) {
        const char *pre = "vision_model.encoder.layers";
        for (int e = 0; e < E; e++) {
            snprintf(name, sizeof name, "%s.%d.mlp.task_vectors.%d.fc1.weight", pre, l, e);
            add(m, name, 2, I, D, 0.02f, 0);
            snprintf(name, sizeof name, "%s.%d.mlp.task_vectors.%d.fc1.bias", pre, l, e);
            add(m, name, 1, I, 0, 0.02f, 0);
            snprintf(name, sizeof name, "%s.%d.mlp.task_vectors.%d.fc2.weight", pre, l, e);
            add(m, name, 2, D, I, 0.02f, 0);
            snprintf(name, sizeof name, "%s.%d.mlp.task_vectors.%d.fc2.bias", pre, l, e);
            add(m, name, 1, D, 0, 0.02f, 0);
        }
        snprintf(name, sizeof name, "%s.%d.mlp.gate.fc1.weight", pre, l);
        add(m, name, 2, D, D, 0.02f, 0);
        snprintf(name, sizeof name, "%s.%d.mlp.gate.fc1.bias", pre, l);
        add(m, name, 1, D, 0, 0, 0);
        snprintf(name, sizeof name, "%s.%d.mlp.gate.fc2.weight", pre, l);
        add(m, name, 2, E, D, 0.02f, 0);
        snprintf(name, sizeof name, "%s.%d.mlp.gate.fc2.bias", pre, l);
        add(m, name, 1, E, 0, 0, 0.3f);
    }
    fb_model_set_metadata(m, "fusionbench_c.structure", "weight_ensembling_moe");
    fb_model_set_metadata(m, "wemoe.num_experts", "8");
    fb_model_set_metadata(m, "wemoe.router_hidden_layers", "2");
    fb_model_set_metadata(m, "wemoe.batch_reduce", "true");
    if (fb_clip_set_wemoe(net, m)) die("set_wemoe"); /* borrows m's task vectors */
    const int64_t nimg = B * 3 * 224 * 224;
    float *images = malloc((size_t)nimg * 4), *head = malloc((size_t)(K * F) * 4);
    float *logits = malloc((size_t)(B * K) * 4), *probs = malloc((size_t)(B * K) * 4);
    float *dlogits = malloc((size_t)(B * K) * 4), *normed = malloc((size_t)(B * F) * 4);
    float *norms = malloc((size_t)B * 4), *dfeat = malloc((size_t)(B * F) * 4);
    float *scratch = malloc((size_t)F * 4);
    for (int64_t i = 0; i < nimg; i++)
        images[i] = rnd(2.0f);
    for (int64_t k = 0; k < K; k++) { /* unit rows, as zero-shot heads */
        double s = 0;
        for (int64_t j = 0; j < F; j++) {
            head[k * F + j] = rnd(1.0f);
            s += (double)head[k * F + j] * head[k * F + j];
        }
        for (int64_t j = 0; j < F; j++)
            head[k * F + j] /= (float)sqrt(s);
    }
    int64_t nr;
    float *router = fb_clip_wemoe_router(net, &nr);
    const float *grad = fb_clip_wemoe_router_grad(net, NULL);
    fb_adamw adam;
    if (fb_adamw_init(&adam, nr, 1e-4f, 0.0f)) die("adam");
    double *t = calloc((size_t)reps, sizeof *t);
    for (int r = -1; r < reps; r++) { /* one warm-up step */
        double t0 = bench_now();
        const float *feat;
        fb_clip_zero_grad(net);
        if (fb_clip_forward(net, images, B, &feat)) die("forward");
        fb_head_forward(logits, normed, norms, feat, head, 100.0f, B, F, K);
        fb_entropy_forward(probs, logits, B, K);
        memset(dlogits, 0, (size_t)(B * K) * 4);
        memset(dfeat, 0, (size_t)(B * F) * 4);
        fb_entropy_backward(dlogits, probs, B, K, 1.0f);
        fb_head_backward(dfeat, scratch, dlogits, normed, norms, head, 100.0f, B, F, K);
        if (fb_clip_backward(net, dfeat)) die("backward");
        fb_adamw_step(&adam, router, grad);
        if (r >= 0) t[r] = bench_now() - t0;
    }
    const double ours = bench_median(t, reps);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double ours_mb = (double)ru.ru_maxrss / 1024.0;
    fb_adamw_free(&adam);
    fb_clip_free(net);
    /* evaluation: the inference network, routing per image (as evaluated) and per batch */
    double eval[2];
    if (fb_clip_create_inference(&cfg, B, &net) || fb_clip_set_wemoe(net, m)) die("inference");
    p = fb_clip_params(net);
    for (int64_t i = 0; i < fb_clip_num_params(net); i++)
        p[i] = rnd(0.05f);
    for (int per_batch = 0; per_batch < 2; per_batch++) {
        fb_clip_wemoe_batch_reduce(net, per_batch);
        for (int r = -1; r < reps; r++) {
            double t0 = bench_now();
            const float *feat;
            if (fb_clip_forward(net, images, B, &feat)) die("forward");
            if (r >= 0) t[r] = bench_now() - t0;
        }
        eval[per_batch] = (double)B / bench_median(t, reps);
    }
    fb_clip_free(net);
    fb_model_free(m);

    double ts, tmb;
    bench_torch_pair(torch_script, threads, reps, B, "wemoe", &ts, &tmb);
    printf("\nWeight-Ensembling MoE adaptation step, CLIP-ViT-B/32 tower, 8 experts, Depth_2 "
           "routers, batch_reduce, batch %lld, %d threads, median of %d, same run\n\n",
           (long long)B, threads, reps);
    printf("| | s per step | images/s | peak RSS (MB) |\n|---|---:|---:|---:|\n");
    printf("| FusionBench-C | %.2f | %.2f | %.0f |\n", ours, (double)B / ours, ours_mb);
    printf("| PyTorch (WeightEnsemblingMoE's computation) | %.2f | %.2f | %.0f |\n", ts,
           ts > 0 ? (double)B / ts : 0, tmb);
    printf("| ratio | %.2fx | | %.2fx |\n", ours > 0 ? ts / ours : 0,
           ours_mb > 0 ? tmb / ours_mb : 0);
    printf("\nEvaluation (forward only, inference network), images/s: routing per image %.2f, "
           "one routing per batch %.2f\n",
           eval[0], eval[1]);
    free(t);
    free(images);
    free(head);
    free(logits);
    free(probs);
    free(dlogits);
    free(normed);
    free(norms);
    free(dfeat);
    free(scratch);
    return 0;
}
