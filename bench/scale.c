/*
 * bench/scale.c: merging language-model checkpoints as large as the machine's memory, beside
 * the bounds that limit it, measured in one run.
 *
 *     bench_scale [--params 3e9] [--models 3] [--shard 2GB] [--dir build/bench-scale]
 *                 [--methods task_arithmetic,ties_merging,dare_ties_merging]
 *                 [--cli build/fusion_bench] [--out DIR] [--threads N] [--warm 0|1]
 *                 [--reps 1] [--torch /usr/bin/python3] [--mergekit CHECKOUT]
 *
 * Inputs (made once and kept in --dir): _pretrained_ and --models fine-tuned checkpoints in
 * bf16 with the Llama-3.2-3B layout (hidden 3072, MLP 8192, 8 key/value heads of 128, vocab
 * 128256, tied embeddings, transformers' tensor names), as many layers as make --params,
 * sharded as Hugging Face shards them (model-0000i-of-0000N.safetensors + index, at most
 * --shard bytes per file) with a config.json. Fine-tuned = base + a small random delta.
 *
 * Measured, in this order, in one run:
 *   memory copy      STREAM-like copy on all threads: (bytes read + written) / time
 *   disk read        the inputs read once, each file sequentially by 8 MiB preads, the files
 *                    shared among --threads threads, after their pages were dropped from the
 *                    page cache (POSIX_FADV_DONTNEED)
 *   page-cache read  the same again while they are cached (only when they fit in memory)
 *   disk write       one output's size written to the output's folder and fsynced
 *   each method      fusion_bench writing a sharded bf16 output folder (--out, on disk), inputs
 *                    dropped from the page cache first ("cold") and, when they fit in memory,
 *                    again with them cached ("warm"): wall time, peak RSS (the CLI's VmHWM),
 *                    bytes read/written (its /proc/self/io), and the ratio to the bound:
 *                    passes x disk read (cold) or passes x page-cache read (warm), where
 *                    passes = 1 for task arithmetic, 2 for the TIES methods. A virtual
 *                    disk's speed drifts within minutes, so a cold run's disk read is
 *                    measured again just before and just after it, and its bound uses their
 *                    mean; --reps repeats each run and adds a line with the medians
 *   PyTorch          bench/scale_torch.py (with --torch PYTHON) doing what FusionBench does
 *                    (load every state dict, merge in memory, save) on the same files; it
 *                    declines to start when it would need more memory than is available
 *
 * Methods named mergekit:NAME (mergekit:ties, mergekit:dare_ties; with /SIZE, e.g.
 * mergekit:ties/5GB, another output shard size) run `fusion_bench mergekit` on a mergekit
 * configuration written beside the inputs (every model at weight 0.5, density 0.5, base
 * _pretrained_); their bound is one disk read (the per-tensor passes re-read each tensor from
 * the page cache). With --torch and --mergekit CHECKOUT, bench/mergekit_torch.py does the same
 * the way mergekit does (tensor by tensor: load N tensors, stack, mask, sum, with mergekit's own
 * code; output held until a shard is full).
 */
#include <fusionbench.h>
#include <omp.h>
#include <dirent.h>
#include <sys/sysinfo.h>

#include "common.h"
#include "core/model.h"
#include "io/writer.h"

enum { HIDDEN = 3072, MLP = 8192, KV = 1024, VOCAB = 128256 };
enum { MAX_MODELS = 8, MAX_SHARDS = 256 };

static void die(const char *what)
{
    fprintf(stderr, "bench_scale: %s: %s\n", what, fb_last_error());
    exit(1);
}

