/*
 * bench/eval.c: what FusionBench's CLIP benchmark costs on this machine. CLIP-ViT-B/32 image
 * features at batch 128 (the task pool's forward pass, inference network) in images/s, beside
 * PyTorch (Debian's python3-torch, bench/eval_torch.py) doing the same forward with the same
 * threads, and as a fraction of the machine's single-precision GEMM rate (OpenBLAS sgemm,
 * 2048^3) measured in the same run; decoding and CLIPProcessor's resize of a 500x375 JPEG beside
 * Pillow's; and the wall time TA8's test sets (87,433 images) would take. Medians of --reps.
 *
 *     bench_eval [--reps 3] [--batch 128] [--torch bench/eval_torch.py]
 */
#include <cblas.h>
#include <fusionbench.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "io/dataset.h"
#include "nn/clip_vit.h"
#include "nn/kernels.h"

#include <stb_image_write.h>

static void die(const char *what)
{
    fprintf(stderr, "bench_eval: %s: %s\n", what, fb_last_error());
    exit(1);
}

/* multiply-adds x 2 of one image's forward pass as the inference network runs it: patch
 * embedding, per layer q k v o fc1 fc2 and the two attention products, but in the last layer
 * k and v alone for every token and the rest for the class token (PyTorch's full pass does
 * (T - 1) (2 E^2 + 2 E M + 2 T E) more), the projection */
static double forward_flops(const fb_clip_config *c, int full)
{
    const double E = (double)c->hidden, M = (double)c->intermediate, P = (double)c->patch_size;
    const double NP = (double)((c->image_size / c->patch_size) * (c->image_size / c->patch_size));
    const double T = NP + 1;
    double f = NP * E * (double)c->channels * P * P;
    f += (double)(c->layers - 1) * (T * (4 * E * E + 2 * E * M) + 2 * T * T * E);
    f += T * 2 * E * E + (2 * E * E + 2 * E * M) + 2 * T * E;
    if (full) f += (T - 1) * (2 * E * E + 2 * E * M + 2 * T * E);
    f += E * (double)c->projection;
    return 2 * f;
}

typedef struct jpeg_buf {
    unsigned char *data;
    size_t len, cap;
} jpeg_buf;

static void jpeg_put(void *ctx, void *data, int size)
{
    jpeg_buf *b = ctx;
    if (b->len + (size_t)size > b->cap) {
        b->cap = 2 * (b->len + (size_t)size);
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, data, (size_t)size);
    b->len += (size_t)size;
}

