/*
 * dataset.h: image classification data from files: the IDX format (Fashion-MNIST, plain or
 * gzip), scikit-learn's digits.csv.gz, and image folders (one subfolder of PNG/JPEG/BMP files
 * per class, as torchvision's ImageFolder). Every reader yields the same thing: n images of
 * height x width x channels bytes (HWC), one int32 label each, and the class names when the
 * source has them. Readers validate everything before use and name the file in errors.
 *
 * CLIP-style preprocessing (resize the shorter side, center crop, scale to [0, 1], normalise
 * per channel) turns an image into the float CHW layout the nn engine reads.
 */
#ifndef FB_IO_DATASET_H
#define FB_IO_DATASET_H
#include <stddef.h>
#include <stdint.h>

#include "fusionbench.h"

/* Hostile-file limits: an IDX or image larger than this is refused before any allocation. */
#define FB_DATASET_MAX_BYTES (1ll << 31) /* decompressed IDX payload */
#define FB_IMAGE_MAX_SIDE 16384
#define FB_IMAGE_MAX_PIXELS (1ll << 24) /* 16.7 megapixels */
#define FB_IMAGE_MAX_ALLOC (1ull << 27) /* any one allocation of the image decoder */

typedef struct fb_images {
    int64_t n, height, width, channels;
    uint8_t *pixels; /* n * height * width * channels bytes, HWC per image */
    int32_t *labels; /* n labels in [0, num_classes) */
    int64_t num_classes;
    char **class_names; /* num_classes names, or NULL when the source has none */
    void *mapping;      /* pixels lie in this read-only file mapping (an image cache) */
    size_t mapping_len;
} fb_images;

/* How images are brought to the model's size: stb_image_resize (the zoo's), or CLIPProcessor's
 * Pillow bicubic (fb_image_resize_crop_clip). */
enum { FB_RESAMPLE_STB = 0, FB_RESAMPLE_CLIP = 1 };

void fb_images_free(fb_images *d);

/* An IDX file (magic 0 0 0x08 ndims, big-endian dims, unsigned bytes) from memory, gzip or
 * plain. Images are 3-D [n, rows, cols] (or 4-D with channels last); labels 1-D [n]. `name`
 * names the file in errors. On success *data (fb_malloc'd) holds the payload bytes. */
fb_status fb_idx_parse(const uint8_t *file, size_t len, const char *name, int *ndims,
                       int64_t dims[4], uint8_t **data);

/* A pair of IDX files: images and their labels (counts must agree). Labels must be < 256;
 * num_classes is the largest label + 1. */
fb_status fb_idx_read(const char *images_path, const char *labels_path, fb_images *out);

/* scikit-learn's digits.csv.gz: 1797 rows of 64 pixel values in 0..16 and a label 0..9;
 * pixels are scaled to 0..255 (v * 255 / 16, rounded) into 8x8 one-channel images. */
fb_status fb_digits_parse(const char *text, size_t len, const char *name, fb_images *out);
fb_status fb_digits_read(const char *path, fb_images *out);

/* An image folder: DIR/<class>/<image files>, classes in byte order of their names (labels
 * 0..K-1), files in byte order within a class. Each image is decoded with `channels` channels
 * (1 grey, 3 RGB) and brought to size x size by fb_image_resize_crop. */
fb_status fb_image_folder_read(const char *dir, int64_t size, int64_t channels, fb_images *out);

typedef struct fb_folder_options {
    int64_t size, channels;
    int resample;          /* FB_RESAMPLE_* */
    const char *cache_dir; /* NULL: no cache; else preprocessed images are kept in
                              <cache_dir>/<key>.fbimg and memory-mapped by later reads; the key
                              covers the folder, every file's name, size and time, and the
                              options */
} fb_folder_options;

/* fb_image_folder_read with options; images are decoded in parallel (OpenMP), each into its
 * own slot, so the result does not depend on the thread count. */
fb_status fb_image_folder_read_ex(const char *dir, const fb_folder_options *opts, fb_images *out);

/* One encoded image (PNG, JPEG, BMP, ...) from memory, decoded to channels and resized and
 * cropped to size x size into out (size * size * channels bytes). */
fb_status fb_image_decode(const uint8_t *file, size_t len, const char *name, int64_t size,
                          int64_t channels, uint8_t *out);
/* The same with the resampler chosen (FB_RESAMPLE_*). */
fb_status fb_image_decode_ex(const uint8_t *file, size_t len, const char *name, int64_t size,
                             int64_t channels, int resample, uint8_t *out);

/* CLIP's preprocessing of one HWC byte image: scale so the shorter side is `size` (bilinear
 * with stb_image_resize), then crop the centre size x size. Same size in and out is a copy. */
fb_status fb_image_resize_crop(const uint8_t *src, int64_t height, int64_t width, int64_t channels,
                               int64_t size, uint8_t *dst);

/* CLIPProcessor's preprocessing (transformers' CLIPImageProcessor with Pillow): the shorter
 * side becomes `size` and the longer int(size * long / short), resampled with Pillow's bicubic
 * filter (antialiased when shrinking, fixed-point weights, bytes rounded after each pass, as
 * Image.resize computes it), then the centre size x size crop. */
fb_status fb_image_resize_crop_clip(const uint8_t *src, int64_t height, int64_t width,
                                    int64_t channels, int64_t size, uint8_t *dst);

/* A size x size x channels byte image to floats CHW: (v / 255 - mean[c]) / std[c]. */
void fb_image_normalize(const uint8_t *src, int64_t size, int64_t channels, const float *mean,
                        const float *std, float *dst);

/* Reads a whole file into fb_malloc'd memory (at most max_bytes; larger is an error). */
fb_status fb_read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *len);

#endif