/* The Llama layout with `layers` decoder layers, declared (no bytes) in `m`. */
static void declare_llama(fb_model *m, int layers)
{
    char n[128];
    int64_t s[2] = {VOCAB, HIDDEN};
    if (fb_model_declare_tensor(m, "model.embed_tokens.weight", FB_BF16, 2, s)) die("embed");
    for (int l = 0; l < layers; l++) {
        const char *proj[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        const int64_t rows[] = {HIDDEN, KV, KV, HIDDEN};
        for (int j = 0; j < 4; j++) {
            snprintf(n, sizeof n, "model.layers.%d.self_attn.%s.weight", l, proj[j]);
            s[0] = rows[j], s[1] = HIDDEN;
            if (fb_model_declare_tensor(m, n, FB_BF16, 2, s)) die(n);
        }
        const char *mlp[] = {"gate_proj", "up_proj", "down_proj"};
        for (int j = 0; j < 3; j++) {
            snprintf(n, sizeof n, "model.layers.%d.mlp.%s.weight", l, mlp[j]);
            s[0] = j < 2 ? MLP : HIDDEN, s[1] = j < 2 ? HIDDEN : MLP;
            if (fb_model_declare_tensor(m, n, FB_BF16, 2, s)) die(n);
        }
        const char *norm[] = {"input_layernorm", "post_attention_layernorm"};
        for (int j = 0; j < 2; j++) {
            snprintf(n, sizeof n, "model.layers.%d.%s.weight", l, norm[j]);
            s[0] = HIDDEN;
            if (fb_model_declare_tensor(m, n, FB_BF16, 1, s)) die(n);
        }
    }
    s[0] = HIDDEN;
    if (fb_model_declare_tensor(m, "model.norm.weight", FB_BF16, 1, s)) die("norm");
}

static int64_t llama_params(int layers)
{
    int64_t per_layer = 2LL * HIDDEN * HIDDEN + 2LL * KV * HIDDEN + 3LL * HIDDEN * MLP + 2 * HIDDEN;
    return (int64_t)VOCAB * HIDDEN + layers * per_layer + HIDDEN;
}

/* A uniform number in [-1, 1) from (key, index): SplitMix64. */
static inline float uniform(uint64_t key, uint64_t i)
{
    uint64_t z = key + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(int32_t)(z >> 32) * (1.0f / 2147483648.0f);
}

/* Writes checkpoint `k` (0: the base) to dir: weights ~ U(-0.04, 0.04) (norms 1 + U(-0.1,
 * 0.1)); model k > 0 adds U(-0.002, 0.002), about 16 bf16 steps of a typical weight. */
static void write_checkpoint(const char *dir, int k, int layers, size_t shard)
{
    fb_model *m;
    if (fb_model_create(&m)) die("model");
    declare_llama(m, layers);
    fb_save_options so = {.max_shard_bytes = shard};
    fb_writer *w;
    if (fb_writer_open(dir, &so, m, &w)) die(dir);
    enum { STEP = 1 << 20 };
    for (int64_t t = 0; t < fb_model_num_tensors(m); t++) {
        const fb_tensor *ten = fb_model_tensor(m, t);
        int64_t numel = fb_tensor_numel(ten);
        int norm = strstr(fb_tensor_name(ten), "norm") != NULL;
        uint64_t key = 0x5eed0000ull + (uint64_t)t * 0x100000001ull;
        int64_t steps = (numel + STEP - 1) / STEP;
        fb_status err = FB_OK;
#pragma omp parallel
        {
            float *f = malloc(STEP * sizeof(float));
            uint16_t *b = malloc(STEP * sizeof(uint16_t));
#pragma omp for schedule(dynamic, 1)
            for (int64_t c = 0; c < steps; c++) {
                int64_t begin = c * STEP, n = numel - begin < STEP ? numel - begin : STEP;
                for (int64_t j = 0; j < n; j++) {
                    uint64_t i = (uint64_t)(begin + j);
                    float v = norm ? 1.0f + 0.1f * uniform(key, i) : 0.04f * uniform(key, i);
                    if (k) v += 0.002f * uniform(key ^ ((uint64_t)k << 48), i);
                    f[j] = v;
                }
                fb_status st = fb_convert_from_f32(FB_BF16, f, b, n);
                if (!st) st = fb_writer_write(w, t, (size_t)begin * 2, b, (size_t)n * 2);
                if (st) {
#pragma omp critical
                    err = st;
                }
            }
            free(f);
            free(b);
        }
        if (err) die(fb_tensor_name(ten));
    }
    if (fb_writer_commit(w)) die(dir);
    fb_model_free(m);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *c = fopen(path, "w");
    if (!c) die(path);
    fprintf(c,
            "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
            "  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
            "  \"num_attention_heads\": 24,\n  \"num_key_value_heads\": 8,\n  \"head_dim\": 128,\n"
            "  \"vocab_size\": %d,\n  \"tie_word_embeddings\": true,\n  \"torch_dtype\": \"bfloat16\"\n}\n",
            HIDDEN, MLP, layers, VOCAB);
    fclose(c);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .safetensors files of the checkpoint folder dir, in name order, appended to paths. */
static int list_shards(const char *dir, char **paths, int n)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "bench_scale: cannot list %s\n", dir);
        exit(1);
    }
    int first = n;
    struct dirent *e;
    while ((e = readdir(d)) && n < (MAX_MODELS + 1) * MAX_SHARDS) {
        size_t len = strlen(e->d_name);
        if (len < 12 || strcmp(e->d_name + len - 12, ".safetensors") || e->d_name[0] == '.') continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        paths[n++] = strdup(p);
    }
    closedir(d);
    qsort(paths + first, (size_t)(n - first), sizeof *paths, cmp_str);
    return n;
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (!strcmp(end, "GB")) v *= 1e9;
    else if (!strcmp(end, "MB")) v *= 1e6;
    else if (*end) return 0;
    return (size_t)v;
}

