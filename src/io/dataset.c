/*
 * dataset.c: IDX, digits CSV and image-folder readers, and CLIP-style preprocessing (see
 * dataset.h). Files are read whole into memory (datasets here are tens of megabytes), gzip is
 * inflated with zlib under a size limit, and images are decoded by stb_image only after their
 * declared size has been checked against the limits.
 */
#include "dataset.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/alloc.h"
#include "core/source.h"
#include "core/status.h"
#include "writer.h"

/* The image decoder's allocations, capped: a small file that claims a huge image, or
 * compressed data that inflates without end, fails with "outofmem" instead of taking the
 * machine's memory. */
static void *image_alloc(size_t n)
{
    return n > FB_IMAGE_MAX_ALLOC ? NULL : fb_malloc(n);
}
static void *image_realloc(void *p, size_t n)
{
    return n > FB_IMAGE_MAX_ALLOC ? NULL : fb_realloc(p, n);
}

/* stb_image compiled here, static, for the formats image folders hold (PNG, JPEG, BMP) and
 * through the library's allocator: a smaller surface for hostile files than every format
 * Debian's libstb decodes, and allocation failures that tests can inject. */
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_MALLOC(n) image_alloc(n)
#define STBI_REALLOC(p, n) image_realloc(p, n)
#define STBI_FREE(p) fb_free(p)
#pragma GCC diagnostic ignored "-Wunused-function" /* reported at the end of the file */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wtype-limits"
#include <stb_image.h>
#pragma GCC diagnostic pop
#include <stb_image_resize.h>

void fb_images_free(fb_images *d)
{
    if (!d) return;
    if (d->mapping)
        munmap(d->mapping, d->mapping_len);
    else
        fb_free(d->pixels);
    fb_free(d->labels);
    if (d->class_names)
        for (int64_t k = 0; k < d->num_classes; k++)
            fb_free(d->class_names[k]);
    fb_free(d->class_names);
    memset(d, 0, sizeof *d);
}

fb_status fb_read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    int fd;
    struct stat sb;
    fb_status st = fb_open_regular(path, &fd, &sb);
    if (st) return st;
    if ((uint64_t)sb.st_size > max_bytes) {
        close(fd);
        return fb_set_error(FB_ERR_FORMAT, "%s: %lld bytes is more than the %zu allowed", path,
                            (long long)sb.st_size, max_bytes);
    }
    size_t n = (size_t)sb.st_size;
    uint8_t *p = fb_malloc(n ? n : 1);
    if (!p) {
        close(fd);
        return FB_ERR_NOMEM;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            fb_free(p);
            return fb_set_error(FB_ERR_IO, "%s: read failed after %zu of %zu bytes%s%s", path, got,
                                n, e ? ": " : " (file shrank)", e ? strerror(e) : "");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = p;
    *len = n;
    return FB_OK;
}

/* Inflates gzip (one or more members) into a fb_malloc'd buffer of at most `limit` bytes. */
static fb_status gunzip(const uint8_t *in, size_t len, const char *name, size_t limit,
                        uint8_t **out, size_t *out_len)
{
    size_t cap = len * 4 + 1024, n = 0;
    if (cap > limit) cap = limit;
    uint8_t *buf = fb_malloc(cap);
    if (!buf) return FB_ERR_NOMEM;
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
        fb_free(buf);
        return fb_set_error(FB_ERR_INTERNAL, "%s: zlib could not start", name);
    }
    zs.next_in = (Bytef *)in;
    fb_status st = FB_OK;
    size_t in_left = len;
    for (;;) {
        if (n == cap) {
            if (cap >= limit) {
                st =
                    fb_set_error(FB_ERR_FORMAT, "%s: inflates to more than %zu bytes", name, limit);
                break;
            }
            size_t ncap = cap * 2 > limit ? limit : cap * 2;
            uint8_t *nb = fb_realloc(buf, ncap);
            if (!nb) {
                st = FB_ERR_NOMEM;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        /* zlib counts in uInt: feed at most 1 GiB at a time */
        uInt ain = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
        uInt aout = cap - n > (1u << 30) ? (1u << 30) : (uInt)(cap - n);
        zs.avail_in = ain;
        zs.next_out = buf + n;
        zs.avail_out = aout;
        int r = inflate(&zs, Z_NO_FLUSH);
        in_left -= ain - zs.avail_in;
        n += aout - zs.avail_out;
        if (r == Z_STREAM_END) {
            /* another gzip member may follow; anything else is an error */
            if (in_left == 0) break;
            if (in_left < 2 || zs.next_in[0] != 0x1f || zs.next_in[1] != 0x8b) {
                st = fb_set_error(FB_ERR_FORMAT, "%s: %zu bytes of garbage after the gzip data",
                                  name, in_left);
                break;
            }
            inflateReset(&zs);
            continue;
        }
        if (r == Z_OK || (r == Z_BUF_ERROR && zs.avail_out == 0)) {
            if (in_left == 0 && zs.avail_out != 0) {
                st =
                    fb_set_error(FB_ERR_FORMAT, "%s: gzip data ends early (truncated file?)", name);
                break;
            }
            continue;
        }
        if (r == Z_BUF_ERROR) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: gzip data ends early (truncated file?)", name);
        } else {
            st = fb_set_error(FB_ERR_FORMAT, "%s: corrupt gzip data (%s)", name,
                              zs.msg ? zs.msg : "zlib error");
        }
        break;
    }
    inflateEnd(&zs);
    if (st) {
        fb_free(buf);
        return st;
    }
    *out = buf;
    *out_len = n;
    return FB_OK;
}

