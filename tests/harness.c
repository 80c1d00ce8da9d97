/*
 * harness.c: the test runner (see harness.h).
 *
 *     fb_tests --ref DIR --cli PATH --bin DIR [--src DIR] [name-substring ...]
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
    const char *name;
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

void fb_test_register(const char *name, fb_test_fn fn)
{
    if (num_tests < MAX_TESTS) tests[num_tests++] = (test_case){name, fn};
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
    for (int i = 0; i < num_tests; i++) {
        if (!selected(tests[i].name, argc, argv, first)) continue;
        snprintf(tmp_dir, sizeof tmp_dir, "%s/%s", base, tests[i].name);
        char cmd[8300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", tmp_dir, tmp_dir);
        if (system(cmd) != 0) fprintf(stderr, "cannot make %s\n", tmp_dir);
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            tests[i].fn();
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
        if (WIFSIGNALED(status))
            fprintf(stderr, "    killed by signal %d\n", WTERMSIG(status));
        printf("%s %s\n", ok ? "PASS" : "FAIL", tests[i].name);
        fflush(stdout);
        if (ok) {
            passed++;
            snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
            if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmp_dir);
        } else {
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
