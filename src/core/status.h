/*
 * status.h: setting the thread's last error. Every failing library function sets a one-line
 * message naming the file, tensor or key, and returns the status it set.
 */
#ifndef FB_CORE_STATUS_H
#define FB_CORE_STATUS_H

#include "fusionbench.h"

#if defined(__GNUC__)
#define FB_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FB_PRINTF(a, b)
#endif

/* Sets this thread's last error to the formatted message and returns status. */
fb_status fb_set_error(fb_status status, const char *fmt, ...) FB_PRINTF(2, 3);

/* Prepends "prefix: " to the current message (adds context on the way up); returns status. */
fb_status fb_error_prefix(fb_status status, const char *fmt, ...) FB_PRINTF(2, 3);

void fb_clear_error(void);

/* Length of the message buffer; longer messages are cut. */
#define FB_ERROR_MAX 1024

#endif
