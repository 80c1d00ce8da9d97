/*
 * render.c: rendered and procedural image data (see render.h).
 *
 * Each image is drawn in doubles on a size x size canvas: a background grey, a foreground grey
 * at least a fixed contrast away (either polarity), the pattern's coverage in [0, 1] blending
 * the two, then a little noise, rounded to bytes. Coverage comes from a glyph bitmap sampled
 * bilinearly through a rotation (glyphs), from a smooth periodic function (textures) or from
 * 4 x 4 supersampled inside tests (shapes, dots).
 */
#include "render.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/rng.h"
#include "core/status.h"
#include "core/utf8.h"

#define STB_TRUETYPE_IMPLEMENTATION
#define STBTT_STATIC
#define STBTT_malloc(x, u) ((void)(u), fb_malloc(x))
#define STBTT_free(x, u) ((void)(u), fb_free(x))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "stb_truetype.h"
#pragma GCC diagnostic pop

#define FONT_MAX_BYTES (64u << 20)
#define PI 3.14159265358979323846

/* ------------------------------------------------------------------ arithmetic -- */

/* sin(x) from a Taylor polynomial after reduction to [-pi/2, pi/2]: only + - * / and rint,
 * so every machine computes the same double (error below 1e-11). */
static double dsin(double x)
{
    double r = x - 2 * PI * rint(x / (2 * PI));
    if (r > PI / 2) r = PI - r;
    if (r < -PI / 2) r = -PI - r;
    const double r2 = r * r;
    double t = r, s = r;
    for (int k = 1; k <= 8; k++) {
        t = -t * r2 / (double)((2 * k) * (2 * k + 1));
        s += t;
    }
    return s;
}

static double dcos(double x)
{
    return dsin(x + PI / 2);
}

/* The random numbers of one image: draw j of stream key. */
typedef struct draws {
    uint64_t key, j;
} draws;

static double u01(draws *d)
{
    return fb_rng_uniform(d->key, d->j++);
}
static double urange(draws *d, double lo, double hi)
{
    return lo + (hi - lo) * u01(d);
}
static int64_t upick(draws *d, int64_t n)
{
    int64_t k = (int64_t)(u01(d) * (double)n);
    return k < n ? k : n - 1;
}

/* Grey levels: the background and a foreground at least 0.4 away, of the given polarity. */
static void greys(draws *d, int polarity, double *bg, double *fg)
{
    const double c = urange(d, 0.4, 0.9);
    const double lo = urange(d, 0, 1 - c), hi = lo + c;
    const double flip = u01(d);
    if (polarity == FB_POLARITY_LIGHT || (polarity == FB_POLARITY_EITHER && flip < 0.5))
        *bg = lo, *fg = hi;
    else
        *bg = hi, *fg = lo;
}

static uint8_t to_byte(double v)
{
    if (v < 0) v = 0;
    if (v > 1) v = 1;
    return (uint8_t)(v * 255 + 0.5);
}

/* Blends coverage cov[] into bytes: bg + (fg - bg) cov, plus a linear ramp of `shade` across
 * the image in direction (gc, gn), plus noise of amplitude `noise`. */
static void compose(draws *d, const double *cov, int64_t S, double bg, double fg, double noise,
                    double shade, double gc, double gn, uint8_t *px)
{
    for (int64_t p = 0; p < S * S; p++) {
        const double x = (double)(p % S) / (double)S - 0.5, y = (double)(p / S) / (double)S - 0.5;
        const double e = (u01(d) + u01(d) - 1) * noise;
        px[p] = to_byte(bg + (fg - bg) * cov[p] + shade * (gc * x + gn * y) + e);
    }
}

static fb_status alloc_images(int64_t n, int64_t size, int64_t K, fb_images *out)
{
    memset(out, 0, sizeof *out);
    out->n = n;
    out->height = out->width = size;
    out->channels = 1;
    out->num_classes = K;
    out->pixels = fb_malloc((size_t)(n * size * size) + 1);
    out->labels = fb_malloc((size_t)n * sizeof *out->labels + 1);
    out->class_names = fb_calloc((size_t)K, sizeof(char *));
    if (!out->pixels || !out->labels || !out->class_names) return FB_ERR_NOMEM;
    return FB_OK;
}

/* ---------------------------------------------------------------------- glyphs -- */

typedef struct font {
    uint8_t *data;
    stbtt_fontinfo info;
} font;

