/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader. The input is a whole file;
 * it is loaded and every tensor read and converted, so header parsing, layout checks and every
 * access path see hostile bytes.
 */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    int fd = fuzz_input_file("fuzz.safetensors", data, size, path);
    if (fd < 0) return 0;
    fb_model *m;
    if (fb_model_load(path, &m) == FB_OK) {
        fuzz_read_every_tensor(m);
        fb_model_free(m);
    }
    close(fd);
    return 0;
}
