/*
 * sweep.c: what fusion_bench -m needs besides running: Hydra's sweep syntax for override
 * values, and the summary of a sweep (a markdown table, JSON, and a PNG plot of the average
 * score against the first swept parameter).
 */
#include "sweep.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-braces"
#include <stb_easy_font.h>
#pragma GCC diagnostic pop
#include <stb_image_write.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/status.h"
#include "io/writer.h"

enum { MAX_VALUES = 10000 };

void fb_sweep_values_free(char **values, int count)
{
    for (int i = 0; values && i < count; i++)
        fb_free(values[i]);
    fb_free(values);
}

static fb_status add_value(char ***values, int *count, int64_t *cap, const char *s, size_t n)
{
    if (*count >= MAX_VALUES)
        return fb_set_error(FB_ERR_CONFIG, "a sweep of more than %d values", MAX_VALUES);
    if (fb_reserve(values, cap, *count + 1, sizeof **values)) return FB_ERR_NOMEM;
    while (n && (*s == ' '))
        s++, n--;
    while (n && s[n - 1] == ' ')
        n--;
    if (!((*values)[*count] = fb_strndup(s, n))) return FB_ERR_NOMEM;
    (*count)++;
    return FB_OK;
}

/* range(start, stop[, step]): start, start + step, ... while before stop. */
static fb_status range_values(const char *key, const char *args, char ***values, int *count,
                              int64_t *cap)
{
    double a[3] = {0, 0, 1};
    int n = 0;
    const char *p = args;
    while (n < 3 && *p && *p != ')') {
        char *end;
        a[n] = strtod(p, &end);
        if (end == p) break;
        n++;
        p = end;
        while (*p == ' ')
            p++;
        if (*p == ',') p++;
    }
    if (n < 2 || *p != ')' || p[1] || a[2] == 0 || !isfinite(a[0]) || !isfinite(a[1]) ||
        !isfinite(a[2]))
        return fb_set_error(FB_ERR_CONFIG,
                            "%s=range(%s: expected range(start, stop[, step]) with a "
                            "step that is not 0",
                            key, args);
    for (int64_t i = 0;; i++) {
        double v = a[0] + (double)i * a[2];
        if (a[2] > 0 ? v >= a[1] - 1e-12 * fabs(a[2]) : v <= a[1] + 1e-12 * fabs(a[2])) break;
        char text[64];
        snprintf(text, sizeof text, "%.12g", v);
        fb_status st = add_value(values, count, cap, text, strlen(text));
        if (st) return st;
    }
    if (!*count) return fb_set_error(FB_ERR_CONFIG, "%s=range(%s gives no value", key, args);
    return FB_OK;
}

fb_status fb_sweep_values(const char *key, const char *text, char ***values, int *count)
{
    *values = NULL;
    *count = 0;
    int64_t cap = 0;
    fb_status st = FB_OK;
    if (!strncmp(text, "range(", 6)) {
        st = range_values(key, text + 6, values, count, &cap);
    } else {
        int depth = 0;
        char quote = 0;
        const char *start = text;
        for (const char *p = text;; p++) {
            if (quote) {
                if (*p == quote) quote = 0;
                if (!*p) break;
                continue;
            }
            if (*p == '\'' || *p == '"')
                quote = *p;
            else if (*p == '[' || *p == '{' || *p == '(')
                depth++;
            else if ((*p == ']' || *p == '}' || *p == ')') && depth)
                depth--;
            else if ((*p == ',' && !depth) || !*p) {
                if (p == start && (*p == ',' || *count || strchr(text, ',')))
                    st = fb_set_error(FB_ERR_CONFIG, "%s=%s: an empty value in the sweep", key,
                                      text);
                if (!st) st = add_value(values, count, &cap, start, (size_t)(p - start));
                if (st || !*p) break;
                start = p + 1;
            }
        }
    }
    if (st) {
        fb_sweep_values_free(*values, *count);
        *values = NULL;
        *count = 0;
    }
    return st;
}

/* ---- the summary ---- */