/* Rasterises code point cp of f so its box is at most box x box pixels and about `height`
 * tall; *bm (fb_malloc'd) holds *w x *h coverage bytes. */
static fb_status raster(const font *f, int32_t cp, double height, double box, uint8_t **bm, int *w,
                        int *h)
{
    float scale = stbtt_ScaleForPixelHeight(&f->info, (float)height);
    int x0, y0, x1, y1;
    stbtt_GetCodepointBitmapBox(&f->info, cp, scale, scale, &x0, &y0, &x1, &y1);
    const int side = (x1 - x0) > (y1 - y0) ? x1 - x0 : y1 - y0;
    if (side > box) {
        scale = (float)(scale * box / side);
        stbtt_GetCodepointBitmapBox(&f->info, cp, scale, scale, &x0, &y0, &x1, &y1);
    }
    *w = x1 - x0 > 0 ? x1 - x0 : 1;
    *h = y1 - y0 > 0 ? y1 - y0 : 1;
    *bm = fb_calloc((size_t)*w * (size_t)*h, 1);
    if (!*bm) return FB_ERR_NOMEM;
    stbtt_MakeCodepointBitmap(&f->info, *bm, *w, *h, *w, scale, scale, cp);
    return FB_OK;
}

/* Coverage of the w x h bitmap at (gx, gy) in its pixel coordinates, bilinear, 0 outside. */
static double bm_at(const uint8_t *bm, int w, int h, double gx, double gy)
{
    gx -= 0.5, gy -= 0.5;
    const double fx = floor(gx), fy = floor(gy);
    const int ix = (int)fx, iy = (int)fy;
    const double ax = gx - fx, ay = gy - fy;
    double v = 0;
    for (int dy = 0; dy < 2; dy++)
        for (int dx = 0; dx < 2; dx++) {
            const int x = ix + dx, y = iy + dy;
            if (x < 0 || y < 0 || x >= w || y >= h) continue;
            v += (dx ? ax : 1 - ax) * (dy ? ay : 1 - ay) * bm[y * w + x] / 255.0;
        }
    return v;
}

