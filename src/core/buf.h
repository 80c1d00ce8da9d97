/*
 * buf.h: a growable byte string for building JSON headers, YAML and reports.
 * Appends after a failed allocation are ignored and remembered in `failed`, so a builder can
 * append freely and check once at the end.
 */
#ifndef FB_CORE_BUF_H
#define FB_CORE_BUF_H

#include <stddef.h>

#include "status.h"

typedef struct fb_buf {
    char *data; /* NUL-terminated when len > 0 */
    size_t len, cap;
    int failed;
} fb_buf;

void fb_buf_init(fb_buf *b);
void fb_buf_free(fb_buf *b);
void fb_buf_append(fb_buf *b, const char *s, size_t n);
void fb_buf_puts(fb_buf *b, const char *s);
void fb_buf_printf(fb_buf *b, const char *fmt, ...) FB_PRINTF(2, 3);
/* Appends s as a JSON string literal (quotes and escapes included). */
void fb_buf_json_string(fb_buf *b, const char *s);

#endif