fb_status fb_idx_parse(const uint8_t *file, size_t len, const char *name, int *ndims,
                       int64_t dims[4], uint8_t **data)
{
    *data = NULL;
    uint8_t *plain = NULL;
    size_t n = len;
    const uint8_t *p = file;
    if (len >= 2 && file[0] == 0x1f && file[1] == 0x8b) {
        fb_status st = gunzip(file, len, name, (size_t)FB_DATASET_MAX_BYTES, &plain, &n);
        if (st) return st;
        p = plain;
    }
    fb_status st = FB_OK;
    if (n < 4 || p[0] != 0 || p[1] != 0) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: not an IDX file (bad magic number)", name);
        goto done;
    }
    if (p[2] != 0x08) {
        st = fb_set_error(FB_ERR_UNSUPPORTED,
                          "%s: IDX element type 0x%02x; only unsigned bytes (0x08) are supported",
                          name, p[2]);
        goto done;
    }
    *ndims = p[3];
    if (*ndims < 1 || *ndims > 4) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: IDX with %d dimensions (1 to 4 supported)", name,
                          *ndims);
        goto done;
    }
    size_t head = 4 + 4 * (size_t)*ndims;
    if (n < head) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: IDX header is truncated", name);
        goto done;
    }
    uint64_t total = 1;
    for (int i = 0; i < *ndims; i++) {
        const uint8_t *d = p + 4 + 4 * i;
        dims[i] =
            (int64_t)((uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3]);
        if (dims[i] && total > (uint64_t)FB_DATASET_MAX_BYTES / (uint64_t)dims[i]) {
            st = fb_set_error(FB_ERR_FORMAT, "%s: IDX dimensions describe more than %lld bytes",
                              name, (long long)FB_DATASET_MAX_BYTES);
            goto done;
        }
        total *= (uint64_t)dims[i];
    }
    if (n - head != total) {
        st =
            fb_set_error(FB_ERR_FORMAT, "%s: IDX dimensions need %llu data bytes, the file has %zu",
                         name, (unsigned long long)total, n - head);
        goto done;
    }
    *data = fb_malloc(total ? total : 1);
    if (!*data) {
        st = FB_ERR_NOMEM;
        goto done;
    }
    memcpy(*data, p + head, total);
done:
    fb_free(plain);
    return st;
}

/* One IDX file read and parsed. */
static fb_status idx_load(const char *path, int *nd, int64_t dims[4], uint8_t **data)
{
    uint8_t *file;
    size_t len;
    fb_status st = fb_read_file(path, (size_t)FB_DATASET_MAX_BYTES, &file, &len);
    if (st) return st;
    st = fb_idx_parse(file, len, path, nd, dims, data);
    fb_free(file);
    return st;
}

fb_status fb_idx_read(const char *images_path, const char *labels_path, fb_images *out)
{
    memset(out, 0, sizeof *out);
    int ndi, ndl;
    int64_t di[4] = {0}, dl[4] = {0};
    uint8_t *img = NULL, *lab = NULL;
    fb_status st = idx_load(images_path, &ndi, di, &img);
    if (!st) st = idx_load(labels_path, &ndl, dl, &lab);
    if (st) goto fail;
    if (ndi != 3 && ndi != 4) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: images need 3 or 4 IDX dimensions, found %d",
                          images_path, ndi);
        goto fail;
    }
    if (ndl != 1 || dl[0] != di[0]) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: %s labels for %lld images in %s", labels_path,
                          ndl != 1 ? "not a 1-D list of" : "a different number of",
                          (long long)di[0], images_path);
        goto fail;
    }
    if (di[0] == 0 || di[1] == 0 || di[2] == 0 || (ndi == 4 && di[3] == 0)) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: no images (a dimension is 0)", images_path);
        goto fail;
    }
    if (di[1] > FB_IMAGE_MAX_SIDE || di[2] > FB_IMAGE_MAX_SIDE || (ndi == 4 && di[3] > 4)) {
        st = fb_set_error(FB_ERR_FORMAT, "%s: images of %lld x %lld are too large", images_path,
                          (long long)di[1], (long long)di[2]);
        goto fail;
    }
    out->n = di[0];
    out->height = di[1];
    out->width = di[2];
    out->channels = ndi == 4 ? di[3] : 1;
    out->pixels = img;
    out->labels = fb_malloc((size_t)out->n * sizeof(int32_t));
    if (!out->labels) {
        st = FB_ERR_NOMEM;
        img = NULL;
        goto fail;
    }
    for (int64_t i = 0; i < out->n; i++) {
        out->labels[i] = lab[i];
        if (lab[i] + 1 > out->num_classes) out->num_classes = lab[i] + 1;
    }
    fb_free(lab);
    return FB_OK;
