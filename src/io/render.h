/*
 * render.h: image classification data made rather than read: characters rendered from font
 * files (stb_truetype) and procedural textures, shapes and dot counts. They give the zoo tasks
 * whose inputs differ in kind (docs/tasks.md), as FusionBench's SVHN digits, DTD textures and
 * GTSRB signs differ from each other, from nothing but Debian's fonts.
 *
 * Every image is a pure function of (seed, stream, index): its class is index mod K and every
 * random choice (font, size, position, rotation, grey levels, noise) comes from the
 * counter-based generator under fb_rng_key(seed, stream, index). Arithmetic is IEEE double
 * without library transcendentals (sine and cosine are computed here), so the bytes are the
 * same on every machine and for any thread count. Images are one channel, size x size.
 */
#ifndef FB_IO_RENDER_H
#define FB_IO_RENDER_H
#include <stdint.h>

#include "io/dataset.h"

/* Which way round the grey levels go: either at random per image, or always dark ink on a
 * light background, or light on dark. */
enum { FB_POLARITY_EITHER = 0, FB_POLARITY_DARK = 1, FB_POLARITY_LIGHT = 2 };

typedef struct fb_glyph_options {
    const char *const *fonts; /* TrueType/OpenType files; each image draws one at random */
    int nfonts;
    const char *chars;   /* UTF-8, one class per code point (at most 256), in order */
    int64_t n, size;     /* how many images, of size x size */
    uint64_t seed;       /* with `stream`, keys every random choice */
    const char *stream;  /* e.g. "train" or "test": distinct streams give distinct images */
    double max_rotation; /* degrees either way */
    int clutter;         /* neighbouring characters at both sides, shaded background, noise */
    int polarity;        /* FB_POLARITY_* */
} fb_glyph_options;

/* Renders o->n characters. Class names are the characters themselves. Errors name the font
 * file (unreadable, not a font) and any character a font lacks. */
fb_status fb_glyphs_render(const fb_glyph_options *o, fb_images *out);

/* The procedural kinds: "textures" (10 classes: horizontal, vertical and diagonal stripes,
 * checkerboard, dots, grid, grain, blotches, rings, zigzag), "shapes" (8: circle, ring,
 * triangle, square, pentagon, hexagon, star, cross; any rotation, position and size) and
 * "counts" (6: one to six dots). NULL when kind is none of them. */
const char *const *fb_procedural_classes(const char *kind, int64_t *num_classes);

fb_status fb_procedural_render(const char *kind, int64_t n, int64_t size, uint64_t seed,
                               const char *stream, int polarity, fb_images *out);

#endif
