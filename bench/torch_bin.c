/*
 * bench/torch_bin.c: the same merge from PyTorch checkpoints (pytorch_model.bin, read without
 * running pickle) and from safetensors holding the same tensors, side by side in one run, with
 * the page cache warm: the cost of reading torch.save's format, and the peak RSS of each.
 *
 *     bench_torch_bin [--cli build/fusion_bench] [--dir build/bench-torch-bin] [--models 4]
 *                     [--reps 5] [--methods task_arithmetic,ties_merging]
 *
 * The inputs (CLIP-ViT-B/32 vision towers, random f32) are written once by
 * bench/torch_bin_make.py with Debian's torch, then reused. Every figure is the median of
 * --reps runs, the two formats alternating within each repetition.
 */
#include <fusionbench.h>

#include "common.h"

int main(int argc, char **argv)
{
    const char *cli = "build/fusion_bench", *dir = "build/bench-torch-bin";
    const char *methods = "task_arithmetic,ties_merging";
    int models = 4, reps = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cli")) cli = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--models")) models = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--methods")) methods = argv[i + 1];
        else {
            fprintf(stderr, "usage: bench_torch_bin [--cli PATH] [--dir DIR] [--models N] "
                            "[--reps N] [--methods a,b]\n");
            return 2;
        }
    }
    if (reps < 1 || reps > 64 || models < 1) return 2;
    char count[16];
    snprintf(count, sizeof count, "%d", models);
    char *mk[] = {"/usr/bin/python3", "bench/torch_bin_make.py", (char *)dir, count, NULL};
    bench_spawn(mk);
    printf("| method | inputs | time (s) | vs safetensors | peak RSS (MB) |\n");
    printf("|---|---|---:|---:|---:|\n");
    char list[512];
    snprintf(list, sizeof list, "%s", methods);
    for (char *m = strtok(list, ","); m; m = strtok(NULL, ",")) {
        double t[2][64];
        long rss[2] = {0, 0};
        for (int r = 0; r < reps; r++) {
            for (int f = 0; f < 2; f++) { /* 0: safetensors, 1: .bin */
                char method[128], pool[4200], out[4200], report[4200], rep[4300];
                snprintf(method, sizeof method, "method=%s", m);
                snprintf(pool, sizeof pool, "modelpool=%s/pool_%s.yaml", dir, f ? "bin" : "safetensors");
                snprintf(out, sizeof out, "merged_model_save_path=/dev/shm/bench-torch-bin.safetensors");
                snprintf(report, sizeof report, "%s/report.json", dir);
                snprintf(rep, sizeof rep, "report_save_path=%s", report);
                char *a[] = {(char *)cli, method, pool, out, rep, NULL};
                t[f][r] = bench_spawn(a);
                long peak = (long)bench_report_number(report, "peak_rss_bytes");
                if (peak > rss[f]) rss[f] = peak;
            }
        }
        double med[2] = {bench_median(t[0], reps), bench_median(t[1], reps)};
        for (int f = 0; f < 2; f++)
            printf("| %s | %s | %.3f | %.2fx | %.1f |\n", m, f ? "pytorch_model.bin" : "safetensors",
                   med[f], med[f] / med[0], (double)rss[f] / 1e6);
    }
    unlink("/dev/shm/bench-torch-bin.safetensors");
    printf("\ntarget: .bin within 1.3x of safetensors, the same bounded RSS (%d models, median of %d)\n",
           models, reps);
    return 0;
}
