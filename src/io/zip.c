/*
 * zip.c: a ZIP reader for archives of stored entries (torch.save's format), reading only the
 * directory: the end-of-central-directory record (ZIP64 when sizes pass 4 GB), the central
 * directory, and each entry's local header, to find where its bytes start. Entries are never
 * decompressed; a compressed or encrypted entry, a record outside the file, or sizes that
 * disagree are errors naming the file and the entry.
 */
#include "zip.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/status.h"

enum {
    SIG_LOCAL = 0x04034b50,
    SIG_CENTRAL = 0x02014b50,
    SIG_END = 0x06054b50,
    SIG_END64 = 0x06064b50,
    SIG_LOCATOR64 = 0x07064b50,
    MAX_ENTRIES = 1 << 22,
};

static uint16_t u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t u32(const uint8_t *p)
{
    return (uint32_t)u16(p) | (uint32_t)u16(p + 2) << 16;
}
static uint64_t u64(const uint8_t *p)
{
    return (uint64_t)u32(p) | (uint64_t)u32(p + 4) << 32;
}

int fb_zip_sniff(fb_source *src)
{
    uint8_t b[4];
    return src->size >= 30 && !fb_source_pread(src, 0, 4, b) && u32(b) == SIG_LOCAL;
}

void fb_zip_close(fb_zip *zip)
{
    for (int64_t i = 0; zip->entries && i < zip->count; i++)
        fb_free(zip->entries[i].name);
    fb_free(zip->entries);
    zip->entries = NULL;
    zip->count = 0;
}

const fb_zip_entry *fb_zip_find(const fb_zip *zip, const char *name)
{
    for (int64_t i = 0; i < zip->count; i++)
        if (!strcmp(zip->entries[i].name, name)) return &zip->entries[i];
    return NULL;
}

/* Where the central directory is and how many entries it has. */
static fb_status find_directory(fb_source *src, uint64_t *cd_off, uint64_t *cd_size,
                                uint64_t *count)
{
    const char *path = src->path;
    size_t tail = src->size < 65557 ? (size_t)src->size : 65557; /* EOCD + longest comment */
    uint8_t *buf = fb_malloc(tail);
    if (!buf) return FB_ERR_NOMEM;
    fb_status st = fb_source_pread(src, src->size - tail, tail, buf);
    int64_t at = -1;
    for (int64_t i = (int64_t)tail - 22; !st && i >= 0 && at < 0; i--)
        if (u32(buf + i) == SIG_END && (size_t)i + 22 + u16(buf + i + 20) == tail) at = i;
    if (!st && at < 0)
        st = fb_set_error(FB_ERR_FORMAT, "%s: no ZIP end-of-directory record (truncated?)", path);
    if (!st) {
        const uint8_t *e = buf + at;
        *count = u16(e + 10);
        *cd_size = u32(e + 12);
        *cd_off = u32(e + 16);
        uint64_t end_at = src->size - tail + (uint64_t)at;
        if (at >= 20 && u32(e - 20) == SIG_LOCATOR64) { /* ZIP64: sizes past 4 GB */
            uint64_t rec = u64(e - 20 + 8);
            uint8_t r[56];
            if (rec + 56 > end_at)
                st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP64 record at %llu is outside the file",
                                  path, (unsigned long long)rec);
            else if (!(st = fb_source_pread(src, rec, 56, r))) {
                if (u32(r) != SIG_END64)
                    st = fb_set_error(FB_ERR_FORMAT, "%s: bad ZIP64 end-of-directory record", path);
                *count = u64(r + 32);
                *cd_size = u64(r + 40);
                *cd_off = u64(r + 48);
                end_at = rec;
            }
        }
        if (!st && (*cd_off > end_at || *cd_size > end_at - *cd_off))
            st = fb_set_error(FB_ERR_FORMAT,
                              "%s: ZIP central directory [%llu, +%llu) is outside the file", path,
                              (unsigned long long)*cd_off, (unsigned long long)*cd_size);
        if (!st && *count > MAX_ENTRIES)
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP claims %llu entries", path,
                              (unsigned long long)*count);
    }
    fb_free(buf);
    return st;
}

