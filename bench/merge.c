/*
 * bench/merge.c: task arithmetic over 8 CLIP-ViT-B/32 vision towers (87.5 M f32 parameters
 * each, plus _pretrained_), beside the two bounds that limit it, all measured in one run:
 *
 *   memory copy      STREAM-like copy on all threads: (bytes read + written) / time
 *   page-cache read  a plain pread loop over the same input files, one thread
 *   CLI              fusion_bench method=task_arithmetic ... merged_model_save_path=...
 *                    (wall time and the child's peak RSS), output on disk and on tmpfs
 *   API in memory    fb_method_run on models already in memory
 *
 *     bench_merge [--cli build/fusion_bench] [--dir build/bench-merge] [--models 8] [--reps 5]
 *                 [--methods ties_merging,iso_c,...] [--method-reps 1]
 *
 * --methods adds one CLI row per method (output to tmpfs), timed --method-reps times, beside
 * the bound of two passes over the inputs at memory bandwidth.
 *
 * Inputs are random weights written once to --dir and reused. Every figure is the median of
 * --reps runs.
 */
#include <fusionbench.h>
#include <omp.h>

#include "common.h"

static void die(const char *what)
{
    fprintf(stderr, "bench_merge: %s: %s\n", what, fb_last_error());
    exit(1);
}

/* The CLIP-ViT-B/32 vision tower, named as transformers' CLIPVisionModel names it. */
static void add(fb_model *m, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
                int64_t d, uint64_t *seed)
{
    int64_t shape[4] = {a, b, c, d};
    fb_tensor *t;
    if (fb_model_add_tensor(m, name, FB_F32, ndim, shape, NULL, &t)) die(name);
    float *w = fb_tensor_mutable_data(t);
    for (int64_t i = 0; i < fb_tensor_numel(t); i++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        w[i] = (float)((*seed >> 40) & 0xffffff) * (1.0f / 16777216.0f) - 0.5f;
    }
}

static fb_model *clip_vit_b32(uint64_t seed)
{
    fb_model *m;
    if (fb_model_create(&m)) die("model");
    char n[128];
    const char *p = "vision_model";
    snprintf(n, sizeof n, "%s.embeddings.class_embedding", p);
    add(m, n, 1, 768, 0, 0, 0, &seed);
    snprintf(n, sizeof n, "%s.embeddings.patch_embedding.weight", p);
    add(m, n, 4, 768, 3, 32, 32, &seed);
    snprintf(n, sizeof n, "%s.embeddings.position_embedding.weight", p);
    add(m, n, 2, 50, 768, 0, 0, &seed);
    int64_t ids[2] = {1, 50}, idv[50];
    for (int i = 0; i < 50; i++) idv[i] = i;
    snprintf(n, sizeof n, "%s.embeddings.position_ids", p);
    if (fb_model_add_tensor(m, n, FB_I64, 2, ids, idv, NULL)) die(n);
    snprintf(n, sizeof n, "%s.pre_layrnorm.weight", p);
    add(m, n, 1, 768, 0, 0, 0, &seed);
    snprintf(n, sizeof n, "%s.pre_layrnorm.bias", p);
    add(m, n, 1, 768, 0, 0, 0, &seed);
    for (int l = 0; l < 12; l++) {
        const char *proj[] = {"k_proj", "v_proj", "q_proj", "out_proj"};
        for (int j = 0; j < 4; j++) {
            snprintf(n, sizeof n, "%s.encoder.layers.%d.self_attn.%s.weight", p, l, proj[j]);
            add(m, n, 2, 768, 768, 0, 0, &seed);
            snprintf(n, sizeof n, "%s.encoder.layers.%d.self_attn.%s.bias", p, l, proj[j]);
            add(m, n, 1, 768, 0, 0, 0, &seed);
        }
        for (int j = 1; j <= 2; j++) {
            snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm%d.weight", p, l, j);
            add(m, n, 1, 768, 0, 0, 0, &seed);
            snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm%d.bias", p, l, j);
            add(m, n, 1, 768, 0, 0, 0, &seed);
        }
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1.weight", p, l);
        add(m, n, 2, 3072, 768, 0, 0, &seed);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1.bias", p, l);
        add(m, n, 1, 3072, 0, 0, 0, &seed);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc2.weight", p, l);
        add(m, n, 2, 768, 3072, 0, 0, &seed);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc2.bias", p, l);
        add(m, n, 1, 768, 0, 0, 0, &seed);
    }
    snprintf(n, sizeof n, "%s.post_layernorm.weight", p);
    add(m, n, 1, 768, 0, 0, 0, &seed);
    snprintf(n, sizeof n, "%s.post_layernorm.bias", p);
    add(m, n, 1, 768, 0, 0, 0, &seed);
    return m;
}