fail:
    fb_free(img);
    fb_free(lab);
    if (out->pixels) fb_images_free(out);
    return st;
}

/* A non-negative number "12" or "12.0" (up to 6 digits each side); -1 if malformed. */
static double csv_number(const char **pp, const char *end)
{
    const char *p = *pp;
    double v = 0;
    int digits = 0;
    while (p < end && *p >= '0' && *p <= '9' && digits < 7)
        v = v * 10 + (*p++ - '0'), digits++;
    if (!digits || (p < end && *p >= '0' && *p <= '9')) return -1;
    if (p < end && *p == '.') {
        p++;
        double scale = 0.1;
        int frac = 0;
        while (p < end && *p >= '0' && *p <= '9' && frac < 7)
            v += scale * (*p++ - '0'), scale *= 0.1, frac++;
        if (p < end && *p >= '0' && *p <= '9') return -1;
    }
    *pp = p;
    return v;
}

fb_status fb_digits_parse(const char *text, size_t len, const char *name, fb_images *out)
{
    memset(out, 0, sizeof *out);
    int64_t rows = 0;
    for (size_t i = 0; i < len; i++)
        rows += text[i] == '\n';
    if (len && text[len - 1] != '\n') rows++;
    if (rows == 0) return fb_set_error(FB_ERR_FORMAT, "%s: no rows", name);
    out->pixels = fb_malloc((size_t)rows * 64);
    out->labels = fb_malloc((size_t)rows * sizeof(int32_t));
    if (!out->pixels || !out->labels) {
        fb_images_free(out);
        return FB_ERR_NOMEM;
    }
    const char *p = text, *end = text + len;
    int64_t r = 0;
    for (int64_t line = 1; p < end; line++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        if (eol == p || (eol == p + 1 && *p == '\r')) { /* blank line */
            p = eol + (eol < end);
            continue;
        }
        for (int c = 0; c < 65; c++) {
            double v = csv_number(&p, eol);
            if (v < 0 || (c < 64 && v > 16) || (c == 64 && (v > 9 || v != (int)v))) {
                fb_images_free(out);
                return fb_set_error(FB_ERR_FORMAT, "%s: line %lld, column %d: expected %s", name,
                                    (long long)line, c + 1,
                                    c < 64 ? "a pixel value in 0..16" : "a label in 0..9");
            }
            if (c < 64)
                out->pixels[r * 64 + c] = (uint8_t)(v * 255.0 / 16.0 + 0.5);
            else
                out->labels[r] = (int32_t)v;
            if (c == 64) break;
            if (p >= eol || *p != ',') {
                fb_images_free(out);
                return fb_set_error(FB_ERR_FORMAT, "%s: line %lld has %d values, expected 65", name,
                                    (long long)line, c + 1);
            }
            p++;
        }
        if (p < eol && *p == '\r') p++;
        if (p != eol) {
            fb_images_free(out);
            return fb_set_error(FB_ERR_FORMAT, "%s: line %lld has more than 65 values", name,
                                (long long)line);
        }
        r++;
        p = eol + (eol < end);
    }
    if (r == 0) {
        fb_images_free(out);
        return fb_set_error(FB_ERR_FORMAT, "%s: no rows", name);
    }
    out->n = r;
    out->height = out->width = 8;
    out->channels = 1;
    out->num_classes = 10;
    return FB_OK;
}

fb_status fb_digits_read(const char *path, fb_images *out)
{
    memset(out, 0, sizeof *out);
    uint8_t *file, *plain = NULL;
    size_t len, n;
    fb_status st = fb_read_file(path, 1u << 30, &file, &len);
    if (st) return st;
    if (len >= 2 && file[0] == 0x1f && file[1] == 0x8b) {
        st = gunzip(file, len, path, 1u << 30, &plain, &n);
        fb_free(file);
        if (st) return st;
    } else {
        plain = file;
        n = len;
    }
    st = fb_digits_parse((const char *)plain, n, path, out);
    fb_free(plain);
    return st;
}

