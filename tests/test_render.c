/*
 * test_render.c: drawn data sources (io/render.h): the same bytes on every machine and run,
 * classes as labelled (dots counted independently, by connected components), and clear errors
 * for fonts that are missing, not fonts, or lack a character.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "core/alloc.h"

#include "harness.h"
#include "io/render.h"
#include "pool/tasks.h"

#define FONT_DIR "/usr/share/fonts/truetype/dejavu/"

static const char *const fonts[] = {FONT_DIR "DejaVuSans.ttf", FONT_DIR "DejaVuSerif-Bold.ttf"};

static int have_fonts(void)
{
    for (int i = 0; i < 2; i++)
        if (access(fonts[i], R_OK)) {
            fb_test_fail(__FILE__, __LINE__, "%s is missing (make test-deps installs it)",
                         fonts[i]);
            return 0;
        }
    return 1;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

static size_t bytes_of(const fb_images *d)
{
    return (size_t)(d->n * d->height * d->width);
}

TEST(drawn_images_are_the_same_bytes_on_every_machine_and_differ_by_stream)
{
    if (!have_fonts()) return;
    fb_glyph_options o = {.fonts = fonts,
                          .nfonts = 2,
                          .chars = "0123456789+\xe2\x88\x91", /* ... and U+2211 (n-ary sum) */
                          .n = 60,
                          .size = 28,
                          .seed = 7,
                          .stream = "train",
                          .max_rotation = 10,
                          .clutter = 1};
    fb_images a, b, c;
    REQUIRE_OK(fb_glyphs_render(&o, &a));
    REQUIRE_OK(fb_glyphs_render(&o, &b));
    o.stream = "test";
    REQUIRE_OK(fb_glyphs_render(&o, &c));
    EXPECT(a.n == 60 && a.height == 28 && a.width == 28 && a.channels == 1 && a.num_classes == 12);
    EXPECT(!memcmp(a.pixels, b.pixels, bytes_of(&a)));
    EXPECT(memcmp(a.pixels, c.pixels, bytes_of(&a)));
    for (int64_t i = 0; i < a.n; i++)
        EXPECT(a.labels[i] == i % 12);
    EXPECT(!strcmp(a.class_names[0], "0") && !strcmp(a.class_names[10], "+") &&
           !strcmp(a.class_names[11], "\xe2\x88\x91"));
    /* every image has ink: a foreground at least 0.4 x 255 from its background, less noise */
    for (int64_t i = 0; i < a.n; i++) {
        int lo = 255, hi = 0;
        for (int p = 0; p < 28 * 28; p++) {
            const int v = a.pixels[i * 784 + p];
            lo = v < lo ? v : lo, hi = v > hi ? v : hi;
        }
        EXPECT(hi - lo > 70);
    }
    /* Pinned: drawing uses only IEEE + - * / sqrt and stb_truetype built with this project's
     * flags, so an AVX-512 and an AVX2-only machine must draw the same bytes. */
    const uint64_t glyph_hash = fnv1a(a.pixels, bytes_of(&a));
    fb_images_free(&a);
    fb_images_free(&b);
    fb_images_free(&c);
    uint64_t h[3];
    const char *kinds[3] = {"textures", "shapes", "counts"};
    for (int k = 0; k < 3; k++) {
        REQUIRE_OK(fb_procedural_render(kinds[k], 40, 28, 7, "train", FB_POLARITY_EITHER, &a));
        h[k] = fnv1a(a.pixels, bytes_of(&a));
        fb_images_free(&a);
    }
    EXPECT(glyph_hash == 0xaf2b150cd2009024ull);
    EXPECT(h[0] == 0xa5a305916712dbeaull);
    EXPECT(h[1] == 0x9da66c5ff7431b53ull);
    EXPECT(h[2] == 0xc42ce1c4182b97beull);
}

