/*
 * harness.h: the test runner's interface. A test is a function registered with TEST(name);
 * each runs in a child process (a crash fails that test, not the run), and the runner ends
 * with the line "N passed, M failed".
 *
 * EXPECT* record a failure with file:line and go on; REQUIRE* also end the test.
 */
#ifndef FB_TESTS_HARNESS_H
#define FB_TESTS_HARNESS_H

#include <fusionbench.h>
#include <stdio.h>
#include <string.h>

typedef void (*fb_test_fn)(void);
void fb_test_register(const char *name, const char *file, fb_test_fn fn);
void fb_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int fb_test_failed(void);

/* Paths given to the runner. */
extern const char *fb_test_ref_dir; /* PyTorch reference data (make_reference.py) */
extern const char *fb_test_cli;     /* the fusion_bench binary */
extern const char *fb_test_bin_dir; /* the build folder */
extern const char *fb_test_src_dir; /* the source tree (tests/data lives under it) */
/* A fresh empty folder for this test, removed afterwards unless it failed. */
const char *fb_test_tmp(void);
/* tmp/name, in a static buffer ring (valid for a few calls). */
const char *fb_test_path(const char *name);

#define TEST(name)                                                                          \
    static void name(void);                                                                 \
    __attribute__((constructor)) static void register_##name(void)                          \
    {                                                                                       \
        fb_test_register(#name, __FILE__, name);                                            \
    }                                                                                       \
    static void name(void)

#define EXPECT(cond)                                                                        \
    do {                                                                                    \
        if (!(cond)) fb_test_fail(__FILE__, __LINE__, "expected %s", #cond);                \
    } while (0)

#define REQUIRE(cond)                                                                       \
    do {                                                                                    \
        if (!(cond)) {                                                                      \
            fb_test_fail(__FILE__, __LINE__, "required %s", #cond);                         \
            return;                                                                         \
        }                                                                                   \
    } while (0)

#define EXPECT_OK(call)                                                                     \
    do {                                                                                    \
        fb_status st_ = (call);                                                             \
        if (st_ != FB_OK)                                                                   \
            fb_test_fail(__FILE__, __LINE__, "%s returned %s: %s", #call, fb_status_str(st_), \
                         fb_last_error());                                                  \
    } while (0)

#define REQUIRE_OK(call)                                                                    \
    do {                                                                                    \
        fb_status st_ = (call);                                                             \
        if (st_ != FB_OK) {                                                                 \
            fb_test_fail(__FILE__, __LINE__, "%s returned %s: %s", #call, fb_status_str(st_), \
                         fb_last_error());                                                  \
            return;                                                                         \
        }                                                                                   \
    } while (0)

/* The call fails with status `want` and a message containing `substr`. */
#define EXPECT_ERROR(call, want, substr)                                                    \
    do {                                                                                    \
        fb_status st_ = (call);                                                             \
        if (st_ != (want))                                                                  \
            fb_test_fail(__FILE__, __LINE__, "%s returned %s, expected %s (%s)", #call,     \
                         fb_status_str(st_), fb_status_str(want), fb_last_error());         \
        else if (!strstr(fb_last_error(), (substr)))                                        \
            fb_test_fail(__FILE__, __LINE__, "%s: message '%s' lacks '%s'", #call,          \
                         fb_last_error(), (substr));                                        \
    } while (0)

/* Helpers shared by the test files (tests/util.c). */

/* Runs argv (NULL-terminated) with stdout and stderr captured; returns the exit status
 * (-1 if it did not exit normally). out/err may be NULL; else they receive malloc'd text. */
int fb_test_run(const char *const *argv, char **out, char **err);
/* fb_test_cli with args (NULL-terminated, at most 30), stdout discarded, stderr to *err. */
int fb_test_cli_run(const char *const *args, char **err);
/* The command with args must fail with a message containing substr. */
void fb_test_cli_error(const char *file, int line, const char *const *args, const char *substr);
#define EXPECT_CLI_ERROR(...) fb_test_cli_error(__FILE__, __LINE__, __VA_ARGS__) /* (args, substr) */
/* A copy of m (its tensors' bytes, its metadata) without the tensor named drop (NULL: all). */
fb_status fb_test_model_copy(const fb_model *m, const char *drop, fb_model **out);
/* Reads a whole file (malloc'd, NUL-terminated); NULL if it cannot. */
char *fb_test_read_file(const char *path, size_t *len);
int fb_test_write_file(const char *path, const void *data, size_t len);
/* A JSON file parsed (free with cJSON_Delete); NULL, and the test failed, if it cannot be. */
struct cJSON;
struct cJSON *fb_test_read_json(const char *path);
int fb_test_exists(const char *path);
/* Every tensor of a and b: same names, dtypes, shapes; and elements that differ by at most
 * max_ulps units in the last place of the dtype (0: identical bytes). Reports the worst. */
int fb_test_models_match(const fb_model *got, const fb_model *want, int max_ulps);
/* Float tensors agree within rtol times the largest |value| of the expected tensor (plus one
 * rounding step of a half-precision dtype); other tensors are identical. */
int fb_test_models_close(const fb_model *got, const fb_model *want, double rtol);

#endif
