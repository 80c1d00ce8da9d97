/*
 * alloc.h: the one allocator hook. Every allocation in the library goes through these, so
 * tests can make the Nth allocation fail and check that the error path frees what it took.
 * They set FB_ERR_NOMEM's message themselves; callers just return FB_ERR_NOMEM.
 */
#ifndef FB_CORE_ALLOC_H
#define FB_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *fb_malloc(size_t size);
void *fb_calloc(size_t count, size_t size);
void *fb_realloc(void *ptr, size_t size);
char *fb_strdup(const char *s);
char *fb_strndup(const char *s, size_t n);
void fb_free(void *ptr);

/* Zeroed memory straight from the kernel (mmap), for large tensors: whatever thread asks,
 * it comes without growing a malloc arena (glibc grows a non-main thread's arena by mprotect
 * steps, which made a first in-memory merge from a Python worker thread 3x slower) and goes
 * back to the system when freed (calloc under AddressSanitizer, so its checks still see it).
 * fb_free_pages takes the size given. */
enum { FB_PAGES_MIN = 1 << 20 };
void *fb_alloc_pages(size_t size);
void fb_free_pages(void *ptr, size_t size);

/* Grows the buffer whose pointer is at `bufp` (a `T **`) to hold at least `need` elements of
 * `size` bytes; `*cap` counts elements and is updated. Returns 0, or -1 (FB_ERR_NOMEM's message
 * set) with the buffer and `*cap` as they were. */
int fb_reserve(void *bufp, int64_t *cap, int64_t need, size_t size);

/* Test hook: the allocation after `n` more succeed fails (n < 0 disables). Process-wide. */
void fb_alloc_fail_after(long n);

#endif
