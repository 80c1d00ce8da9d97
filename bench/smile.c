/*
 * bench/smile.c: SMILE's forward pass on a CLIP-ViT-B/32-sized tower (8 experts per linear
 * layer, k 32, gate_k 16, top_k 1: FusionBench's B/32 choice; random weights), in images/s and
 * peak memory, beside PyTorch running FusionBench's SmileMoELinear computation
 * (bench/smile_torch.py) with the same threads, in the same run. Medians of --reps.
 *
 *     bench_smile [--reps 3] [--batch 32] [--torch bench/smile_torch.py]
 */
#include <fusionbench.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common.h"
#include "nn/clip_vit.h"

static void die(const char *what)
{
    fprintf(stderr, "bench_smile: %s: %s\n", what, fb_last_error());
    exit(1);
}

static uint64_t seed = 1;
static float rnd(float scale)
{
    return bench_rnd(&seed, scale);
}

static void add_random(fb_model *m, const char *name, int ndim, int64_t d0, int64_t d1, float s)
{
    const int64_t shape[2] = {d0, d1};
    fb_tensor *t;
    if (fb_model_add_tensor(m, name, FB_F32, ndim, shape, NULL, &t)) die("add");
    float *p = fb_tensor_mutable_data(t);
    for (int64_t i = 0; i < d0 * (ndim == 2 ? d1 : 1); i++)
        p[i] = rnd(s);
}

int main(int argc, char **argv)
{
    int reps = 3;
    int64_t B = 32;
    const char *torch_script = "bench/smile_torch.py";
    bench_args(argc, argv, &reps, &B, &torch_script);
    const int threads = fb_get_num_threads(), E = 8, k = 32, gk = 16;
    const fb_clip_config cfg = {768, 3072, 12, 12, 224, 32, 3, 512, 1, 1e-5f};
    fb_clip *net;
    if (fb_clip_create_inference(&cfg, B, &net)) die("create");
    float *p = fb_clip_params(net);
    for (int64_t i = 0; i < fb_clip_num_params(net); i++)
        p[i] = rnd(0.05f);
    /* the experts of every linear layer of the tower, under FusionBench's names */
    fb_model *m;
    if (fb_model_create(&m)) die("model");
    static const char *const lin[6] = {"self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
                                       "self_attn.out_proj", "mlp.fc1",          "mlp.fc2"};
    char name[256];
    for (int l = 0; l < 12; l++)
        for (int s = 0; s < 6; s++) {
            const int64_t in = s == 5 ? 3072 : 768, out = s == 4 ? 3072 : 768;
            snprintf(name, sizeof name, "vision_model.encoder.layers.%d.%s.gate.weights", l,
                     lin[s]);
            add_random(m, name, 2, E * gk, in, 0.1f);
            for (int i = 0; i < E; i++) {
                snprintf(name, sizeof name, "vision_model.encoder.layers.%d.%s.experts.%d.u", l,
                         lin[s], i);
                add_random(m, name, 2, out, k, 0.1f);
                snprintf(name, sizeof name, "vision_model.encoder.layers.%d.%s.experts.%d.svh", l,
                         lin[s], i);
                add_random(m, name, 2, k, in, 0.01f);
                snprintf(name, sizeof name, "vision_model.encoder.layers.%d.%s.experts.%d.bias", l,
                         lin[s], i);
                add_random(m, name, 1, out, 0, 0.01f);
            }
        }
    fb_model_set_metadata(m, "fusionbench_c.structure", "smile_upscaling");
    fb_model_set_metadata(m, "smile.num_experts", "8");
    fb_model_set_metadata(m, "smile.top_k", "1");
    if (fb_clip_set_smile(net, m)) die("set_smile");
    fb_model_free(m); /* the network holds its own copy */
    const int64_t nimg = B * 3 * 224 * 224;
    float *images = malloc((size_t)nimg * 4);
    for (int64_t i = 0; i < nimg; i++)
        images[i] = rnd(2.0f);
    const float *feat;
    double *t = calloc((size_t)reps, sizeof *t);
    if (fb_clip_forward(net, images, B, &feat)) die("forward");
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        if (fb_clip_forward(net, images, B, &feat)) die("forward");
        t[r] = bench_now() - t0;
    }
    const double ours = (double)B / bench_median(t, reps);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const double ours_mb = (double)ru.ru_maxrss / 1024.0;
    free(images);
    fb_clip_free(net);

    double tf, tmb;
    bench_torch_pair(torch_script, threads, reps, B, "smile", &tf, &tmb);
    printf("\nSMILE forward, CLIP-ViT-B/32 tower, 8 experts per linear layer (k 32, gate_k 16, "
           "top_k 1), batch %lld, %d threads, median of %d, same run\n\n",
           (long long)B, threads, reps);
    printf("| | images/s | peak RSS (MB) |\n|---|---:|---:|\n");
    printf("| FusionBench-C | %.2f | %.0f |\n", ours, ours_mb);
    printf("| PyTorch (SmileMoELinear's computation) | %.2f | %.0f |\n", tf, tmb);
    printf("| ratio | %.2fx | %.2fx |\n", tf > 0 ? ours / tf : 0, ours_mb > 0 ? tmb / ours_mb : 0);
    free(t);
    return 0;
}