static void fill(unsigned char *img, int W, int H, int x0, int y0, int x1, int y1,
                 const unsigned char c[3])
{
    for (int y = y0 < 0 ? 0 : y0; y < y1 && y < H; y++)
        for (int x = x0 < 0 ? 0 : x0; x < x1 && x < W; x++)
            memcpy(img + 3 * (y * W + x), c, 3);
}

static void text(unsigned char *img, int W, int H, int x, int y, const char *s,
                 const unsigned char c[3])
{
    static char buf[60000];
    int quads = stb_easy_font_print(0, 0, (char *)s, NULL, buf, sizeof buf);
    for (int q = 0; q < quads; q++) {
        const float *v = (const float *)(buf + q * 4 * 16);
        fill(img, W, H, x + (int)(v[0] * 2), y + (int)(v[1] * 2), x + (int)(v[8] * 2),
             y + (int)(v[9] * 2), c);
    }
}

/* A line from (x0, y0) to (x1, y1), 3 pixels wide. */
static void line(unsigned char *img, int W, int H, int x0, int y0, int x1, int y1,
                 const unsigned char c[3])
{
    int steps = abs(x1 - x0) > abs(y1 - y0) ? abs(x1 - x0) : abs(y1 - y0);
    for (int i = 0; i <= steps; i++) {
        int x = x0 + (steps ? (x1 - x0) * i / steps : 0),
            y = y0 + (steps ? (y1 - y0) * i / steps : 0);
        fill(img, W, H, x - 1, y - 1, x + 2, y + 2, c);
    }
}

/* Average accuracy against the first parameter (its values in sweep order, evenly spaced),
 * one line per combination of the other parameters' values. */
static void plot(const char *path, const fb_sweep_param *params, int np, const fb_sweep_run *runs,
                 int nruns)
{
    if (np < 1) return;
    int right = 60, series = nruns / params[0].count;
    for (int s = 0; s < series && s < 6 && np > 1; s++) { /* room for the legend */
        char label[256] = "";
        for (int k = 1; k < np; k++)
            snprintf(label + strlen(label), sizeof label - strlen(label), "%s%s=%s",
                     k > 1 ? " " : "", params[k].key, runs[s].values[k]);
        int w = 2 * stb_easy_font_width(label) + 70;
        if (w > right) right = w;
    }
    const int left = 80, top = 50, bottom = 60, W = 680 + right, H = 520;
    unsigned char *img = malloc((size_t)(W * H * 3));
    if (!img) return;
    memset(img, 255, (size_t)(W * H * 3));
    static const unsigned char black[3] = {20, 20, 20}, grey[3] = {210, 210, 210};
    static const unsigned char colors[6][3] = {{66, 113, 180}, {230, 140, 40}, {80, 160, 90},
                                               {190, 60, 60},  {130, 90, 170}, {120, 120, 120}};
    char title[256];
    snprintf(title, sizeof title, "Average accuracy (%%) against %s", params[0].key);
    text(img, W, H, 10, 10, title, black);
    const int pw = W - left - right, ph = H - top - bottom, nx = params[0].count;
    for (int p = 0; p <= 100; p += 20) {
        int y = top + ph - ph * p / 100;
        fill(img, W, H, left, y, left + pw, y + 1, grey);
        char lab[8];
        snprintf(lab, sizeof lab, "%d", p);
        text(img, W, H, left - 40, y - 6, lab, black);
    }
    for (int i = 0; i < nx; i++) {
        int x = left + (nx > 1 ? pw * i / (nx - 1) : pw / 2);
        text(img, W, H, x - 10, top + ph + 12, params[0].values[i], black);
    }
    int shown = 0;
    for (int s = 0; s < series && shown < 6; s++, shown++) { /* runs are in row-major order */
        int px = -1, py = -1;
        for (int i = 0; i < nx; i++) {
            const fb_sweep_run *r = &runs[i * series + s];
            if (!r->scored) continue;
            int x = left + (nx > 1 ? pw * i / (nx - 1) : pw / 2);
            int y = top + ph - (int)(ph * r->accuracy);
            if (px >= 0) line(img, W, H, px, py, x, y, colors[shown]);
            fill(img, W, H, x - 4, y - 4, x + 5, y + 5, colors[shown]);
            px = x, py = y;
        }
        char label[256] = "";
        for (int k = 1; k < np; k++)
            snprintf(label + strlen(label), sizeof label - strlen(label), "%s%s=%s",
                     k > 1 ? " " : "", params[k].key, runs[s].values[k]);
        if (np > 1) {
            fill(img, W, H, left + pw + 20, top + 20 * shown + 4, left + pw + 34,
                 top + 20 * shown + 14, colors[shown]);
            text(img, W, H, left + pw + 40, top + 20 * shown, label, black);
        }
    }
    stbi_write_png(path, W, H, 3, img, W * 3);
    free(img);
}

