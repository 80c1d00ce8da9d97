/*
 * source.h: a read-only input file that tensors of lazy models point into. Reference counted
 * (a sharded model's tensors share one source per shard). Bytes are read with pread into the
 * caller's buffers (the merge driver's way: bounded memory, no page-table growth) or mapped on
 * demand for callers that want a pointer (fb_tensor_data). The file is never written.
 */
#ifndef FB_CORE_SOURCE_H
#define FB_CORE_SOURCE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "fusionbench.h"

typedef struct fb_source {
    char *path;
    int fd;
    uint64_t size;
    dev_t dev; /* identity, to refuse writing an output over an input */
    ino_t ino;
    void *map; /* NULL until first mapped */
    pthread_mutex_t lock;
    int refs;
    /* A computed source (fb_source_virtual; fd is -1): reads call vread; map is a malloc'd
     * copy of all its bytes, made on the first fb_source_map. */
    fb_status (*vread)(void *ctx, uint64_t offset, size_t n, void *dst);
    void (*vfree)(void *ctx);
    void *vctx;
} fb_source;

/* Opens path read-only without blocking on a FIFO or device, and refuses anything that is not
 * a regular file (the message says what it is); *fd_out then reads normally (blocking). */
fb_status fb_open_regular(const char *path, int *fd_out, struct stat *st);

/* Opens path read-only; *out has one reference. */
fb_status fb_source_open(const char *path, fb_source **out);
void fb_source_ref(fb_source *s);
void fb_source_unref(fb_source *s);

/* A source of `size` bytes computed by read(ctx, offset, n, dst) (a LoRA adapter applied to a
 * weight as it is read); `path` names it in messages and output checks. Takes ctx (freed with
 * free_ctx, also on failure); *out has one reference. */
fb_status fb_source_virtual(const char *path, uint64_t size,
                            fb_status (*read)(void *ctx, uint64_t offset, size_t n, void *dst),
                            void (*free_ctx)(void *ctx), void *ctx, fb_source **out);

/* Reads exactly n bytes at offset into dst (a short file is an FB_ERR_IO naming the path). */
fb_status fb_source_pread(fb_source *s, uint64_t offset, size_t n, void *dst);

/* The whole file mapped read-only (mapped on the first call). */
fb_status fb_source_map(fb_source *s, const uint8_t **base);

#endif