/* Adds one glyph's coverage to cov: its centre at (cx, cy), rotated by th radians. */
static void stamp(double *cov, int64_t S, const uint8_t *bm, int w, int h, double cx, double cy,
                  double th)
{
    const double c = dcos(th), s = dsin(th);
    for (int64_t y = 0; y < S; y++)
        for (int64_t x = 0; x < S; x++) {
            const double dx = (double)x + 0.5 - cx, dy = (double)y + 0.5 - cy;
            const double a = bm_at(bm, w, h, c * dx + s * dy + w / 2.0, -s * dx + c * dy + h / 2.0);
            double *p = &cov[y * S + x];
            *p = *p + a - *p * a; /* union of coverages */
        }
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* stb_truetype trusts a font's table directory; a truncated or damaged file is refused here
 * instead: the directory and every table it lists must lie inside the file. (Within a table
 * stb_truetype still trusts the data: fonts are the configuration's own files.) */
static int tables_inside(const uint8_t *data, size_t len, size_t off)
{
    if (off > len || len - off < 12) return 0;
    const size_t n = (size_t)data[off + 4] << 8 | data[off + 5];
    if (n == 0 || (len - off - 12) / 16 < n) return 0;
    for (size_t t = 0; t < n; t++) {
        const uint8_t *rec = data + off + 12 + 16 * t;
        const uint64_t at = be32(rec + 8), size = be32(rec + 12);
        if (at > len || size > len - at) return 0;
    }
    return 1;
}

static void fonts_free(font *f, int n)
{
    for (int i = 0; i < n; i++)
        fb_free(f[i].data);
    fb_free(f);
}

fb_status fb_glyphs_render(const fb_glyph_options *o, fb_images *out)
{
    memset(out, 0, sizeof *out);
    uint32_t cps[256];
    size_t at[257]; /* where each character starts in o->chars */
    int K = 0;
    const size_t nchars = strlen(o->chars);
    for (size_t i = 0; i < nchars;) {
        uint32_t c;
        const int nb = fb_utf8_decode((const unsigned char *)o->chars + i, nchars - i, &c);
        if (!nb) return fb_set_error(FB_ERR_CONFIG, "glyphs: chars is not valid UTF-8");
        if (K == 256) return fb_set_error(FB_ERR_CONFIG, "glyphs: more than 256 chars");
        for (int k = 0; k < K; k++)
            if (cps[k] == c)
                return fb_set_error(FB_ERR_CONFIG, "glyphs: character U+%04X is listed twice",
                                    (unsigned)c);
        at[K] = i;
        cps[K++] = c;
        i += (size_t)nb;
    }
    at[K] = nchars;
    if (K < 2) return fb_set_error(FB_ERR_CONFIG, "glyphs: chars needs at least 2 characters");
    if (o->nfonts < 1) return fb_set_error(FB_ERR_CONFIG, "glyphs: fonts names no font file");
    if (o->n < 0 || o->size < 8 || o->size > 1024)
        return fb_set_error(FB_ERR_CONFIG, "glyphs: %lld images of size %lld are not drawable",
                            (long long)o->n, (long long)o->size);
    font *fonts = fb_calloc((size_t)o->nfonts, sizeof *fonts);
    if (!fonts) return FB_ERR_NOMEM;
    fb_status st = FB_OK;
    for (int i = 0; i < o->nfonts && !st; i++) {
        size_t len;
        if ((st = fb_read_file(o->fonts[i], FONT_MAX_BYTES, &fonts[i].data, &len))) break;
        const int off = len >= 12 ? stbtt_GetFontOffsetForIndex(fonts[i].data, 0) : -1;
        if (off < 0 || !tables_inside(fonts[i].data, len, (size_t)off) ||
            !stbtt_InitFont(&fonts[i].info, fonts[i].data, off)) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: not a TrueType or OpenType font", o->fonts[i]);
            break;
        }
        for (int k = 0; k < K && !st; k++)
            if (!stbtt_FindGlyphIndex(&fonts[i].info, (int)cps[k]))
                st = fb_set_error(FB_ERR_CONFIG, "%s: the font has no glyph for U+%04X",
                                  o->fonts[i], (unsigned)cps[k]);
    }
    if (!st) st = alloc_images(o->n, o->size, K, out);
    for (int k = 0; k < K && !st; k++) {
        char name[8] = {0};
        memcpy(name, o->chars + at[k], at[k + 1] - at[k]);
        if (!(out->class_names[k] = fb_strdup(name))) st = FB_ERR_NOMEM;
    }
    const int64_t S = o->size;
    double *cov = st ? NULL : fb_malloc((size_t)(S * S) * sizeof *cov);
    if (!st && !cov) st = FB_ERR_NOMEM;
    const uint64_t key0 = fb_rng_key(o->seed, o->stream, 0);
    for (int64_t i = 0; i < o->n && !st; i++) {
        draws d = {fb_mix64(key0 + (uint64_t)i * 0x9E3779B97F4A7C15ull), 0};
        const int k = (int)(i % K);
        out->labels[i] = k;
        const font *f = &fonts[upick(&d, o->nfonts)];
        const double height = S * urange(&d, 0.55, 0.85);
        const double th = urange(&d, -1, 1) * o->max_rotation * PI / 180;
        const double cx = S / 2.0 + urange(&d, -0.1, 0.1) * S;
        const double cy = S / 2.0 + urange(&d, -0.1, 0.1) * S;
        double bg, fg;
        greys(&d, o->polarity, &bg, &fg);
        memset(cov, 0, (size_t)(S * S) * sizeof *cov);
        uint8_t *bm;
        int w, h;
        if ((st = raster(f, (int32_t)cps[k], height, 0.8 * S, &bm, &w, &h))) break;
        stamp(cov, S, bm, w, h, cx, cy, th);
        const double gap = urange(&d, 0.05, 0.2) * S;
        const double half = w / 2.0;
        fb_free(bm);
        if (o->clutter)
            for (int side = -1; side <= 1 && !st; side += 2) {
                /* a neighbouring character, partly in view, as in house-number crops */
                const int32_t nb = (int32_t)cps[upick(&d, K)];
                int nw, nh;
                if ((st = raster(f, nb, height, 0.8 * S, &bm, &nw, &nh))) break;
                const double off = half + gap + nw / 2.0;
                stamp(cov, S, bm, nw, nh, cx + side * off * dcos(th), cy + side * off * dsin(th),
                      th);
                fb_free(bm);
            }
        if (st) break;
        double shade = 0, ga = 0;
        if (o->clutter) /* a shaded background: a ramp in a random direction */
            shade = urange(&d, 0, 0.4), ga = urange(&d, 0, 2 * PI);
        compose(&d, cov, S, bg, fg, o->clutter ? 0.12 : 0.04, shade, dcos(ga), dsin(ga),
                out->pixels + i * S * S);
    }
    fb_free(cov);
    fonts_free(fonts, o->nfonts);
    if (st) fb_images_free(out);
    return st;
}

/* ------------------------------------------------------------------ procedural -- */

static const char *const texture_names[] = {"horizontal stripes",
                                            "vertical stripes",
                                            "diagonal stripes",
                                            "checkerboard",
                                            "dots",
                                            "grid",
                                            "grain",
                                            "blotches",
                                            "rings",
                                            "zigzag"};
static const char *const shape_names[] = {"circle",   "ring",    "triangle", "square",
                                          "pentagon", "hexagon", "star",     "cross"};
static const char *const count_names[] = {"one", "two", "three", "four", "five", "six"};

const char *const *fb_procedural_classes(const char *kind, int64_t *num_classes)
{
#define KIND(name, list)                                                                           \
    if (!strcmp(kind, name)) {                                                                     \
        *num_classes = (int64_t)(sizeof list / sizeof *list);                                      \
        return list;                                                                               \
    }
    KIND("textures", texture_names)
    KIND("shapes", shape_names)
    KIND("counts", count_names)
#undef KIND
    *num_classes = 0;
    return NULL;
}

/* A smooth square-ish wave in [0, 1] of phase t (period 1): a clipped sine. */
static double wave(double t, double sharp)
{
    double v = 0.5 + sharp * dsin(2 * PI * t);
    return v < 0 ? 0 : v > 1 ? 1 : v;
}

static void texture(draws *d, int k, int64_t S, double *cov)
{
    const double jit = urange(d, -12, 12) * PI / 180;
    double th = 0;
    if (k == 1) th = PI / 2;
    if (k == 2) th = (u01(d) < 0.5 ? 1 : 3) * PI / 4;
    if (k == 3 || k == 4 || k == 5) th = urange(d, 0, PI / 2);
    th += jit;
    const double c = dcos(th), s = dsin(th);
    const double period = urange(d, 0.14, 0.3) * S, phase = u01(d), phase2 = u01(d);
    const double sharp = urange(d, 0.8, 3);
    const double ox = urange(d, 0.3, 0.7) * S, oy = urange(d, 0.3, 0.7) * S;
    double blob[6][4];
    for (int b = 0; b < 6; b++)
        blob[b][0] = u01(d) * S, blob[b][1] = u01(d) * S, blob[b][2] = urange(d, 0.15, 0.35) * S,
        blob[b][3] = urange(d, 0.4, 1);
    const double amp = urange(d, 0.3, 0.6) * period;
    for (int64_t y = 0; y < S; y++)
        for (int64_t x = 0; x < S; x++) {
            const double px = (double)x + 0.5 - ox, py = (double)y + 0.5 - oy;
            const double u = (c * px + s * py) / period, v = (-s * px + c * py) / period;
            double a = 0;
            switch (k) {
            case 0:
            case 1:
            case 2: a = wave(v + phase, sharp); break; /* stripes across direction th */
            case 3: { /* checkerboard: the sign of a product of two waves */
                const double q = dsin(PI * (u + phase)) * dsin(PI * (v + phase2));
                a = 0.5 + sharp * q;
                a = a < 0 ? 0 : a > 1 ? 1 : a;
                break;
            }
            case 4: { /* dots on a lattice */
                const double fu = u + phase - rint(u + phase), fv = v + phase2 - rint(v + phase2);
                a = fu * fu + fv * fv < 0.09 ? 1 : 0;
                break;
            }
            case 5: { /* thin lines both ways */
                const double fu = fabs(u + phase - rint(u + phase));
                const double fv = fabs(v + phase2 - rint(v + phase2));
                a = fu < 0.12 || fv < 0.12 ? 1 : 0;
                break;
            }
            case 6: a = u01(d); break; /* grain */
            case 7:                    /* soft blotches */
                for (int b = 0; b < 6; b++) {
                    const double ddx = (double)x + 0.5 - blob[b][0],
                                 ddy = (double)y + 0.5 - blob[b][1];
                    const double q = 1 - (ddx * ddx + ddy * ddy) / (blob[b][2] * blob[b][2]);
                    if (q > 0) a += blob[b][3] * q * q;
                }
                if (a > 1) a = 1;
                break;
            case 8: a = wave(sqrt(px * px + py * py) / period + phase, sharp); break;
            case 9: { /* zigzag: stripes displaced by a triangle wave along them */
                const double t = u / 1.5 + phase2;
                const double tri = fabs(2 * (t - rint(t)));
                a = wave(v + amp / period * tri * 2 + phase, sharp);
                break;
            }
            }
            cov[y * S + x] = a;
        }
}

/* Crossing-number inside test against a polygon of n vertices (x, y pairs). */
static int in_poly(const double *v, int n, double x, double y)
{
    int in = 0;
    for (int i = 0, j = n - 1; i < n; j = i++) {
        const double xi = v[2 * i], yi = v[2 * i + 1], xj = v[2 * j], yj = v[2 * j + 1];
        if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) in = !in;
    }
    return in;
}

