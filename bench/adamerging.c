/*
 * bench/adamerging.c: one AdaMerging step (layer-wise coefficients: merged parameters, every
 * task's batch forward and backward through the CLIP tower, summed entropy, coefficient
 * gradients, Adam) on the zoo's tower and on a CLIP-ViT-B/32-sized one, with the time per
 * step, the time of FusionBench's 1000 steps at that rate, and memory, beside PyTorch doing
 * the same step in the same run (bench/adamerging_torch.py; separate processes).
 *
 *     bench_adamerging [--reps 3] [--models 8] [--tasks 8] [--batch 16] [--skip-b32]
 */
#include <fusionbench.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "method/adamerging.h"
#include "nn/kernels.h"
#include "nn/optim.h"

typedef struct spec {
    const char *name;
    fb_clip_config c;
} spec;

static float urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

/* One configuration in a child process, so each reports its own peak RSS: prints
 * "seconds_per_step peak_rss_mb". */
static void run_c(const spec *sp, int reps, int K, int T, int64_t B)
{
    const fb_clip_config *c = &sp->c;
    fb_clip *net;
    if (fb_clip_create(c, B, &net)) {
        fprintf(stderr, "bench_adamerging: %s\n", fb_last_error());
        exit(1);
    }
    const int64_t np = fb_clip_num_params(net), L = fb_clip_num_tensors(net);
    const int64_t F = c->projection ? c->projection : c->hidden, img = c->channels * c->image_size * c->image_size;
    uint64_t seed = 1;
    float *theta0 = malloc((size_t)np * 4), **tau = malloc((size_t)K * sizeof *tau);
    for (int64_t i = 0; i < np; i++) theta0[i] = 0.05f * urand(&seed);
    for (int k = 0; k < K; k++) {
        tau[k] = malloc((size_t)np * 4);
        for (int64_t i = 0; i < np; i++) tau[k][i] = 0.01f * urand(&seed);
    }
    float *lambda = malloc((size_t)(K * L) * 4), *g32 = malloc((size_t)(K * L) * 4);
    double *grad = malloc((size_t)(K * L) * sizeof *grad);
    for (int64_t i = 0; i < K * L; i++) lambda[i] = 0.3f;
    float **x = malloc((size_t)T * sizeof *x), **heads = malloc((size_t)T * sizeof *heads);
    int64_t *counts = malloc((size_t)T * sizeof *counts), *classes = malloc((size_t)T * sizeof *classes);
    for (int t = 0; t < T; t++) {
        x[t] = malloc((size_t)(B * img) * 4);
        heads[t] = malloc((size_t)(10 * F) * 4);
        for (int64_t i = 0; i < B * img; i++) x[t][i] = urand(&seed);
        for (int64_t i = 0; i < 10 * F; i++) heads[t][i] = urand(&seed);
        counts[t] = B;
        classes[t] = 10;
    }
    fb_adamw adam;
    fb_adamw_init(&adam, K * L, 1e-3f, 0.0f);
    double *times = malloc((size_t)(reps + 1) * sizeof *times), loss;
    fb_nn_blas_single(1);
    for (int r = 0; r <= reps; r++) { /* the first is a warm-up */
        double t0 = bench_now();
        if (fb_adamerging_loss_grad(net, theta0, (const float *const *)tau, K, lambda, 1, T,
                                    (const float *const *)x, counts, (const float *const *)heads,
                                    classes, 100.0f, &loss, grad)) {
            fprintf(stderr, "bench_adamerging: %s\n", fb_last_error());
            exit(1);
        }
        for (int64_t i = 0; i < K * L; i++) g32[i] = (float)grad[i];
        fb_adamw_step(&adam, lambda, g32);
        times[r] = bench_now() - t0;
    }
    qsort(times + 1, (size_t)reps, sizeof *times, bench_cmp_double);
    double med = reps % 2 ? times[1 + reps / 2] : 0.5 * (times[reps / 2] + times[1 + reps / 2]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%.6f %.1f\n", med, (double)ru.ru_maxrss / 1024.0);
    exit(0);
}

int main(int argc, char **argv)
{
    int reps = 3, K = 8, T = 8, skip_b32 = 0;
    int64_t B = 16;
    const char *torch_script = "bench/adamerging_torch.py";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--skip-b32")) skip_b32 = 1;
        else if (i + 1 < argc && !strcmp(argv[i], "--reps")) reps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--models")) K = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--tasks")) T = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--batch")) B = atoll(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--torch")) torch_script = argv[++i];
    }
    if (reps < 1) reps = 1;
    const spec specs[] = {
        {"zoo (28x28, patch 7, 4 layers x 96)", {96, 384, 4, 4, 28, 7, 1, 96, 1, 1e-5f}},
        {"clip-vit-b32 (224x224, patch 32, 12 layers x 768)", {768, 3072, 12, 12, 224, 32, 3, 512, 1, 1e-5f}},
    };
    const int nspecs = skip_b32 ? 1 : 2;
    double c_step[2] = {0}, c_rss[2] = {0}, t_step[2] = {0}, t_rss[2] = {0};
    for (int s = 0; s < nspecs; s++) {
        int fd[2];
        if (pipe(fd)) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(fd[1], 1);
            close(fd[0]);
            run_c(&specs[s], reps, K, T, B);
        }
        close(fd[1]);
        FILE *f = fdopen(fd[0], "r");
        if (!f || fscanf(f, "%lf %lf", &c_step[s], &c_rss[s]) != 2) fprintf(stderr, "bench_adamerging: C run failed\n");
        if (f) fclose(f);
        waitpid(pid, NULL, 0);
        const fb_clip_config *c = &specs[s].c;
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %d %d %d %d %lld x:%lld:%lld:%lld:%lld:%lld:%lld:%lld:%lld",
                 torch_script, fb_get_num_threads(), reps, K, T, (long long)B, (long long)c->hidden,
                 (long long)c->intermediate, (long long)c->heads, (long long)c->layers,
                 (long long)c->image_size, (long long)c->patch_size, (long long)c->channels,
                 (long long)c->projection);
        FILE *py = popen(cmd, "r");
        char name[64];
        if (!py || fscanf(py, "%63s %lf %lf", name, &t_step[s], &t_rss[s]) != 3)
            fprintf(stderr, "bench_adamerging: PyTorch run failed\n");
        if (py) pclose(py);
    }
    printf("\nAdaMerging step (layer-wise, %d models, %d tasks x batch %lld), %d threads, median of %d, "
           "PyTorch in the same run\n\n", K, T, (long long)B, fb_get_num_threads(), reps);
    printf("| model | s/step | PyTorch s/step | speed vs PyTorch | 1000 steps | peak RSS | PyTorch peak RSS |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    for (int s = 0; s < nspecs; s++)
        printf("| %s | %.3f | %.3f | %.2fx | %.0f s | %.0f MB | %.0f MB |\n", specs[s].name, c_step[s],
               t_step[s], c_step[s] > 0 ? t_step[s] / c_step[s] : 0, 1000 * c_step[s], c_rss[s], t_rss[s]);
    printf("\nspeed > 1: faster than PyTorch. Target: >= 1.\n");
    return 0;
}
