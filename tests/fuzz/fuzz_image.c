/*
 * fuzz_image.c: libFuzzer target for image files (PNG, JPEG, BMP, GIF, ... through
 * stb_image, behind our size limits) and CLIP preprocessing: the input is the file, decoded
 * to 3 channels and resized and cropped to 16 x 16.
 */
#include <stdint.h>

#include "io/dataset.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t out[16 * 16 * 3];
    fb_image_decode(data, size, "fuzz.img", 16, 3, out);
    return 0;
}
