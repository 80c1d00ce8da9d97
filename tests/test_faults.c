/*
 * test_faults.c: what happens when things go wrong under a merge: the disk fills up, an input
 * file shrinks after it was opened, an allocation fails, the process is killed. Each time: a
 * clear error (or, when killed, the previous output or none), never a half file, inputs
 * untouched.
 */
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "harness.h"

extern char **environ;

/* Writes a pool of n models with one tensor of `elems` f32 each, and pool.yaml. */
static void write_pool(int n, int64_t elems)
{
    char yaml[4096] = "models:\n";
    float *v = malloc((size_t)elems * 4);
    for (int k = 0; k <= n; k++) {
        for (int64_t j = 0; j < elems; j++) v[j] = (float)((j * 7 + k * 13) % 101) / 101.0f;
        fb_model *m;
        fb_model_create(&m);
        int64_t shape[2] = {elems / 64, 64};
        fb_model_add_tensor(m, "layer.weight", FB_F32, 2, shape, v, NULL);
        char name[64];
        snprintf(name, sizeof name, k ? "m%d.safetensors" : "base.safetensors", k);
        fb_model_save(m, fb_test_path(name), NULL);
        fb_model_free(m);
        char line[128];
        snprintf(line, sizeof line, "  %s: %s\n", k ? (char[16]){0} : "_pretrained_", name);
        if (k) snprintf(line, sizeof line, "  m%d: %s\n", k, name);
        strcat(yaml, line);
    }
    free(v);
    fb_test_write_file(fb_test_path("pool.yaml"), yaml, strlen(yaml));
}

static int no_temporaries(void)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | grep -q tmp-", fb_test_tmp());
    return system(cmd) != 0;
}

TEST(full_disk_fails_cleanly_and_keeps_the_old_output)
{
    write_pool(2, 64 * 1024);
    fb_modelpool *pool;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("task_arithmetic", NULL, &m));
    const char *out = fb_test_path("out.safetensors");
    fb_test_write_file(out, "previous", 8);
    /* a file-size limit stands in for a full disk: writes past it fail with EFBIG */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = {100 * 1024, 100 * 1024};
    REQUIRE(setrlimit(RLIMIT_FSIZE, &rl) == 0);
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, out, NULL), FB_ERR_IO, "out.safetensors");
    rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
    setrlimit(RLIMIT_FSIZE, &rl);
    char *kept = fb_test_read_file(out, NULL);
    EXPECT(kept && !strcmp(kept, "previous"));
    free(kept);
    EXPECT(no_temporaries());
    fb_method_free(m);
    fb_modelpool_free(pool);
}

TEST(input_truncated_after_opening_is_an_error_not_a_crash)
{
    write_pool(2, 64 * 1024);
    fb_modelpool *pool;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("simple_average", NULL, &m));
    /* the header was read and checked; now the file loses its tail */
    REQUIRE(truncate(fb_test_path("m2.safetensors"), 4096) == 0);
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("out.safetensors"), NULL),
                 FB_ERR_IO, "m2.safetensors");
    EXPECT(strstr(fb_last_error(), "truncated"));
    EXPECT(!fb_test_exists(fb_test_path("out.safetensors")));
    EXPECT(no_temporaries());
    fb_method_free(m);
    fb_modelpool_free(pool);
}

TEST(allocation_failure_anywhere_in_a_merge_is_an_error)
{
    write_pool(2, 64 * 64);
    int failures = 0, successes = 0;
    for (long n = 0; n < 200; n++) {
        fb_modelpool *pool = NULL;
        fb_method *m = NULL;
        fb_alloc_fail_after(n);
        fb_status st = fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool);
        if (!st) st = fb_method_create("ties_merging", "{threshold: 50}", &m);
        if (!st) st = fb_method_run_to_file(m, pool, NULL, fb_test_path("out.safetensors"), NULL);
        fb_alloc_fail_after(-1);
        if (st == FB_OK) successes++;
        else if (st == FB_ERR_NOMEM) failures++;
        else fb_test_fail(__FILE__, __LINE__, "allocation %ld: %s (%s)", n, fb_status_str(st),
                          fb_last_error());
        fb_method_free(m);
        fb_modelpool_free(pool);
        EXPECT(no_temporaries());
    }
    EXPECT(failures > 20 && successes > 0); /* every early allocation was hit, then it passed */
}