fb_status fb_image_resize_crop(const uint8_t *src, int64_t height, int64_t width, int64_t channels,
                               int64_t size, uint8_t *dst)
{
    if (height <= 0 || width <= 0 || size <= 0 || channels <= 0 || channels > 4 ||
        height > FB_IMAGE_MAX_SIDE || width > FB_IMAGE_MAX_SIDE || size > FB_IMAGE_MAX_SIDE)
        return fb_set_error(FB_ERR_ARG, "cannot resize a %lld x %lld image to %lld",
                            (long long)height, (long long)width, (long long)size);
    if (height == size && width == size) {
        memcpy(dst, src, (size_t)(size * size * channels));
        return FB_OK;
    }
    /* shorter side -> size, the other in proportion (rounded), then the centre crop */
    int64_t rh, rw;
    if (height <= width) {
        rh = size;
        rw = (width * size + height / 2) / height;
        if (rw < size) rw = size;
    } else {
        rw = size;
        rh = (height * size + width / 2) / width;
        if (rh < size) rh = size;
    }
    if (rh > FB_IMAGE_MAX_SIDE * 4 || rw > FB_IMAGE_MAX_SIDE * 4)
        return fb_set_error(FB_ERR_ARG, "a %lld x %lld image is too elongated to resize to %lld",
                            (long long)height, (long long)width, (long long)size);
    /* already at scale: crop only (stb_image_resize filters even at scale 1) */
    if (rh == height && rw == width) {
        int64_t top = (rh - size) / 2, left = (rw - size) / 2;
        for (int64_t y = 0; y < size; y++)
            memcpy(dst + y * size * channels, src + ((top + y) * rw + left) * channels,
                   (size_t)(size * channels));
        return FB_OK;
    }
    uint8_t *tmp = fb_malloc((size_t)(rh * rw * channels));
    if (!tmp) return FB_ERR_NOMEM;
    if (!stbir_resize_uint8(src, (int)width, (int)height, 0, tmp, (int)rw, (int)rh, 0,
                            (int)channels)) {
        fb_free(tmp);
        return fb_set_error(FB_ERR_NOMEM, "stb_image_resize could not resize a %lld x %lld image",
                            (long long)height, (long long)width);
    }
    int64_t top = (rh - size) / 2, left = (rw - size) / 2;
    for (int64_t y = 0; y < size; y++)
        memcpy(dst + y * size * channels, tmp + ((top + y) * rw + left) * channels,
               (size_t)(size * channels));
    fb_free(tmp);
    return FB_OK;
}

/* ---------------------------------------------------- CLIPProcessor's resize -- */

