/*
 * alloc.c: allocation wrappers with failure injection for tests (see alloc.h).
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "status.h"

static atomic_long fail_countdown = -1;

void fb_alloc_fail_after(long n) { atomic_store(&fail_countdown, n); }

/* Returns 1 when this allocation must fail (injected). */
static int injected_failure(void)
{
    long left = atomic_load(&fail_countdown);
    while (left >= 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &left, left - 1)) return left == 0;
    }
    return 0;
}

static void *nomem(size_t size)
{
    fb_set_error(FB_ERR_NOMEM, "out of memory allocating %zu bytes", size);
    return NULL;
}

void *fb_malloc(size_t size)
{
    if (injected_failure()) return nomem(size);
    void *p = malloc(size ? size : 1);
    return p ? p : nomem(size);
}

void *fb_calloc(size_t count, size_t size)
{
    if (size && count > (size_t)-1 / size) return nomem((size_t)-1);
    if (injected_failure()) return nomem(count * size);
    void *p = calloc(count ? count : 1, size ? size : 1);
    return p ? p : nomem(count * size);
}

void *fb_realloc(void *ptr, size_t size)
{
    if (injected_failure()) return nomem(size);
    void *p = realloc(ptr, size ? size : 1);
    return p ? p : nomem(size);
}

int fb_reserve(void *bufp, int64_t *cap, int64_t need, size_t size)
{
    if (need <= *cap) return 0;
    if ((uint64_t)need > (size_t)-1 / size) {
        nomem((size_t)-1);
        return -1;
    }
    void *old;
    memcpy(&old, bufp, sizeof old);
    void *p = fb_realloc(old, (size_t)need * size);
    if (!p) return -1;
    memcpy(bufp, &p, sizeof p);
    *cap = need;
    return 0;
}

char *fb_strndup(const char *s, size_t n)
{
    char *p = fb_malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *fb_strdup(const char *s) { return fb_strndup(s, strlen(s)); }

void fb_free(void *ptr) { free(ptr); }

#if defined(__SANITIZE_ADDRESS__)
/* Under AddressSanitizer, from calloc: mapped pages would have no redzones and escape
 * LeakSanitizer. */
void *fb_alloc_pages(size_t size) { return fb_calloc(1, size); }

void fb_free_pages(void *ptr, size_t size)
{
    (void)size;
    free(ptr);
}
#else
void *fb_alloc_pages(size_t size)
{
    if (injected_failure()) return nomem(size);
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED) return nomem(size);
    madvise(p, size, MADV_HUGEPAGE); /* advisory: fewer page faults where THP is on madvise */
    return p;
}

void fb_free_pages(void *ptr, size_t size)
{
    if (ptr) munmap(ptr, size ? size : 1);
}
#endif