static char *read_inputs(int n, size_t *len);

/* Starts the CLI, sends it sig after 0 to 48 ms; returns 1 if the signal ended it. The CLI
 * starts with the default action for the signals: a suite started in the background (where
 * the shell ignores SIGINT) or under nohup would otherwise pass it an ignored one, which it
 * rightly keeps ignored. */
static int signal_run(const char *const *argv, int sig, int i)
{
    pid_t pid;
    posix_spawnattr_t attr;
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGINT);
    sigaddset(&def, SIGTERM);
    sigaddset(&def, SIGHUP);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setsigdefault(&attr, &def);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid, fb_test_cli, NULL, &attr, (char *const *)argv, environ);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return 0;
    struct timespec ts = {0, (long)(i % 13) * 4000000L};
    nanosleep(&ts, NULL);
    kill(pid, sig);
    int status;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

/* The folder holds exactly the pool's files and out.safetensors (or not even that). */
static int only_inputs_and_output(void)
{
    char cmd[4300];
    snprintf(cmd, sizeof cmd,
             "ls -A '%s' | grep -vxE 'base.safetensors|m[0-9].safetensors|pool.yaml|"
             "out.safetensors|[.]std(out|err)' | grep -q .",
             fb_test_tmp());
    return system(cmd) != 0;
}

TEST(interrupted_merge_leaves_the_previous_output_or_none_and_no_debris)
{
    write_pool(3, 4 * 1024 * 1024); /* 16 MB models: a merge takes tens of milliseconds */
    size_t inputs_len;
    char *inputs = read_inputs(3, &inputs_len); /* to show they are untouched */
    REQUIRE(inputs);
    char pool_arg[4200], save_arg[4200];
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    snprintf(save_arg, sizeof save_arg, "merged_model_save_path=%s", fb_test_path("out.safetensors"));
    const char *argv[] = {fb_test_cli, "method=task_arithmetic", pool_arg, save_arg, NULL};
    /* SIGINT and SIGTERM: the handler removes the temporary; SIGKILL cannot be handled, and
     * what it leaves is removed by the next run into the folder */
    const int sigs[3] = {SIGINT, SIGTERM, SIGKILL};
    for (int s = 0; s < 3; s++) {
        remove(fb_test_path("out.safetensors"));
        int stopped = 0;
        for (int i = 0; i < 25; i++) { /* first with no previous output, then with one */
            if (i == 12) REQUIRE(fb_test_run(argv, NULL, NULL) == 0);
            size_t want_len = 0;
            char *want = fb_test_read_file(fb_test_path("out.safetensors"), &want_len);
            stopped += signal_run(argv, sigs[s], i);
            size_t len;
            char *got = fb_test_read_file(fb_test_path("out.safetensors"), &len);
            if (want && !(got && len == want_len && !memcmp(got, want, len)))
                fb_test_fail(__FILE__, __LINE__, "signal %d at moment %d: the previous output changed",
                             sigs[s], i);
            free(got);
            free(want);
            if (sigs[s] != SIGKILL && !only_inputs_and_output())
                fb_test_fail(__FILE__, __LINE__, "signal %d at moment %d left a temporary", sigs[s], i);
        }
        EXPECT(stopped > 0);
    }
    /* the next run sweeps what the killed runs left, and leaves only its output */
    REQUIRE(fb_test_run(argv, NULL, NULL) == 0);
    EXPECT(only_inputs_and_output());
    size_t len = 0;
    char *again = read_inputs(3, &len);
    REQUIRE(again);
    EXPECT(len == inputs_len && !memcmp(again, inputs, len));
    free(again);
    free(inputs);
}

