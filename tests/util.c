/*
 * util.c: helpers the tests share: running a program (or the command with arguments) with its
 * output captured, whole-file reads and writes, copying a model, and comparing two models
 * tensor by tensor in units of the last place.
 */
#include <fcntl.h>
#include <math.h>
#include <spawn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "harness.h"

extern char **environ;

char *fb_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    if (len) *len = (size_t)n;
    return buf;
}

int fb_test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

struct cJSON *fb_test_read_json(const char *path)
{
    char *text = fb_test_read_file(path, NULL);
    cJSON *c = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!c) fb_test_fail(__FILE__, __LINE__, "cannot read JSON from %s", path);
    return c;
}

int fb_test_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int fb_test_run(const char *const *argv, char **out, char **err)
{
    char out_path[4200], err_path[4200];
    snprintf(out_path, sizeof out_path, "%s/.stdout", fb_test_tmp());
    snprintf(err_path, sizeof err_path, "%s/.stderr", fb_test_tmp());
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int status;
    waitpid(pid, &status, 0);
    if (out) *out = fb_test_read_file(out_path, NULL);
    if (err) *err = fb_test_read_file(err_path, NULL);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Distance in units of the last place between two values of a float dtype (as integers on
 * the ordered bit line); 0 for equal, huge for NaN against a number. */
int fb_test_cli_run(const char *const *args, char **err)
{
    const char *argv[32] = {fb_test_cli};
    int n = 1;
    for (; args[n - 1] && n < 31; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    return fb_test_run(argv, NULL, err);
}

void fb_test_cli_error(const char *file, int line, const char *const *args, const char *substr)
{
    char *err = NULL;
    int rc = fb_test_cli_run(args, &err);
    if (rc == 0 || !err || !strstr(err, substr))
        fb_test_fail(file, line, "exit %d, stderr '%s' lacks '%s'", rc, err ? err : "", substr);
    free(err);
}

fb_status fb_test_model_copy(const fb_model *m, const char *drop, fb_model **out)
{
    fb_status st = fb_model_create(out);
    for (int64_t i = 0; i < fb_model_num_tensors(m) && !st; i++) {
        const fb_tensor *t = fb_model_tensor(m, i);
        const void *d;
        if (drop && !strcmp(fb_tensor_name(t), drop)) continue;
        if (!(st = fb_tensor_data(t, &d)))
            st = fb_model_add_tensor(*out, fb_tensor_name(t), fb_tensor_dtype(t), fb_tensor_ndim(t),
                                     fb_tensor_shape(t), d, NULL);
    }
    for (int64_t i = 0; i < fb_model_num_metadata(m) && !st; i++) {
        const char *k, *v;
        fb_model_metadata_at(m, i, &k, &v);
        st = fb_model_set_metadata(*out, k, v);
    }
    return st;
}

static uint64_t ulp_distance(fb_dtype dt, const uint8_t *a, const uint8_t *b)
{
    int64_t x = 0, y = 0;
    switch (dt) {
    case FB_F32: {
        int32_t i, j;
        memcpy(&i, a, 4);
        memcpy(&j, b, 4);
        x = i < 0 ? INT32_MIN - (int64_t)i : i;
        y = j < 0 ? INT32_MIN - (int64_t)j : j;
        break;
    }
    case FB_F16:
    case FB_BF16: {
        int16_t i, j;
        memcpy(&i, a, 2);
        memcpy(&j, b, 2);
        x = i < 0 ? INT16_MIN - (int64_t)i : i;
        y = j < 0 ? INT16_MIN - (int64_t)j : j;
        break;
    }
    case FB_F64: {
        int64_t i, j;
        memcpy(&i, a, 8);
        memcpy(&j, b, 8);
        if (i == j) return 0;
        double p, q;
        memcpy(&p, a, 8);
        memcpy(&q, b, 8);
        return p == q ? 0 : UINT64_MAX;
    }
    default: return memcmp(a, b, fb_dtype_size(dt)) ? UINT64_MAX : 0;
    }
    return (uint64_t)(x > y ? x - y : y - x);
}

/* The start of both model comparisons: as many tensors as expected. */
static int same_count(const fb_model *got, const fb_model *want)
{
    if (fb_model_num_tensors(got) == fb_model_num_tensors(want)) return 1;
    fb_test_fail(__FILE__, __LINE__, "tensor count %lld, expected %lld",
                 (long long)fb_model_num_tensors(got), (long long)fb_model_num_tensors(want));
    return 0;
}

int fb_test_models_match(const fb_model *got, const fb_model *want, int max_ulps)
{
    int ok = 1;
    if (!same_count(got, want)) return 0;
    for (int64_t i = 0; i < fb_model_num_tensors(want); i++) {
        const fb_tensor *w = fb_model_tensor(want, i);
        const fb_tensor *g = fb_model_find(got, fb_tensor_name(w));
        if (!g) {
            fb_test_fail(__FILE__, __LINE__, "tensor '%s' missing", fb_tensor_name(w));
            ok = 0;
            continue;
        }
        if (fb_tensor_dtype(g) != fb_tensor_dtype(w) || fb_tensor_ndim(g) != fb_tensor_ndim(w) ||
            fb_tensor_numel(g) != fb_tensor_numel(w)) {
            fb_test_fail(__FILE__, __LINE__, "tensor '%s': dtype/shape differ (%s vs %s)",
                         fb_tensor_name(w), fb_dtype_name(fb_tensor_dtype(g)),
                         fb_dtype_name(fb_tensor_dtype(w)));
            ok = 0;
            continue;
        }
        for (int d = 0; d < fb_tensor_ndim(w); d++)
            if (fb_tensor_shape(g)[d] != fb_tensor_shape(w)[d]) {
                fb_test_fail(__FILE__, __LINE__, "tensor '%s': dimension %d differs",
                             fb_tensor_name(w), d);
                ok = 0;
            }
        const void *pg, *pw;
        if (fb_tensor_data(g, &pg) || fb_tensor_data(w, &pw)) {
            fb_test_fail(__FILE__, __LINE__, "tensor '%s': %s", fb_tensor_name(w), fb_last_error());
            return 0;
        }
        size_t es = fb_dtype_size(fb_tensor_dtype(w));
        uint64_t worst = 0;
        int64_t worst_at = -1;
        for (int64_t j = 0; j < fb_tensor_numel(w); j++) {
            uint64_t u = ulp_distance(fb_tensor_dtype(w), (const uint8_t *)pg + (size_t)j * es,
                                      (const uint8_t *)pw + (size_t)j * es);
            if (u > worst) {
                worst = u;
                worst_at = j;
            }
        }
        if (worst > (uint64_t)max_ulps) {
            fb_test_fail(__FILE__, __LINE__, "tensor '%s' (%s): element %lld is %llu ulp off",
                         fb_tensor_name(w), fb_dtype_name(fb_tensor_dtype(w)), (long long)worst_at,
                         (unsigned long long)worst);
            ok = 0;
        }
    }
    return ok;
}

int fb_test_models_close(const fb_model *got, const fb_model *want, double rtol)
{
    int ok = 1;
    if (!same_count(got, want)) return 0;
    for (int64_t i = 0; i < fb_model_num_tensors(want); i++) {
        const fb_tensor *w = fb_model_tensor(want, i);
        const fb_tensor *g = fb_model_find(got, fb_tensor_name(w));
        if (!g || fb_tensor_numel(g) != fb_tensor_numel(w) ||
            fb_tensor_dtype(g) != fb_tensor_dtype(w)) {
            fb_test_fail(__FILE__, __LINE__, "tensor '%s' missing or of another shape/dtype",
                         fb_tensor_name(w));
            ok = 0;
            continue;
        }
        if (!fb_dtype_is_float(fb_tensor_dtype(w))) {
            const void *pg, *pw;
            if (fb_tensor_data(g, &pg) || fb_tensor_data(w, &pw) ||
                memcmp(pg, pw, fb_tensor_nbytes(w)) != 0) {
                fb_test_fail(__FILE__, __LINE__, "tensor '%s' (%s) differs", fb_tensor_name(w),
                             fb_dtype_name(fb_tensor_dtype(w)));
                ok = 0;
            }
            continue;
        }
        int64_t n = fb_tensor_numel(w);
        float *a = malloc((size_t)(n ? n : 1) * 4), *b = malloc((size_t)(n ? n : 1) * 4);
        fb_tensor_to_f32(g, a);
        fb_tensor_to_f32(w, b);
        double scale = 0, worst = 0;
        int64_t at = -1;
        for (int64_t j = 0; j < n; j++)
            scale = fabs(b[j]) > scale ? fabs(b[j]) : scale;
        for (int64_t j = 0; j < n; j++) {
            double e = fabs((double)a[j] - (double)b[j]);
            if (e > worst) {
                worst = e;
                at = j;
            }
        }
        /* half-precision outputs round to their own grid: allow one step of it */
        double eps = fb_tensor_dtype(w) == FB_BF16  ? 0x1p-8
                     : fb_tensor_dtype(w) == FB_F16 ? 0x1p-11
                                                    : 0;
        if (worst > (rtol + eps) * scale) {
            fb_test_fail(__FILE__, __LINE__,
                         "tensor '%s': element %lld off by %.3g (%.3g of max |value| %.3g)",
                         fb_tensor_name(w), (long long)at, worst, scale ? worst / scale : 0, scale);
            ok = 0;
        }
        free(a);
        free(b);
    }
    return ok;
}
