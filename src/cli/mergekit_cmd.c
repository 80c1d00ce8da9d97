/*
 * mergekit_cmd.c: `fusion_bench mergekit CONFIG.yml OUT_DIR [options]`, mergekit-yaml's and
 * mergekit-multi's command line over fb_mergekit_run.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <time.h>

#include "fusionbench.h"
#include "io/writer.h"
#include "mergekit_cmd.h"
#include "report.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: fusion_bench mergekit CONFIG.yml OUT_DIR [options]\n"
            "\n"
            "Runs a mergekit configuration (mergekit-yaml; several documents separated by ---\n"
            "as mergekit-multi) on FusionBench-C's streaming engine; docs/mergekit.md.\n"
            "\n"
            "options:\n"
            "  --out-shard-size SIZE     output shard size, bytes or with K/M/B (default 5B)\n"
            "  --random-seed N           seed of the random methods (dare_*, della*; default 0)\n"
            "  --intermediate-dir DIR    where named documents go (default OUT_DIR.intermediates)\n"
            "  --threads N               worker threads (default: all cores)\n"
            "  --report PATH             write seconds, peak RSS and I/O as JSON to PATH\n"
            "  --dry-run                 validate, read every header, resolve every parameter;\n"
            "                            merge nothing\n");
}

/* mergekit's parse_kmb: a number of bytes, or one with a K, M or B (10^9) suffix. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v <= 0) return -1;
    double mul = 1;
    if (*end) {
        char c = (char)toupper((unsigned char)*end);
        mul = c == 'K' ? 1e3 : c == 'M' ? 1e6 : c == 'B' || c == 'G' ? 1e9 : 0;
        if (!mul || end[1]) return -1;
    }
    *out = (size_t)(v * mul);
    return *out ? 0 : -1;
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The run's time, peak memory and I/O, as JSON. */
static fb_status write_report(const char *path, double seconds)
{
    fb_run_report r = {0};
    fb_io_counters(&r);
    cJSON *root = cJSON_CreateObject(), *io = root ? cJSON_AddObjectToObject(root, "io") : NULL;
    if (!io) {
        cJSON_Delete(root);
        return FB_ERR_NOMEM;
    }
    cJSON_AddNumberToObject(root, "seconds", seconds);
    cJSON_AddNumberToObject(root, "peak_rss_bytes", (double)fb_peak_rss_bytes());
    cJSON_AddNumberToObject(io, "bytes_read", (double)r.io_read);
    cJSON_AddNumberToObject(io, "bytes_written", (double)r.io_written);
    cJSON_AddNumberToObject(io, "storage_bytes_read", (double)r.storage_read);
    cJSON_AddNumberToObject(io, "storage_bytes_written", (double)r.storage_written);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    fb_status st = text ? fb_write_text_atomic(path, text) : FB_ERR_NOMEM;
    cJSON_free(text);
    return st;
}

int fb_mergekit_main(int argc, char **argv)
{
    const char *pos[2], *report = NULL;
    int npos = 0;
    fb_mergekit_options o = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || !strcmp(a, "--")) {
            if (npos == 2) {
                fprintf(stderr, "fusion_bench mergekit: error: unexpected argument '%s'\n", a);
                return 2;
            }
            pos[npos++] = a;
            continue;
        }
        char name[64];
        const char *eq = strchr(a, '='), *v = eq ? eq + 1 : NULL;
        snprintf(name, sizeof name, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        if (!strcmp(name, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(name, "--dry-run")) {
            o.dry_run = 1;
            continue;
        }
        int known = !strcmp(name, "--out-shard-size") || !strcmp(name, "--random-seed") ||
                    !strcmp(name, "--intermediate-dir") || !strcmp(name, "--threads") ||
                    !strcmp(name, "--report");
        if (!known) {
            fprintf(stderr, "fusion_bench mergekit: error: unknown option %s (see --help)\n", name);
            return 2;
        }
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "fusion_bench mergekit: error: %s needs a value\n", name);
                return 2;
            }
            v = argv[++i];
        }
        char *end;
        if (!strcmp(name, "--out-shard-size") && parse_size(v, &o.max_shard_bytes)) {
            fprintf(stderr, "fusion_bench mergekit: error: --out-shard-size '%s' is not a size\n",
                    v);
            return 2;
        } else if (!strcmp(name, "--random-seed")) {
            errno = 0;
            o.random_seed = strtoull(v, &end, 10);
            if (*end || errno || !*v || *v == '-') {
                fprintf(stderr,
                        "fusion_bench mergekit: error: --random-seed '%s' is not a "
                        "non-negative integer\n",
                        v);
                return 2;
            }
        } else if (!strcmp(name, "--intermediate-dir")) {
            o.intermediate_dir = v;
        } else if (!strcmp(name, "--report")) {
            report = v;
        } else if (!strcmp(name, "--threads")) {
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 4096) {
                fprintf(stderr, "fusion_bench mergekit: error: --threads '%s' is not a count\n", v);
                return 2;
            }
            fb_set_num_threads((int)n);
        }
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    double t0 = seconds_now();
    o.report_path = report;
    fb_status st = fb_mergekit_run(pos[0], pos[1], &o);
    if (!st && report) st = write_report(report, seconds_now() - t0);
    if (st) {
        fprintf(stderr, "fusion_bench mergekit: error: %s\n", fb_last_error());
        return st == FB_ERR_CONFIG || st == FB_ERR_ARG || st == FB_ERR_UNSUPPORTED ? 2 : 1;
    }
    printf(o.dry_run ? "%s: valid; nothing written\n" : "wrote %s\n", o.dry_run ? pos[0] : pos[1]);
    return 0;
}