/* Connected components (8-neighbour) of the pixels far from the image's median grey. */
static int blobs(const uint8_t *px, int S)
{
    int hist[256] = {0}, median = 0;
    for (int p = 0; p < S * S; p++)
        hist[px[p]]++;
    for (int acc = 0; acc + hist[median] <= S * S / 2; median++)
        acc += hist[median];
    uint8_t ink[64 * 64];
    int stack[64 * 64], n = 0;
    for (int p = 0; p < S * S; p++)
        ink[p] = px[p] - median > 50 || median - px[p] > 50;
    for (int p = 0; p < S * S; p++) {
        if (!ink[p]) continue;
        n++;
        int top = 0;
        stack[top++] = p;
        ink[p] = 0;
        while (top) {
            const int q = stack[--top], y = q / S, x = q % S;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    const int yy = y + dy, xx = x + dx;
                    if (yy < 0 || xx < 0 || yy >= S || xx >= S || !ink[yy * S + xx]) continue;
                    ink[yy * S + xx] = 0;
                    stack[top++] = yy * S + xx;
                }
        }
    }
    return n;
}

TEST(counts_show_as_many_dots_as_their_label_says)
{
    fb_images d;
    REQUIRE_OK(fb_procedural_render("counts", 600, 28, 11, "train", FB_POLARITY_EITHER, &d));
    EXPECT(d.num_classes == 6 && !strcmp(d.class_names[5], "six"));
    int wrong = 0;
    for (int64_t i = 0; i < d.n; i++)
        wrong += blobs(d.pixels + i * 784, 28) != d.labels[i] + 1;
    EXPECT(wrong == 0);
    fb_images_free(&d);
    int64_t K;
    EXPECT(fb_procedural_classes("shapes", &K) && K == 8);
    EXPECT(fb_procedural_classes("textures", &K) && K == 10);
    EXPECT(!fb_procedural_classes("clouds", &K));
    EXPECT_ERROR(fb_procedural_render("clouds", 1, 28, 0, "train", 0, &d), FB_ERR_CONFIG,
                 "procedural kind 'clouds'");
}

TEST(glyph_errors_name_the_font_and_the_character)
{
    if (!have_fonts()) return;
    fb_images d;
    fb_glyph_options o = {
        .fonts = fonts, .nfonts = 2, .chars = "A\xe4\xb8\xad", .n = 4, .size = 28};
    o.stream = "train";
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_CONFIG,
                 "DejaVuSans.ttf: the font has no glyph for U+4E2D");
    o.chars = "AA";
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_CONFIG, "U+0041 is listed twice");
    o.chars = "A\xff";
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_CONFIG, "not valid UTF-8");
    FILE *f = fopen(fb_test_path("notafont.ttf"), "w");
    fputs("this is plain text, not a font file at all\n", f);
    fclose(f);
    const char *bad[] = {fb_test_path("notafont.ttf")};
    o.fonts = bad, o.nfonts = 1, o.chars = "AB";
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_FORMAT, "notafont.ttf: not a TrueType");
    /* a real font cut short: its table directory points past the end */
    uint8_t *ttf;
    size_t len;
    REQUIRE_OK(fb_read_file(fonts[0], 1 << 26, &ttf, &len));
    f = fopen(fb_test_path("cut.ttf"), "wb");
    fwrite(ttf, 1, len / 2, f);
    fclose(f);
    fb_free(ttf);
    const char *cut[] = {fb_test_path("cut.ttf")};
    o.fonts = cut;
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_FORMAT, "cut.ttf: not a TrueType");
    const char *gone[] = {"/nonexistent/font.ttf"};
    o.fonts = gone;
    EXPECT_ERROR(fb_glyphs_render(&o, &d), FB_ERR_IO, "/nonexistent/font.ttf");
}

static fb_status load_ex(const char *sources, int64_t channels, const char *storage,
                         unsigned splits, fb_taskset *ts)
{
    char yaml[4096];
    snprintf(yaml, sizeof yaml,
             "image_size: 28\nchannels: %lld\nmean: [0.5]\nstd: [0.25]\nseed: 1\n"
             "storage: %s\nsources:\n%s"
             "tasks:\n  t:\n    source: s\n    train: 100\n    val: 20\n    test: 50\n",
             (long long)channels, storage, sources);
    fb_config *c;
    fb_status st = fb_config_parse(yaml, &c);
    if (st) return st;
    st = fb_taskset_load(c, splits, NULL, ts);
    fb_config_free(c);
    return st;
}