/* Pillow's bicubic kernel (a = -0.5, support 2) */
static double bicubic(double x)
{
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

enum { PIL_BITS = 32 - 8 - 2 }; /* Pillow's fixed-point precision for 8-bit images */

/* Pillow's resampling weights from in_size to out_size samples: the kernel widened by the
 * scale when shrinking (antialiasing), normalised per output sample, then fixed point with
 * PIL_BITS fraction bits. *ksize weights per output; first[i], count[i] the inputs used. */
static fb_status pil_coeffs(int64_t in_size, int64_t out_size, int32_t **kk, int64_t **first,
                            int64_t **count, int64_t *ksize)
{
    const double scale = (double)in_size / (double)out_size;
    const double filterscale = scale < 1.0 ? 1.0 : scale;
    const double support = 2.0 * filterscale;
    const int64_t K = (int64_t)ceil(support) * 2 + 1;
    double *w = fb_malloc((size_t)K * sizeof *w);
    *kk = fb_calloc((size_t)(out_size * K), sizeof **kk);
    *first = fb_malloc((size_t)out_size * sizeof **first);
    *count = fb_malloc((size_t)out_size * sizeof **count);
    if (!w || !*kk || !*first || !*count) {
        fb_free(w);
        return FB_ERR_NOMEM;
    }
    for (int64_t o = 0; o < out_size; o++) {
        const double center = ((double)o + 0.5) * scale, ss = 1.0 / filterscale;
        int64_t lo = (int64_t)(center - support + 0.5), hi = (int64_t)(center + support + 0.5);
        if (lo < 0) lo = 0;
        if (hi > in_size) hi = in_size;
        const int64_t n = hi - lo;
        double sum = 0.0;
        for (int64_t x = 0; x < n; x++)
            sum += w[x] = bicubic(((double)(x + lo) - center + 0.5) * ss);
        for (int64_t x = 0; x < n; x++) {
            const double v = sum != 0.0 ? w[x] / sum : w[x];
            (*kk)[o * K + x] =
                (int32_t)(v < 0 ? -0.5 + v * (1 << PIL_BITS) : 0.5 + v * (1 << PIL_BITS));
        }
        (*first)[o] = lo;
        (*count)[o] = n;
    }
    fb_free(w);
    *ksize = K;
    return FB_OK;
}

static uint8_t pil_clip8(int64_t v)
{
    if (v >= (int64_t)1 << PIL_BITS << 8) return 255;
    if (v <= 0) return 0;
    return (uint8_t)(v >> PIL_BITS);
}

fb_status fb_image_resize_crop_clip(const uint8_t *src, int64_t height, int64_t width,
                                    int64_t channels, int64_t size, uint8_t *dst)
{
    if (height <= 0 || width <= 0 || size <= 0 || channels <= 0 || channels > 4 ||
        height > FB_IMAGE_MAX_SIDE || width > FB_IMAGE_MAX_SIDE || size > FB_IMAGE_MAX_SIDE)
        return fb_set_error(FB_ERR_ARG, "cannot resize a %lld x %lld image to %lld",
                            (long long)height, (long long)width, (long long)size);
    /* transformers' shortest_edge rule: the short side becomes size, the long one
     * int(size * long / short) */
    int64_t rh, rw;
    if (width <= height) {
        rw = size;
        rh = (int64_t)((double)(size * height) / (double)width);
    } else {
        rh = size;
        rw = (int64_t)((double)(size * width) / (double)height);
    }
    if (rh > FB_IMAGE_MAX_SIDE * 4 || rw > FB_IMAGE_MAX_SIDE * 4 || rh < size || rw < size)
        return fb_set_error(FB_ERR_ARG, "a %lld x %lld image is too elongated to resize to %lld",
                            (long long)height, (long long)width, (long long)size);
    const int64_t C = channels;
    const uint8_t *img = src;
    uint8_t *tmp = NULL, *out = NULL;
    int32_t *kh = NULL, *kv = NULL;
    int64_t *fh = NULL, *ch = NULL, *fv = NULL, *cv = NULL, Kh = 0, Kv = 0;
    fb_status st = FB_OK;
    if (rh != height || rw != width) {
        st = pil_coeffs(width, rw, &kh, &fh, &ch, &Kh);
        if (!st) st = pil_coeffs(height, rh, &kv, &fv, &cv, &Kv);
        /* Pillow: the horizontal pass over the rows the vertical one reads, rounded to bytes,
         * then the vertical pass (a pass whose size does not change is skipped) */
        const int64_t y0 = st ? 0 : fv[0], y1 = st ? 0 : fv[rh - 1] + cv[rh - 1];
        if (!st && !(tmp = fb_malloc((size_t)((y1 - y0) * rw * C + rh * rw * C))))
            st = FB_ERR_NOMEM;
        if (!st) {
            const uint8_t *cur = src;
            int64_t row0 = 0; /* the row of the source that cur's first row is */
            if (rw != width) {
                for (int64_t y = y0; y < y1; y++)
                    for (int64_t x = 0; x < rw; x++) {
                        const int32_t *k = kh + x * Kh;
                        for (int64_t c = 0; c < C; c++) {
                            int64_t acc = (int64_t)1 << (PIL_BITS - 1);
                            for (int64_t i = 0; i < ch[x]; i++)
                                acc += (int64_t)src[(y * width + fh[x] + i) * C + c] * k[i];
                            tmp[((y - y0) * rw + x) * C + c] = pil_clip8(acc);
                        }
                    }
                cur = tmp;
                row0 = y0;
            }
            out = tmp + (y1 - y0) * rw * C;
            if (rh != height) {
                for (int64_t y = 0; y < rh; y++) {
                    const int32_t *k = kv + y * Kv;
                    for (int64_t x = 0; x < rw; x++)
                        for (int64_t c = 0; c < C; c++) {
                            int64_t acc = (int64_t)1 << (PIL_BITS - 1);
                            for (int64_t i = 0; i < cv[y]; i++)
                                acc += (int64_t)cur[((fv[y] + i - row0) * rw + x) * C + c] * k[i];
                            out[(y * rw + x) * C + c] = pil_clip8(acc);
                        }
                }
                img = out;
            } else {
                img = cur; /* only the width changed: rows y0..y1 are all rows */
            }
        }
    }
    if (!st) { /* transformers' centre crop */
        const int64_t top = (rh - size) / 2, left = (rw - size) / 2;
        for (int64_t y = 0; y < size; y++)
            memcpy(dst + y * size * C, img + ((top + y) * rw + left) * C, (size_t)(size * C));
    }
    fb_free(tmp);
    fb_free(kh);
    fb_free(kv);
    fb_free(fh);
    fb_free(ch);
    fb_free(fv);
    fb_free(cv);
    return st;
}

/* stb_image forms a pointer from NULL (undefined behaviour) when a PNG's first IDAT chunk is
 * empty: such files are refused before decoding (a valid but pointless PNG construction). */
static int png_has_empty_idat(const uint8_t *f, size_t len)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len < 8 || memcmp(f, sig, 8)) return 0;
    for (size_t at = 8; len - at >= 8;) { /* length and type are enough for stb to act */
        uint32_t n = (uint32_t)f[at] << 24 | (uint32_t)f[at + 1] << 16 | (uint32_t)f[at + 2] << 8 |
                     f[at + 3];
        if (!memcmp(f + at + 4, "IDAT", 4) && n == 0) return 1;
        if (!memcmp(f + at + 4, "IEND", 4) || (size_t)n + 12 > len - at) return 0;
        at += 12 + (size_t)n;
    }
    return 0;
}