/* Coverage of each pixel of an S x S image by a figure: the fraction of a 4 x 4 grid of
 * sample points inside it, by the figure's own test. The figure lies inside the union of
 * nbox boxes (x0, x1, y0, y1; its test is false outside them, by a margin far above
 * rounding), so a pixel whose samples all miss every box is 0 without testing them: the same
 * bytes, in a third of the time for shapes. */
static void coverage(int64_t S, double *cov, int (*inside)(const void *, double, double),
                     const void *fig, const double (*box)[4], int nbox)
{
    for (int64_t y = 0; y < S; y++)
        for (int64_t x = 0; x < S; x++) {
            const double lo_x = (double)x + 0.125, hi_x = (double)x + 0.875;
            const double lo_y = (double)y + 0.125, hi_y = (double)y + 0.875;
            int near = 0;
            for (int b = 0; b < nbox && !near; b++)
                near = hi_x >= box[b][0] && lo_x <= box[b][1] && hi_y >= box[b][2] &&
                       lo_y <= box[b][3];
            if (!near) {
                cov[y * S + x] = 0.0;
                continue;
            }
            int hits = 0;
            for (int sy = 0; sy < 4; sy++)
                for (int sx = 0; sx < 4; sx++)
                    hits += inside(fig, (double)x + (sx + 0.5) / 4, (double)y + (sy + 0.5) / 4);
            cov[y * S + x] = hits / 16.0;
        }
}