/* The ZIP64 extra field's values for the 32-bit fields that are all ones. */
static void zip64_extra(const uint8_t *x, size_t n, uint64_t *usize, uint64_t *csize, uint64_t *off)
{
    while (n >= 4) {
        uint16_t id = u16(x), len = u16(x + 2);
        if ((size_t)len + 4 > n) return;
        if (id == 0x0001) {
            const uint8_t *v = x + 4;
            size_t left = len;
            if (*usize == 0xffffffffu && left >= 8) *usize = u64(v), v += 8, left -= 8;
            if (*csize == 0xffffffffu && left >= 8) *csize = u64(v), v += 8, left -= 8;
            if (*off == 0xffffffffu && left >= 8) *off = u64(v);
            return;
        }
        x += 4 + len;
        n -= 4 + (size_t)len;
    }
}

fb_status fb_zip_open(fb_source *src, fb_zip *zip)
{
    memset(zip, 0, sizeof *zip);
    const char *path = src->path;
    uint64_t cd_off, cd_size, count;
    fb_status st = find_directory(src, &cd_off, &cd_size, &count);
    if (st) return st;
    uint8_t *cd = fb_malloc(cd_size ? (size_t)cd_size : 1);
    zip->entries = fb_calloc(count ? (size_t)count : 1, sizeof *zip->entries);
    if (!cd || !zip->entries) {
        fb_free(cd);
        fb_zip_close(zip);
        return FB_ERR_NOMEM;
    }
    st = fb_source_pread(src, cd_off, (size_t)cd_size, cd);
    uint64_t pos = 0;
    for (uint64_t i = 0; !st && i < count; i++) {
        if (pos + 46 > cd_size || u32(cd + pos) != SIG_CENTRAL) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP directory entry %llu is malformed", path,
                              (unsigned long long)i);
            break;
        }
        const uint8_t *h = cd + pos;
        uint16_t flags = u16(h + 8), method = u16(h + 10);
        uint64_t csize = u32(h + 20), usize = u32(h + 24), off = u32(h + 42);
        size_t nlen = u16(h + 28), xlen = u16(h + 30), clen = u16(h + 32);
        if (pos + 46 + nlen + xlen + clen > cd_size) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP directory entry %llu runs past the directory",
                              path, (unsigned long long)i);
            break;
        }
        zip64_extra(h + 46 + nlen, xlen, &usize, &csize, &off);
        fb_zip_entry *e = &zip->entries[zip->count];
        if (!(e->name = fb_strndup((const char *)h + 46, nlen))) {
            st = FB_ERR_NOMEM;
            break;
        }
        zip->count++;
        if (strlen(e->name) != nlen)
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP entry name with a NUL byte", path);
        else if (flags & 1)
            st = fb_set_error(FB_ERR_UNSUPPORTED, "%s: ZIP entry '%s' is encrypted", path, e->name);
        else if (method != 0 || csize != usize)
            st = fb_set_error(FB_ERR_UNSUPPORTED,
                              "%s: ZIP entry '%s' is compressed (method %u); only stored entries "
                              "can be read in place, as torch.save writes them",
                              path, e->name, method);
        uint8_t lh[30];
        if (!st && (off > src->size || src->size - off < 30))
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP entry '%s' starts past the end of the file",
                              path, e->name);
        if (!st) st = fb_source_pread(src, off, 30, lh);
        if (!st && u32(lh) != SIG_LOCAL)
            st = fb_set_error(FB_ERR_FORMAT, "%s: ZIP entry '%s' has no local header at %llu", path,
                              e->name, (unsigned long long)off);
        if (!st) {
            e->offset = off + 30 + u16(lh + 26) + u16(lh + 28);
            e->size = usize;
            if (e->offset > src->size || e->size > src->size - e->offset)
                st = fb_set_error(FB_ERR_FORMAT,
                                  "%s: ZIP entry '%s' (%llu bytes at %llu) runs past the end of "
                                  "the file (%llu bytes)",
                                  path, e->name, (unsigned long long)e->size,
                                  (unsigned long long)e->offset, (unsigned long long)src->size);
        }
        pos += 46 + nlen + xlen + clen;
    }
    fb_free(cd);
    if (st) fb_zip_close(zip);
    return st;
}
