/*
 * buf.c: growable byte strings (see buf.h).
 */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"

void fb_buf_init(fb_buf *b) { memset(b, 0, sizeof *b); }

void fb_buf_free(fb_buf *b)
{
    fb_free(b->data);
    fb_buf_init(b);
}

static int reserve(fb_buf *b, size_t extra)
{
    if (b->failed) return 0;
    if (b->len + extra + 1 <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = fb_realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return 0;
    }
    b->data = p;
    b->cap = cap;
    return 1;
}

void fb_buf_append(fb_buf *b, const char *s, size_t n)
{
    if (!reserve(b, n)) return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void fb_buf_puts(fb_buf *b, const char *s) { fb_buf_append(b, s, strlen(s)); }

void fb_buf_printf(fb_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void fb_buf_json_string(fb_buf *b, const char *s)
{
    fb_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            fb_buf_append(b, esc, 2);
        } else if (*p < 0x20) {
            fb_buf_printf(b, "\\u%04x", *p);
        } else {
            fb_buf_append(b, (const char *)p, 1);
        }
    }
    fb_buf_append(b, "\"", 1);
}