int main(int argc, char **argv)
{
    const char *cli = "build/fusion_bench", *dir = "build/bench-merge";
    int n_models = 8, reps = 5, method_reps = 1;
    const char *methods = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--cli")) cli = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--models")) n_models = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--methods")) methods = argv[i + 1];
        else if (!strcmp(argv[i], "--method-reps")) method_reps = atoi(argv[i + 1]);
    }
    if (n_models < 1 || n_models > 16 || reps < 1) {
        fprintf(stderr, "bench_merge: --models 1..16, --reps >= 1\n");
        return 2;
    }
    mkdir(dir, 0755);
    char paths[17][4096], *path_list[17], pool_yaml[4200];
    for (int k = 0; k < 17; k++) path_list[k] = paths[k];
    snprintf(pool_yaml, sizeof pool_yaml, "%s/pool%d.yaml", dir, n_models);
    for (int k = 0; k <= n_models; k++) {
        if (k == 0) snprintf(paths[k], sizeof paths[k], "%s/pretrained.safetensors", dir);
        else snprintf(paths[k], sizeof paths[k], "%s/task%d.safetensors", dir, k);
        if (bench_file_size(paths[k]) < 300000000) {
            fprintf(stderr, "bench_merge: writing %s\n", paths[k]);
            fb_model *m = clip_vit_b32(1000 + (uint64_t)k);
            if (fb_model_save(m, paths[k], NULL)) die(paths[k]);
            fb_model_free(m);
        }
    }
    FILE *y = fopen(pool_yaml, "w");
    if (!y) die(pool_yaml);
    fprintf(y, "models:\n  _pretrained_: pretrained.safetensors\n");
    for (int k = 1; k <= n_models; k++) fprintf(y, "  task%d: task%d.safetensors\n", k, k);
    fclose(y);

    int threads = omp_get_max_threads();
    size_t in_bytes = 0;
    for (int k = 0; k <= n_models; k++) in_bytes += bench_file_size(paths[k]);
    size_t out_bytes = bench_file_size(paths[0]);

    /* The API's pool: every model copied into memory first. */
    fb_modelpool *pool;
    if (fb_modelpool_create(&pool)) die("pool");
    for (int k = 0; k <= n_models; k++) {
        fb_model *lazy, *mem;
        if (fb_model_load(paths[k], &lazy) || fb_model_create(&mem)) die(paths[k]);
        for (int64_t i = 0; i < fb_model_num_tensors(lazy); i++) {
            const fb_tensor *s = fb_model_tensor(lazy, i);
            const void *p;
            if (fb_tensor_data(s, &p) ||
                fb_model_add_tensor(mem, fb_tensor_name(s), fb_tensor_dtype(s), fb_tensor_ndim(s),
                                    fb_tensor_shape(s), p, NULL))
                die("copy");
        }
        fb_model_free(lazy);
        char name[32];
        snprintf(name, sizeof name, k ? "task%d" : "_pretrained_", k);
        if (fb_modelpool_add_model(pool, name, mem)) die(name);
    }
    fb_method *method;
    if (fb_method_create("task_arithmetic", NULL, &method)) die("method");

    size_t copy_bytes = (size_t)1 << 30;
    char *src = malloc(copy_bytes), *dst = malloc(copy_bytes);
    memset(src, 1, copy_bytes);
    memset(dst, 2, copy_bytes);
    size_t got;
    got = 0;
    bench_pread_files(path_list, n_models + 1, &got); /* warm the page cache */

    /* Each repetition measures everything once, so the ratios compare runs taken side by
     * side rather than phases minutes apart on a noisy machine. */
    double *t_copy = calloc((size_t)reps, sizeof(double));
    double *t_read = calloc((size_t)reps, sizeof(double));
    double *t_disk = calloc((size_t)reps, sizeof(double));
    double *t_shm = calloc((size_t)reps, sizeof(double));
    double *t_mem = calloc((size_t)reps, sizeof(double));
    long rss_cli[2] = {0, 0};
    const char *outs[2] = {dir, "/dev/shm"};
    char report[4300];
    snprintf(report, sizeof report, "%s/bench_report.json", dir);
    for (int r = 0; r < reps; r++) {
        t_copy[r] = bench_copy_once(dst, src, copy_bytes);
        got = 0;
        t_read[r] = bench_pread_files(path_list, n_models + 1, &got);
        for (int o = 0; o < 2; o++) {
            char pool_arg[4300], save_arg[4300], threads_arg[16], report_arg[4400];
            snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", pool_yaml);
            snprintf(save_arg, sizeof save_arg,
                     "merged_model_save_path=%s/bench_merged.safetensors", outs[o]);
            snprintf(threads_arg, sizeof threads_arg, "%d", threads);
            snprintf(report_arg, sizeof report_arg, "report_save_path=%s", report);
            char *args[] = {(char *)cli, "--threads", threads_arg, "method=task_arithmetic",
                            pool_arg, save_arg, report_arg, NULL};
            (o ? t_shm : t_disk)[r] = bench_spawn(args);
            long rss = (long)bench_report_number(report, "peak_rss_bytes");
            if (rss > rss_cli[o]) rss_cli[o] = rss;
        }
        fb_model *merged;
        double t0 = bench_now();
        if (fb_method_run(method, pool, NULL, &merged)) die("run");
        t_mem[r] = bench_now() - t0;
        fb_model_free(merged);
    }
    for (int o = 0; o < 2; o++) {
        char out_path[4300];
        snprintf(out_path, sizeof out_path, "%s/bench_merged.safetensors", outs[o]);
        unlink(out_path);
    }
    free(src);
    free(dst);
    fb_method_free(method);
    fb_modelpool_free(pool);
    double copy_bw = 2.0 * (double)copy_bytes / bench_median(t_copy, reps);
    double t_pread = bench_median(t_read, reps);
    double t_cli[2] = {bench_median(t_disk, reps), bench_median(t_shm, reps)};
    double t_api = bench_median(t_mem, reps);

    double gb = 1e9, moved = (double)(in_bytes + out_bytes);
    double copy_bound = moved / copy_bw;
    printf("\ntask_arithmetic, %d CLIP-ViT-B/32 vision towers + _pretrained_ (87.5 M f32 params "
           "each), %d threads, median of %d\n",
           n_models, threads, reps);
    printf("inputs %.2f GB, output %.2f GB\n\n", (double)in_bytes / gb, (double)out_bytes / gb);
    printf("| measurement                         | time (s) | GB/s (read+written) | vs bound | peak RSS |\n");
    printf("|-------------------------------------|---------:|--------------------:|---------:|---------:|\n");
    printf("| memory copy bound (read+write)      | %8.3f | %19.1f |          |          |\n",
           copy_bound, copy_bw / gb);
    printf("| page-cache pread of inputs, 1 thread| %8.3f | %19.1f |          |          |\n",
           t_pread, (double)got / t_pread / gb);
    for (int o = 0; o < 2; o++)
        printf("| CLI -> %-28s | %8.3f | %19.1f | %6.2fx pread | %5.0f MB (%.1f%% of inputs) |\n",
               o ? "tmpfs file" : "disk file (fsync)", t_cli[o], moved / t_cli[o] / gb,
               t_cli[o] / t_pread, (double)rss_cli[o] / 1e6,
               100.0 * (double)rss_cli[o] / (double)in_bytes);
    printf("| API, models in memory               | %8.3f | %19.1f | %6.2fx copy |          |\n",
           t_api, moved / t_api / gb, t_api / copy_bound);
    printf("\ntargets: CLI <= 2x pread, API <= 2x memory-copy bound, peak RSS < 10%% of inputs\n");

    if (methods && method_reps > 0) {
        /* more methods through the CLI, output on tmpfs, beside two passes at memory speed */
        double two_passes = 2.0 * (double)in_bytes / copy_bw;
        printf("\nother methods through the CLI (output on tmpfs), median of %d; bound: two passes "
               "over the inputs at memory bandwidth = %.3f s\n\n", method_reps, two_passes);
        printf("| method                    | time (s) | vs 2 passes at memory bw | vs 1 pread pass | peak RSS |\n");
        printf("|---------------------------|---------:|-------------------------:|----------------:|---------:|\n");
        char list[1024];
        snprintf(list, sizeof list, "%s", methods);
        double *tm = calloc((size_t)method_reps, sizeof *tm);
        for (char *name = strtok(list, ","); name; name = strtok(NULL, ",")) {
            char method_arg[256], pool_arg[4300], save_arg[128], report_arg[4400], threads_arg[16];
            snprintf(method_arg, sizeof method_arg, "method=%s", name);
            snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", pool_yaml);
            snprintf(save_arg, sizeof save_arg, "merged_model_save_path=/dev/shm/bench_method.safetensors");
            snprintf(report_arg, sizeof report_arg, "report_save_path=%s", report);
            snprintf(threads_arg, sizeof threads_arg, "%d", threads);
            char *args[] = {(char *)cli, "--threads", threads_arg, method_arg, pool_arg, save_arg,
                            report_arg, NULL};
            long rss = 0;
            for (int r = 0; r < method_reps; r++) {
                tm[r] = bench_spawn(args);
                long v = (long)bench_report_number(report, "peak_rss_bytes");
                if (v > rss) rss = v;
            }
            double t = bench_median(tm, method_reps);
            printf("| %-25s | %8.2f | %23.1fx | %14.1fx | %5.0f MB |\n", name, t, t / two_passes,
                   t / t_pread, (double)rss / 1e6);
            fflush(stdout);
        }
        unlink("/dev/shm/bench_method.safetensors");
        free(tm);
    }
    free(t_copy);
    free(t_read);
    free(t_disk);
    free(t_shm);
    free(t_mem);
    return 0;
}