/* stb_image's JPEG decoder builds Huffman tables without checking that a DHT table's 16 code
 * counts sum to at most 256, and writes past its arrays when they do (found by fuzz_image).
 * Every FF C4 in a JPEG file, wherever it is, is checked as a DHT segment first: a valid
 * file's entropy-coded data never holds one (0xFF is stuffed), so no real file is refused
 * unless a metadata block happens to spell a broken table. */
static int jpeg_has_bad_huffman_table(const uint8_t *f, size_t len)
{
    size_t start = 0; /* stb takes any run of 0xFF fill bytes before the SOI marker */
    while (start < len && f[start] == 0xFF)
        start++;
    if (start == 0 || start >= len || f[start] != 0xD8) return 0;
    for (size_t i = start + 1; i + 1 < len; i++) {
        if (f[i] != 0xFF || f[i + 1] != 0xC4) continue;
        if (len - i < 4) return 1;
        size_t seg = (size_t)f[i + 2] << 8 | f[i + 3], end = i + 2 + seg, p = i + 4;
        if (seg < 2 || end > len) return 1;
        while (p < end) {
            if (end - p < 17) return 1;
            size_t n = 0;
            for (int k = 1; k <= 16; k++)
                n += f[p + k];
            if (n > 256 || end - p - 17 < n) return 1;
            p += 17 + n;
        }
    }
    return 0;
}

fb_status fb_image_decode(const uint8_t *file, size_t len, const char *name, int64_t size,
                          int64_t channels, uint8_t *out)
{
    return fb_image_decode_ex(file, len, name, size, channels, FB_RESAMPLE_STB, out);
}

fb_status fb_image_decode_ex(const uint8_t *file, size_t len, const char *name, int64_t size,
                             int64_t channels, int resample, uint8_t *out)
{
    if (len > INT_MAX) return fb_set_error(FB_ERR_FORMAT, "%s: image file is too large", name);
    if (png_has_empty_idat(file, len))
        return fb_set_error(FB_ERR_FORMAT, "%s: PNG with an empty IDAT chunk (not supported)",
                            name);
    if (jpeg_has_bad_huffman_table(file, len))
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: corrupt JPEG (a Huffman table with more than 256 "
                            "codes, or cut short)",
                            name);
    int w, h, c;
    if (!stbi_info_from_memory(file, (int)len, &w, &h, &c))
        return fb_set_error(FB_ERR_FORMAT, "%s: not a readable image (%s)", name,
                            stbi_failure_reason() ? stbi_failure_reason() : "unknown format");
    if (w <= 0 || h <= 0 || w > FB_IMAGE_MAX_SIDE || h > FB_IMAGE_MAX_SIDE ||
        (int64_t)w * h > FB_IMAGE_MAX_PIXELS)
        return fb_set_error(FB_ERR_FORMAT, "%s: a %d x %d image is larger than allowed", name, w,
                            h);
    int ww, hh, cc;
    uint8_t *px = stbi_load_from_memory(file, (int)len, &ww, &hh, &cc, (int)channels);
    const char *why = stbi_failure_reason() ? stbi_failure_reason() : "decode failed";
    if (!px && !strcmp(why, "outofmem"))
        return fb_set_error(FB_ERR_FORMAT,
                            "%s: decoding needs more than %llu MB (a corrupt or "
                            "hostile image?)",
                            name, (unsigned long long)(FB_IMAGE_MAX_ALLOC >> 20));
    if (!px) return fb_set_error(FB_ERR_FORMAT, "%s: corrupt image (%s)", name, why);
    fb_status st = FB_OK;
    if (ww != w || hh != h)
        st = fb_set_error(FB_ERR_FORMAT, "%s: image size changed while decoding", name);
    else if (resample == FB_RESAMPLE_CLIP)
        st = fb_image_resize_crop_clip(px, hh, ww, channels, size, out);
    else
        st = fb_image_resize_crop(px, hh, ww, channels, size, out);
    stbi_image_free(px);
    if (st == FB_ERR_ARG) st = fb_set_error(FB_ERR_FORMAT, "%s: %s", name, fb_last_error());
    return st;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of the entries of dir that are directories (want_dirs) or regular files. */
static fb_status list_dir(const char *dir, int want_dirs, char ***names, int64_t *count)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return fb_set_error(FB_ERR_IO, "%s: cannot open folder: %s", dir, strerror(errno));
    int64_t cap = 0;
    fb_status st = FB_OK;
    struct dirent *e;
    char path[PATH_MAX];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat sb;
        if (stat(path, &sb)) continue;
        if (want_dirs ? !S_ISDIR(sb.st_mode) : !S_ISREG(sb.st_mode)) continue;
        if (fb_reserve(names, &cap, *count + 1, sizeof **names) ||
            !((*names)[*count] = fb_strdup(e->d_name))) {
            st = FB_ERR_NOMEM;
            break;
        }
        (*count)++;
    }
    closedir(d);
    if (st) {
        for (int64_t i = 0; i < *count; i++)
            fb_free((*names)[i]);
        fb_free(*names);
        *names = NULL;
        *count = 0;
        return st;
    }
    if (*count) qsort(*names, (size_t)*count, sizeof **names, cmp_str);
    return FB_OK;
}