/* Reads every input of write_pool(n, ...) into one buffer, to show they were not touched. */
static char *read_inputs(int n, size_t *len)
{
    size_t total = 0;
    char *all = NULL;
    for (int k = 0; k <= n; k++) {
        char name[64];
        snprintf(name, sizeof name, k ? "m%d.safetensors" : "base.safetensors", k);
        size_t l;
        char *b = fb_test_read_file(fb_test_path(name), &l);
        if (!b) return NULL;
        all = realloc(all, total + l);
        memcpy(all + total, b, l);
        total += l;
        free(b);
    }
    *len = total;
    return all;
}

TEST(output_that_cannot_be_written_is_an_error_before_any_work)
{
    write_pool(2, 64 * 64);
    size_t before_len, after_len;
    char *before = read_inputs(2, &before_len);
    REQUIRE(before);
    fb_modelpool *pool;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("task_arithmetic", NULL, &m));
    /* a folder that is a file (root ignores permission bits, so not a chmod) */
    fb_test_write_file(fb_test_path("notafolder"), "x", 1);
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("notafolder/out.safetensors"), NULL),
                 FB_ERR_IO, "notafolder");
    /* a folder that does not exist */
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("missing/out.safetensors"), NULL),
                 FB_ERR_IO, "missing");
    /* an input as the output */
    EXPECT_ERROR(fb_method_run_to_file(m, pool, NULL, fb_test_path("m1.safetensors"), NULL),
                 FB_ERR_ARG, "m1.safetensors");
    char *after = read_inputs(2, &after_len);
    EXPECT(after && after_len == before_len && !memcmp(before, after, before_len));
    EXPECT(no_temporaries());
    free(before);
    free(after);
    fb_method_free(m);
    fb_modelpool_free(pool);
}

/* An input deleted after the pool was opened: the open file keeps its data (POSIX), so the
 * merge gives the same bytes as with the file in place. */
TEST(input_deleted_after_opening_still_merges_the_same)
{
    write_pool(2, 64 * 64);
    fb_modelpool *pool;
    fb_method *m;
    REQUIRE_OK(fb_modelpool_load_config(fb_test_path("pool.yaml"), &pool));
    REQUIRE_OK(fb_method_create("task_arithmetic", NULL, &m));
    REQUIRE_OK(fb_method_run_to_file(m, pool, NULL, fb_test_path("want.safetensors"), NULL));
    REQUIRE(unlink(fb_test_path("m2.safetensors")) == 0);
    REQUIRE_OK(fb_method_run_to_file(m, pool, NULL, fb_test_path("got.safetensors"), NULL));
    size_t wl, gl;
    char *want = fb_test_read_file(fb_test_path("want.safetensors"), &wl);
    char *got = fb_test_read_file(fb_test_path("got.safetensors"), &gl);
    EXPECT(want && got && wl == gl && !memcmp(want, got, wl));
    free(want);
    free(got);
    fb_method_free(m);
    fb_modelpool_free(pool);
}

/* Every output (merged model, its masks, the report) aimed at every input (the models and the
 * pool file), through the same path, a hard link and a symlink, and at each other: refused
 * before any work, with every input byte for byte as it was and nothing new in the folder. */
