/*
 * source.c: read-only, reference-counted input files (see source.h).
 */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "status.h"

fb_status fb_open_regular(const char *path, int *fd_out, struct stat *st)
{
    /* O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (and a
     * device could block too); the check below refuses them, and regular files ignore it */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return fb_set_error(FB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        return fb_set_error(FB_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return fb_set_error(FB_ERR_IO, "%s: not a regular file (%s)", path,
                            S_ISDIR(st->st_mode)    ? "a folder"
                            : S_ISFIFO(st->st_mode) ? "a FIFO"
                            : S_ISSOCK(st->st_mode) ? "a socket"
                                                    : "a device");
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return fb_set_error(FB_ERR_IO, "%s: cannot set blocking reads: %s", path, strerror(e));
    }
    *fd_out = fd;
    return FB_OK;
}

fb_status fb_source_open(const char *path, fb_source **out)
{
    *out = NULL;
    int fd;
    struct stat st;
    fb_status rc = fb_open_regular(path, &fd, &st);
    if (rc) return rc;
    fb_source *s = fb_calloc(1, sizeof *s);
    char *p = fb_strdup(path);
    if (!s || !p) {
        fb_free(s);
        fb_free(p);
        close(fd);
        return FB_ERR_NOMEM;
    }
    s->path = p;
    s->fd = fd;
    s->size = (uint64_t)st.st_size;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->refs = 1;
    /* merges read every input front to back: a larger readahead window (advisory) */
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return FB_OK;
}

fb_status fb_source_virtual(const char *path, uint64_t size,
                            fb_status (*read)(void *ctx, uint64_t offset, size_t n, void *dst),
                            void (*free_ctx)(void *ctx), void *ctx, fb_source **out)
{
    *out = NULL;
    fb_source *s = fb_calloc(1, sizeof *s);
    char *p = fb_strdup(path);
    if (!s || !p) {
        fb_free(s);
        fb_free(p);
        free_ctx(ctx);
        return FB_ERR_NOMEM;
    }
    s->path = p;
    s->fd = -1;
    s->size = size;
    s->refs = 1;
    s->vread = read;
    s->vfree = free_ctx;
    s->vctx = ctx;
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return FB_OK;
}

void fb_source_ref(fb_source *s) { __atomic_add_fetch(&s->refs, 1, __ATOMIC_RELAXED); }

void fb_source_unref(fb_source *s)
{
    if (!s || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->vread) {
        fb_free(s->map);
        s->vfree(s->vctx);
    } else {
        if (s->map) munmap(s->map, s->size);
        close(s->fd);
    }
    pthread_mutex_destroy(&s->lock);
    fb_free(s->path);
    fb_free(s);
}

fb_status fb_source_pread(fb_source *s, uint64_t offset, size_t n, void *dst)
{
    if (s->vread) {
        if (offset > s->size || n > s->size - offset)
            return fb_set_error(FB_ERR_INTERNAL, "%s: read past its end", s->path);
        return s->vread(s->vctx, offset, n, dst);
    }
    uint8_t *p = dst;
    while (n > 0) {
        ssize_t got = pread(s->fd, p, n, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR) continue;
            return fb_set_error(FB_ERR_IO, "%s: read failed at offset %llu: %s", s->path,
                                (unsigned long long)offset, strerror(errno));
        }
        if (got == 0)
            return fb_set_error(FB_ERR_IO,
                                "%s: file ended at offset %llu while reading (it was "
                                "truncated after it was opened)",
                                s->path, (unsigned long long)offset);
        p += got;
        n -= (size_t)got;
        offset += (uint64_t)got;
    }
    return FB_OK;
}

fb_status fb_source_map(fb_source *s, const uint8_t **base)
{
    fb_status st = FB_OK;
    pthread_mutex_lock(&s->lock);
    if (!s->map && s->size > 0 && s->vread) {
        void *m = fb_malloc((size_t)s->size);
        st = m ? s->vread(s->vctx, 0, (size_t)s->size, m) : FB_ERR_NOMEM;
        if (st) fb_free(m);
        else s->map = m;
    } else if (!s->map && s->size > 0) {
        void *m = mmap(NULL, s->size, PROT_READ, MAP_SHARED, s->fd, 0);
        if (m == MAP_FAILED)
            st = fb_set_error(FB_ERR_IO, "%s: cannot map: %s", s->path, strerror(errno));
        else
            s->map = m;
    }
    pthread_mutex_unlock(&s->lock);
    *base = s->map;
    return st;
}
