/*
 * status.c: status names and the thread-local last-error message.
 *
 * The message lives in a thread-local buffer, so each thread sees its own errors. Parallel
 * workers never set it directly: they record the error of their chunk and the caller raises
 * the lowest chunk's error after the parallel region (see method/merge.c), so the message is
 * the same for any thread count.
 */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[FB_ERROR_MAX];

const char *fb_status_str(fb_status status)
{
    switch (status) {
    case FB_OK: return "FB_OK";
    case FB_ERR_NOMEM: return "FB_ERR_NOMEM";
    case FB_ERR_IO: return "FB_ERR_IO";
    case FB_ERR_FORMAT: return "FB_ERR_FORMAT";
    case FB_ERR_ARG: return "FB_ERR_ARG";
    case FB_ERR_NOT_FOUND: return "FB_ERR_NOT_FOUND";
    case FB_ERR_MISMATCH: return "FB_ERR_MISMATCH";
    case FB_ERR_CONFIG: return "FB_ERR_CONFIG";
    case FB_ERR_UNSUPPORTED: return "FB_ERR_UNSUPPORTED";
    case FB_ERR_INTERNAL: return "FB_ERR_INTERNAL";
    case FB_ERR_INTERRUPTED: return "FB_ERR_INTERRUPTED";
    }
    return "FB_ERR_UNKNOWN";
}

const char *fb_last_error(void) { return last_error; }

void fb_clear_error(void) { last_error[0] = '\0'; }

/* Messages are one line: newlines from embedded text (file names, YAML) become spaces. */
static void flatten(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
}

fb_status fb_set_error(fb_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    flatten(last_error);
    return status;
}

fb_status fb_error_prefix(fb_status status, const char *fmt, ...)
{
    char prefix[FB_ERROR_MAX], old[FB_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
    flatten(last_error);
    return status;
}
