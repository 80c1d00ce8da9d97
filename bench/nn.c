/*
 * bench/nn.c: throughput of the nn engine's CLIP vision tower, forward and forward + backward
 * (cosine head and cross-entropy included), in images per second, beside PyTorch (Debian's
 * python3-torch running the same model, bench/nn_torch.py) with the same threads, measured in
 * the same run. Medians of --reps.
 *
 *     bench_nn [--reps 3] [--torch bench/nn_torch.py]
 */
#include <fusionbench.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"

typedef struct spec {
    const char *name;
    fb_clip_config c;
    int64_t batch;
} spec;

static void die(const char *what)
{
    fprintf(stderr, "bench_nn: %s: %s\n", what, fb_last_error());
    exit(1);
}

int main(int argc, char **argv)
{
    int reps = 3;
    const char *torch_script = "bench/nn_torch.py";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--torch")) torch_script = argv[i + 1];
    }
    if (reps < 1) reps = 1;
    spec specs[] = {
        {"clip-vit-b32", {768, 3072, 12, 12, 224, 32, 3, 512, 1, 1e-5f}, 16},
        {"zoo-small", {192, 768, 3, 6, 28, 4, 1, 128, 1, 1e-5f}, 64},
    };
    const int nspecs = sizeof specs / sizeof specs[0];
    int threads = fb_get_num_threads();
    double fwd[2], train[2];
    for (int s = 0; s < nspecs; s++) {
        const fb_clip_config *c = &specs[s].c;
        const int64_t B = specs[s].batch, F = c->projection ? c->projection : c->hidden, K = 10;
        fb_clip *net;
        if (fb_clip_create(c, B, &net)) die("create");
        float *p = fb_clip_params(net);
        uint64_t seed = 1;
        for (int64_t i = 0; i < fb_clip_num_params(net); i++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            p[i] = ((float)((seed >> 40) & 0xffffff) / 16777216.0f - 0.5f) * 0.05f;
        }
        int64_t nimg = B * c->channels * c->image_size * c->image_size;
        float *images = malloc((size_t)nimg * sizeof(float)), *W = malloc((size_t)(K * F) * sizeof(float));
        for (int64_t i = 0; i < nimg; i++) images[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
        for (int64_t i = 0; i < K * F; i++) W[i] = (float)((i * 31) % 17) / 17.0f - 0.5f;
        int32_t *y = malloc((size_t)B * sizeof *y);
        for (int64_t b = 0; b < B; b++) y[b] = (int32_t)(b % K);
        float *logits = malloc((size_t)(B * K) * 4), *normed = malloc((size_t)(B * F) * 4), *norms = malloc((size_t)B * 4);
        float *probs = malloc((size_t)(B * K) * 4), *dlogits = malloc((size_t)(B * K) * 4);
        float *dfeat = malloc((size_t)(B * F) * 4), *scratch = malloc((size_t)F * 4);
        const float *features;
        double *t = calloc((size_t)reps, sizeof *t);
        if (fb_clip_forward(net, images, B, &features)) die("forward"); /* warm-up */
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            fb_clip_forward(net, images, B, &features);
            t[r] = bench_now() - t0;
        }
        fwd[s] = (double)B / bench_median(t, reps);
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            fb_clip_forward(net, images, B, &features);
            fb_head_forward(logits, normed, norms, features, W, 10.0f, B, F, K);
            fb_cross_entropy_forward(probs, logits, y, B, K);
            memset(dlogits, 0, (size_t)(B * K) * 4);
            memset(dfeat, 0, (size_t)(B * F) * 4);
            fb_cross_entropy_backward(dlogits, probs, y, B, K, 1.0f);
            fb_head_backward(dfeat, scratch, dlogits, normed, norms, W, 10.0f, B, F, K);
            fb_clip_zero_grad(net);
            fb_clip_backward(net, dfeat);
            t[r] = bench_now() - t0;
        }
        train[s] = (double)B / bench_median(t, reps);
        free(t);
        free(images);
        free(W);
        free(y);
        free(logits);
        free(normed);
        free(norms);
        free(probs);
        free(dlogits);
        free(dfeat);
        free(scratch);
        fb_clip_free(net);
    }
    /* PyTorch, same shapes and threads, in this run */
    char cmd[4096];
    int off = snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %d %d", torch_script, threads, reps);
    for (int s = 0; s < nspecs; s++) {
        const fb_clip_config *c = &specs[s].c;
        off += snprintf(cmd + off, sizeof cmd - (size_t)off, " %s:%lld:%lld:%lld:%lld:%lld:%lld:%lld:%lld:%lld",
                        specs[s].name, (long long)c->hidden, (long long)c->intermediate,
                        (long long)c->heads, (long long)c->layers, (long long)c->image_size,
                        (long long)c->patch_size, (long long)c->channels,
                        (long long)c->projection, (long long)specs[s].batch);
    }
    double tf[2] = {0, 0}, tt[2] = {0, 0};
    FILE *py = popen(cmd, "r");
    char line[512];
    while (py && fgets(line, sizeof line, py)) {
        char name[64];
        double a, b;
        if (sscanf(line, "%63s %lf %lf", name, &a, &b) != 3) continue;
        for (int s = 0; s < nspecs; s++)
            if (!strcmp(name, specs[s].name)) {
                tf[s] = a;
                tt[s] = b;
            }
    }
    if (py) pclose(py);
    printf("\nCLIP vision tower throughput, images/s, %d threads, median of %d (PyTorch %s, same run)\n\n",
           threads, reps, "python3-torch");
    printf("| model | batch | forward | PyTorch forward | ratio | fwd+bwd | PyTorch fwd+bwd | ratio |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int s = 0; s < nspecs; s++)
        printf("| %s (%lldx%lld, patch %lld, %lld layers x %lld) | %lld | %.1f | %.1f | %.2fx | %.1f | %.1f | %.2fx |\n",
               specs[s].name, (long long)specs[s].c.image_size, (long long)specs[s].c.image_size,
               (long long)specs[s].c.patch_size, (long long)specs[s].c.layers,
               (long long)specs[s].c.hidden, (long long)specs[s].batch, fwd[s], tf[s],
               tf[s] > 0 ? fwd[s] / tf[s] : 0, train[s], tt[s], tt[s] > 0 ? train[s] / tt[s] : 0);
    printf("\nratio > 1: faster than PyTorch. Target: >= 1.\n");
    return 0;
}
