/*
 * zip.h: the entries of a ZIP archive stored without compression, located in place (zip.c).
 * Enough for torch.save's format, whose entries are stored, 64-byte aligned.
 */
#ifndef FB_IO_ZIP_H
#define FB_IO_ZIP_H

#include "core/source.h"

typedef struct fb_zip_entry {
    char *name;
    uint64_t offset; /* absolute offset of the entry's bytes in the file */
    uint64_t size;
} fb_zip_entry;

typedef struct fb_zip {
    fb_zip_entry *entries;
    int64_t count;
} fb_zip;

/* 1 if the file starts like a ZIP archive (a local file header). */
int fb_zip_sniff(fb_source *src);

/* Reads the central directory (ZIP64 too) and every entry's local header: each entry must be
 * stored (no compression) and lie inside the file. Errors name the file and the entry. */
fb_status fb_zip_open(fb_source *src, fb_zip *zip);
void fb_zip_close(fb_zip *zip);

/* The entry named `name`, or NULL. */
const fb_zip_entry *fb_zip_find(const fb_zip *zip, const char *name);

#endif