static void free_names(char **names, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        fb_free(names[i]);
    fb_free(names);
}

fb_status fb_image_folder_read(const char *dir, int64_t size, int64_t channels, fb_images *out)
{
    const fb_folder_options o = {.size = size, .channels = channels};
    return fb_image_folder_read_ex(dir, &o, out);
}

typedef struct folder_file {
    char *path;
    int32_t label;
    int64_t bytes, mtime_ns;
} folder_file;

/* Every image file of dir's class folders, classes and files in byte order. */
static fb_status folder_list(const char *dir, char ***classes, int64_t *K, folder_file **files,
                             int64_t *n)
{
    *files = NULL;
    *n = 0;
    fb_status st = list_dir(dir, 1, classes, K);
    if (st) return st;
    if (*K == 0)
        return fb_set_error(FB_ERR_FORMAT, "%s: no class folders (expected DIR/<class>/<images>)",
                            dir);
    int64_t cap = 0;
    char path[PATH_MAX];
    for (int64_t k = 0; k < *K && !st; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, (*classes)[k]);
        char **names;
        int64_t nf;
        if ((st = list_dir(path, 0, &names, &nf))) break;
        for (int64_t i = 0; i < nf && !st; i++) {
            snprintf(path, sizeof path, "%s/%s/%s", dir, (*classes)[k], names[i]);
            struct stat sb;
            if (fb_reserve(files, &cap, *n + 1, sizeof **files) ||
                !((*files)[*n].path = fb_strdup(path))) {
                st = FB_ERR_NOMEM;
                break;
            }
            folder_file *f = &(*files)[(*n)++];
            f->label = (int32_t)k;
            f->bytes = f->mtime_ns = -1;
            if (!stat(path, &sb)) {
                f->bytes = (int64_t)sb.st_size;
                f->mtime_ns = (int64_t)sb.st_mtim.tv_sec * 1000000000 + sb.st_mtim.tv_nsec;
            }
        }
        free_names(names, nf);
    }
    return st;
}

static void files_free(folder_file *f, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        fb_free(f[i].path);
    fb_free(f);
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        c += w;
        n -= (size_t)w;
    }
    return 1;
}

/* the preprocessed-image cache: a header, the labels, the pixels */
typedef struct cache_header {
    char magic[8]; /* "FBIMG01\0" */
    int64_t n, size, channels, resample, key;
} cache_header;

static uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t folder_key(const char *dir, const fb_folder_options *o, char **classes, int64_t K,
                           const folder_file *f, int64_t n)
{
    char real[PATH_MAX];
    const char *d = realpath(dir, real) ? real : dir;
    uint64_t h = fnv64(0xcbf29ce484222325ull, d, strlen(d) + 1);
    const int64_t opts[3] = {o->size, o->channels, o->resample};
    h = fnv64(h, opts, sizeof opts);
    for (int64_t k = 0; k < K; k++)
        h = fnv64(h, classes[k], strlen(classes[k]) + 1);
    for (int64_t i = 0; i < n; i++) {
        h = fnv64(h, f[i].path, strlen(f[i].path) + 1);
        const int64_t v[3] = {f[i].label, f[i].bytes, f[i].mtime_ns};
        h = fnv64(h, v, sizeof v);
    }
    return h;
}