int main(int argc, char **argv)
{
    int reps = 3;
    int64_t B = 128;
    const char *torch_script = "bench/eval_torch.py";
    bench_args(argc, argv, &reps, &B, &torch_script);
    const int threads = fb_get_num_threads();
    double *t = calloc((size_t)reps, sizeof *t);

    /* the GEMM rate (OpenBLAS on all threads, 2048^3) and the B/32 forward pass, alternating
     * rep by rep so that both see the same machine */
    const int n = 2048;
    float *A = malloc((size_t)n * n * 4), *Bm = malloc((size_t)n * n * 4),
          *C = malloc((size_t)n * n * 4);
    for (int64_t i = 0; i < (int64_t)n * n; i++)
        A[i] = Bm[i] = (float)(i % 97) / 97.0f;
    const fb_clip_config cfg = {768, 3072, 12, 12, 224, 32, 3, 512, 1, 1e-5f};
    fb_clip *net;
    if (fb_clip_create_inference(&cfg, B, &net)) die("create");
    float *p = fb_clip_params(net);
    uint64_t seed = 1;
    for (int64_t i = 0; i < fb_clip_num_params(net); i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = ((float)((seed >> 40) & 0xffffff) / 16777216.0f - 0.5f) * 0.05f;
    }
    const int64_t nimg = B * 3 * 224 * 224;
    float *images = malloc((size_t)nimg * 4);
    for (int64_t i = 0; i < nimg; i++)
        images[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    const float *feat;
    double *tg = calloc((size_t)reps, sizeof *tg);
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, Bm, n, 0.0f, C, n);
    if (fb_clip_forward(net, images, B, &feat)) die("forward");
    for (int r = 0; r < reps; r++) {
        openblas_set_num_threads(threads);
        double t0 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, A, n, Bm, n, 0.0f, C,
                    n);
        tg[r] = bench_now() - t0;
        t0 = bench_now();
        fb_clip_forward(net, images, B, &feat);
        t[r] = bench_now() - t0;
    }
    const double gemm = 2.0 * n * (double)n * n / bench_median(tg, reps) / 1e9;
    const double ours = (double)B / bench_median(t, reps), flops = forward_flops(&cfg, 0);
    const double tflops = forward_flops(&cfg, 1);
    free(tg);
    free(A);
    free(Bm);
    free(C);
    free(images);
    fb_clip_free(net);

    /* decoding and resizing: one 500 x 375 image (a smooth pattern with noise) as PNG (what
     * tools/export_dataset.py writes) and as JPEG, decoded and brought to 224 x 224 as
     * CLIPProcessor does, over all threads */
    const int W = 500, H = 375, N = 256;
    unsigned char *rgb = malloc((size_t)W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                seed = seed * 6364136223846793005ull + 1442695040888963407ull;
                rgb[(y * W + x) * 3 + c] =
                    (unsigned char)((x * (c + 1) + y * 2) % 200 + (seed >> 59));
            }
    double decode[2];
    uint8_t *out = malloc((size_t)N * 224 * 224 * 3);
    for (int f = 0; f < 2; f++) {
        jpeg_buf jb = {0};
        if (f)
            stbi_write_jpg_to_func(jpeg_put, &jb, W, H, 3, rgb, 90);
        else
            stbi_write_png_to_func(jpeg_put, &jb, W, H, 3, rgb, W * 3);
        FILE *jf = fopen(f ? "/tmp/bench_eval.jpg" : "/tmp/bench_eval.png", "wb");
        if (jf) {
            fwrite(jb.data, 1, jb.len, jf);
            fclose(jf);
        }
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            int bad = 0;
#pragma omp parallel for schedule(dynamic) reduction(+ : bad)
            for (int i = 0; i < N; i++)
                bad += fb_image_decode_ex(jb.data, jb.len, "bench image", 224, 3, FB_RESAMPLE_CLIP,
                                          out + (size_t)i * 224 * 224 * 3) != FB_OK;
            t[r] = bench_now() - t0;
            if (bad) die("decode");
        }
        decode[f] = N / bench_median(t, reps);
        free(jb.data);
    }
    free(out);
    free(rgb);

    /* PyTorch and Pillow, same shapes and threads, this run */
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 %s %d %d %lld /tmp/bench_eval.png /tmp/bench_eval.jpg", torch_script,
             threads, reps, (long long)B);
    double tf = 0, tdec[2] = {0, 0};
    FILE *py = popen(cmd, "r");
    char line[256];
    while (py && fgets(line, sizeof line, py))
        if (sscanf(line, "forward %lf", &tf) != 1 && sscanf(line, "decode_png %lf", &tdec[0]) != 1)
            sscanf(line, "decode_jpg %lf", &tdec[1]);
    if (py) pclose(py);
    unlink("/tmp/bench_eval.jpg");
    unlink("/tmp/bench_eval.png");

    const double ta8 = 87433;
    printf("\nFusionBench's CLIP benchmark on this machine: %d threads, median of %d, same run\n\n",
           threads, reps);
    printf("| what | FusionBench-C | PyTorch / Pillow | ratio |\n|---|---:|---:|---:|\n");
    printf("| CLIP-ViT-B/32 image features, batch %lld (images/s) | %.1f | %.1f | %.2fx |\n",
           (long long)B, ours, tf, tf > 0 ? ours / tf : 0);
    printf("| the same, GFLOP/s (%.2f GFLOP per image; PyTorch's full pass %.2f) | %.1f | %.1f "
           "| |\n",
           flops / 1e9, tflops / 1e9, ours * flops / 1e9, tf * tflops / 1e9);
    printf("| OpenBLAS sgemm 2048^3, GFLOP/s | %.1f | | |\n", gemm);
    printf("| forward as a fraction of sgemm | %.0f%% | %.0f%% | |\n",
           100 * ours * flops / 1e9 / gemm, 100 * tf * tflops / 1e9 / gemm);
    for (int f = 0; f < 2; f++)
        printf(
            "| decode + CLIPProcessor resize of a 500x375 %s (images/s) | %.1f | %.1f | %.2fx |\n",
            f ? "JPEG" : "PNG", decode[f], tdec[f], tdec[f] > 0 ? decode[f] / tdec[f] : 0);
    printf("\nTA8's test sets (%.0f images): forward %.0f min; first run's decoding %.0f min more "
           "(later runs read the memory-mapped image cache)\n",
           ta8, ta8 / ours / 60, ta8 / decode[0] / 60);
    free(t);
    return 0;
}
