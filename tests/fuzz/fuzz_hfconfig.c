/*
 * fuzz_hfconfig.c: libFuzzer target for Hugging Face config.json files of CLIP vision towers:
 * the input is the file. A config that loads and is small enough is also built into a network
 * and run on one image, so every size the reader lets through is used.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "nn/clip_vit.h"

static char path[256];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(path, sizeof path, "/tmp/fb-fuzz-hfconfig-%d.json", (int)getpid());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(data, 1, size, f);
    fclose(f);
    fb_clip_config c;
    if (fb_clip_config_load(path, &c) != FB_OK) return 0;
    /* build only what fits the fuzzer's memory limit */
    int64_t g = c.image_size / c.patch_size;
    if (c.hidden > 64 || c.intermediate > 64 || c.layers > 2 || g > 8 || c.channels > 4 ||
        c.patch_size > 8 || c.projection > 64)
        return 0;
    fb_clip *net;
    if (fb_clip_create(&c, 1, &net) != FB_OK) return 0;
    size_t pixels = (size_t)(c.channels * c.image_size * c.image_size);
    float *img = calloc(pixels, sizeof *img);
    const float *features;
    if (img && fb_clip_forward(net, img, 1, &features) == FB_OK) {
        float *d = calloc((size_t)(c.projection ? c.projection : c.hidden), sizeof *d);
        if (d) fb_clip_backward(net, d);
        free(d);
    }
    free(img);
    fb_clip_free(net);
    return 0;
}