/* shape k: 0 disc, 1 ring (radius inner to R), else polygon v of n vertices */
typedef struct shape_geom {
    int k, n;
    const double *v;
    double cx, cy, R, inner;
} shape_geom;

static int in_shape(const void *fig, double px, double py)
{
    const shape_geom *g = fig;
    const double r2 = (px - g->cx) * (px - g->cx) + (py - g->cy) * (py - g->cy);
    if (g->k == 0) return r2 < g->R * g->R;
    if (g->k == 1) return r2 < g->R * g->R && r2 > g->inner * g->inner;
    return in_poly(g->v, g->n, px, py);
}

typedef struct dot_geom {
    int n;
    double r;
    const double (*p)[2];
} dot_geom;

static int in_dots(const void *fig, double px, double py)
{
    const dot_geom *g = fig;
    for (int i = 0; i < g->n; i++) {
        const double dx = px - g->p[i][0], dy = py - g->p[i][1];
        if (dx * dx + dy * dy < g->r * g->r) return 1;
    }
    return 0;
}

static void shape(draws *d, int k, int64_t S, double *cov)
{
    const double R = urange(d, 0.25, 0.42) * S;
    const double cx = urange(d, R + 1, S - R - 1), cy = urange(d, R + 1, S - R - 1);
    const double th = urange(d, 0, 2 * PI);
    double v[24];
    int n = 0;
    if (k >= 2 && k <= 5) { /* regular polygons of 3 to 6 sides */
        n = k + 1;
        for (int i = 0; i < n; i++)
            v[2 * i] = cx + R * dcos(th + 2 * PI * i / n),
                  v[2 * i + 1] = cy + R * dsin(th + 2 * PI * i / n);
    } else if (k == 6) { /* five-pointed star */
        n = 10;
        for (int i = 0; i < n; i++) {
            const double r = i % 2 ? 0.42 * R : R;
            v[2 * i] = cx + r * dcos(th + PI * i / 5),
                  v[2 * i + 1] = cy + r * dsin(th + PI * i / 5);
        }
    } else if (k == 7) { /* a plus sign of arm width 0.5 R */
        static const double cross[24] = {-0.25, -1,   0.25, -1,   0.25, -0.25, 1,     -0.25,
                                         1,     0.25, 0.25, 0.25, 0.25, 1,     -0.25, 1,
                                         -0.25, 0.25, -1,   0.25, -1,   -0.25, -0.25, -0.25};
        n = 12;
        const double c = dcos(th), s = dsin(th);
        for (int i = 0; i < n; i++) {
            const double x = cross[2 * i] * R, y = cross[2 * i + 1] * R;
            v[2 * i] = cx + c * x - s * y, v[2 * i + 1] = cy + s * x + c * y;
        }
    }
    const shape_geom g = {k, n, v, cx, cy, R, urange(d, 0.45, 0.7) * R};
    const double m = 1e-3; /* the margin: rounding moves an edge by 1e-14 here */
    double box[1][4] = {{cx - R - m, cx + R + m, cy - R - m, cy + R + m}};
    if (n) { /* a polygon's test is false outside its vertices' box (crossings pair up) */
        box[0][0] = box[0][1] = v[0], box[0][2] = box[0][3] = v[1];
        for (int i = 1; i < n; i++) {
            box[0][0] = v[2 * i] < box[0][0] ? v[2 * i] : box[0][0];
            box[0][1] = v[2 * i] > box[0][1] ? v[2 * i] : box[0][1];
            box[0][2] = v[2 * i + 1] < box[0][2] ? v[2 * i + 1] : box[0][2];
            box[0][3] = v[2 * i + 1] > box[0][3] ? v[2 * i + 1] : box[0][3];
        }
        box[0][0] -= m, box[0][1] += m, box[0][2] -= m, box[0][3] += m;
    }
    coverage(S, cov, in_shape, &g, (const double (*)[4])box, 1);
}