fb_status fb_sweep_summary(const char *dir, const fb_sweep_param *params, int np,
                           const fb_sweep_run *runs, int nruns, int selected,
                           const fb_sweep_run *test)
{
    fb_buf md;
    fb_buf_init(&md);
    fb_buf_printf(&md, "| run |");
    for (int k = 0; k < np; k++)
        fb_buf_printf(&md, " %s |", params[k].key);
    fb_buf_printf(&md, " status | average accuracy (%%) | average loss |\n|---|");
    for (int k = 0; k < np; k++)
        fb_buf_printf(&md, "---|");
    fb_buf_printf(&md, "---|---:|---:|\n");
    cJSON *root = cJSON_CreateObject(), *arr = root ? cJSON_AddArrayToObject(root, "runs") : NULL;
    for (int i = 0; i < nruns; i++) {
        fb_buf_printf(&md, "| %d%s |", i, i == selected ? " (selected)" : "");
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "run", i);
        cJSON *vals = cJSON_AddObjectToObject(o, "overrides");
        for (int k = 0; k < np; k++) {
            fb_buf_printf(&md, " %s |", runs[i].values[k]);
            cJSON_AddStringToObject(vals, params[k].key, runs[i].values[k]);
        }
        cJSON_AddNumberToObject(o, "exit_status", runs[i].status);
        if (runs[i].scored) {
            fb_buf_printf(&md, " %s | %.2f | %.4f |\n", runs[i].status ? "failed" : "ok",
                          100 * runs[i].accuracy, runs[i].loss);
            cJSON_AddNumberToObject(o, "accuracy", runs[i].accuracy);
            cJSON_AddNumberToObject(o, "loss", runs[i].loss);
        } else {
            fb_buf_printf(&md, " %s | | |\n", runs[i].status ? "failed" : "ok");
        }
        cJSON_AddItemToArray(arr, o);
    }
    if (selected >= 0 && test) {
        fb_buf_printf(&md, "\nSelected on the validation split: run %d; on the test split ",
                      selected);
        if (test->scored)
            fb_buf_printf(&md, "it scores %.2f%% average accuracy (loss %.4f).\n",
                          100 * test->accuracy, test->loss);
        else
            fb_buf_printf(&md, "its run failed (exit %d).\n", test->status);
        cJSON *sel = cJSON_AddObjectToObject(root, "selected");
        cJSON_AddNumberToObject(sel, "run", selected);
        if (test->scored) {
            cJSON_AddNumberToObject(sel, "test_accuracy", test->accuracy);
            cJSON_AddNumberToObject(sel, "test_loss", test->loss);
        }
    }
    fputs(md.data ? md.data : "", stdout);
    char path[4200];
    fb_status st = md.failed || !root ? FB_ERR_NOMEM : FB_OK;
    if (!st) {
        snprintf(path, sizeof path, "%s/summary.md", dir);
        st = fb_write_text_atomic(path, md.data);
    }
    char *json = root ? cJSON_Print(root) : NULL;
    if (!st && json) {
        snprintf(path, sizeof path, "%s/summary.json", dir);
        st = fb_write_text_atomic(path, json);
    }
    cJSON_free(json);
    cJSON_Delete(root);
    fb_buf_free(&md);
    int scored = 0;
    for (int i = 0; i < nruns; i++)
        scored |= runs[i].scored;
    if (!st && scored) {
        snprintf(path, sizeof path, "%s/summary.png", dir);
        plot(path, params, np, runs, nruns);
    }
    return st;
}