/* Maps the cache file if it holds these images: 1 and out filled; 0 otherwise. */
static int cache_map(const char *path, int64_t n, const fb_folder_options *o, uint64_t key,
                     fb_images *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    cache_header h;
    struct stat sb;
    const size_t img = (size_t)(o->size * o->size * o->channels);
    const size_t want = sizeof h + (size_t)n * sizeof(int32_t) + (size_t)n * img;
    int ok = !fstat(fd, &sb) && (size_t)sb.st_size == want &&
             pread(fd, &h, sizeof h, 0) == sizeof h && !memcmp(h.magic, "FBIMG01", 8) && h.n == n &&
             h.size == o->size && h.channels == o->channels && h.resample == o->resample &&
             h.key == (int64_t)key;
    void *map = ok ? mmap(NULL, want, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    close(fd);
    if (map == MAP_FAILED) return 0;
    int32_t *labels = fb_malloc((size_t)(n ? n : 1) * sizeof *labels);
    if (!labels) {
        munmap(map, want);
        return 0;
    }
    memcpy(labels, (const char *)map + sizeof h, (size_t)n * sizeof *labels);
    out->labels = labels;
    out->pixels = (uint8_t *)map + sizeof h + (size_t)n * sizeof(int32_t);
    out->mapping = map;
    out->mapping_len = want;
    return 1;
}

/* Writes the decoded images to the cache (a temporary file renamed into place); a cache that
 * cannot be written is skipped. */
static void cache_write(const char *dir, const char *path, const fb_images *d,
                        const fb_folder_options *o, uint64_t key)
{
    fb_mkdirs(dir);
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    cache_header h = {.n = d->n,
                      .size = o->size,
                      .channels = o->channels,
                      .resample = o->resample,
                      .key = (int64_t)key};
    memcpy(h.magic, "FBIMG01", 8);
    const size_t img = (size_t)(o->size * o->size * o->channels);
    int ok = write_all(fd, &h, sizeof h) &&
             write_all(fd, d->labels, (size_t)d->n * sizeof(int32_t)) &&
             write_all(fd, d->pixels, (size_t)d->n * img) && !fsync(fd);
    ok &= !close(fd);
    if (!ok || rename(tmp, path)) unlink(tmp);
}

fb_status fb_image_folder_read_ex(const char *dir, const fb_folder_options *o, fb_images *out)
{
    memset(out, 0, sizeof *out);
    const int64_t size = o->size, channels = o->channels;
    if (size <= 0 || size > 4096 || (channels != 1 && channels != 3))
        return fb_set_error(FB_ERR_ARG, "%s: image size %lld and %lld channels are not supported",
                            dir, (long long)size, (long long)channels);
    char **classes = NULL;
    int64_t K = 0, n = 0;
    folder_file *files = NULL;
    fb_status st = folder_list(dir, &classes, &K, &files, &n);
    if (st) {
        files_free(files, n);
        free_names(classes, K);
        return st;
    }
    if (n == 0) {
        files_free(files, n);
        free_names(classes, K);
        return fb_set_error(FB_ERR_FORMAT, "%s: the class folders hold no images", dir);
    }
    out->num_classes = K;
    out->class_names = classes;
    out->height = out->width = size;
    out->channels = channels;
    out->n = n;
    const uint64_t key = folder_key(dir, o, classes, K, files, n);
    char cpath[PATH_MAX] = "";
    if (o->cache_dir) {
        snprintf(cpath, sizeof cpath, "%s/%016llx.fbimg", o->cache_dir, (unsigned long long)key);
        if (cache_map(cpath, n, o, key, out)) {
            files_free(files, n);
            return FB_OK;
        }
    }
    const size_t img = (size_t)(size * size * channels);
    out->labels = fb_malloc((size_t)n * sizeof *out->labels);
    out->pixels = fb_malloc((size_t)n * img);
    fb_status *each = fb_malloc((size_t)n * sizeof *each);
    if (!out->labels || !out->pixels || !each) st = FB_ERR_NOMEM;
    /* decoded in parallel, each image into its own slot: the same bytes for any thread count;
     * the first failure (in file order) is decoded again here for its message */
    if (!st) {
#pragma omp parallel for schedule(dynamic, 16)
        for (int64_t i = 0; i < n; i++) {
            uint8_t *file = NULL;
            size_t len = 0;
            fb_status e = fb_read_file(files[i].path, 1u << 30, &file, &len);
            if (!e)
                e = fb_image_decode_ex(file, len, files[i].path, size, channels, o->resample,
                                       out->pixels + (size_t)i * img);
            fb_free(file);
            out->labels[i] = files[i].label;
            each[i] = e;
        }
        for (int64_t i = 0; i < n && !st; i++) {
            if (!each[i]) continue;
            uint8_t *file = NULL;
            size_t len = 0;
            st = fb_read_file(files[i].path, 1u << 30, &file, &len);
            if (!st)
                st = fb_image_decode_ex(file, len, files[i].path, size, channels, o->resample,
                                        out->pixels + (size_t)i * img);
            fb_free(file);
            if (!st) st = each[i]; /* failed only in parallel: out of memory there */
        }
    }
    fb_free(each);
    files_free(files, n);
    if (!st && *cpath) cache_write(o->cache_dir, cpath, out, o, key);
    if (st) fb_images_free(out);
    return st;
}

void fb_image_normalize(const uint8_t *src, int64_t size, int64_t channels, const float *mean,
                        const float *std, float *dst)
{
    const int64_t hw = size * size;
    for (int64_t c = 0; c < channels; c++) {
        const float m = mean[c], s = 1.0f / std[c];
        for (int64_t i = 0; i < hw; i++)
            dst[c * hw + i] = ((float)src[i * channels + c] / 255.0f - m) * s;
    }
}