static void dots(draws *d, int k, int64_t S, double *cov)
{
    const int n = k + 1;
    double r = urange(d, 0.06, 0.1) * S, p[6][2];
    for (int tries = 0;; tries++) {
        if (tries % 50 == 49) r *= 0.9; /* crowded: smaller dots */
        int placed = 0;
        for (int i = 0; i < n; i++) {
            p[i][0] = urange(d, r + 1, S - r - 1), p[i][1] = urange(d, r + 1, S - r - 1);
            int ok = 1;
            for (int j = 0; j < i && ok; j++) {
                const double dx = p[i][0] - p[j][0], dy = p[i][1] - p[j][1];
                ok = dx * dx + dy * dy > (2 * r + 2) * (2 * r + 2);
            }
            if (!ok) break;
            placed++;
        }
        if (placed == n) break;
    }
    const dot_geom g = {n, r, p};
    double box[6][4];
    for (int i = 0; i < n; i++)
        box[i][0] = p[i][0] - r - 1e-3, box[i][1] = p[i][0] + r + 1e-3,
        box[i][2] = p[i][1] - r - 1e-3, box[i][3] = p[i][1] + r + 1e-3;
    coverage(S, cov, in_dots, &g, (const double (*)[4])box, n);
}

fb_status fb_procedural_render(const char *kind, int64_t n, int64_t size, uint64_t seed,
                               const char *stream, int polarity, fb_images *out)
{
    memset(out, 0, sizeof *out);
    int64_t K;
    const char *const *names = fb_procedural_classes(kind, &K);
    if (!names)
        return fb_set_error(FB_ERR_CONFIG,
                            "procedural kind '%s' is not one of textures, shapes, counts", kind);
    if (n < 0 || size < 8 || size > 1024)
        return fb_set_error(FB_ERR_CONFIG, "procedural: %lld images of size %lld are not drawable",
                            (long long)n, (long long)size);
    fb_status st = alloc_images(n, size, K, out);
    for (int64_t k = 0; k < K && !st; k++)
        if (!(out->class_names[k] = fb_strdup(names[k]))) st = FB_ERR_NOMEM;
    const int64_t S = size;
    double *cov = st ? NULL : fb_malloc((size_t)(S * S) * sizeof *cov);
    if (!st && !cov) st = FB_ERR_NOMEM;
    const uint64_t key0 = fb_rng_key(seed, stream, 0);
    for (int64_t i = 0; i < n && !st; i++) {
        draws d = {fb_mix64(key0 + (uint64_t)i * 0x9E3779B97F4A7C15ull), 0};
        const int k = (int)(i % K);
        out->labels[i] = k;
        double bg, fg;
        greys(&d, polarity, &bg, &fg);
        if (kind[0] == 't')
            texture(&d, k, S, cov);
        else if (kind[0] == 's')
            shape(&d, k, S, cov);
        else
            dots(&d, k, S, cov);
        compose(&d, cov, S, bg, fg, 0.06, 0, 0, 0, out->pixels + i * S * S);
    }
    fb_free(cov);
    if (st) fb_images_free(out);
    return st;
}