static void extract_usage(FILE *f)
{
    fprintf(
        f, "usage: fusion_bench mergekit-extract-lora --model FT --base-model BASE --out-path OUT\n"
           "                                          [options]\n"
           "\n"
           "Extracts a PEFT LoRA adapter (the SVD of each weight's difference) as\n"
           "mergekit-extract-lora does; docs/mergekit.md.\n"
           "\n"
           "options:\n"
           "  --max-rank N              largest rank of a module (default 128)\n"
           "  --sv-epsilon E            drop singular values at most E (default 0: none)\n"
           "  -i, --include-regex RE    only modules whose name RE matches (repeatable)\n"
           "  -e, --exclude-regex RE    leave out modules RE matches (repeatable)\n"
           "  --save-module NAME        save this module whole (repeatable)\n"
           "  --embed-lora              decompose the embeddings too (default: saved whole)\n"
           "  --no-distribute-scale     A = S Vt, B = U (default: sqrt(S) on both)\n"
           "  --skip-undecomposable     leave norms and convolutions out (default: saved whole)\n"
           "  --threads N               worker threads\n");
}

int fb_mergekit_extract_main(int argc, char **argv)
{
    const char *model = NULL, *base = NULL, *out = NULL;
    const char **inc = calloc((size_t)argc + 1, sizeof *inc);
    const char **exc = calloc((size_t)argc + 1, sizeof *exc);
    const char **save = calloc((size_t)argc + 1, sizeof *save);
    int ni = 0, ne = 0, ns = 0, rc = 0;
    fb_lora_extract_options o = {0};
    if (!inc || !exc || !save) rc = 1;
    for (int i = 0; i < argc && !rc; i++) {
        const char *a = argv[i];
        char name[64];
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL, *v = eq ? eq + 1 : NULL;
        snprintf(name, sizeof name, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        if (!strcmp(name, "--help")) {
            extract_usage(stdout);
            rc = -1;
            break;
        }
        if (!strcmp(name, "--embed-lora"))
            o.embed_lora = 1;
        else if (!strcmp(name, "--no-embed-lora"))
            o.embed_lora = 0;
        else if (!strcmp(name, "--distribute-scale"))
            o.no_distribute_scale = 0;
        else if (!strcmp(name, "--no-distribute-scale"))
            o.no_distribute_scale = 1;
        else if (!strcmp(name, "--skip-undecomposable"))
            o.skip_undecomposable = 1;
        else {
            static const char *const valued[] = {
                "--model",         "--base-model", "--out-path",
                "--max-rank",      "--sv-epsilon", "-i",
                "--include-regex", "-e",           "--exclude-regex",
                "--save-module",   "--threads",    NULL};
            int known = 0;
            for (const char *const *k = valued; *k; k++)
                known |= !strcmp(*k, name);
            if (!known) {
                fprintf(stderr,
                        "fusion_bench mergekit-extract-lora: error: unknown %s '%s' "
                        "(see --help)\n",
                        a[0] == '-' ? "option" : "argument", a);
                rc = 2;
                break;
            }
            if (!v) {
                if (i + 1 >= argc) {
                    fprintf(stderr,
                            "fusion_bench mergekit-extract-lora: error: %s needs a "
                            "value\n",
                            name);
                    rc = 2;
                    break;
                }
                v = argv[++i];
            }
            char *end;
            if (!strcmp(name, "--model"))
                model = v;
            else if (!strcmp(name, "--base-model"))
                base = v;
            else if (!strcmp(name, "--out-path"))
                out = v;
            else if (!strcmp(name, "-i") || !strcmp(name, "--include-regex"))
                inc[ni++] = v;
            else if (!strcmp(name, "-e") || !strcmp(name, "--exclude-regex"))
                exc[ne++] = v;
            else if (!strcmp(name, "--save-module"))
                save[ns++] = v;
            else if (!strcmp(name, "--max-rank")) {
                long r = strtol(v, &end, 10);
                if (*end || r < 1 || r > 1000000) {
                    fprintf(stderr,
                            "fusion_bench mergekit-extract-lora: error: --max-rank '%s' "
                            "is not a positive integer\n",
                            v);
                    rc = 2;
                }
                o.max_rank = (int)r;
            } else if (!strcmp(name, "--sv-epsilon")) {
                o.sv_epsilon = strtod(v, &end);
                if (*end || !(o.sv_epsilon >= 0)) {
                    fprintf(stderr,
                            "fusion_bench mergekit-extract-lora: error: --sv-epsilon '%s' "
                            "is not a number >= 0\n",
                            v);
                    rc = 2;
                }
            } else if (!strcmp(name, "--threads")) {
                long n = strtol(v, &end, 10);
                if (*end || n < 1 || n > 4096) {
                    fprintf(stderr,
                            "fusion_bench mergekit-extract-lora: error: --threads '%s' is "
                            "not a count\n",
                            v);
                    rc = 2;
                } else {
                    fb_set_num_threads((int)n);
                }
            }
        }
    }
    if (!rc && (!model || !base || !out)) {
        extract_usage(stderr);
        rc = 2;
    }
    if (!rc) {
        o.include_regexes = ni ? inc : NULL;
        o.exclude_regexes = ne ? exc : NULL;
        o.save_modules = ns ? save : NULL;
        fb_status st = fb_lora_extract(model, base, out, &o);
        if (st) {
            fprintf(stderr, "fusion_bench mergekit-extract-lora: error: %s\n", fb_last_error());
            rc = st == FB_ERR_CONFIG || st == FB_ERR_ARG || st == FB_ERR_UNSUPPORTED ? 2 : 1;
        } else {
            printf("wrote %s\n", out);
        }
    }
    free(inc);
    free(exc);
    free(save);
    return rc < 0 ? 0 : rc;
}
