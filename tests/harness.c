/*
 * harness.c: the test runner (see harness.h).
 *
 *     fb_tests --ref DIR --cli PATH --bin DIR [--src DIR] [name-substring ...]
 *
 * Every test runs once at the SIMD level in use (FB_SIMD, else the CPU's best). The reference
 * suites (the tests of test_methods.c, test_nn.c and test_datadriven.c) then run again under
 * FB_SIMD=scalar and, on an AVX-512 machine, FB_SIMD=avx2, so the paths other CPUs take are
 * tested wherever the suite runs; those runs are named "test [FB_SIMD=level]".
 */
#include "harness.h"

#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

enum { MAX_TESTS = 1024 };
typedef struct test_case {
    const char *name, *file;
    fb_test_fn fn;
} test_case;
static test_case tests[MAX_TESTS];
static int num_tests;
static int failures;
static char tmp_dir[4096];

const char *fb_test_ref_dir = "build/ref";
const char *fb_test_cli = "build/fusion_bench";
const char *fb_test_bin_dir = "build";
const char *fb_test_src_dir = ".";

void fb_test_register(const char *name, const char *file, fb_test_fn fn)
{
    if (num_tests < MAX_TESTS) tests[num_tests++] = (test_case){name, file, fn};
}

/* The suites that compare with a reference: rerun under the other SIMD levels. */
static int is_reference_suite(const char *file)
{
    static const char *const suites[] = {"test_methods.c", "test_nn.c", "test_datadriven.c"};
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++)
        if (!strcmp(base, suites[i])) return 1;
    return 0;
}

void fb_test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    failures++;
}

int fb_test_failed(void) { return failures > 0; }

const char *fb_test_tmp(void) { return tmp_dir; }

const char *fb_test_path(const char *name)
{
    static char ring[8][4096];
    static int next;
    char *p = ring[next++ % 8];
    snprintf(p, 4096, "%s/%s", tmp_dir, name);
    return p;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(((const test_case *)a)->name, ((const test_case *)b)->name);
}

static int selected(const char *name, int argc, char **argv, int first)
{
    if (first >= argc) return 1;
    for (int i = first; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

/* Runs one test in a child process (under FB_SIMD=level when level is not NULL); prints its
 * line and returns 1 if it passed. A failed test's folder is kept for a look. */
static int run_one(const test_case *t, const char *level)
{
    char label[512], base[4096], cmd[8300];
    snprintf(label, sizeof label, level ? "%s [FB_SIMD=%s]" : "%s", t->name, level);
    snprintf(base, sizeof base, "%s/test-tmp", fb_test_bin_dir);
    snprintf(tmp_dir, sizeof tmp_dir, "%s/%s%s%s", base, t->name, level ? "-" : "", level ? level : "");
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", tmp_dir, tmp_dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot make %s\n", tmp_dir);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        /* the environment too, so the CLI runs a test starts take the same level */
        if (level && (setenv("FB_SIMD", level, 1) || fb_simd_set(level))) {
            fprintf(stderr, "    cannot select FB_SIMD=%s: %s\n", level, fb_last_error());
            _exit(1);
        }
        t->fn();
#if defined(__SANITIZE_ADDRESS__)
        /* _exit skips LeakSanitizer's exit-time check: run it for this test now */
        if (__lsan_do_recoverable_leak_check()) fb_test_fail(__FILE__, __LINE__, "leaks");
#endif
        fflush(stdout);
        fflush(stderr);
        _exit(failures ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (WIFSIGNALED(status)) fprintf(stderr, "    killed by signal %d\n", WTERMSIG(status));
    printf("%s %s\n", ok ? "PASS" : "FAIL", label);
    fflush(stdout);
    if (ok) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
        if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmp_dir);
    }
    return ok;
}

int main(int argc, char **argv)
{
    int first = 1;
    for (; first + 1 < argc && strncmp(argv[first], "--", 2) == 0; first += 2) {
        if (!strcmp(argv[first], "--ref")) fb_test_ref_dir = argv[first + 1];
        else if (!strcmp(argv[first], "--cli")) fb_test_cli = argv[first + 1];
        else if (!strcmp(argv[first], "--bin")) fb_test_bin_dir = argv[first + 1];
        else if (!strcmp(argv[first], "--src")) fb_test_src_dir = argv[first + 1];
        else break;
    }
    /* absolute paths: tests write YAML files that refer to these from other folders */
    static char abs_ref[4096], abs_cli[4096], abs_bin[4096], abs_src[4096];
    if (realpath(fb_test_ref_dir, abs_ref)) fb_test_ref_dir = abs_ref;
    if (realpath(fb_test_cli, abs_cli)) fb_test_cli = abs_cli;
    if (realpath(fb_test_bin_dir, abs_bin)) fb_test_bin_dir = abs_bin;
    if (realpath(fb_test_src_dir, abs_src)) fb_test_src_dir = abs_src;
    qsort(tests, (size_t)num_tests, sizeof tests[0], compare_names);
    char base[4096];
    snprintf(base, sizeof base, "%s/test-tmp", fb_test_bin_dir);
    mkdir(base, 0755);
    int passed = 0, failed = 0;
    /* the level in use first, then the other levels the reference suites run under */
    fb_simd current, best = fb_simd_best();
    if (fb_simd_get(&current)) {
        fprintf(stderr, "fb_tests: %s\n", fb_last_error());
        return 2;
    }
    const char *levels[3] = {NULL};
    int num_levels = 1;
    if (current != FB_SIMD_SCALAR) levels[num_levels++] = "scalar";
    if (best == FB_SIMD_AVX512 && current != FB_SIMD_AVX2) levels[num_levels++] = "avx2";
    for (int pass = 0; pass < num_levels; pass++) {
        for (int i = 0; i < num_tests; i++) {
            if (!selected(tests[i].name, argc, argv, first)) continue;
            if (pass && !is_reference_suite(tests[i].file)) continue;
            if (run_one(&tests[i], levels[pass])) passed++;
            else failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