typedef struct row {
    char what[96];
    double seconds, bound, write, rss;
    double read, written; /* bytes through read/write calls */
    double storage_read;  /* bytes that came from the disk */
    double disk_before, disk_after; /* cold runs: disk read of the inputs (s) around the run */
} row;

static void print_row(const row *r)
{
    char around[64] = "";
    if (r->disk_before > 0)
        snprintf(around, sizeof around, "%.1f / %.1f", r->disk_before, r->disk_after);
    printf("| %-40s | %8.1f | %8.1f | %6.2fx | %6.2fx | %8.0f | %7.1f | %7.1f | %7.1f | %s |\n",
           r->what, r->seconds, r->bound, r->seconds / r->bound,
           r->seconds / (r->bound + r->write), r->rss / 1e6, r->read / 1e9,
           r->storage_read / 1e9, r->written / 1e9, around);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *dir = "build/bench-scale", *cli = "build/fusion_bench", *out = NULL;
    const char *methods = "task_arithmetic,ties_merging,dare_ties_merging", *python = NULL;
    const char *mergekit = NULL;
    double params = 3e9;
    int n_models = 3, warm = -1, threads = omp_get_max_threads(), reps = 1;
    size_t shard = 2000000000;
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: bench_scale [--params 3e9] [--models 3] [--shard 2GB] [--dir D] "
                        "[--methods a,b] [--cli PATH] [--out DIR] [--threads N] [--warm 0|1] "
                        "[--reps N] [--torch PYTHON] [--mergekit CHECKOUT] (see bench/scale.c)\n");
        return 2;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--cli")) cli = argv[i + 1];
        else if (!strcmp(argv[i], "--out")) out = argv[i + 1];
        else if (!strcmp(argv[i], "--methods")) methods = argv[i + 1];
        else if (!strcmp(argv[i], "--torch")) python = argv[i + 1];
        else if (!strcmp(argv[i], "--mergekit")) mergekit = argv[i + 1];
        else if (!strcmp(argv[i], "--params")) params = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--models")) n_models = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warm")) warm = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--shard")) shard = parse_size(argv[i + 1]);
        else {
            fprintf(stderr, "bench_scale: unknown option %s (see bench/scale.c)\n", argv[i]);
            return 2;
        }
    }
    if (n_models < 1 || n_models > MAX_MODELS || shard < 1000000 || threads < 1 || reps < 1 ||
        reps > 99) {
        fprintf(stderr, "bench_scale: --models 1..%d, --shard >= 1MB, --threads >= 1, --reps 1..99\n",
                MAX_MODELS);
        return 2;
    }
    int64_t per_layer = llama_params(1) - llama_params(0);
    int layers = (int)((params - (double)llama_params(0)) / (double)per_layer + 0.5);
    if (layers < 1) layers = 1;

    /* inputs, made once: a stamp names what they are */
    char stamp[4200], want[256];
    snprintf(stamp, sizeof stamp, "%s/inputs.txt", dir);
    snprintf(want, sizeof want, "llama layers %d shard %zu models %d v1\n", layers, shard, n_models);
    char have[256] = "";
    FILE *sf = fopen(stamp, "r");
    if (sf) {
        if (!fgets(have, sizeof have, sf)) have[0] = 0;
        fclose(sf);
    }
    mkdir(dir, 0755);
    char names[MAX_MODELS + 1][4200];
    for (int k = 0; k <= n_models; k++)
        snprintf(names[k], sizeof names[k], k ? "%s/task%d" : "%s/pretrained", dir, k);
    if (strcmp(have, want)) {
        unlink(stamp);
        for (int k = 0; k <= n_models; k++) {
            fprintf(stderr, "bench_scale: writing %s (%d layers, %.2f B parameters, bf16)\n",
                    names[k], layers, (double)llama_params(layers) / 1e9);
            double t0 = bench_now();
            write_checkpoint(names[k], k, layers, shard);
            fprintf(stderr, "bench_scale:   %.1f s\n", bench_now() - t0);
        }
        sf = fopen(stamp, "w");
        if (!sf) die(stamp);
        fputs(want, sf);
        fclose(sf);
    }
    char pool_yaml[4300];
    snprintf(pool_yaml, sizeof pool_yaml, "%s/pool.yaml", dir);
    FILE *y = fopen(pool_yaml, "w");
    if (!y) die(pool_yaml);
    fprintf(y, "models:\n  _pretrained_: pretrained/\n");
    for (int k = 1; k <= n_models; k++) fprintf(y, "  task%d: task%d/\n", k, k);
    fclose(y);

    char *paths[(MAX_MODELS + 1) * MAX_SHARDS];
    int n_paths = 0;
    for (int k = 0; k <= n_models; k++) n_paths = list_shards(names[k], paths, n_paths);
    size_t in_bytes = 0;
    for (int i = 0; i < n_paths; i++) in_bytes += bench_file_size(paths[i]);
    struct sysinfo si;
    sysinfo(&si);
    double ram = (double)si.totalram * si.mem_unit;
    if (warm < 0) warm = (double)in_bytes < 0.6 * ram;

    double copy_bw = bench_copy_bandwidth(3);
    size_t got = 0;
    bench_evict_files(paths, n_paths);
    double t_disk = bench_pread_files_threads(paths, n_paths, &got, threads);
    double t_cache = 0;
    if (warm) {
        got = 0;
        bench_pread_files_threads(paths, n_paths, &got, threads);
        got = 0;
        t_cache = bench_pread_files_threads(paths, n_paths, &got, threads);
    }
    /* the output's size written to the output's disk, fsynced */
    size_t out_bytes = in_bytes / (size_t)(n_models + 1);
    char out_dir[4300], report[4300], probe[4400];
    snprintf(out_dir, sizeof out_dir, "%s/merged", out ? out : dir);
    snprintf(report, sizeof report, "%s/report.json", dir);
    snprintf(probe, sizeof probe, "%s-write-probe", out_dir);
    double t_write = bench_write_file(probe, out_bytes);
    unlink(probe);
    double gb = 1e9;
    printf("\n%d + _pretrained_ Llama-layout checkpoints, %d layers, %.2f B parameters each, "
           "bf16, shards <= %.1f GB; %d threads; machine memory %.1f GB\n",
           n_models, layers, (double)llama_params(layers) / 1e9, (double)shard / gb, threads,
           ram / gb);
    printf("inputs %.2f GB in %d files; output %.2f GB\n\n", (double)in_bytes / gb, n_paths,
           (double)out_bytes / gb);
    printf("| bound | time (s) | GB/s |\n|---|---:|---:|\n");
    printf("| memory copy of the inputs (read + write) | %.1f | %.1f |\n",
           2.0 * (double)in_bytes / copy_bw, copy_bw / gb);
    printf("| disk read of the inputs, %d threads | %.1f | %.2f |\n", threads, t_disk,
           (double)in_bytes / t_disk / gb);
    if (warm)
        printf("| page-cache read of the inputs, %d threads | %.1f | %.2f |\n", threads, t_cache,
               (double)in_bytes / t_cache / gb);
    printf("| disk write of the output's size (fsync), 1 thread | %.1f | %.2f |\n", t_write,
           (double)out_bytes / t_write / gb);
    printf("\n| run | time (s) | bound (s) | vs bound | vs bound + write | peak RSS (MB) | read (GB) "
           "| from disk (GB) | written (GB) | disk read before / after (s) |\n"
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");

    char list[1024];
    snprintf(list, sizeof list, "%s", methods);
    for (char *name = strtok(list, ","); name; name = strtok(NULL, ",")) {
        int passes = strstr(name, "ties") ? 2 : 1;
        const int mk = !strncmp(name, "mergekit:", 9);
        char mk_yaml[4400] = "", mk_shard[64];
        snprintf(mk_shard, sizeof mk_shard, "%zu", shard);
        if (mk) { /* mergekit's configuration for this method, beside the inputs */
            char method_name[64];
            snprintf(method_name, sizeof method_name, "%s", name + 9);
            char *slash = strchr(method_name, '/');
            if (slash) {
                *slash = '\0';
                snprintf(mk_shard, sizeof mk_shard, "%zu", parse_size(slash + 1));
            }
            snprintf(mk_yaml, sizeof mk_yaml, "%s/mergekit_%s.yml", dir, method_name);
            FILE *mf = fopen(mk_yaml, "w");
            if (!mf) die(mk_yaml);
            fprintf(mf, "merge_method: %s\nbase_model: %s\nmodels:\n", method_name, names[0]);
            for (int k = 1; k <= n_models; k++)
                fprintf(mf, "  - model: %s\n    parameters: {weight: 0.5, density: 0.5}\n",
                        names[k]);
            fclose(mf);
            passes = 1;
        }
        for (int w = 0; w <= warm; w++) {
            double times[99], ratios[99];
            for (int rep = 0; rep < reps; rep++) {
                char method_arg[256], pool_arg[4400], save_arg[4400], report_arg[4400], th[16];
                snprintf(method_arg, sizeof method_arg, "method=%s", name);
                snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", pool_yaml);
                snprintf(save_arg, sizeof save_arg, "merged_model_save_path=%s", out_dir);
                snprintf(report_arg, sizeof report_arg, "report_save_path=%s", report);
                snprintf(th, sizeof th, "%d", threads);
                char shard_arg[64];
                snprintf(shard_arg, sizeof shard_arg, "merged_model_max_shard_size=%zu", shard);
                char *args[] = {(char *)cli, "--threads", th, method_arg, pool_arg, save_arg,
                                shard_arg, report_arg, NULL};
                char *mk_args[] = {(char *)cli, "mergekit", mk_yaml, out_dir, "--out-shard-size",
                                   mk_shard, "--threads", th, "--report", report, NULL};
                row r = {.write = t_write};
                if (!w) { /* the disk as it is now, then the run from a cold cache */
                    bench_evict_files(paths, n_paths);
                    got = 0;
                    r.disk_before = bench_pread_files_threads(paths, n_paths, &got, threads);
                    bench_evict_files(paths, n_paths);
                } else { /* warm: read them into the page cache first */
                    got = 0;
                    bench_pread_files(paths, n_paths, &got);
                }
                snprintf(r.what, sizeof r.what, "%s, %s", name, w ? "inputs cached" : "inputs on disk");
                r.seconds = bench_spawn(mk ? mk_args : args);
                r.rss = bench_report_number(report, "peak_rss_bytes");
                r.read = bench_report_number(report, "bytes_read");
                r.written = bench_report_number(report, "bytes_written");
                r.storage_read = bench_report_number(report, "storage_bytes_read");
                if (!w) {
                    bench_evict_files(paths, n_paths);
                    got = 0;
                    r.disk_after = bench_pread_files_threads(paths, n_paths, &got, threads);
                }
                r.bound = passes * (w ? t_cache : 0.5 * (r.disk_before + r.disk_after));
                print_row(&r);
                times[rep] = r.seconds;
                ratios[rep] = r.seconds / r.bound;
            }
            if (reps > 1) {
                double t = bench_median(times, reps), q = bench_median(ratios, reps);
                printf("| %s, %s: median of %d | %8.1f | | %6.2fx | | | | | | |\n", name,
                       w ? "inputs cached" : "inputs on disk", reps, t, q);
                fflush(stdout);
            }
        }
    }
    if (python) {
        snprintf(list, sizeof list, "%s", methods);
        for (char *name = strtok(list, ","); name; name = strtok(NULL, ",")) {
            int passes = strstr(name, "ties") ? 2 : 1;
            const int mk = !strncmp(name, "mergekit:", 9);
            if (mk && (!mergekit || strchr(name, '/'))) continue; /* needs a checkout; once */
            char script[] = "bench/scale_torch.py", mk_script[] = "bench/mergekit_torch.py";
            char torch_out[4400], shard_text[64];
            snprintf(torch_out, sizeof torch_out, "%s-torch", out_dir);
            snprintf(shard_text, sizeof shard_text, "%zu", shard);
            char *args[] = {(char *)python, script, name, pool_yaml, torch_out, report, NULL};
            char *mk_args[] = {(char *)python, mk_script, name + 9, pool_yaml, torch_out, report,
                               shard_text, (char *)mergekit, NULL};
            char **cmd = mk ? mk_args : args;
            if (mk) passes = 1;
            if (warm) {
                got = 0;
                bench_pread_files(paths, n_paths, &got);
            } else {
                bench_evict_files(paths, n_paths);
            }
            row r = {.bound = passes * (warm ? t_cache : t_disk), .write = t_write};
            snprintf(r.what, sizeof r.what, "PyTorch %s, %s", name,
                     warm ? "inputs cached" : "inputs on disk");
            unlink(report);
            int code;
            r.seconds = bench_spawn_status(cmd, NULL, &code);
            if (code == 3) {
                printf("| %-40s | not run: it would need more memory than this machine has (its "
                       "message above) | | | | | | | | |\n", r.what);
                continue;
            }
            if (code != 0) {
                printf("| %-40s | failed after %.1f s (exit %d; -1: killed, e.g. out of memory) "
                       "| | | | | | | | |\n", r.what, r.seconds, code);
                continue;
            }
            r.rss = bench_report_number(report, "peak_rss_bytes");
            r.read = bench_report_number(report, "bytes_read");
            r.written = bench_report_number(report, "bytes_written");
            r.storage_read = bench_report_number(report, "storage_bytes_read");
            print_row(&r);
        }
    }
    printf("\nbound: passes x (disk read: the mean of the reads just before and after the run; or "
           "page-cache read when cached); passes = 1 for task arithmetic and the mergekit rows "
           "(their per-tensor passes re-read a tensor from the page cache), 2 for TIES; bound + "
           "write adds writing the output once (the disk cannot always overlap them). Targets: "
           "peak RSS < 1 GB; within 1.5x of the bound\n");
    for (int i = 0; i < n_paths; i++) free(paths[i]);
    return 0;
}