static fb_status load(const char *sources, int64_t channels, fb_taskset *ts)
{
    return load_ex(sources, channels, "bytes", 7, ts);
}

TEST(taskpools_draw_sources_with_test_pools_of_their_own)
{
    if (!have_fonts()) return;
    fb_taskset ts;
    REQUIRE_OK(load("  s:\n    type: glyphs\n    fonts: [" FONT_DIR "DejaVuSans.ttf]\n"
                    "    chars: ABC\n    seed: 2\n    train: 150\n    test: 60\n",
                    1, &ts));
    const fb_task *t = &ts.tasks[0];
    EXPECT(t->num_classes == 3 && !strcmp(t->class_names[2], "C"));
    EXPECT(t->n[0] == 100 && t->n[1] == 20 && t->n[2] == 50);
    /* the test split is drawn from its own stream: no test image is a training image */
    int shared = 0;
    for (int64_t i = 0; i < t->n[2]; i++)
        for (int64_t j = 0; j < t->n[0]; j++)
            shared +=
                !memcmp(t->pixels[2] + t->idx[2][i] * 784, t->pixels[0] + t->idx[0][j] * 784, 784);
    EXPECT(shared == 0);
    /* an evaluation (test split only) does not draw the training pool, and sees the same
     * test images as a load of every split */
    const char *abc = "  s:\n    type: glyphs\n    fonts: [" FONT_DIR "DejaVuSans.ttf]\n"
                      "    chars: ABC\n    seed: 2\n    train: 150\n    test: 60\n";
    fb_taskset all, only;
    REQUIRE_OK(load_ex(abc, 1, "float", 7, &all));
    REQUIRE_OK(load_ex(abc, 1, "float", FB_SPLIT_BIT(FB_SPLIT_TEST), &only));
    EXPECT(only.tasks[0].n[0] == 0 && only.tasks[0].n[2] == 50);
    EXPECT(!strcmp(only.tasks[0].class_names[1], "B"));
    EXPECT(!memcmp(all.tasks[0].x[2], only.tasks[0].x[2], 50 * 784 * sizeof(float)));
    EXPECT(!memcmp(all.tasks[0].y[2], only.tasks[0].y[2], 50 * sizeof(int32_t)));
    fb_taskset_free(&all);
    fb_taskset_free(&only);
    fb_taskset_free(&ts);
    REQUIRE_OK(load("  s:\n    type: procedural\n    kind: shapes\n    train: 200\n", 1, &ts));
    EXPECT(ts.tasks[0].num_classes == 8 && !strcmp(ts.tasks[0].class_names[7], "cross"));
    fb_taskset_free(&ts);
    const char *bad[][2] = {
        {"  s:\n    type: procedural\n    kind: shapes\n    train: 200\n", "have one channel"},
        {"  s:\n    type: procedural\n    train: 200\n", "sources.s needs a kind"},
        {"  s:\n    type: procedural\n    kind: shapes\n    test: 20\n", "draws no training"},
        {"  s:\n    type: glyphs\n    chars: AB\n    train: 200\n", "needs fonts"},
        {"  s:\n    type: glyphs\n    fonts: [/nonexistent/x.ttf]\n    chars: AB\n    train: 200\n"
         "    package: fonts-dejavu-core\n",
         "apt-get install fonts-dejavu-core"},
        {"  s:\n    type: glyphs\n    fonts: [" FONT_DIR "DejaVuSans.ttf]\n    chars: AB\n"
         "    train: 200\n    max_rotation: 400\n",
         "max_rotation must be 0..180"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        EXPECT_ERROR(load(bad[i][0], i == 0 ? 3 : 1, &ts), i == 4 ? FB_ERR_IO : FB_ERR_CONFIG,
                     bad[i][1]);
}