TEST(every_output_colliding_with_an_input_or_another_output_is_refused)
{
    write_pool(2, 64 * 64);
    size_t before_len;
    char *before = read_inputs(2, &before_len);
    REQUIRE(before);
    const char *inputs[] = {"base.safetensors", "m1.safetensors", "m2.safetensors", "pool.yaml"};
    const char *roles[] = {"merged", "masks", "report"};
    char pool_arg[4200];
    snprintf(pool_arg, sizeof pool_arg, "modelpool=%s", fb_test_path("pool.yaml"));
    int cases = 0;
    for (int r = 0; r < 3; r++) {
        for (int i = 0; i < 4; i++) {
            for (int how = 0; how < 3; how++) { /* the input's own path, a hard link, a symlink */
                char target[4200], alias[256], merged[4300], report[4300];
                snprintf(target, sizeof target, "%s", fb_test_path(inputs[i]));
                snprintf(alias, sizeof alias, "%s", inputs[i]);
                if (how) {
                    snprintf(alias, sizeof alias, "alias%d%d%d%s", r, i, how,
                             r == 1 ? ".masks.safetensors" : r == 0 ? ".safetensors" : ".json");
                    int made = how == 1 ? link(target, fb_test_path(alias))
                                        : symlink(target, fb_test_path(alias));
                    REQUIRE(made == 0);
                }
                if (r == 1) { /* the masks go to NAME.masks.safetensors beside NAME.safetensors */
                    if (!how) continue; /* an input's own name is not of that form */
                    char stem[256];
                    snprintf(stem, sizeof stem, "%.*s.safetensors",
                             (int)(strlen(alias) - strlen(".masks.safetensors")), alias);
                    snprintf(merged, sizeof merged, "merged_model_save_path=%s", fb_test_path(stem));
                } else if (r == 0) {
                    snprintf(merged, sizeof merged, "merged_model_save_path=%s", fb_test_path(alias));
                } else {
                    snprintf(merged, sizeof merged, "merged_model_save_path=%s",
                             fb_test_path("out.safetensors"));
                }
                snprintf(report, sizeof report, "report_save_path=%s",
                         r == 2 ? fb_test_path(alias) : fb_test_path("r.json"));
                const char *argv[] = {fb_test_cli, "method=emr_merging", pool_arg, merged, report, NULL};
                char *err = NULL;
                int rc = fb_test_run(argv, NULL, &err);
                if (rc != 2 || !err || !strstr(err, "input file"))
                    fb_test_fail(__FILE__, __LINE__, "%s over %s (%s): exit %d: %s", roles[r],
                                 inputs[i], how == 0 ? "its path" : how == 1 ? "hard link" : "symlink",
                                 rc, err ? err : "");
                free(err);
                cases++;
            }
        }
    }
    /* and outputs aimed at each other */
    const char *pairs[][2] = {
        {"merged_model_save_path=SAME.safetensors", "report_save_path=SAME.safetensors"},
        {"merged_model_save_path=x.safetensors", "report_save_path=x.masks.safetensors"},
    };
    for (int p = 0; p < 2; p++) {
        char a[4300], b[4300];
        snprintf(a, sizeof a, "%.*s%s", (int)(strchr(pairs[p][0], '=') - pairs[p][0] + 1), pairs[p][0],
                 fb_test_path(strchr(pairs[p][0], '=') + 1));
        snprintf(b, sizeof b, "%.*s%s", (int)(strchr(pairs[p][1], '=') - pairs[p][1] + 1), pairs[p][1],
                 fb_test_path(strchr(pairs[p][1], '=') + 1));
        const char *argv[] = {fb_test_cli, "method=emr_merging", pool_arg, a, b, NULL};
        char *err = NULL;
        EXPECT(fb_test_run(argv, NULL, &err) == 2 && err && strstr(err, "are the same path"));
        free(err);
    }
    EXPECT(cases == 32); /* 3 outputs x 4 inputs x 3 ways, but masks under an input's own name */
    size_t after_len;
    char *after = read_inputs(2, &after_len);
    EXPECT(after && after_len == before_len && !memcmp(after, before, before_len));
    char cmd[4400];
    snprintf(cmd, sizeof cmd,
             "ls -A '%s' | grep -vxE 'base.safetensors|m[0-9].safetensors|pool.yaml|alias.*|"
             "[.]std(out|err)' | grep -q .",
             fb_test_tmp());
    EXPECT(system(cmd) != 0); /* nothing written */
    free(before);
    free(after);
}
