/*
 * bench/common.h: what the benchmarks share: a clock, medians, the memory-copy bound, page-cache
 * control and a timed child process. Header-only (each benchmark is one file).
 */
#ifndef FB_BENCH_COMMON_H
#define FB_BENCH_COMMON_H

#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static inline size_t bench_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/* STREAM-like copy of `bytes` (a multiple of 1 MiB) on all OpenMP threads; returns seconds. */
static inline double bench_copy_once(char *dst, const char *src, size_t bytes)
{
    double t0 = bench_now();
    int64_t chunks = (int64_t)(bytes >> 20);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; c++) memcpy(dst + (c << 20), src + (c << 20), 1 << 20);
    return bench_now() - t0;
}

/* Memory copy bandwidth, (bytes read + written) per second: median of `reps` copies of 1 GiB. */
static inline double bench_copy_bandwidth(int reps)
{
    size_t bytes = (size_t)1 << 30;
    char *src = malloc(bytes), *dst = malloc(bytes);
    if (!src || !dst) {
        fprintf(stderr, "bench: out of memory for the copy bound\n");
        exit(1);
    }
    memset(src, 1, bytes);
    memset(dst, 2, bytes);
    double *t = calloc((size_t)reps, sizeof *t);
    for (int r = 0; r < reps; r++) t[r] = bench_copy_once(dst, src, bytes);
    double bw = 2.0 * (double)bytes / bench_median(t, reps);
    free(t);
    free(src);
    free(dst);
    return bw;
}

/* Reads every file once, sequentially, through 8 MiB preads, the files shared among
 * `threads` threads (each file read by one); returns seconds and adds the bytes to *bytes. */
static inline double bench_pread_files_threads(char *const *paths, int n, size_t *bytes,
                                               int threads)
{
    enum { BUF = 8 << 20 };
    size_t total = 0;
    double t0 = bench_now();
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        char *buf = malloc(BUF);
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) {
            int fd = open(paths[i], O_RDONLY);
            if (fd < 0 || !buf) {
                fprintf(stderr, "bench: cannot read %s\n", paths[i]);
                exit(1);
            }
            off_t off = 0;
            ssize_t got;
            while ((got = pread(fd, buf, BUF, off)) > 0) {
                off += got;
                total += (size_t)got;
            }
            close(fd);
        }
        free(buf);
    }
    *bytes += total;
    return bench_now() - t0;
}

/* The same on one thread. */
static inline double bench_pread_files(char *const *paths, int n, size_t *bytes)
{
    return bench_pread_files_threads(paths, n, bytes, 1);
}

/* Writes `bytes` to a new file at path through an 8 MiB buffer and fsyncs it; returns
 * seconds (the file is left for the caller to remove). */
static inline double bench_write_file(const char *path, size_t bytes)
{
    enum { BUF = 8 << 20 };
    char *buf = malloc(BUF);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!buf || fd < 0) {
        fprintf(stderr, "bench: cannot write %s\n", path);
        exit(1);
    }
    memset(buf, 0x3c, BUF);
    double t0 = bench_now();
    for (size_t off = 0; off < bytes; off += BUF) {
        size_t n = bytes - off < BUF ? bytes - off : BUF;
        if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n) {
            fprintf(stderr, "bench: cannot write %s\n", path);
            exit(1);
        }
    }
    fsync(fd);
    double t = bench_now() - t0;
    close(fd);
    free(buf);
    return t;
}

/* Drops the files' pages from the page cache (clean pages only; no privileges needed), so the
 * next read comes from the disk. */
static inline void bench_evict_files(char *const *paths, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = open(paths[i], O_RDONLY);
        if (fd < 0) continue;
        fdatasync(fd);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        close(fd);
    }
}

/* Starts argv with stdout to /dev/null, or stdout and stderr to `log` when it is not NULL,
 * without waiting; returns posix_spawn's result (0: started, *pid set). */
static inline int bench_spawn_start(char *const *argv, const char *log, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (log) {
        posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
    } else {
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    }
    int rc = posix_spawn(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc;
}

/* Runs argv as bench_spawn_start does and waits: returns wall seconds and sets *code to its
 * exit status (-1 when it could not start or a signal ended it, as the out-of-memory killer
 * does). */
static inline double bench_spawn_status(char *const *argv, const char *log, int *code)
{
    pid_t pid;
    int status;
    double t0 = bench_now();
    *code = -1;
    if (bench_spawn_start(argv, log, &pid) == 0 && waitpid(pid, &status, 0) == pid &&
        WIFEXITED(status))
        *code = WEXITSTATUS(status);
    return bench_now() - t0;
}

/* The same, exiting when the command fails. */
static inline double bench_spawn(char *const *argv)
{
    int code;
    double t = bench_spawn_status(argv, NULL, &code);
    if (code != 0) {
        fprintf(stderr, "bench: %s failed\n", argv[0]);
        exit(1);
    }
    return t;
}

/* A number from the fusion_bench JSON report ("key": value on its own line), or -1. */
static inline double bench_report_number(const char *report, const char *key)
{
    FILE *f = fopen(report, "r");
    char line[512], pat[128];
    double v = -1;
    snprintf(pat, sizeof pat, " \"%s\": %%lf", key);
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, pat, &v) == 1) break;
    if (f) fclose(f);
    return v;
}

/* Uniform in [-scale/2, scale/2) from a 64-bit LCG (Knuth's MMIX constants): the benchmarks'
 * random weights and images, the same on every machine. */
static inline float bench_rnd(uint64_t *state, float scale)
{
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return ((float)((*state >> 40) & 0xffffff) / 16777216.0f - 0.5f) * scale;
}

/* The options the PyTorch-comparison benchmarks share: --reps N, --batch N, --torch SCRIPT. */
static inline void bench_args(int argc, char **argv, int *reps, int64_t *batch,
                              const char **torch_script)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps"))
            *reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            *batch = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--torch"))
            *torch_script = argv[i + 1];
    }
    if (*reps < 1) *reps = 1;
}

/* Runs `/usr/bin/python3 SCRIPT THREADS REPS BATCH` and reads its line "TAG A B" into *a, *b
 * (left 0 when it prints none). */
static inline void bench_torch_pair(const char *script, int threads, int reps, int64_t batch,
                                    const char *tag, double *a, double *b)
{
    char cmd[1024], line[256], pat[64];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s %d %d %lld", script, threads, reps,
             (long long)batch);
    snprintf(pat, sizeof pat, "%s %%lf %%lf", tag);
    *a = *b = 0;
    FILE *py = popen(cmd, "r");
    while (py && fgets(line, sizeof line, py))
        sscanf(line, pat, a, b);
    if (py) pclose(py);
}

#endif
